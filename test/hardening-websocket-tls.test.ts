// Hardening: WebSocket upgrades through the inbound listener and through a sidecar pair
// (app -> outbound --upstream -> inbound -> app), written by hand on raw sockets; and an
// independent TLS scan (testssl.sh) of the inbound port.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { connect as netConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runCommand } from './helpers/clients.js';
import { openFds, parseWebsocketFrames, pollUntil, sleep, startWebsocketApp, websocketAccept, websocketFrame, type WebsocketApp } from './helpers/hardening.js';
import { freshDir, makeService, sharedRootCA, type CertificateAuthority, type ServiceIdentity } from './helpers/pki.js';
import { openTls } from './helpers/raw.js';
import { freePort, startSidecar, stopAllSidecars, type Sidecar } from './helpers/sidecar.js';

interface WebsocketSession {
  socket: Socket;
  /** The raw HTTP response head to the upgrade request. */
  head: string;
  /** Waits for the next `count` text frames. */
  next(count: number, timeoutMs?: number): Promise<string[]>;
  /** Resolves when the other side closes the connection. */
  closed: Promise<void>;
}

/** Sends a WebSocket upgrade for `path` on `socket` and reads the response head. */
function upgrade(socket: Socket, path: string): Promise<WebsocketSession> {
  const key = randomBytes(16).toString('base64');
  let buffer: Buffer = Buffer.alloc(0);
  let head: string | undefined;
  const texts: string[] = [];
  const waiters: Array<() => void> = [];
  const closed = new Promise<void>((resolve) => {
    socket.once('close', () => resolve());
  });
  socket.on('error', () => undefined);
  return new Promise((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      if (head === undefined) {
        const end = buffer.indexOf('\r\n\r\n');
        if (end < 0) return;
        head = buffer.subarray(0, end).toString('latin1');
        buffer = buffer.subarray(end + 4);
        if (/^HTTP\/1\.1 101 /.test(head)) {
          assert.match(head, new RegExp(`sec-websocket-accept: ${websocketAccept(key).replace(/[+/]/g, '\\$&')}`, 'i'));
        }
        resolve(session);
      }
      const parsed = parseWebsocketFrames(buffer);
      buffer = parsed.rest;
      texts.push(...parsed.texts);
      for (const waiter of waiters.splice(0)) waiter();
    });
    socket.once('close', () => {
      if (head === undefined) reject(new Error(`connection closed before an upgrade response; got ${JSON.stringify(buffer.toString('latin1'))}`));
    });
    const session: WebsocketSession = {
      socket,
      get head() {
        return head ?? '';
      },
      async next(count, timeoutMs = 5000) {
        const deadline = Date.now() + timeoutMs;
        while (texts.length < count) {
          if (Date.now() > deadline) throw new Error(`expected ${count} frames, got ${JSON.stringify(texts)}`);
          await Promise.race([new Promise<void>((wake) => waiters.push(wake)), sleep(100)]);
        }
        return texts.splice(0, count);
      },
      closed,
    };
    socket.write(`GET ${path} HTTP/1.1\r\nHost: service-b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
  });
}

describe('hardening: WebSocket upgrades', () => {
  let root: CertificateAuthority;
  let serviceA: ServiceIdentity;
  let serviceB: ServiceIdentity;
  let app: WebsocketApp;
  let inbound: Sidecar;
  let outbound: Sidecar;
  let localPort: number;

  const tlsToInbound = () => openTls({ address: inbound.inbound, leaf: serviceA.leaf, ca: root.certPem });
  const tcpToOutbound = async () => {
    const socket = netConnect({ host: '127.0.0.1', port: localPort });
    await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return socket;
  };

  before(async () => {
    root = await sharedRootCA();
    [serviceA, serviceB, app] = await Promise.all([makeService(root, 'service-a'), makeService(root, 'service-b'), startWebsocketApp()]);
    inbound = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off']);
    localPort = await freePort();
    outbound = await startSidecar(['--cert-dir', serviceA.certDir, '--inbound', 'off', '--app', 'http://127.0.0.1:1', '--upstream', `${localPort}=127.0.0.1:${inbound.inbound.port}@${serviceB.spiffeId}`]);
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
  });

  for (const route of ['inbound', 'outbound -> inbound'] as const) {
    test(`${route}: data flows both ways after the upgrade`, async () => {
      const socket = route === 'inbound' ? await tlsToInbound() : await tcpToOutbound();
      const session = await upgrade(socket, '/ws');
      assert.match(session.head, /^HTTP\/1\.1 101 /, session.head);
      assert.deepEqual(await session.next(1), ['welcome'], 'app -> client');
      socket.write(websocketFrame('ping-1', true));
      socket.write(websocketFrame('ping-2', true));
      assert.deepEqual(await session.next(2), ['echo:ping-1', 'echo:ping-2'], 'client -> app -> client');
      socket.destroy();
    });

    test(`${route}: an app answering the upgrade with 404 gives a normal 404 and both sockets close`, async () => {
      const socket = route === 'inbound' ? await tlsToInbound() : await tcpToOutbound();
      const session = await upgrade(socket, '/not-a-socket');
      assert.match(session.head, /^HTTP\/1\.1 404 /, session.head);
      await Promise.race([session.closed, sleep(5000).then(() => assert.fail('the client socket stayed open after the 404'))]);
      const appSockets = await pollUntil(() => app.openSockets(), (count) => count === 0, 3000);
      assert.equal(appSockets, 0, 'the app-side socket closes too');
    });

    test(`${route}: killing the app mid-session closes the client socket`, async () => {
      const socket = route === 'inbound' ? await tlsToInbound() : await tcpToOutbound();
      const session = await upgrade(socket, '/ws');
      assert.deepEqual(await session.next(1), ['welcome']);
      app.killSessions();
      await Promise.race([session.closed, sleep(5000).then(() => assert.fail('the client socket stayed open after the app died'))]);
    });
  }

  test('300 abandoned upgrades leave no file descriptor behind (inbound and outbound sidecars)', async (t) => {
    await pollUntil(() => app.openSockets(), (count) => count === 0, 3000);
    const baseline = { inbound: await openFds(inbound.child.pid!), outbound: await openFds(outbound.child.pid!) };
    for (let batch = 0; batch < 6; batch += 1) {
      const sockets = await Promise.all(Array.from({ length: 50 }, (_unused, index) => (index % 2 === 0 ? tlsToInbound() : tcpToOutbound())));
      // Half are abandoned mid-session, half before the upgrade response arrives.
      await Promise.all(sockets.map(async (socket, index) => {
        if (index % 4 < 2) {
          const session = await upgrade(socket, '/ws');
          await session.next(1);
        } else {
          socket.on('error', () => undefined);
          socket.write(`GET /ws HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
        }
        socket.destroy();
      }));
    }
    const appSockets = await pollUntil(() => app.openSockets(), (count) => count === 0, 5000);
    assert.equal(appSockets, 0, 'every app-side WebSocket connection is closed');
    const inboundFds = await pollUntil(() => openFds(inbound.child.pid!), (count) => count <= baseline.inbound + 5, 5000);
    const outboundFds = await pollUntil(() => openFds(outbound.child.pid!), (count) => count <= baseline.outbound + 5, 5000);
    t.diagnostic(`fds after 300 abandoned upgrades: inbound ${baseline.inbound} -> ${inboundFds}, outbound ${baseline.outbound} -> ${outboundFds}`);
    assert.ok(inboundFds <= baseline.inbound + 5, `inbound sidecar fds ${inboundFds}, baseline ${baseline.inbound}`);
    assert.ok(outboundFds <= baseline.outbound + 5, `outbound sidecar fds ${outboundFds}, baseline ${baseline.outbound}`);
    assert.equal(inbound.child.exitCode, null);
    assert.equal(outbound.child.exitCode, null);
  });
});

describe('hardening: TLS settings of the inbound port (testssl.sh, Debian package "testssl.sh")', () => {
  let sidecar: Sidecar;
  let available: string | undefined;

  before(async () => {
    const which = await runCommand('sh', ['-c', 'command -v testssl || command -v testssl.sh']);
    available = which.code === 0 ? which.stdout.trim() : undefined;
    if (!available) return;
    const root = await sharedRootCA();
    const service = await makeService(root, 'service-b');
    sidecar = await startSidecar(['--cert-dir', service.certDir, '--app', 'http://127.0.0.1:1', '--outbound', 'off', '--admin', 'off']);
  });

  after(async () => {
    await sidecar?.stop();
  });

  test('no SSLv3/TLS 1.0/1.1, no NULL/export/RC4/3DES/CBC suites, secure renegotiation', { timeout: 240_000 }, async (t) => {
    if (!available) {
      t.skip('testssl.sh is not installed (apt-get install testssl.sh)');
      return;
    }
    // Only the checks this is about (protocols, cipher categories, renegotiation): ~20 s instead of
    // several minutes for a full run. testssl 3.0 has no client certificate option; the server
    // hello (protocol and suite) comes before the certificate request, so the scan still works.
    const json = join(await freshDir('testssl'), 'result.json');
    const result = await runCommand(available, ['--quiet', '--color', '0', '--warnings', 'off', '--protocols', '--std', '--renegotiation', '--jsonfile', json, `${sidecar.inbound.host}:${sidecar.inbound.port}`], { timeoutMs: 230_000 });
    const findings = JSON.parse(await readFile(json, 'utf8')) as Array<{ id: string; severity: string; finding: string }>;
    const finding = (id: string) => findings.find((entry) => entry.id === id)?.finding ?? `(no ${id} in the scan)\n${result.stdout}`;
    for (const id of ['SSLv2', 'SSLv3', 'TLS1', 'TLS1_1']) assert.match(finding(id), /^not offered/, `${id}: ${finding(id)}`);
    assert.match(finding('TLS1_2'), /^offered/);
    assert.match(finding('TLS1_3'), /^offered/);
    // NULL, anonymous, export, LOW (DES, RC2, RC4), 3DES/IDEA, AVERAGE (obsolete CBC suites).
    for (const id of ['cipherlist_NULL', 'cipherlist_aNULL', 'cipherlist_EXPORT', 'cipherlist_LOW', 'cipherlist_3DES_IDEA', 'cipherlist_AVERAGE']) {
      assert.match(finding(id), /^not offered/, `${id}: ${finding(id)}`);
    }
    assert.match(finding('cipherlist_STRONG'), /^offered/);
    assert.match(finding('secure_renego'), /^supported/, finding('secure_renego'));
    t.diagnostic(`testssl scan took ${findings.find((entry) => entry.id === 'scanTime')?.finding ?? '?'} s; client-initiated renegotiation: ${finding('secure_client_renego')}`);
  });
});
