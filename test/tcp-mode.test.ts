// TCP mode (SPEC §2 --protocol tcp): inbound terminates mTLS, checks the allow-list right after the
// handshake and pipes bytes to a tcp:// app; each outbound --upstream listener originates verified
// mTLS (name, SPIFFE pin, trust) and pipes bytes. Half-close, large streams, backpressure, resets,
// session resumption, rotation, permissive mode and drain, all against the real process and a raw
// TCP app.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { sha256Hex, startTlsServer, type TlsServerReply, type TlsTestServer } from './helpers/apps.js';
import { medianExchangeMs, NO_DELAYED_ACK_STALL_MS, rssKiB, sleep } from './helpers/hardening.js';
import { fetchMetrics, metricValue } from './helpers/identity.js';
import { exitWithin, forwardingFailedLine, handshakeFailedLine, tlsAttempt } from './helpers/operability.js';
import {
  freshDir, issueLeaf, kubernetesAtomicWrite, layoutFiles, makeRootCA, makeService, normalizeSerial, sharedRootCA, spiffeIdOf,
  type CertificateAuthority, type Leaf, type ServiceIdentity,
} from './helpers/pki.js';
import { loadedLine, waitForNextLog } from './helpers/rotation.js';
import { freePort, startSidecar, stopAllSidecars, type LogLine, type Sidecar } from './helpers/sidecar.js';
import { collect, connectMtls, connectPlain, modeLine, readThrottled, readUntilEnd, startTcpApp, type Summary, type TcpApp } from './helpers/tcp.js';

const MiB = 1024 * 1024;

/** Matches the per-connection "connection" log line of `direction`. */
const connectionLine = (direction: 'inbound' | 'outbound') => (line: LogLine) => line.msg === 'connection' && line.direction === direction;

async function waitUntil(what: string, condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const started = Date.now();
  while (!condition()) {
    if (Date.now() - started > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting until ${what}`);
    await sleep(20);
  }
}

/** Sends `summary` + payload, half-closes, and returns the app's summary (which it sends after our FIN). */
async function summaryRoundTrip(socket: import('node:net').Socket, payload: Buffer): Promise<{ summary: Summary; ended: boolean; closed: boolean }> {
  const reading = collect(socket);
  socket.write(modeLine('summary'));
  socket.end(payload);
  const result = await reading;
  return { summary: JSON.parse(result.data.toString('utf8') || 'null') as Summary, ended: result.ended, closed: result.closed };
}

/** Median ms from a write to the second half of the `split` app's two-write answer. */
async function splitReplyMedianMs(socket: import('node:net').Socket): Promise<number> {
  socket.write(modeLine('split'));
  return medianExchangeMs(socket, () => socket.write('ping'), (seen) => seen.includes('b'));
}

describe('--protocol tcp', () => {
  let root: CertificateAuthority;
  let foreignRoot: CertificateAuthority;
  let serverB: ServiceIdentity;
  let callerA: ServiceIdentity;
  let client: ServiceIdentity;
  let allowedClient: ServiceIdentity;
  let intruder: ServiceIdentity;
  let app: TcpApp;
  /** Inbound TCP-mode sidecar in front of the app. */
  let sidecarB: Sidecar;
  /** Inbound TCP-mode sidecar with --allow-spiffe for `allowedClient` only. */
  let sidecarPolicy: Sidecar;
  /** Outbound TCP-mode sidecar whose --upstream listeners lead to B (and to bad upstreams). */
  let sidecarA: Sidecar;
  /** Permissive inbound TCP-mode sidecar. */
  let sidecarPermissive: Sidecar;
  let foreignUpstream: TlsTestServer;
  let ca: string;
  const ports = { plain: 0, pinned: 0, mispinned: 0, untrusted: 0, refused: 0, resumption: 0, refusedTarget: 0 };

  before(async () => {
    [root, foreignRoot, app] = await Promise.all([sharedRootCA(), makeRootCA({ cn: 'tcp-mode foreign CA' }), startTcpApp()]);
    ca = root.certPem;
    let foreignServer: ServiceIdentity;
    [serverB, callerA, client, allowedClient, intruder, foreignServer] = await Promise.all([
      makeService(root, 'tcp-b'),
      makeService(root, 'tcp-a'),
      makeService(root, 'tcp-client'),
      makeService(root, 'tcp-allowed'),
      makeService(foreignRoot, 'tcp-intruder'),
      makeService(foreignRoot, 'tcp-foreign-upstream'),
    ]);
    foreignUpstream = await startTlsServer({ certPem: foreignServer.leaf.chainPem, keyPem: foreignServer.leaf.keyPem });
    for (const name of Object.keys(ports) as Array<keyof typeof ports>) ports[name] = await freePort();
    const inboundTcp = ['--protocol', 'tcp', '--app', app.url, '--outbound', 'off'];
    [sidecarB, sidecarPolicy, sidecarPermissive] = await Promise.all([
      startSidecar(['--cert-dir', serverB.certDir, ...inboundTcp]),
      startSidecar(['--cert-dir', serverB.certDir, ...inboundTcp, '--allow-spiffe', allowedClient.spiffeId]),
      startSidecar(['--cert-dir', serverB.certDir, ...inboundTcp, '--mode', 'permissive']),
    ]);
    const b = `localhost:${sidecarB.inbound.port}`;
    sidecarA = await startSidecar([
      '--cert-dir', callerA.certDir, '--protocol', 'tcp', '--inbound', 'off',
      '--upstream', `${ports.plain}=${b}`,
      '--upstream', `${ports.pinned}=${b}@${serverB.spiffeId}`,
      '--upstream', `${ports.mispinned}=${b}@${spiffeIdOf('someone-else')}`,
      '--upstream', `${ports.untrusted}=localhost:${foreignUpstream.port}`,
      '--upstream', `${ports.refused}=localhost:${ports.refusedTarget}`,
      '--upstream', `${ports.resumption}=${b}`,
    ]);
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
    await foreignUpstream?.close();
  });

  describe('inbound', () => {
    test('an answer the app writes in two parts reaches the peer without a delayed-ACK stall (Nagle off)', async () => {
      const median = await splitReplyMedianMs(await connectMtls(sidecarB.inbound, client.leaf, ca));
      assert.ok(median < NO_DELAYED_ACK_STALL_MS, `median ${median.toFixed(1)} ms from request to the second part`);
    });

    test('a client that half-closes still receives the whole reply the app sends after its FIN', async () => {
      const socket = await connectMtls(sidecarB.inbound, client.leaf, ca);
      const payload = randomBytes(256 * 1024);
      const { summary, ended, closed } = await summaryRoundTrip(socket, payload);
      assert.deepEqual(summary, { bytes: payload.length, sha256: sha256Hex(payload) }, sidecarB.output().slice(-3000));
      assert.equal(ended, true, 'the reply ends with a FIN');
      assert.equal(closed, true);
    });

    test('the app half-closes first and still receives what the client sends after that FIN', async () => {
      const index = app.connections.length;
      const socket = await connectMtls(sidecarB.inbound, client.leaf, ca);
      socket.write(modeLine('ends-first'));
      const beforeFin = await readUntilEnd(socket);
      assert.equal(beforeFin.toString(), 'app-bye\n');
      const closing = collect(socket);
      socket.write('after-fin-1;');
      await sleep(100);
      socket.end('after-fin-2');
      const rest = await closing;
      assert.equal(rest.closed, true, 'the connection closes once both sides ended');
      assert.equal(rest.data.length, 0);
      const seen = app.connections[index];
      assert.ok(seen, 'the app got the connection');
      await waitUntil('the app saw the client FIN', () => seen.ended);
      assert.equal(Buffer.concat(seen.received).toString(), 'after-fin-1;after-fin-2');
    });

    test('a 10 MB stream passes through unchanged in both directions', async () => {
      const index = app.connections.length;
      const socket = await connectMtls(sidecarB.inbound, client.leaf, ca);
      const payload = randomBytes(10 * MiB);
      const reading = collect(socket, 20000);
      socket.write(modeLine('echo'));
      socket.end(payload);
      const echoed = await reading;
      assert.equal(echoed.closed, true, `the echo completes; error ${echoed.error}`);
      assert.equal(echoed.data.length, payload.length, 'bytes back');
      assert.equal(sha256Hex(echoed.data), sha256Hex(payload), 'sha256 back');
      assert.equal(app.connections[index]?.receivedSha256, sha256Hex(payload), 'sha256 the app received');
    });

    test('a slow reader holds the sidecar back: RSS stays bounded while 100 MB stream to it', async (t) => {
      const pid = sidecarB.child.pid!;
      const total = 100 * MiB;
      const index = app.connections.length;
      const baseline = await rssKiB(pid);
      let peak = baseline;
      const sampler = setInterval(() => void rssKiB(pid).then((value) => (peak = Math.max(peak, value)), () => undefined), 50);
      try {
        const socket = await connectMtls(sidecarB.inbound, client.leaf, ca);
        const reading = readThrottled(socket, 16 * MiB, 15000);
        socket.write(modeLine('source', total));
        const read = await reading;
        assert.equal(read.ended, true, `all ${total} bytes arrive within 15 s (got ${read.length} in ${read.elapsedMs} ms)`);
        assert.equal(read.length, total);
        const seen = app.connections[index];
        await waitUntil('the app finished sending', () => seen?.sentSha256 !== undefined);
        assert.equal(read.sha256, seen?.sentSha256, 'sha256 of what the app sent');
      } finally {
        clearInterval(sampler);
      }
      const growthMiB = (peak - baseline) / 1024;
      t.diagnostic(`sidecar RSS ${baseline} KiB before, peak ${peak} KiB while streaming (+${growthMiB.toFixed(1)} MiB)`);
      assert.ok(growthMiB < 50, `sidecar RSS grew by ${growthMiB.toFixed(1)} MiB (from ${baseline} KiB to ${peak} KiB) while a slow reader took 100 MB`);
    });

    test('an app that resets its connection closes the peer connection too', async () => {
      const mark = sidecarB.logs().length;
      const socket = await connectMtls(sidecarB.inbound, client.leaf, ca);
      const reading = collect(socket, 5000);
      socket.write(modeLine('reset'));
      const result = await reading;
      assert.equal(result.closed, true, 'the peer connection is closed, not left hanging');
      assert.equal(result.data.length, 0);
      const line = await waitForNextLog(sidecarB, (entry) => connectionLine('inbound')(entry) && entry.bytesIn === modeLine('reset').length, mark);
      assert.equal(line.peer, client.spiffeId);
      assert.ok(line.error, `the connection line records the reset: ${JSON.stringify(line)}`);
    });

    test('the connection line names the peer and counts the bytes both ways', async () => {
      const mark = sidecarB.logs().length;
      const socket = await connectMtls(sidecarB.inbound, client.leaf, ca);
      const payload = randomBytes(1000);
      const { summary } = await summaryRoundTrip(socket, payload);
      const reply = Buffer.byteLength(JSON.stringify(summary));
      const line = await waitForNextLog(sidecarB, (entry) => connectionLine('inbound')(entry) && entry.bytesOut === reply, mark);
      assert.equal(line.peer, client.spiffeId);
      assert.equal(line.tls, 'mtls');
      assert.equal(line.bytesIn, modeLine('summary').length + payload.length);
      assert.equal(line.bytesOut, reply);
      assert.ok(metricValue(await fetchMetrics(sidecarB), 'sidecar_tcp_connections_total', { direction: 'inbound', result: 'ok' }) >= 1);
    });
  });

  describe('inbound policy', () => {
    test('peer without client cert is refused at handshake', async () => {
      const before = app.connections.length;
      const attempt = await tlsAttempt({ ...sidecarB.inbound, ca });
      assert.equal(attempt.response, '', 'nothing reaches the app or comes back');
      assert.ok(attempt.error, 'the client sees the handshake fail');
      await sidecarB.waitForLog(handshakeFailedLine('peer_cert_missing', attempt.localPort), 5000);
      assert.equal(app.connections.length, before, 'the app never got a connection');
    });

    test('a certificate from a foreign CA is refused at handshake', async () => {
      const before = app.connections.length;
      const attempt = await tlsAttempt({ ...sidecarB.inbound, ca, cert: intruder.leaf.chainPem, key: intruder.leaf.keyPem });
      assert.equal(attempt.response, '');
      await sidecarB.waitForLog(handshakeFailedLine('cert_untrusted', attempt.localPort), 5000);
      assert.equal(app.connections.length, before, 'the app never got a connection');
    });

    test('a peer not in --allow-spiffe is closed right after the handshake and the app never sees it', async () => {
      const before = app.connections.length;
      const deniedBefore = metricValue(await fetchMetrics(sidecarPolicy), 'sidecar_authz_denied_total');
      const socket = await connectMtls(sidecarPolicy.inbound, client.leaf, ca);
      const reading = collect(socket, 5000);
      socket.write(modeLine('echo'));
      socket.write('must not arrive');
      const result = await reading;
      assert.equal(result.closed, true, 'the sidecar closes the connection');
      assert.equal(result.data.length, 0, 'nothing comes back');
      const denied = await sidecarPolicy.waitForLog((line) => line.msg === 'peer not allowed', 5000);
      assert.equal(denied.peer, client.spiffeId);
      assert.equal(metricValue(await fetchMetrics(sidecarPolicy), 'sidecar_authz_denied_total'), deniedBefore + 1);
      await sleep(200);
      assert.equal(app.connections.length, before, 'the app never got a connection');
    });

    test('a peer in --allow-spiffe is piped to the app', async () => {
      const socket = await connectMtls(sidecarPolicy.inbound, allowedClient.leaf, ca);
      const payload = randomBytes(4096);
      const { summary } = await summaryRoundTrip(socket, payload);
      assert.deepEqual(summary, { bytes: payload.length, sha256: sha256Hex(payload) });
    });
  });

  describe('outbound --upstream listeners', () => {
    test('bytes round-trip through a TCP-mode pair, and the inbound side names the caller', async () => {
      const markB = sidecarB.logs().length;
      const payload = randomBytes(MiB);
      const { summary, ended } = await summaryRoundTrip(await connectPlain(sidecarA.upstream(ports.plain)), payload);
      assert.deepEqual(summary, { bytes: payload.length, sha256: sha256Hex(payload) }, sidecarA.output().slice(-3000));
      assert.equal(ended, true);
      const inboundLine = await waitForNextLog(sidecarB, connectionLine('inbound'), markB);
      assert.equal(inboundLine.peer, callerA.spiffeId);
      const outboundLine = await sidecarA.waitForLog(connectionLine('outbound'), 5000);
      assert.equal(outboundLine.upstream, `localhost:${sidecarB.inbound.port}`);
      assert.equal(metricValue(await fetchMetrics(sidecarA), 'sidecar_tcp_connections_total', { direction: 'outbound', result: 'ok' }) >= 1, true);
    });

    test('an app connection closed without a byte while the upstream handshakes ends the whole path (nothing left half-open)', async () => {
      const markA = sidecarA.logs().length;
      const before = app.connections.length;
      const socket = await connectPlain(sidecarA.upstream(ports.plain));
      const reading = collect(socket, 5000);
      socket.end();
      const result = await reading;
      assert.equal(result.closed, true, 'the app connection is closed');
      assert.equal(result.data.length, 0);
      const line = await waitForNextLog(sidecarA, connectionLine('outbound'), markA);
      assert.equal(line.bytesOut, 0);
      await waitUntil('the app saw the FIN and the close', () => app.connections.slice(before).some((connection) => connection.ended && connection.closed));
    });

    test('an answer the app writes in two parts crosses the pair without a delayed-ACK stall (Nagle off)', async () => {
      const median = await splitReplyMedianMs(await connectPlain(sidecarA.upstream(ports.plain)));
      assert.ok(median < NO_DELAYED_ACK_STALL_MS, `median ${median.toFixed(1)} ms from request to the second part`);
    });

    test('an @spiffe:// pin that matches the upstream URI SAN connects', async () => {
      const payload = randomBytes(2048);
      const { summary } = await summaryRoundTrip(await connectPlain(sidecarA.upstream(ports.pinned)), payload);
      assert.deepEqual(summary, { bytes: payload.length, sha256: sha256Hex(payload) });
    });

    test('an @spiffe:// pin mismatch closes the app connection and logs upstream_identity_mismatch', async () => {
      const before = app.connections.length;
      const socket = await connectPlain(sidecarA.upstream(ports.mispinned));
      const reading = collect(socket, 5000);
      socket.write(modeLine('echo'));
      socket.write('secret for the pinned peer only');
      const result = await reading;
      assert.equal(result.closed, true, 'the app connection is closed');
      assert.equal(result.data.length, 0);
      const line = await sidecarA.waitForLog(forwardingFailedLine('upstream_identity_mismatch', 'outbound', sidecarB.inbound.port), 5000);
      assert.match(String(line.hint ?? ''), /.+/, 'the line carries a hint');
      await sleep(200);
      const reached = app.connections.slice(before).filter((connection) => connection.receivedLength > 0 || connection.mode !== undefined);
      assert.equal(reached.length, 0, 'no byte of the app reached the mismatched upstream');
    });

    test('an upstream with a certificate from an untrusted CA is refused: upstream_cert_untrusted', async () => {
      const socket = await connectPlain(sidecarA.upstream(ports.untrusted));
      const reading = collect(socket, 5000);
      socket.write('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n');
      const result = await reading;
      assert.equal(result.closed, true);
      assert.equal(result.data.length, 0);
      await sidecarA.waitForLog(forwardingFailedLine('upstream_cert_untrusted', 'outbound', foreignUpstream.port), 5000);
      assert.equal(foreignUpstream.requests.length, 0, 'the untrusted upstream got no request');
    });

    test('a refused upstream port closes the app connection: upstream_refused', async () => {
      const socket = await connectPlain(sidecarA.upstream(ports.refused));
      const result = await collect(socket, 5000);
      assert.equal(result.closed, true);
      assert.equal(result.data.length, 0);
      await sidecarA.waitForLog(forwardingFailedLine('upstream_refused', 'outbound', ports.refusedTarget), 5000);
    });

    test('the second connection to the same upstream resumes the TLS session', async () => {
      const outcomes: LogLine[] = [];
      const inbound: LogLine[] = [];
      for (let round = 0; round < 2; round += 1) {
        const markA = sidecarA.logs().length;
        const markB = sidecarB.logs().length;
        const payload = randomBytes(1024);
        const { summary } = await summaryRoundTrip(await connectPlain(sidecarA.upstream(ports.resumption)), payload);
        assert.deepEqual(summary, { bytes: payload.length, sha256: sha256Hex(payload) }, `round ${round}`);
        outcomes.push(await waitForNextLog(sidecarA, connectionLine('outbound'), markA));
        inbound.push(await waitForNextLog(sidecarB, connectionLine('inbound'), markB));
      }
      assert.equal(outcomes[0]?.resumed, false, 'the first connection is a full handshake');
      assert.equal(outcomes[1]?.resumed, true, `the second connection resumes: ${JSON.stringify(outcomes[1])}`);
      assert.equal(inbound[1]?.peer, callerA.spiffeId, 'the resumed session still carries the caller identity');
    });
  });

  describe('outbound certificate rotation', () => {
    let upstream: TlsTestServer;
    let certDir: string;
    let rotating: Sidecar;
    let first: Leaf;
    let second: Leaf;
    let localPort: number;

    before(async () => {
      let upstreamLeaf: Leaf;
      [upstreamLeaf, first, second, certDir, localPort] = await Promise.all([
        issueLeaf(root, { cn: 'tcp-rotation-upstream', dns: ['localhost'], ips: ['127.0.0.1'] }),
        issueLeaf(root, { cn: 'tcp-rotating-1', dns: ['localhost'], uris: [spiffeIdOf('tcp-rotating')] }),
        issueLeaf(root, { cn: 'tcp-rotating-2', dns: ['localhost'], uris: [spiffeIdOf('tcp-rotating')] }),
        freshDir('tcp-rotating'),
        freePort(),
      ]);
      upstream = await startTlsServer({ certPem: upstreamLeaf.chainPem, keyPem: upstreamLeaf.keyPem, ca: root.certPem, requireClientCert: true });
      await kubernetesAtomicWrite(certDir, layoutFiles('kubernetes', { chainPem: first.chainPem, keyPem: first.keyPem, bundlePem: root.certPem }));
      rotating = await startSidecar(['--cert-dir', certDir, '--protocol', 'tcp', '--inbound', 'off', '--upstream', `${localPort}=localhost:${upstream.port}`]);
    });

    after(async () => {
      await rotating?.stop();
      await upstream?.close();
    });

    /** One HTTP/1.1 request over the piped listener: the client serial the upstream saw, and the connection line. */
    const clientSerialSeen = async (): Promise<{ serial: string; resumed: unknown }> => {
      const mark = rotating.logs().length;
      const socket = await connectPlain(rotating.upstream(localPort));
      const reading = collect(socket, 5000);
      socket.write('GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
      const text = (await reading).data.toString('utf8');
      const body = text.slice(text.indexOf('\r\n\r\n') + 4);
      assert.match(text, /^HTTP\/1\.1 200/, `upstream answer: ${text}\n${rotating.output().slice(-2000)}`);
      const reply = JSON.parse(body) as TlsServerReply;
      const line = await waitForNextLog(rotating, connectionLine('outbound'), mark);
      return { serial: normalizeSerial(reply.clientSerial ?? ''), resumed: line.resumed };
    };

    test('after a kubernetes-style certificate swap the upstream sees the new client certificate', async () => {
      const beforeRotation = [await clientSerialSeen(), await clientSerialSeen()];
      assert.deepEqual(beforeRotation.map((seen) => seen.serial), [normalizeSerial(first.serial), normalizeSerial(first.serial)]);
      assert.equal(beforeRotation[1]?.resumed, true, 'resumption works before the rotation');

      const mark = rotating.logs().length;
      await kubernetesAtomicWrite(certDir, layoutFiles('kubernetes', { chainPem: second.chainPem, keyPem: second.keyPem, bundlePem: root.certPem }));
      await waitForNextLog(rotating, loadedLine(second.serial), mark, 10000);

      const afterRotation = await clientSerialSeen();
      assert.equal(afterRotation.serial, normalizeSerial(second.serial), 'the first connection after the swap presents the new certificate');
      assert.equal(afterRotation.resumed, false, 'a session of the old certificate is not resumed');
      const later = await clientSerialSeen();
      assert.equal(later.serial, normalizeSerial(second.serial));
      assert.equal(later.resumed, true, 'resumption works again with the new certificate');
    });
  });

  describe('--mode permissive', () => {
    test('plaintext bytes and mTLS both reach the app on one port', async () => {
      const plainPayload = randomBytes(8192);
      const plain = await summaryRoundTrip(await connectPlain(sidecarPermissive.inbound), plainPayload);
      assert.deepEqual(plain.summary, { bytes: plainPayload.length, sha256: sha256Hex(plainPayload) }, 'plaintext');
      const mtlsPayload = randomBytes(8192);
      const mtls = await summaryRoundTrip(await connectMtls(sidecarPermissive.inbound, client.leaf, ca), mtlsPayload);
      assert.deepEqual(mtls.summary, { bytes: mtlsPayload.length, sha256: sha256Hex(mtlsPayload) }, 'mTLS');
      await waitUntil('both connection lines are logged', () => sidecarPermissive.logs().filter(connectionLine('inbound')).length >= 2);
      const lines = sidecarPermissive.logs().filter(connectionLine('inbound'));
      assert.deepEqual(lines.map((line) => [line.tls, line.peer]), [['plaintext', 'plaintext'], ['mtls', client.spiffeId]]);
    });

    test('answers written in two parts reach plaintext and mTLS peers without a delayed-ACK stall (Nagle off)', async () => {
      const plain = await splitReplyMedianMs(await connectPlain(sidecarPermissive.inbound));
      const mtls = await splitReplyMedianMs(await connectMtls(sidecarPermissive.inbound, client.leaf, ca));
      assert.ok(plain < NO_DELAYED_ACK_STALL_MS && mtls < NO_DELAYED_ACK_STALL_MS, `median ms from request to the second part: plaintext ${plain.toFixed(1)}, mTLS ${mtls.toFixed(1)}`);
    });

    test('a certificate from a foreign CA is refused in permissive mode too', async () => {
      const before = app.connections.length;
      const attempt = await tlsAttempt({ ...sidecarPermissive.inbound, ca, cert: intruder.leaf.chainPem, key: intruder.leaf.keyPem });
      assert.equal(attempt.response, '');
      await sidecarPermissive.waitForLog(handshakeFailedLine('cert_untrusted', attempt.localPort), 5000);
      await sleep(200);
      const reached = app.connections.slice(before).map(({ mode, receivedLength, ended }) => ({ mode, receivedLength, ended }));
      assert.deepEqual(reached, [], `the app never got a connection; sidecar log:\n${sidecarPermissive.output().slice(-1500)}`);
    });
  });

  describe('clients that never finish the TLS handshake', () => {
    for (const mode of ['strict', 'permissive']) {
      test(`${mode}: silent and half-ClientHello connections are closed after --handshake-timeout, freeing --max-connections slots; SIGTERM then exits 0`, async () => {
        const guarded = await startSidecar([
          '--cert-dir', serverB.certDir, '--protocol', 'tcp', '--app', app.url, '--outbound', 'off', '--mode', mode,
          '--handshake-timeout', '1s', '--max-connections', '3', '--drain-timeout', '5s',
        ]);
        const stalled = await Promise.all([connectPlain(guarded.inbound), connectPlain(guarded.inbound), connectPlain(guarded.inbound)]);
        // One says nothing, two send the first bytes of a ClientHello (record header) and stop.
        stalled[1]!.write(Buffer.from([0x16, 0x03, 0x01]));
        stalled[2]!.write(Buffer.from([0x16, 0x03, 0x01, 0x00]));
        const closed = await Promise.all(stalled.map((socket) => collect(socket, 4000)));
        assert.deepEqual(closed.map((result) => result.closed), [true, true, true], 'every stalled connection is closed by the sidecar');
        for (const result of closed) assert.ok(result.elapsedMs < 3500, `closed after ${result.elapsedMs} ms (--handshake-timeout 1s)`);
        const line = await guarded.waitForLog((entry) => entry.msg === 'TLS handshake failed' && entry.reason === 'handshake_timeout', 3000);
        assert.equal(line.direction, 'inbound');
        // The slots are free again: a real peer gets through.
        const { summary } = await summaryRoundTrip(await connectMtls(guarded.inbound, client.leaf, ca), randomBytes(10));
        assert.equal(summary.bytes, 10);
        const started = Date.now();
        guarded.signal('SIGTERM');
        assert.equal(await exitWithin(guarded, 4000), 0, guarded.output().slice(-2000));
        assert.ok(Date.now() - started < 2000, 'nothing left to drain');
      });
    }
  });

  describe('drain', () => {
    test('SIGTERM with an open piped connection exits within --drain-timeout, cutting it (exit 1)', async () => {
      const draining = await startSidecar(['--cert-dir', serverB.certDir, '--protocol', 'tcp', '--app', app.url, '--outbound', 'off', '--drain-timeout', '1s']);
      const socket = await connectMtls(draining.inbound, client.leaf, ca);
      socket.write(modeLine('echo'));
      socket.write('still open');
      const [echoed] = (await once(socket, 'data')) as [Buffer];
      assert.equal(echoed.toString(), 'still open', 'the connection is piped before SIGTERM');
      const closing = collect(socket, 5000);
      const started = Date.now();
      draining.signal('SIGTERM');
      const code = await exitWithin(draining, 4000);
      const elapsed = Date.now() - started;
      assert.equal(code, 1, draining.output().slice(-2000));
      assert.ok(elapsed >= 900 && elapsed < 3000, `exited ${elapsed} ms after SIGTERM with --drain-timeout 1s`);
      const cut = draining.logs().find((line) => line.cutConnections !== undefined);
      assert.equal(cut?.cutConnections, 1, draining.output().slice(-2000));
      const result = await closing;
      assert.equal(result.closed, true, 'the open connection is cut');
    });

    test('SIGTERM with no open connection exits 0', async () => {
      const idle = await startSidecar(['--cert-dir', serverB.certDir, '--protocol', 'tcp', '--app', app.url, '--outbound', 'off', '--drain-timeout', '5s']);
      const payload = randomBytes(100);
      const { summary } = await summaryRoundTrip(await connectMtls(idle.inbound, client.leaf, ca), payload);
      assert.equal(summary.bytes, 100);
      const started = Date.now();
      idle.signal('SIGTERM');
      assert.equal(await exitWithin(idle, 4000), 0, idle.output().slice(-2000));
      assert.ok(Date.now() - started < 2000, 'no wait for the drain timeout when nothing is open');
    });
  });
});
