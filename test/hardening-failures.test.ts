// Hardening, failures around the sidecar: clients that abort, apps that stop, reset, stall or live
// behind a unix socket, Expect: 100-continue, and timeouts vs refusals in both directions. The
// process must stay up, free what the aborted requests held, and report status, log and metric
// with the same catalog code.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createServer as createTlsServer } from 'node:tls';
import { assertSidecarError } from './helpers/assertions.js';
import { sha256Hex, startEchoApp, type EchoApp, type EchoReply } from './helpers/apps.js';
import { curl, mtlsRequest, plainRequest, proxyRequest, type HttpResult } from './helpers/clients.js';
import {
  metricValue, openFds, pollUntil, requestLogs, sleep, startRawApp, startScriptedApp, startUnprivilegedSidecar, unprivilegedReachableDir, unprivilegedUnavailable, UNPRIVILEGED_ID, type RawApp, type ScriptedApp,
} from './helpers/hardening.js';
import { freshDir, makeService, sharedRootCA, type CertificateAuthority, type ServiceIdentity } from './helpers/pki.js';
import { openTls, rawTlsExchange } from './helpers/raw.js';
import { freePort, startSidecar, stopAllSidecars, type Sidecar } from './helpers/sidecar.js';

describe('hardening: failures never kill the sidecar', () => {
  let root: CertificateAuthority;
  let serviceB: ServiceIdentity;
  let peerA: ServiceIdentity;

  const call = (sidecar: Sidecar, path: string, options: { method?: string; headers?: Record<string, string>; body?: Buffer; timeoutMs?: number } = {}): Promise<HttpResult> =>
    mtlsRequest({ host: sidecar.inbound.host, port: sidecar.inbound.port, path, ca: root.certPem, cert: peerA.leaf.chainPem, key: peerA.leaf.keyPem, ...options });

  /** curl presenting peer A's certificate to the sidecar's inbound port. */
  const curlInbound = (sidecar: Sidecar, path: string, args: string[] = [], timeoutMs = 15000) =>
    curl(['--cacert', root.certPath, '--cert', peerA.leaf.certPath, '--key', peerA.leaf.keyPath, ...args, `https://localhost:${sidecar.inbound.port}${path}`], { timeoutMs });

  before(async () => {
    root = await sharedRootCA();
    [serviceB, peerA] = await Promise.all([makeService(root, 'service-b'), makeService(root, 'service-a')]);
  });

  after(async () => {
    await stopAllSidecars();
  });

  describe('client aborts', () => {
    let app: EchoApp;
    let sidecar: Sidecar;

    before(async () => {
      app = await startEchoApp();
      sidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off']);
    });
    after(async () => {
      await sidecar?.stop();
      await app?.close();
    });

    test('100 clients aborting after 0.2 s (curl -m 0.2) against a 5 s handler: process up, logged as client closed, not 5xx', async (t) => {
      const before = requestLogs(sidecar).length;
      for (let batch = 0; batch < 5; batch += 1) {
        const results = await Promise.all(Array.from({ length: 20 }, () => curlInbound(sidecar, '/slow?ms=5000', ['-m', '0.2'])));
        for (const result of results) assert.equal(result.code, 28, `curl should time out (exit 28): ${result.stderr}`);
      }
      assert.equal(sidecar.child.exitCode, null, sidecar.output());
      // A curl whose 0.2 s ran out during the TLS handshake never sent its request; every request
      // that reached the sidecar is logged once, as aborted.
      await sleep(1000);
      const logged = requestLogs(sidecar).slice(before).filter((line) => line.path === '/slow');
      assert.ok(logged.length >= 50 && logged.length <= 100, `${logged.length} of 100 requests logged`);
      const reached = logged.length;
      t.diagnostic(`${reached} of 100 aborted requests got past the handshake in 0.2 s; all logged as aborted`);
      for (const line of logged) {
        assert.equal(line.aborted, true, JSON.stringify(line));
        assert.ok(Number(line.status) < 500, `an abort was logged as ${line.status}: ${JSON.stringify(line)}`);
        assert.equal(line.error, undefined, JSON.stringify(line));
      }
      assert.ok(!sidecar.logs().some((line) => line.msg === 'forwarding failed' && line.path === '/slow'), 'a client abort is not a forwarding failure');
      assert.equal(await metricValue(sidecar, 'sidecar_requests_total', { direction: 'inbound', code: 'aborted' }), reached);
      const response = await call(sidecar, '/after-aborts');
      assert.equal(response.status, 200);
    });
  });

  describe('1000 aborted slow requests release everything', () => {
    let app: ScriptedApp;
    let sidecar: Sidecar;

    before(async () => {
      // Never answers: only the client's abort can end these requests.
      app = await startScriptedApp(() => undefined);
      sidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off', '--admin', 'off']);
    });
    after(async () => {
      await sidecar?.stop();
      await app?.close();
    });

    test('upstream sockets close within ~1 s of the aborts and the fd count returns to its starting level', async (t) => {
      const pid = sidecar.child.pid!;
      // One request first so lazily opened descriptors (e.g. the app pool) are part of the baseline.
      const warm = await openTls({ address: sidecar.inbound, leaf: peerA.leaf, ca: root.certPem });
      warm.write('GET /warm HTTP/1.1\r\nHost: b\r\n\r\n');
      await pollUntil(() => app.requests.length, (count) => count >= 1, 3000);
      warm.destroy();
      await pollUntil(() => app.openSockets(), (count) => count === 0, 3000);
      const baseline = await openFds(pid);

      const total = 1000;
      const parallel = 100;
      for (let offset = 0; offset < total; offset += parallel) {
        const requestsBefore = app.requests.length;
        const sockets = await Promise.all(Array.from({ length: parallel }, () => openTls({ address: sidecar.inbound, leaf: peerA.leaf, ca: root.certPem })));
        for (const socket of sockets) socket.write(`GET /slow-${offset} HTTP/1.1\r\nHost: b\r\n\r\n`);
        // Every request reached the app before its client goes away.
        await pollUntil(() => app.requests.length - requestsBefore, (count) => count >= parallel, 5000);
        for (const socket of sockets) socket.destroy();
      }
      assert.equal(app.requests.length, total + 1);
      const abortedAt = Date.now();
      const appSockets = await pollUntil(() => app.openSockets(), (count) => count === 0, 5000, 20);
      const closedAfterMs = Date.now() - abortedAt;
      assert.equal(appSockets, 0, 'every upstream socket is closed');
      assert.ok(closedAfterMs <= 1500, `the app sockets closed ${closedAfterMs} ms after the last abort`);
      const fds = await pollUntil(() => openFds(pid), (count) => count <= baseline + 5, 5000);
      assert.ok(fds <= baseline + 5, `open fds ${fds}, baseline ${baseline}`);
      t.diagnostic(`${total} aborted requests (${parallel} in parallel): app sockets closed ${closedAfterMs} ms after the last abort; fds ${baseline} -> ${fds}`);
      assert.equal(sidecar.child.exitCode, null);
    });
  });

  describe('the app fails', () => {
    test('app stopped: 502 app_refused, and the sidecar keeps serving when the app is back', async () => {
      const app = await startEchoApp();
      const sidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off']);
      assert.equal((await call(sidecar, '/before')).status, 200);
      await app.close();
      assertSidecarError(await call(sidecar, '/while-down'), 502, 'app_refused');
      assert.equal(sidecar.child.exitCode, null);
      await sidecar.stop();
    });

    test('app resets before answering: 502 app_reset; mid-response: the client response is cut, not left hanging', async () => {
      const app = await startRawApp((socket, received) => {
        if (!received.includes('\r\n\r\n')) return;
        if (received.startsWith('GET /reset-before')) socket.resetAndDestroy();
        else if (received.startsWith('GET /reset-mid')) {
          socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n');
          socket.write('x'.repeat(1000), () => setTimeout(() => socket.resetAndDestroy(), 50));
        }
      });
      const sidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off']);
      try {
        assertSidecarError(await call(sidecar, '/reset-before'), 502, 'app_reset');
        const exchange = await rawTlsExchange({ address: sidecar.inbound, leaf: peerA.leaf, ca: root.certPem, bytes: 'GET /reset-mid HTTP/1.1\r\nHost: b\r\n\r\n', timeoutMs: 5000 });
        assert.ok(exchange.closedByServer, `the client connection must be closed when the app dies mid-response:\n${exchange.text.slice(0, 200)}`);
        assert.match(exchange.text, /^HTTP\/1\.1 200 /);
        assert.ok(exchange.text.length < 100000, 'the response is incomplete, so the client can tell');
        assert.equal(sidecar.child.exitCode, null);
        assert.equal((await call(sidecar, '/reset-before')).status, 502, 'still serving');
      } finally {
        await sidecar.stop();
        await app.close();
      }
    });
  });

  describe('an answer that is not HTTP', () => {
    const garbage = (socket: Socket, received: string) => {
      if (received.includes('\r\n\r\n')) socket.end('garbage\r\n\r\n');
    };

    test('from the app: 502 app_response_invalid, logged with that code', async () => {
      const app = await startRawApp(garbage);
      const sidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off']);
      try {
        assertSidecarError(await call(sidecar, '/not-http'), 502, 'app_response_invalid');
        const line = await sidecar.waitForLog((entry) => entry.msg === 'forwarding failed' && entry.path === '/not-http', 5000);
        assert.equal(line.error, 'app_response_invalid', JSON.stringify(line));
      } finally {
        await sidecar.stop();
        await app.close();
      }
    });

    test('from an upstream over mTLS: 502 upstream_response_invalid', async () => {
      const upstream = createTlsServer({ cert: serviceB.leaf.chainPem, key: serviceB.leaf.keyPem }, (socket) => {
        let received = '';
        socket.on('error', () => undefined);
        socket.on('data', (chunk: Buffer) => garbage(socket, (received += chunk.toString('latin1'))));
      });
      await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
      const localPort = await freePort();
      const sidecar = await startSidecar(['--cert-dir', peerA.certDir, '--app', 'http://127.0.0.1:9', '--inbound', 'off', '--upstream', `${localPort}=localhost:${(upstream.address() as AddressInfo).port}`]);
      try {
        assertSidecarError(await plainRequest({ ...sidecar.upstream(localPort), path: '/not-http' }), 502, 'upstream_response_invalid');
      } finally {
        await sidecar.stop();
        await new Promise((resolve) => upstream.close(resolve));
      }
    });
  });

  describe('a kept-alive app connection closed just as a request goes out on it', () => {
    // The app answers the first request on each connection and closes the connection, without an
    // answer, when a second one arrives on it: what an app's idle timeout, drain or restart looks
    // like to the sidecar's pooled connection.
    let app: RawApp;
    let sidecar: Sidecar;

    before(async () => {
      const answered = new WeakSet<Socket>();
      app = await startRawApp((socket, received) => {
        const requests = received.split('\r\n\r\n').length - 1;
        if (requests === 1 && !answered.has(socket)) {
          answered.add(socket);
          socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok');
        } else if (requests >= 2) {
          socket.destroy();
        }
      });
      sidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off', '--admin', 'off']);
    });
    after(async () => {
      await sidecar?.stop();
      await app?.close();
    });

    test('a GET is sent again on a new connection: the client gets 200, nothing is logged as failed', async () => {
      assert.equal((await call(sidecar, '/kept-alive-1')).status, 200);
      const accepted = app.accepted;
      const again = await call(sidecar, '/kept-alive-2');
      assert.equal(again.status, 200, again.text);
      assert.equal(app.accepted, accepted + 1, 'one new connection for the second attempt');
      assert.match(app.received[accepted - 1]!, /GET \/kept-alive-2 /, 'the first attempt went out on the kept-alive connection');
      assert.match(app.received[accepted]!, /^GET \/kept-alive-2 /, 'the second attempt on the new one');
      assert.equal(sidecar.logs().some((line) => line.msg === 'forwarding failed'), false);
    });

    test('a POST with a body is not sent twice: 502 app_reset', async () => {
      assert.equal((await call(sidecar, '/kept-alive-3')).status, 200);
      const accepted = app.accepted;
      const posted = await call(sidecar, '/kept-alive-post', { method: 'POST', body: Buffer.from('once only') });
      assertSidecarError(posted, 502, 'app_reset');
      assert.equal(app.accepted, accepted, 'no second connection: a body is never replayed');
    });
  });

  describe('Expect: 100-continue', () => {
    let app: ScriptedApp;
    let sidecar: Sidecar;
    let upload: string;
    const body = randomBytes(5 * 1024 * 1024);

    before(async () => {
      upload = join(await freshDir('upload'), 'body.bin');
      await writeFile(upload, body);
      app = await startScriptedApp((request, response) => {
        if (request.url === '/reject' || request.url === '/reject-and-close') {
          // Refuses without reading the body; /reject-and-close also drops the connection at once
          // (no lingering close), so the kernel resets it while the body is still arriving.
          response.writeHead(413, { 'content-type': 'text/plain', ...(request.url === '/reject-and-close' ? { connection: 'close' } : {}) });
          response.end('too large');
          return;
        }
        if (request.url === '/never') return;
        const chunks: Buffer[] = [];
        request.on('data', (chunk: Buffer) => chunks.push(chunk));
        request.on('end', () => {
          const all = Buffer.concat(chunks);
          response.end(JSON.stringify({ length: all.length, sha256: sha256Hex(all), expect: request.headers.expect ?? null }));
        });
      });
      sidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off', '--request-timeout', '2s']);
    });
    after(async () => {
      await sidecar?.stop();
      await app?.close();
    });

    test('a 5 MB upload with Expect: 100-continue completes with the body intact', async () => {
      const result = await curlInbound(sidecar, '/upload', ['-H', 'Expect: 100-continue', '--data-binary', `@${upload}`, '-H', 'content-type: application/octet-stream']);
      assert.equal(result.code, 0, result.stderr);
      const reply = JSON.parse(result.stdout) as { length: number; sha256: string };
      assert.equal(reply.length, body.length);
      assert.equal(reply.sha256, sha256Hex(body));
    });

    test('the app answering 413 without reading gives the client 413 promptly, never a hang', async () => {
      for (let attempt = 0; attempt < 5; attempt += 1) {
        const started = Date.now();
        const result = await curlInbound(sidecar, '/reject', ['-H', 'Expect: 100-continue', '--data-binary', `@${upload}`, '-o', '/dev/null', '-w', '%{http_code}'], 10000);
        const elapsed = Date.now() - started;
        assert.equal(result.stdout, '413', `attempt ${attempt}: curl exit ${result.code} ${result.stderr}`);
        assert.ok(elapsed < 3000, `attempt ${attempt}: took ${elapsed} ms`);
      }
      assert.equal(sidecar.child.exitCode, null);
    });

    test('an app that answers 413 and drops the connection mid-upload: the client gets an answer promptly (413, or 502 app_reset when the reset wins), never a hang', async () => {
      const seen: string[] = [];
      for (let attempt = 0; attempt < 5; attempt += 1) {
        const started = Date.now();
        const result = await curlInbound(sidecar, '/reject-and-close', ['-H', 'Expect: 100-continue', '--data-binary', `@${upload}`, '-o', '/dev/null', '-w', '%{http_code}'], 10000);
        const elapsed = Date.now() - started;
        assert.ok(result.stdout === '413' || result.stdout === '502', `attempt ${attempt}: got ${result.stdout} (curl exit ${result.code} ${result.stderr})`);
        assert.ok(elapsed < 3000, `attempt ${attempt}: took ${elapsed} ms`);
        seen.push(result.stdout);
      }
      for (const line of sidecar.logs().filter((entry) => entry.msg === 'request' && entry.path === '/reject-and-close')) {
        assert.ok(line.status === 413 || line.error === 'app_reset', JSON.stringify(line));
      }
      assert.equal(sidecar.child.exitCode, null);
    });

    test('--request-timeout still applies to requests that carried Expect: 100-continue', async () => {
      const response = await call(sidecar, '/never', { method: 'POST', headers: { expect: '100-continue' }, body: Buffer.from('x'), timeoutMs: 8000 });
      assertSidecarError(response, 504, 'app_timeout');
    });
  });

  describe('timeouts vs refusals: status, log and metric agree', () => {
    let silentApp: RawApp;
    let silentUpstream: HttpsServer;
    let silentUpstreamPort: number;
    let closedPort: number;
    let sidecar: Sidecar;
    let refusedSidecar: Sidecar;
    let localRefused: number;
    let localTimeoutPort: number;

    before(async () => {
      silentApp = await startRawApp(() => undefined);
      const serviceC = await makeService(root, 'service-c');
      silentUpstream = createHttpsServer({ cert: serviceC.leaf.chainPem, key: serviceC.leaf.keyPem, ca: root.certPem, requestCert: true }, () => undefined);
      silentUpstream.listen(0, '127.0.0.1');
      await new Promise((resolve) => silentUpstream.once('listening', resolve));
      silentUpstreamPort = (silentUpstream.address() as AddressInfo).port;
      closedPort = await freePort();
      [localRefused, localTimeoutPort] = [await freePort(), await freePort()];
      sidecar = await startSidecar([
        '--cert-dir', serviceB.certDir, '--app', silentApp.url, '--request-timeout', '1s',
        '--upstream', `${localTimeoutPort}=127.0.0.1:${silentUpstreamPort}`,
        '--upstream', `${localRefused}=127.0.0.1:${closedPort}`,
      ]);
      refusedSidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', `http://127.0.0.1:${closedPort}`, '--outbound', 'off']);
    });
    after(async () => {
      await stopAllSidecars();
      await silentApp?.close();
      silentUpstream?.closeAllConnections();
      silentUpstream?.close();
    });

    const check = async (target: Sidecar, direction: 'inbound' | 'outbound', response: HttpResult, status: number, code: string, path: string) => {
      assertSidecarError(response, status, code);
      const failure = await target.waitForLog((line) => line.msg === 'forwarding failed' && line.path === path, 5000);
      assert.equal(failure.error, code);
      const access = await target.waitForLog((line) => line.msg === 'request' && line.path === path, 5000);
      assert.equal(access.status, status);
      assert.equal(access.error, code);
      assert.ok((await metricValue(target, 'sidecar_errors_total', { direction, error: code })) >= 1, `sidecar_errors_total{${direction},${code}}`);
      assert.ok((await metricValue(target, 'sidecar_requests_total', { direction, code: String(status) })) >= 1);
    };

    test('inbound: app accepts but never answers -> 504 app_timeout after --request-timeout', async () => {
      const started = Date.now();
      const response = await call(sidecar, '/stall');
      const elapsed = Date.now() - started;
      await check(sidecar, 'inbound', response, 504, 'app_timeout', '/stall');
      assert.ok(elapsed >= 900 && elapsed < 4000, `answered after ${elapsed} ms`);
    });

    test('inbound: closed app port -> 502 app_refused', async () => {
      await check(refusedSidecar, 'inbound', await call(refusedSidecar, '/refused'), 502, 'app_refused', '/refused');
    });

    test('outbound: upstream accepts but never answers -> 504 upstream_timeout', async () => {
      const response = await plainRequest({ host: '127.0.0.1', port: localTimeoutPort, path: '/up-stall' });
      await check(sidecar, 'outbound', response, 504, 'upstream_timeout', '/up-stall');
    });

    test('outbound: closed upstream port -> 502 upstream_refused (fixed listener and forward proxy)', async () => {
      await check(sidecar, 'outbound', await plainRequest({ host: '127.0.0.1', port: localRefused, path: '/up-refused' }), 502, 'upstream_refused', '/up-refused');
      const viaProxy = await proxyRequest({ proxy: sidecar.outbound, target: `http://127.0.0.1:${closedPort}/proxy-refused` });
      await check(sidecar, 'outbound', viaProxy, 502, 'upstream_refused', '/proxy-refused');
    });
  });

  describe('unix-socket apps (--app unix:/path.sock)', () => {
    test('requests reach the app with the client Host header', async () => {
      const socketPath = join(await freshDir('unix-host'), 'app.sock');
      const app = await startEchoApp({ unixSocketPath: socketPath });
      const sidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', `unix:${socketPath}`, '--outbound', 'off', '--admin', 'off']);
      try {
        const response = await call(sidecar, '/via-unix', { headers: { host: 'service-b.default.svc:8443' } });
        assert.equal(response.status, 200, response.text);
        const reply = response.json<EchoReply>();
        assert.equal(reply.url, '/via-unix');
        assert.equal(reply.headers.host, 'service-b.default.svc:8443');
      } finally {
        await sidecar.stop();
        await app.close();
      }
    });

    const broken: Array<{ name: string; prepare: (dir: string) => Promise<string> }> = [
      { name: 'socket file missing', prepare: async (dir) => join(dir, 'missing.sock') },
      {
        name: 'path is a regular file, not a socket',
        prepare: async (dir) => {
          await writeFile(join(dir, 'file.sock'), '');
          return join(dir, 'file.sock');
        },
      },
      {
        name: 'a path component is not a directory',
        prepare: async (dir) => {
          await writeFile(join(dir, 'notdir'), '');
          return join(dir, 'notdir', 'app.sock');
        },
      },
    ];
    for (const { name, prepare } of broken) {
      test(`${name}: 502 app_refused, logged, no crash`, async () => {
        const socketPath = await prepare(await freshDir('unix-broken'));
        const sidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', `unix:${socketPath}`, '--outbound', 'off', '--admin', 'off']);
        const response = await call(sidecar, '/broken');
        assertSidecarError(response, 502, 'app_refused');
        const line = await sidecar.waitForLog((entry) => entry.msg === 'forwarding failed' && entry.path === '/broken', 5000);
        assert.equal(line.error, 'app_refused');
        assert.equal(sidecar.child.exitCode, null);
        await sidecar.stop();
      });
    }

    test('socket directory not permitted (chmod 000): 502 app_refused, logged, no crash; the same socket answers once permitted', async (t) => {
      // Root ignores permission bits: as root (CI) the sidecar runs as uid 65534 (setpriv).
      const unavailable = await unprivilegedUnavailable();
      if (unavailable) {
        t.skip(unavailable);
        return;
      }
      const locked = join(await unprivilegedReachableDir(), 'locked');
      await mkdir(locked, { mode: 0o755 });
      const socketPath = join(locked, 'app.sock');
      const app = await startEchoApp({ unixSocketPath: socketPath });
      // Connecting needs write permission on the socket file: only the directory may be what refuses.
      await chmod(socketPath, 0o777);
      const args = ['--app', `unix:${socketPath}`, '--outbound', 'off', '--admin', 'off'];
      // A pooled connection would outlive the chmod, so the control runs on a sidecar of its own.
      const control = await startUnprivilegedSidecar(serviceB.certDir, args);
      const permitted = await call(control, '/permitted');
      await control.stop();
      assert.equal(permitted.status, 200, `as uid ${UNPRIVILEGED_ID}, the socket in a permitted directory must answer: ${permitted.text}`);
      await chmod(locked, 0o000);
      const sidecar = await startUnprivilegedSidecar(serviceB.certDir, args);
      try {
        const response = await call(sidecar, '/broken');
        assertSidecarError(response, 502, 'app_refused');
        const line = await sidecar.waitForLog((entry) => entry.msg === 'forwarding failed' && entry.path === '/broken', 5000);
        assert.equal(line.error, 'app_refused');
        assert.equal(line.errno, 'EACCES', JSON.stringify(line));
        assert.equal(sidecar.child.exitCode, null);
        await chmod(locked, 0o755);
        assert.equal((await call(sidecar, '/permitted-again')).status, 200, 'serving again once the directory is permitted');
      } finally {
        await sidecar.stop();
        await chmod(locked, 0o755);
        await app.close();
      }
    });
  });
});
