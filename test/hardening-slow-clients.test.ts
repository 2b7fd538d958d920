// Hardening, slow and greedy clients on the inbound port: silent TLS connections, trickled headers,
// dripped bodies, the connection cap and thousands of idle connections. None of it may reach the
// app or stop valid requests from being served.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { connect as netConnect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { startEchoApp, type EchoApp } from './helpers/apps.js';
import { mtlsRequest } from './helpers/clients.js';
import { sleep, startScriptedApp, type ScriptedApp } from './helpers/hardening.js';
import { fetchMetrics, metricValue } from './helpers/identity.js';
import { makeService, sharedRootCA, type CertificateAuthority, type ServiceIdentity } from './helpers/pki.js';
import { openTls, readRaw } from './helpers/raw.js';
import { startSidecar, stopAllSidecars, type Address, type Sidecar } from './helpers/sidecar.js';

function tcpConnect(address: Address): Promise<Socket> {
  const socket = netConnect({ host: address.host, port: address.port });
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('error', reject);
  });
}

/** Resolves with the ms until `socket` is closed by the other side (or rejects after `timeoutMs`). */
function closedWithin(socket: Socket, timeoutMs: number): Promise<number> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`still open after ${timeoutMs} ms`)), timeoutMs);
    socket.on('error', () => undefined);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(Date.now() - started);
    });
  });
}

describe('hardening: slow clients on the inbound listener', () => {
  let root: CertificateAuthority;
  let serviceB: ServiceIdentity;
  let peerA: ServiceIdentity;
  let app: EchoApp;
  let sidecar: Sidecar;

  const call = (target: Sidecar, path: string) =>
    mtlsRequest({ host: target.inbound.host, port: target.inbound.port, path, ca: root.certPem, cert: peerA.leaf.chainPem, key: peerA.leaf.keyPem, timeoutMs: 10000 });

  before(async () => {
    root = await sharedRootCA();
    [serviceB, peerA, app] = await Promise.all([makeService(root, 'service-b'), makeService(root, 'service-a'), startEchoApp()]);
    sidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off', '--handshake-timeout', '2s', '--headers-timeout', '2s', '--idle-timeout', '2s']);
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
  });

  test('a TCP connection that never sends a ClientHello is closed after --handshake-timeout (2 s)', async () => {
    const before = app.requests.length;
    const socket = await tcpConnect(sidecar.inbound);
    const elapsed = await closedWithin(socket, 6000);
    assert.ok(elapsed >= 1500 && elapsed < 4000, `closed after ${elapsed} ms`);
    const line = await sidecar.waitForLog((entry) => entry.msg === 'TLS handshake failed' && entry.reason === 'handshake_timeout', 3000);
    assert.equal(line.direction, 'inbound');
    assert.equal(app.requests.length, before);
  });

  test('headers trickled one line per second are cut at --headers-timeout (2 s) with 408; the app sees nothing', async () => {
    const before = app.requests.length;
    const socket = await openTls({ address: sidecar.inbound, leaf: peerA.leaf, ca: root.certPem });
    const reading = readRaw(socket, { timeoutMs: 10000 });
    socket.write('GET /trickle HTTP/1.1\r\n');
    // Each line arrives well within --idle-timeout, so only the headers deadline can stop this.
    const trickle = (async () => {
      for (let line = 0; line < 8 && !socket.destroyed; line += 1) {
        await sleep(1000);
        if (!socket.destroyed && socket.writable) socket.write(`X-Trickle-${line}: ${line}\r\n`);
      }
    })();
    const exchange = await reading;
    await trickle;
    assert.ok(exchange.closedByServer, 'the sidecar must close the connection');
    assert.ok(exchange.elapsedMs >= 1800 && exchange.elapsedMs < 5000, `cut after ${exchange.elapsedMs} ms`);
    assert.match(exchange.text, /^HTTP\/1\.1 408 /, exchange.text);
    assert.equal(app.requests.length, before);
    const line = await sidecar.waitForLog((entry) => entry.msg === 'request refused' && entry.error === 'request_headers_timeout', 3000);
    assert.match(String(line.hint), /--headers-timeout/);
  });

  test('a request body that stalls longer than --idle-timeout (2 s) is cut; the app sees the request end early', async () => {
    let appSaw: { bytes: number; aborted: boolean } | undefined;
    const dripApp: ScriptedApp = await startScriptedApp((request, response) => {
      let bytes = 0;
      request.on('data', (chunk: Buffer) => (bytes += chunk.length));
      request.on('end', () => response.end('complete'));
      request.on('close', () => {
        appSaw = { bytes, aborted: !request.complete };
      });
    });
    const dripSidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', dripApp.url, '--outbound', 'off', '--admin', 'off', '--idle-timeout', '2s']);
    try {
      const socket = await openTls({ address: dripSidecar.inbound, leaf: peerA.leaf, ca: root.certPem });
      const reading = readRaw(socket, { timeoutMs: 15000 });
      socket.write('POST /drip HTTP/1.1\r\nHost: b\r\nContent-Length: 100\r\n\r\n');
      // One byte, then silence longer than the idle timeout: 1 byte every 3 s.
      const drip = (async () => {
        for (let byte = 0; byte < 5 && !socket.destroyed; byte += 1) {
          if (socket.writable) socket.write('x');
          await sleep(3000);
        }
      })();
      const exchange = await reading;
      await drip;
      assert.ok(exchange.closedByServer, 'the sidecar must close the stalled connection');
      assert.ok(exchange.elapsedMs < 6000, `cut after ${exchange.elapsedMs} ms`);
      assert.doesNotMatch(exchange.text, /complete/);
      await sleep(500);
      assert.ok(appSaw, 'the app request must be closed too');
      assert.ok(appSaw.aborted && appSaw.bytes < 100, `the app saw ${JSON.stringify(appSaw)}`);
      assert.equal(dripSidecar.child.exitCode, null);
    } finally {
      await dripSidecar.stop();
      await dripApp.close();
    }
  });

  test('--max-connections 5 caps concurrent inbound connections, logging and counting each drop; a slot frees when one closes', async () => {
    const capped = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off', '--max-connections', '5']);
    try {
      const held = await Promise.all(Array.from({ length: 5 }, () => openTls({ address: capped.inbound, leaf: peerA.leaf, ca: root.certPem })));
      const before = app.requests.length;
      await assert.rejects(call(capped, '/sixth'), 'the sixth concurrent connection must be refused');
      assert.equal(app.requests.length, before);
      const line = await capped.waitForLog((logged) => logged.msg === 'connection dropped: --max-connections reached', 5000);
      assert.equal(line.level, 'warn');
      assert.equal(line.maxConnections, 5);
      assert.equal(metricValue(await fetchMetrics(capped), 'sidecar_connections_dropped_total', { direction: 'inbound' }) >= 1, true);
      held[0]!.destroy();
      await sleep(200);
      const response = await call(capped, '/after-free');
      assert.equal(response.status, 200);
      for (const socket of held) socket.destroy();
    } finally {
      await capped.stop();
    }
  });

  test('2000 idle TCP connections do not stop valid requests from being served', async (t) => {
    const idleSidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off', '--admin', 'off']);
    const limits = await readFile(`/proc/${idleSidecar.child.pid}/limits`, 'utf8');
    const softLimit = Number(/Max open files\s+(\d+)/.exec(limits)?.[1] ?? 0);
    if (softLimit < 4500) {
      // The sidecar inherits this process's limit; CI runs with `ulimit -n` raised.
      t.skip(`open-file limit ${softLimit} is too low for 2000 connections on each side; raise ulimit -n`);
      await idleSidecar.stop();
      return;
    }
    const sockets: Socket[] = [];
    try {
      for (let batch = 0; batch < 20; batch += 1) {
        sockets.push(...(await Promise.all(Array.from({ length: 100 }, () => tcpConnect(idleSidecar.inbound)))));
      }
      for (const socket of sockets) socket.on('error', () => undefined);
      const started = Date.now();
      const responses = await Promise.all(Array.from({ length: 10 }, (_unused, index) => call(idleSidecar, `/while-crowded-${index}`)));
      const elapsed = Date.now() - started;
      for (const response of responses) assert.equal(response.status, 200);
      assert.ok(elapsed < 5000, `10 requests took ${elapsed} ms beside 2000 idle connections`);
      t.diagnostic(`10 valid requests served in ${elapsed} ms beside 2000 idle TCP connections (fd limit ${softLimit})`);
      assert.equal(sockets.filter((socket) => socket.destroyed).length, 0, 'the idle connections are only closed by the handshake timeout');
    } finally {
      for (const socket of sockets) socket.destroy();
      await idleSidecar.stop();
    }
  });

  test('none of the slow clients crashed the sidecar', async () => {
    assert.equal(sidecar.child.exitCode, null);
    const response = await call(sidecar, '/still-serving');
    assert.equal(response.status, 200);
  });
});

