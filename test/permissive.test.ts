// Permissive mode (SPEC §2 --mode, §4, §7 /peers and sidecar_inbound_requests_total): mTLS, TLS
// without a client certificate and plaintext share one port during a migration; a bad certificate
// is still refused, identity headers exist only for verified peers, and /peers (over a window the
// request chooses) tells when `--mode strict` is safe. The rolling-upgrade scenario moves three apps
// from plaintext to mTLS through their own sidecars while they keep calling, then rolls the server
// to --mode strict.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { headerCopies, startEchoApp, type EchoApp, type EchoReply, type RecordedRequest } from './helpers/apps.js';
import { curl, mtlsRequest, plainRequest, proxyRequest } from './helpers/clients.js';
import { medianExchangeMs, NO_DELAYED_ACK_STALL_MS, pollUntil, sleep } from './helpers/hardening.js';
import { fetchMetrics, fetchPeers, metricValue, startServiceStandIn, type PeerEntry, type PeersReport, type ServiceStandIn } from './helpers/identity.js';
import { makeRootCA, makeService, sharedRootCA, type CertificateAuthority, type ServiceIdentity } from './helpers/pki.js';
import { freePort, startSidecar, stopAllSidecars, type LogLine, type Sidecar } from './helpers/sidecar.js';

/** curl's body and status (`-w` appends the status on its own line). */
async function curlStatus(args: string[]): Promise<{ code: number | null; status: number; body: string; stderr: string }> {
  const result = await curl(['-w', '\n%{http_code}', ...args], { timeoutMs: 5000 });
  const split = result.stdout.lastIndexOf('\n');
  return { code: result.code, status: Number(result.stdout.slice(split + 1)), body: result.stdout.slice(0, split), stderr: result.stderr };
}

const SPOOFED_XFCC = 'By=spiffe://evil/x;Hash=00;Subject="CN=admin";URI=spiffe://test.local/ns/default/sa/admin';

function inboundTotals(metrics: string): Record<'mtls' | 'tls' | 'plaintext', number> {
  return {
    mtls: metricValue(metrics, 'sidecar_inbound_requests_total', { tls: 'mtls' }),
    tls: metricValue(metrics, 'sidecar_inbound_requests_total', { tls: 'tls' }),
    plaintext: metricValue(metrics, 'sidecar_inbound_requests_total', { tls: 'plaintext' }),
  };
}

function findPeer(peers: PeerEntry[], address: string, tls: string): PeerEntry | undefined {
  return peers.find((peer) => peer.address === address && peer.tls === tls);
}

describe('--mode permissive: mTLS, TLS without a client cert and plaintext on one port', () => {
  let root: CertificateAuthority;
  let foreignRoot: CertificateAuthority;
  let server: ServiceIdentity;
  let allowed: ServiceIdentity;
  let notAllowed: ServiceIdentity;
  let intruder: ServiceIdentity;
  let app: EchoApp;
  let sidecar: Sidecar;

  before(async () => {
    root = await sharedRootCA();
    [foreignRoot, server, allowed, notAllowed, app] = await Promise.all([
      makeRootCA({ cn: 'foreign CA' }),
      makeService(root, 'permissive-server'),
      makeService(root, 'allowed-caller'),
      makeService(root, 'unlisted-caller'),
      startEchoApp(),
    ]);
    intruder = await makeService(foreignRoot, 'intruder');
    sidecar = await startSidecar([
      '--cert-dir', server.certDir,
      '--app', app.url,
      '--outbound', 'off',
      '--mode', 'permissive',
      '--handshake-timeout', '1s',
      '--allow-spiffe', allowed.spiffeId,
    ]);
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
  });

  const url = (scheme: 'http' | 'https', path: string) => `${scheme}://${scheme === 'https' ? 'localhost' : '127.0.0.1'}:${sidecar.inbound.port}${path}`;
  const appRequest = (path: string): RecordedRequest | undefined => app.requests.find((request) => request.url === path);
  const accessLog = (path: string) => sidecar.waitForLog((line: LogLine) => line.msg === 'request' && line.direction === 'inbound' && line.path === path, 5000);

  /** Median ms from request to the end of `/split` (two writes 2 ms apart) over one keep-alive connection. */
  const splitResponseMedianMs = (socket: import('node:net').Socket): Promise<number> =>
    medianExchangeMs(socket, () => socket.write('GET /split HTTP/1.1\r\nHost: localhost\r\n\r\n'), (seen) => seen.includes('\r\n0\r\n\r\n'));

  test('a response streamed in two writes reaches plaintext and mTLS callers without a delayed-ACK stall (Nagle off)', async () => {
    const plainSocket = netConnect({ host: '127.0.0.1', port: sidecar.inbound.port });
    await once(plainSocket, 'connect');
    const mtlsSocket = tlsConnect({ host: '127.0.0.1', port: sidecar.inbound.port, servername: 'localhost', ca: root.certPem, cert: allowed.leaf.chainPem, key: allowed.leaf.keyPem });
    await once(mtlsSocket, 'secureConnect');
    const plain = await splitResponseMedianMs(plainSocket);
    const mtls = await splitResponseMedianMs(mtlsSocket);
    assert.ok(plain < NO_DELAYED_ACK_STALL_MS && mtls < NO_DELAYED_ACK_STALL_MS, `median ms to the end of a two-part response: plaintext ${plain.toFixed(1)}, mTLS ${mtls.toFixed(1)}`);
  });

  test('a start-up warning says permissive mode is on', () => {
    const warning = sidecar.logs().find((line) => /permissive/i.test(String(line.msg)));
    assert.ok(warning, `expected a warning about permissive mode:\n${sidecar.output()}`);
    assert.ok(warning.level === 'warn' || warning.level === 40, `level should be warn: ${JSON.stringify(warning)}`);
  });

  test('plaintext (curl http://) reaches the app with no XFCC, even a spoofed one; labelled plaintext in metrics, /peers and the access log', async () => {
    const metricsBefore = inboundTotals(await fetchMetrics(sidecar));
    const peerBefore = findPeer((await fetchPeers(sidecar)).peers, '127.0.0.1', 'plaintext')?.requests ?? 0;
    const result = await curlStatus(['-H', `X-Forwarded-Client-Cert: ${SPOOFED_XFCC}`, '-H', 'X-Forwarded-For: 203.0.113.9', url('http', '/perm/plain')]);
    assert.equal(result.status, 200, `curl exit ${result.code}: ${result.stderr}\n${result.body}`);
    const seen = appRequest('/perm/plain');
    assert.ok(seen, 'the app should see the plaintext request');
    assert.deepEqual(headerCopies(seen, 'x-forwarded-client-cert'), [], 'no XFCC for a request without a verified peer');
    for (const name of ['x-forwarded-for', 'x-forwarded-proto']) {
      assert.deepEqual(headerCopies(seen, name), [], `no ${name} for an unauthenticated request (SPEC §4), not even the client's`);
    }

    const metricsAfter = inboundTotals(await fetchMetrics(sidecar));
    assert.deepEqual(metricsAfter, { ...metricsBefore, plaintext: metricsBefore.plaintext + 1 });
    const peer = findPeer((await fetchPeers(sidecar)).peers, '127.0.0.1', 'plaintext');
    assert.ok(peer, 'the /peers report lists the plaintext caller');
    assert.equal(peer.identity, 'plaintext');
    assert.equal(peer.requests, peerBefore + 1);
    const line = await accessLog('/perm/plain');
    assert.equal(line.tls, 'plaintext', JSON.stringify(line));
    assert.equal(line.peer, 'plaintext', JSON.stringify(line));
    assert.equal(line.status, 200);
  });

  test('TLS without a client cert (curl --cacert, no --cert) reaches the app with no XFCC; labelled tls everywhere', async () => {
    const metricsBefore = inboundTotals(await fetchMetrics(sidecar));
    const peerBefore = findPeer((await fetchPeers(sidecar)).peers, '127.0.0.1', 'tls')?.requests ?? 0;
    const result = await curlStatus(['--cacert', root.certPath, '-H', `X-Forwarded-Client-Cert: ${SPOOFED_XFCC}`, url('https', '/perm/tls')]);
    assert.equal(result.status, 200, `curl exit ${result.code}: ${result.stderr}\n${result.body}`);
    const seen = appRequest('/perm/tls');
    assert.ok(seen, 'the app should see the TLS request');
    assert.deepEqual(headerCopies(seen, 'x-forwarded-client-cert'), [], 'no XFCC without a client certificate');

    assert.deepEqual(inboundTotals(await fetchMetrics(sidecar)), { ...metricsBefore, tls: metricsBefore.tls + 1 });
    const peer = findPeer((await fetchPeers(sidecar)).peers, '127.0.0.1', 'tls');
    assert.ok(peer, 'the /peers report lists the TLS caller');
    assert.equal(peer.identity, 'no client cert');
    assert.equal(peer.requests, peerBefore + 1);
    const line = await accessLog('/perm/tls');
    assert.equal(line.tls, 'tls', JSON.stringify(line));
  });

  test('valid mTLS (curl --cert) reaches the app with our XFCC; labelled mtls with the SPIFFE ID', async () => {
    const metricsBefore = inboundTotals(await fetchMetrics(sidecar));
    const result = await curlStatus(['--cacert', root.certPath, '--cert', allowed.leaf.certPath, '--key', allowed.leaf.keyPath, '-H', `X-Forwarded-Client-Cert: ${SPOOFED_XFCC}`, url('https', '/perm/mtls')]);
    assert.equal(result.status, 200, `curl exit ${result.code}: ${result.stderr}\n${result.body}`);
    const xfcc = headerCopies(JSON.parse(result.body) as EchoReply, 'x-forwarded-client-cert');
    assert.equal(xfcc.length, 1, JSON.stringify(xfcc));
    assert.ok(xfcc[0]!.includes(`URI=${allowed.spiffeId}`) && !xfcc[0]!.includes('evil'), `XFCC should be ours: ${xfcc[0]}`);

    assert.deepEqual(inboundTotals(await fetchMetrics(sidecar)), { ...metricsBefore, mtls: metricsBefore.mtls + 1 });
    const peer = (await fetchPeers(sidecar)).peers.find((entry) => entry.address === '127.0.0.1' && entry.tls === 'mtls' && entry.identity === allowed.spiffeId);
    assert.ok(peer, 'the /peers report lists the mTLS caller by SPIFFE ID');
    assert.ok(peer.requests >= 1);
    const line = await accessLog('/perm/mtls');
    assert.equal(line.tls, 'mtls', JSON.stringify(line));
    assert.equal(line.peer, allowed.spiffeId, JSON.stringify(line));
  });

  test('the allow-list applies to authenticated peers: an unlisted mTLS peer gets 403 while plaintext still passes', async () => {
    const denied = await curlStatus(['-i', '--cacert', root.certPath, '--cert', notAllowed.leaf.certPath, '--key', notAllowed.leaf.keyPath, url('https', '/perm/unlisted')]);
    assert.equal(denied.status, 403, `curl exit ${denied.code}: ${denied.stderr}\n${denied.body}`);
    assert.match(denied.body, /\r\nx-sidecar-error: peer_not_allowed\r\n/i);
    assert.ok(denied.body.includes(notAllowed.spiffeId), `the 403 body names the peer: ${denied.body}`);
    assert.equal(appRequest('/perm/unlisted'), undefined, 'the app must not see a denied request');
    const plain = await curlStatus([url('http', '/perm/plain-after-deny')]);
    assert.equal(plain.status, 200, plain.body);
  });

  test('a client cert from a foreign CA is refused (10 attempts): connection fails, app never sees it, not counted as a request nor listed in /peers, "TLS handshake failed" cert_untrusted', async () => {
    // Repeated because the failure mode seen is a race: some attempts slip through as "no client cert".
    const attempts = 10;
    // A source address of its own, so /peers can be searched for anything this client left.
    const intruderAddress = '127.0.0.7';
    const fromIntruder = ['--interface', intruderAddress, '--resolve', `localhost:${sidecar.inbound.port}:127.0.0.1`];
    const metricsBefore = await fetchMetrics(sidecar);
    const outcomes: string[] = [];
    for (let attempt = 0; attempt < attempts; attempt += 1) {
      const result = await curlStatus([...fromIntruder, '--cacert', root.certPath, '--cert', intruder.leaf.certPath, '--key', intruder.leaf.keyPath, url('https', `/perm/intruder/${attempt}`)]);
      outcomes.push(`curl exit ${result.code}, status ${result.status}`);
      assert.notEqual(result.code, 0, `attempt ${attempt}: curl should fail; status ${result.status}: ${result.body}`);
    }
    await sleep(300);
    const reachedApp = app.requests.filter((request) => request.url.startsWith('/perm/intruder/')).map((request) => request.url);
    const admitted = sidecar.logs().filter((line) => line.msg === 'request' && String(line.path).startsWith('/perm/intruder/'));
    const line = await sidecar.waitForLog((entry) => entry.msg === 'TLS handshake failed' && entry.reason === 'cert_untrusted', 5000);
    assert.equal(line.direction, 'inbound');
    const metricsAfter = await fetchMetrics(sidecar);
    const errorsBefore = metricValue(metricsBefore, 'sidecar_tls_handshake_errors_total', { direction: 'inbound', reason: 'cert_untrusted' });
    assert.equal(metricValue(metricsAfter, 'sidecar_tls_handshake_errors_total', { direction: 'inbound', reason: 'cert_untrusted' }), errorsBefore + attempts);
    assert.deepEqual(reachedApp, [], `requests from a foreign-CA client reached the app (${outcomes.join('; ')})`);
    assert.deepEqual(
      admitted.map((entry) => JSON.stringify(entry)),
      [],
      'requests from a foreign-CA client must not be admitted as requests (access log lines seen)',
    );
    assert.deepEqual(inboundTotals(metricsAfter), inboundTotals(metricsBefore), 'a refused handshake is not an inbound request');
    const report = await fetchPeers(sidecar);
    assert.deepEqual(report.peers.filter((peer) => peer.address === intruderAddress), [], `/peers lists the refused client: ${JSON.stringify(report.peers)}`);
    assert.deepEqual(report.peers.filter((peer) => peer.identity === intruder.spiffeId), [], 'the identity of a certificate that failed verification is never reported');
    // Control: the same address is listed as soon as it makes a request that is admitted.
    assert.equal((await curlStatus([...fromIntruder, url('http', '/perm/intruder-address-control')])).status, 200);
    const control = (await fetchPeers(sidecar)).peers.filter((peer) => peer.address === intruderAddress);
    assert.deepEqual(control.map((peer) => ({ tls: peer.tls, identity: peer.identity, requests: peer.requests })), [{ tls: 'plaintext', identity: 'plaintext', requests: 1 }]);
  });

  test('a silent client (TCP open, nothing sent) is closed after --handshake-timeout 1s and not listed in /peers', async () => {
    const silentAddress = '127.0.0.8';
    const metricsBefore = await fetchMetrics(sidecar);
    const started = Date.now();
    const closedAfter = await new Promise<number>((resolve, reject) => {
      const socket = netConnect({ port: sidecar.inbound.port, host: sidecar.inbound.host, localAddress: silentAddress });
      const guard = setTimeout(() => {
        socket.destroy();
        reject(new Error('the silent connection was still open after 5 s'));
      }, 5000);
      socket.on('error', () => undefined);
      socket.on('close', () => {
        clearTimeout(guard);
        resolve(Date.now() - started);
      });
    });
    assert.ok(closedAfter >= 800 && closedAfter <= 3000, `closed after ${closedAfter} ms; expected about 1000 ms`);
    const line = await sidecar.waitForLog((entry) => entry.msg === 'TLS handshake failed' && entry.reason === 'handshake_timeout', 3000);
    assert.equal(line.direction, 'inbound');
    const metricsAfter = await fetchMetrics(sidecar);
    assert.deepEqual(inboundTotals(metricsAfter), inboundTotals(metricsBefore), 'a silent client is not an inbound request');
    assert.equal(
      metricValue(metricsAfter, 'sidecar_tls_handshake_errors_total', { direction: 'inbound', reason: 'handshake_timeout' }),
      metricValue(metricsBefore, 'sidecar_tls_handshake_errors_total', { direction: 'inbound', reason: 'handshake_timeout' }) + 1,
    );
    const report = await fetchPeers(sidecar);
    assert.deepEqual(report.peers.filter((peer) => peer.address === silentAddress), [], `/peers lists the silent client: ${JSON.stringify(report.peers)}`);
    // Control: the same address is listed once it sends a request.
    assert.equal((await plainRequest({ host: sidecar.inbound.host, port: sidecar.inbound.port, localAddress: silentAddress, path: '/perm/silent-address-control', timeoutMs: 5000 })).status, 200);
    const control = (await fetchPeers(sidecar)).peers.filter((peer) => peer.address === silentAddress);
    assert.deepEqual(control.map((peer) => ({ tls: peer.tls, requests: peer.requests })), [{ tls: 'plaintext', requests: 1 }]);
  });

  test('/peers counts each kind of caller separately: address, identity, tls and request count', async () => {
    const source = '127.0.0.5';
    const target = { host: sidecar.inbound.host, port: sidecar.inbound.port, localAddress: source, timeoutMs: 5000 };
    for (let index = 0; index < 3; index += 1) assert.equal((await plainRequest({ ...target, path: `/perm/count/plain/${index}` })).status, 200);
    for (let index = 0; index < 2; index += 1) assert.equal((await mtlsRequest({ ...target, path: `/perm/count/tls/${index}`, ca: root.certPem })).status, 200);
    for (let index = 0; index < 4; index += 1) {
      const response = await mtlsRequest({ ...target, path: `/perm/count/mtls/${index}`, ca: root.certPem, cert: allowed.leaf.chainPem, key: allowed.leaf.keyPem });
      assert.equal(response.status, 200, response.text);
    }
    const fromSource = (await fetchPeers(sidecar)).peers.filter((peer) => peer.address === source);
    const summary = fromSource.map((peer) => ({ identity: peer.identity, tls: peer.tls, requests: peer.requests })).sort((a, b) => a.tls.localeCompare(b.tls));
    assert.deepEqual(summary, [
      { identity: allowed.spiffeId, tls: 'mtls', requests: 4 },
      { identity: 'plaintext', tls: 'plaintext', requests: 3 },
      { identity: 'no client cert', tls: 'tls', requests: 2 },
    ]);
  });

  test('/peers?window= lists the callers last seen within that window (the flags\' duration syntax); without it the window is 15 minutes', async () => {
    const source = '127.0.0.9';
    const call = (path: string) => plainRequest({ host: sidecar.inbound.host, port: sidecar.inbound.port, localAddress: source, path, timeoutMs: 5000 });
    const fromSource = (report: PeersReport) => report.peers.filter((peer) => peer.address === source).map((peer) => peer.requests);
    assert.equal((await call('/perm/window/1')).status, 200);
    const wide = await fetchPeers(sidecar, '30s');
    assert.equal(wide.windowSeconds, 30);
    assert.deepEqual(fromSource(wide), [1]);

    await sleep(1300);
    const narrow = await fetchPeers(sidecar, '1s');
    assert.equal(narrow.windowSeconds, 1);
    assert.deepEqual(fromSource(narrow), [], 'a caller last seen 1.3 s ago is outside a 1 s window');
    assert.deepEqual(fromSource(await fetchPeers(sidecar, '500ms')), []);
    const byDefault = await fetchPeers(sidecar);
    assert.equal(byDefault.windowSeconds, 900);
    assert.deepEqual(fromSource(byDefault), [1], 'the default window still lists it');
    for (const [text, seconds] of [['90', 90], ['2m', 120], ['1h', 3600], ['24h', 86400]] as const) {
      const report = await fetchPeers(sidecar, text);
      assert.equal(report.windowSeconds, seconds, `window=${text}`);
      assert.deepEqual(fromSource(report), [1], `window=${text}`);
    }

    // The last request decides: a new one brings the caller back into the short window, with its whole count.
    assert.equal((await call('/perm/window/2')).status, 200);
    assert.deepEqual(fromSource(await fetchPeers(sidecar, '1s')), [2]);
  });

  test('/peers with no caller in the window is not strictSafe: nothing was seen, so nothing is vouched for', async () => {
    const fresh = await startSidecar(['--cert-dir', server.certDir, '--app', app.url, '--outbound', 'off', '--mode', 'permissive']);
    const report = await fetchPeers(fresh);
    assert.deepEqual(report.peers, []);
    assert.equal(report.strictSafe, false, report.verdict);
    assert.match(report.verdict, /no caller in the window/);
    await fresh.stop();
  });

  test('an invalid /peers?window= is 400 with a JSON body naming the parameter', async () => {
    const ask = (query: string) => plainRequest({ host: sidecar.admin.host, port: sidecar.admin.port, path: `/peers?${query}` });
    for (const value of ['abc', '0', '0s', '-5s', '25h', '', '1d', '15 m', '10 s']) {
      const response = await ask(`window=${encodeURIComponent(value)}`);
      assert.equal(response.status, 400, `window=${JSON.stringify(value)}: ${response.text}`);
      assert.match(String(response.headers['content-type']), /^application\/json/);
      const body = response.json<{ error: string; parameter: string; message: string; hint: string }>();
      assert.equal(body.error, 'invalid_parameter');
      assert.equal(body.parameter, 'window');
      assert.ok(body.message.startsWith('window: ') && body.message.includes(JSON.stringify(value)), `the message names the parameter and quotes the value: ${body.message}`);
      assert.ok(body.hint.includes('/peers?window='), body.hint);
    }
    const twice = await ask('window=1s&window=2s');
    assert.equal(twice.status, 400, twice.text);
    assert.equal(twice.json<{ parameter: string }>().parameter, 'window');
    assert.match(twice.json<{ message: string }>().message, /more than once/);
  });
});

describe('/peers?window= with --workers 2: the primary merges the workers\' callers, then applies the window', () => {
  let app: EchoApp;
  let sidecar: Sidecar;

  before(async () => {
    const root = await sharedRootCA();
    let server: ServiceIdentity;
    [server, app] = await Promise.all([makeService(root, 'permissive-workers'), startEchoApp()]);
    sidecar = await startSidecar(['--workers', '2', '--cert-dir', server.certDir, '--app', app.url, '--outbound', 'off', '--mode', 'permissive', '--reload-interval', '0']);
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
  });

  test('a caller served by both workers is one entry with the summed count; a short window drops it, a new request brings it back with its total', async () => {
    const source = '127.0.0.11';
    const call = (path: string) => plainRequest({ host: sidecar.inbound.host, port: sidecar.inbound.port, localAddress: source, path, timeoutMs: 5000 });
    const fromSource = (report: PeersReport) => report.peers.filter((peer) => peer.address === source).map((peer) => ({ tls: peer.tls, requests: peer.requests }));
    for (let index = 0; index < 20; index += 1) assert.equal((await call(`/workers-window/${index}`)).status, 200);
    const servingPids = new Set(sidecar.logs().filter((line) => line.msg === 'request' && String(line.path).startsWith('/workers-window/')).map((line) => line.pid));
    assert.equal(servingPids.size, 2, `both workers should serve the caller, saw pids ${[...servingPids].join(', ')}`);

    const wide = await fetchPeers(sidecar, '1m');
    assert.equal(wide.windowSeconds, 60);
    assert.deepEqual(fromSource(wide), [{ tls: 'plaintext', requests: 20 }]);
    assert.equal(wide.complete, true);

    await sleep(1300);
    assert.deepEqual(fromSource(await fetchPeers(sidecar, '1s')), [], 'last seen 1.3 s ago: outside a 1 s window on every worker');
    assert.deepEqual(fromSource(await fetchPeers(sidecar)), [{ tls: 'plaintext', requests: 20 }], 'the default window still lists it');

    // Only one worker sees this request, but the entry counts everything both have seen.
    assert.equal((await call('/workers-window/last')).status, 200);
    assert.deepEqual(fromSource(await fetchPeers(sidecar, '1s')), [{ tls: 'plaintext', requests: 21 }]);
  });

  test('the primary answers an invalid window with 400 naming the parameter', async () => {
    const response = await plainRequest({ host: sidecar.admin.host, port: sidecar.admin.port, path: '/peers?window=soon' });
    assert.equal(response.status, 400, response.text);
    assert.deepEqual(
      (({ error, parameter }) => ({ error, parameter }))(response.json<{ error: string; parameter: string }>()),
      { error: 'invalid_parameter', parameter: 'window' },
    );
  });
});

describe('rolling upgrade: three apps move from plaintext to mTLS through their own sidecars while calling, then the server is rolled to --mode strict without losing a request', () => {
  // How the server is switched to strict, and why this way.
  //
  // Stopping the permissive sidecar and starting a strict one on the same address cannot lose
  // nothing: from the moment the old process closes its listener (at SIGTERM) until the new one has
  // bound it, the port is closed (Node 20 has no SO_REUSEPORT, so two processes cannot listen on one
  // address:port at once), every connection attempt is refused, and the callers' sidecars answer
  // 502 upstream_refused at once: they fail fast and do not retry, as Envoy does without a retry
  // policy. Making the apps retry would hide exactly what this test is about.
  //
  // A real deployment never switches a server like that: --mode is in the pod spec, so switching it
  // is a rollout. The new pod (same port, its own IP) starts and becomes ready, the Service sends new
  // connections to it, and only then does the old pod get SIGTERM and drain the connections it still
  // holds. That is what this test does: 127.0.0.20 and 127.0.0.21 are the two pods' IPs with the same
  // port, and startServiceStandIn is the Service every caller dials (like kube-proxy it keeps the
  // caller's source address and leaves established connections where they are). The callers' loops
  // retry nothing, and every request that does not come back 200 from the app is a failure.
  const peersWindow = '2s';
  interface Caller {
    name: string;
    /** The app's source address: how /peers tells the plaintext callers apart. */
    address: string;
    identity: ServiceIdentity;
    /** The app's own sidecar, used as its HTTP_PROXY once it has switched. */
    sidecar: Sidecar;
    viaSidecar: boolean;
    succeeded: { plaintext: number; mtls: number };
    failures: string[];
  }

  let app: EchoApp;
  let server: ServiceIdentity;
  let serverPort: number;
  let permissive: Sidecar;
  let service: ServiceStandIn;
  const callers: Caller[] = [];
  let running = true;
  const loops: Array<Promise<void>> = [];

  before(async () => {
    const root = await sharedRootCA();
    let identities: ServiceIdentity[];
    [server, app, serverPort, ...identities] = (await Promise.all([
      makeService(root, 'rolling-server'),
      startEchoApp(),
      freePort(),
      makeService(root, 'rolling-caller-a'),
      makeService(root, 'rolling-caller-b'),
      makeService(root, 'rolling-caller-c'),
    ])) as [ServiceIdentity, EchoApp, number, ...ServiceIdentity[]];
    permissive = await startSidecar(['--cert-dir', server.certDir, '--app', app.url, '--inbound', `127.0.0.20:${serverPort}`, '--outbound', 'off', '--mode', 'permissive']);
    service = await startServiceStandIn(permissive.inbound);
    const callerSidecars = await Promise.all(
      identities.map((identity) =>
        startSidecar(['--cert-dir', identity.certDir, '--inbound', 'off', '--app', 'http://127.0.0.1:9', '--expect-spiffe', `127.0.0.1=${server.spiffeId}`]),
      ),
    );
    ['a', 'b', 'c'].forEach((name, index) => {
      callers.push({ name, address: `127.0.0.${index + 2}`, identity: identities[index]!, sidecar: callerSidecars[index]!, viaSidecar: false, succeeded: { plaintext: 0, mtls: 0 }, failures: [] });
    });
  });

  after(async () => {
    running = false;
    await Promise.all(loops);
    await stopAllSidecars();
    await service?.close();
    await app?.close();
  });

  /**
   * One app's traffic: GET http://<service>/rolling/<name>/<n> every ~20 ms, directly in plaintext,
   * or, once switched, through its sidecar as HTTP_PROXY (the URL stays the same). A success is a
   * 200 from the app for that path, with our XFCC naming the caller over mTLS and none in plaintext.
   */
  async function callLoop(caller: Caller): Promise<void> {
    let sequence = 0;
    while (running) {
      sequence += 1;
      const viaSidecar = caller.viaSidecar;
      const path = `/rolling/${caller.name}/${sequence}`;
      const where = `#${sequence} ${viaSidecar ? 'via its sidecar' : 'plaintext'}`;
      try {
        const response = viaSidecar
          ? await proxyRequest({ proxy: caller.sidecar.outbound, target: `http://127.0.0.1:${service.address.port}${path}`, timeoutMs: 5000 })
          : await plainRequest({ ...service.address, localAddress: caller.address, path, timeoutMs: 5000 });
        const xfcc = response.status === 200 ? headerCopies(response.json<EchoReply>(), 'x-forwarded-client-cert') : [];
        const identified = viaSidecar ? xfcc.length === 1 && xfcc[0]!.includes(`;URI=${caller.identity.spiffeId}`) : xfcc.length === 0;
        if (response.status === 200 && response.json<EchoReply>().url === path && identified) caller.succeeded[viaSidecar ? 'mtls' : 'plaintext'] += 1;
        else caller.failures.push(`${where}: ${response.status} ${response.text.slice(0, 300)}`);
      } catch (error) {
        caller.failures.push(`${where}: ${(error as Error).message}`);
      }
      await sleep(20);
    }
  }

  const plaintextAddresses = (report: PeersReport) => report.peers.filter((peer) => peer.tls === 'plaintext').map((peer) => peer.address).sort();
  const mtlsIdentities = (report: PeersReport) => report.peers.filter((peer) => peer.tls === 'mtls').map((peer) => peer.identity).sort();
  const describeReport = (report: PeersReport) => JSON.stringify({ summary: report.summary, strictSafe: report.strictSafe, peers: report.peers.map(({ address, identity, tls, requests }) => ({ address, identity, tls, requests })) });

  test(`callers switch one by one; /peers?window=${peersWindow} drops each plaintext caller and turns strictSafe; rolling the server to strict loses no request`, async () => {
    for (const caller of callers) loops.push(callLoop(caller));
    try {
      assert.ok(await pollUntil(() => callers.every((caller) => caller.succeeded.plaintext >= 5), Boolean, 10000), `plaintext traffic: ${JSON.stringify(callers.map((caller) => caller.succeeded))}`);
      const start = await fetchPeers(permissive, peersWindow);
      assert.deepEqual(plaintextAddresses(start), callers.map((caller) => caller.address), describeReport(start));
      assert.deepEqual(mtlsIdentities(start), []);
      assert.equal(start.strictSafe, false);

      for (const [index, caller] of callers.entries()) {
        const switchedAt = Date.now();
        caller.viaSidecar = true;
        const switched = callers.slice(0, index + 1);
        const remaining = callers.slice(index + 1);
        const report = await pollUntil(
          () => fetchPeers(permissive, peersWindow),
          (candidate) => !plaintextAddresses(candidate).includes(caller.address) && mtlsIdentities(candidate).includes(caller.identity.spiffeId),
          15000,
        );
        const gone = Date.now() - switchedAt;
        assert.deepEqual(plaintextAddresses(report), remaining.map((other) => other.address), `after ${caller.name} switched: ${describeReport(report)}`);
        assert.deepEqual(mtlsIdentities(report), switched.map((other) => other.identity.spiffeId).sort(), describeReport(report));
        assert.equal(report.summary.plaintext, remaining.length);
        assert.equal(report.strictSafe, remaining.length === 0, `strictSafe with ${remaining.length} plaintext caller(s) left: ${report.verdict}`);
        // It is the window that drops it: the last plaintext request was just before the switch.
        assert.ok(gone >= 1500, `${caller.address} left the ${peersWindow} window ${gone} ms after its switch`);
        // The default window still remembers it, with its count frozen at the plaintext requests it made.
        const remembered = (await fetchPeers(permissive)).peers.filter((peer) => peer.address === caller.address && peer.tls === 'plaintext');
        assert.deepEqual(remembered.map((peer) => peer.requests), [caller.succeeded.plaintext], 'the 15-minute window still lists the switched caller');
      }
      const safe = await fetchPeers(permissive, peersWindow);
      assert.equal(safe.strictSafe, true, describeReport(safe));
      assert.equal(safe.complete, true);
      assert.match(safe.verdict, /--mode strict is safe/);

      // The rollout (see the comment at the top): the strict replica first, then the Service, then SIGTERM to the old one.
      const strict = await startSidecar(['--cert-dir', server.certDir, '--app', app.url, '--inbound', `127.0.0.21:${serverPort}`, '--outbound', 'off', '--mode', 'strict']);
      assert.equal((await plainRequest({ ...strict.admin, path: '/readyz' })).status, 200);
      const beforeRoll = callers.map((caller) => caller.succeeded.mtls);
      service.route(strict.inbound);
      assert.equal(await permissive.stop(15000), 0, `the permissive sidecar drains and exits 0:\n${permissive.output().slice(-2000)}`);
      const afterRoll = await pollUntil(() => callers.every((caller, index) => caller.succeeded.mtls >= beforeRoll[index]! + 10), Boolean, 10000);
      assert.ok(afterRoll, `traffic after the roll: ${JSON.stringify(callers.map((caller, index) => caller.succeeded.mtls - beforeRoll[index]!))} more mTLS successes; failures: ${JSON.stringify(callers.map((caller) => caller.failures.slice(0, 3)))}`);

      const strictReport = await fetchPeers(strict, peersWindow);
      assert.deepEqual(mtlsIdentities(strictReport), callers.map((caller) => caller.identity.spiffeId).sort(), describeReport(strictReport));
      assert.deepEqual(plaintextAddresses(strictReport), []);
      assert.equal(strictReport.strictSafe, true);
      // The server really is strict now: plaintext through the same Service is refused and not listed.
      await assert.rejects(plainRequest({ ...service.address, localAddress: '127.0.0.12', path: '/rolling/plaintext-to-strict', timeoutMs: 3000 }));
      assert.equal((await fetchPeers(strict)).peers.some((peer) => peer.address === '127.0.0.12'), false);
    } finally {
      running = false;
      await Promise.all(loops);
    }

    for (const caller of callers) {
      assert.deepEqual(caller.failures, [], `caller ${caller.name}: requests that failed`);
      assert.ok(caller.succeeded.mtls > 20, `caller ${caller.name} made ${caller.succeeded.mtls} mTLS requests`);
    }
  });
});
