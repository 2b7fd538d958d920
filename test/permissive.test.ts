// Permissive mode (SPEC §2 --mode, §4, §7 /peers and sidecar_inbound_requests_total): mTLS, TLS
// without a client certificate and plaintext share one port during a migration; a bad certificate
// is still refused, identity headers exist only for verified peers, and /peers tells when
// `--mode strict` is safe. The rolling-upgrade scenario moves three callers to mTLS and then to a
// strict sidecar while traffic runs.
import assert from 'node:assert/strict';
import { connect as netConnect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { headerCopies, startEchoApp, type EchoApp, type EchoReply, type RecordedRequest } from './helpers/apps.js';
import { curl, mtlsRequest, plainRequest } from './helpers/clients.js';
import { fetchMetrics, fetchPeers, metricValue, type PeerEntry } from './helpers/identity.js';
import { makeRootCA, makeService, sharedRootCA, type CertificateAuthority, type ServiceIdentity } from './helpers/pki.js';
import { startSidecar, stopAllSidecars, type LogLine, type Sidecar } from './helpers/sidecar.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitUntil(what: string, condition: () => Promise<boolean> | boolean, timeoutMs = 5000): Promise<void> {
  const started = Date.now();
  while (Date.now() - started < timeoutMs) {
    if (await condition()) return;
    await sleep(50);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting until ${what}`);
}

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

  test('a client cert from a foreign CA is refused (10 attempts): connection fails, app never sees it, not counted as a request, "TLS handshake failed" cert_untrusted', async () => {
    // Repeated because the failure mode seen is a race: some attempts slip through as "no client cert".
    const attempts = 10;
    const metricsBefore = await fetchMetrics(sidecar);
    const outcomes: string[] = [];
    for (let attempt = 0; attempt < attempts; attempt += 1) {
      const result = await curlStatus(['--cacert', root.certPath, '--cert', intruder.leaf.certPath, '--key', intruder.leaf.keyPath, url('https', `/perm/intruder/${attempt}`)]);
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
  });

  test('a silent client (TCP open, nothing sent) is closed after --handshake-timeout 1s', async () => {
    const metricsBefore = await fetchMetrics(sidecar);
    const started = Date.now();
    const closedAfter = await new Promise<number>((resolve, reject) => {
      const socket = netConnect(sidecar.inbound.port, sidecar.inbound.host);
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
});

describe('rolling upgrade: callers move from plaintext to mTLS, then to a strict sidecar, with no failed mTLS request', () => {
  type Transport = 'plaintext' | 'mtls';
  interface Caller {
    name: string;
    address: string;
    identity: ServiceIdentity;
    transport: Transport;
    target: Sidecar;
    succeeded: Record<Transport, number>;
    failures: Record<Transport, string[]>;
  }

  let root: CertificateAuthority;
  let server: ServiceIdentity;
  let app: EchoApp;
  let permissive: Sidecar;
  const callers: Caller[] = [];
  let running = true;
  const loops: Array<Promise<void>> = [];

  before(async () => {
    root = await sharedRootCA();
    let identities: ServiceIdentity[];
    [server, app, ...identities] = await Promise.all([
      makeService(root, 'rolling-server'),
      startEchoApp(),
      makeService(root, 'caller-a'),
      makeService(root, 'caller-b'),
      makeService(root, 'caller-c'),
    ]) as [ServiceIdentity, EchoApp, ...ServiceIdentity[]];
    permissive = await startSidecar(['--cert-dir', server.certDir, '--app', app.url, '--outbound', 'off', '--mode', 'permissive']);
    ['a', 'b', 'c'].forEach((name, index) => {
      callers.push({
        name,
        address: `127.0.0.${index + 2}`,
        identity: identities[index]!,
        transport: 'plaintext',
        target: permissive,
        succeeded: { plaintext: 0, mtls: 0 },
        failures: { plaintext: [], mtls: [] },
      });
    });
  });

  after(async () => {
    running = false;
    await Promise.all(loops);
    await stopAllSidecars();
    await app?.close();
  });

  /** One caller's traffic: a request on a fresh connection every ~20 ms with its current transport and target. */
  async function callLoop(caller: Caller): Promise<void> {
    let sequence = 0;
    while (running) {
      const transport = caller.transport;
      const target = caller.target;
      sequence += 1;
      try {
        const request = { host: target.inbound.host, port: target.inbound.port, localAddress: caller.address, path: `/rolling/${caller.name}/${sequence}`, timeoutMs: 5000 };
        const response =
          transport === 'mtls'
            ? await mtlsRequest({ ...request, ca: root.certPem, cert: caller.identity.leaf.chainPem, key: caller.identity.leaf.keyPem })
            : await plainRequest(request);
        if (response.status === 200) caller.succeeded[transport] += 1;
        else caller.failures[transport].push(`#${sequence} to ${target.inbound.port}: ${response.status} ${response.text.slice(0, 200)}`);
      } catch (error) {
        caller.failures[transport].push(`#${sequence} to ${target.inbound.port}: ${(error as Error).message}`);
      }
      await sleep(20);
    }
  }

  const peerOf = async (sidecar: Sidecar, address: string, tls: Transport) => findPeer((await fetchPeers(sidecar)).peers, address, tls);

  test('plaintext callers switch to mTLS one by one, then move to a strict sidecar; /peers shows each transition', async () => {
    const scenarioStarted = Date.now();
    for (const caller of callers) loops.push(callLoop(caller));
    try {
      await waitUntil('every caller made 5 plaintext requests', () => callers.every((caller) => caller.succeeded.plaintext >= 5));
      for (const caller of callers) {
        const plaintextPeer = await peerOf(permissive, caller.address, 'plaintext');
        assert.equal(plaintextPeer?.identity, 'plaintext', `caller ${caller.name} is listed as plaintext first`);
      }

      for (const caller of callers) {
        caller.transport = 'mtls';
        await waitUntil(`/peers lists ${caller.address} over mTLS`, async () => ((await peerOf(permissive, caller.address, 'mtls'))?.requests ?? 0) >= 3);
        const mtlsPeer = await peerOf(permissive, caller.address, 'mtls');
        assert.equal(mtlsPeer?.identity, caller.identity.spiffeId);
        const plaintextFrozen = (await peerOf(permissive, caller.address, 'plaintext'))?.requests;
        await sleep(400);
        const plaintextLater = (await peerOf(permissive, caller.address, 'plaintext'))?.requests;
        const mtlsLater = (await peerOf(permissive, caller.address, 'mtls'))?.requests ?? 0;
        assert.equal(plaintextLater, plaintextFrozen, `${caller.address}: the plaintext request count stops growing after the switch`);
        assert.ok(mtlsLater > (mtlsPeer?.requests ?? 0), `${caller.address}: the mTLS request count keeps growing`);
        // Callers not yet switched are still plaintext.
        for (const other of callers.slice(callers.indexOf(caller) + 1)) {
          assert.equal(other.transport, 'plaintext');
        }
      }
      const report = await fetchPeers(permissive);
      for (const caller of callers) {
        const current = report.peers.filter((peer) => peer.address === caller.address && peer.tls === 'plaintext');
        // /peers keeps a 15-minute window, so the old plaintext entry is still listed, but frozen.
        assert.equal(current.length, 1, JSON.stringify(report.peers));
      }

      const strict = await startSidecar(['--cert-dir', server.certDir, '--app', app.url, '--outbound', 'off', '--mode', 'strict']);
      await assert.rejects(plainRequest({ host: strict.inbound.host, port: strict.inbound.port, path: '/rolling/plaintext-to-strict', timeoutMs: 3000 }), 'the strict sidecar refuses plaintext');
      for (const caller of callers) {
        caller.target = strict;
        await waitUntil(`the strict sidecar sees ${caller.address} over mTLS`, async () => ((await peerOf(strict, caller.address, 'mtls'))?.requests ?? 0) >= 3);
        assert.equal((await peerOf(strict, caller.address, 'mtls'))?.identity, caller.identity.spiffeId);
      }
      const strictReport = await fetchPeers(strict);
      assert.equal(strictReport.peers.filter((peer) => peer.tls !== 'mtls').length, 0, `only mTLS callers at the strict sidecar: ${JSON.stringify(strictReport.peers)}`);
      await sleep(300);
    } finally {
      running = false;
      await Promise.all(loops);
    }

    for (const caller of callers) {
      assert.deepEqual(caller.failures.mtls, [], `caller ${caller.name}: mTLS requests that failed`);
      assert.deepEqual(caller.failures.plaintext, [], `caller ${caller.name}: plaintext requests that failed`);
      assert.ok(caller.succeeded.mtls > 10, `caller ${caller.name} made ${caller.succeeded.mtls} mTLS requests`);
    }
    assert.ok(Date.now() - scenarioStarted < 20000, `the scenario took ${Date.now() - scenarioStarted} ms`);
  });
});
