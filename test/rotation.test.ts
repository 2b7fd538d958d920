// Certificate rotation (SPEC §1, §3, §7, §8): the writers real deployments use (kubelet secret
// volumes, spiffe-helper's in-place rewrite, scripts that land cert and key apart), broken input,
// trust-bundle overlap, SIGHUP and polling, all against the real process. After each step the test
// asserts what peers see: the serial the inbound listener serves and the client serial an upstream
// saw through the forward proxy.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { lstat, readlink } from 'node:fs/promises';
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startEchoApp, startTlsServer, type EchoApp, type EchoReply, type TlsTestServer } from './helpers/apps.js';
import { plainRequest, proxyRequest, runCommand, servedCertificates } from './helpers/clients.js';
import {
  certDirContent, freshDir, issueLeaf, kubernetesAtomicWrite, layoutFiles, makeRootCA, normalizeSerial, sharedRootCA, writeLayout,
  type CertificateAuthority, type Leaf,
} from './helpers/pki.js';
import {
  handshake, inotifyLessUnavailable, loadedLine, metricValue, rejectedLines, replaceFile, rewriteInPlace, runsOf, sleep,
  startHandshakeProbe, startSidecarWithoutInotify, upstreamSawSerial, waitForNextLog, waitForServedSerial, type PeerCredentials,
} from './helpers/rotation.js';
import { startSidecar, stopAllSidecars, type Sidecar } from './helpers/sidecar.js';

const serviceLeaf = (issuer: CertificateAuthority, cn: string, extra: { expired?: boolean; days?: number } = {}): Promise<Leaf> =>
  issueLeaf(issuer, { cn, dns: ['localhost'], ips: ['127.0.0.1'], ...extra });

/** Kubernetes file names (tls.crt, tls.key, ca.crt) for a leaf and a bundle. */
const kubernetesFiles = (leaf: Leaf, bundlePem = leaf.rootPem): Record<string, string> =>
  layoutFiles('kubernetes', { chainPem: leaf.chainPem, keyPem: leaf.keyPem, bundlePem });

describe('certificate rotation', () => {
  let rootA: CertificateAuthority;
  let rootB: CertificateAuthority;
  let strangerRoot: CertificateAuthority;
  /** Service certificates from root A; rotations cycle through them. */
  let pool: Leaf[];
  let clientA: Leaf;
  let clientB: Leaf;
  let upstreamLeafA: Leaf;
  let upstreamLeafB: Leaf;
  let app: EchoApp;
  /** A TLS upstream (cert from A) that reports the client serial it saw. */
  let upstream: TlsTestServer;
  const servers: TlsTestServer[] = [];
  let peerA: PeerCredentials;

  before(async () => {
    [rootA, rootB, strangerRoot, app] = await Promise.all([
      sharedRootCA(),
      makeRootCA({ cn: 'rotation root B' }),
      makeRootCA({ cn: 'rotation stranger root' }),
      startEchoApp(),
    ]);
    [pool, clientA, clientB, upstreamLeafA, upstreamLeafB] = await Promise.all([
      Promise.all([0, 1, 2, 3, 4].map((index) => serviceLeaf(rootA, `rotating-${index}`))),
      serviceLeaf(rootA, 'client-a'),
      serviceLeaf(rootB, 'client-b'),
      serviceLeaf(rootA, 'upstream-a'),
      serviceLeaf(rootB, 'upstream-b'),
    ]);
    upstream = await startTlsServer({ certPem: upstreamLeafA.chainPem, keyPem: upstreamLeafA.keyPem, ca: rootA.certPem + rootB.certPem });
    servers.push(upstream);
    peerA = { cert: clientA.chainPem, key: clientA.keyPem, ca: rootA.certPem + rootB.certPem };
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
    await Promise.all(servers.map((server) => server.close()));
  });

  /** The leaf serial the inbound listener serves, read by `openssl s_client` + `openssl x509 -serial`. */
  const servedByOpenssl = async (sidecar: Sidecar): Promise<string> =>
    normalizeSerial((await servedCertificates({ ...sidecar.inbound, certPath: clientA.certPath, keyPath: clientA.keyPath })).serials[0] ?? '');

  /** Inbound serves `leaf` (openssl) and the upstream behind the forward proxy sees it as the client cert. */
  const assertServing = async (sidecar: Sidecar, leaf: Leaf, step: string): Promise<void> => {
    assert.equal(await servedByOpenssl(sidecar), normalizeSerial(leaf.serial), `${step}: served serial (openssl s_client)`);
    assert.equal(await upstreamSawSerial(sidecar.outbound, upstream.port), normalizeSerial(leaf.serial), `${step}: client serial the upstream saw`);
  };

  const start = (dir: string, extra: string[] = []): Promise<Sidecar> => startSidecar(['--cert-dir', dir, '--app', app.url, ...extra]);

  test('Kubernetes secret volume: the 1st, 2nd and 3rd ..data swap are picked up by the directory watch alone (--reload-interval 0)', async () => {
    const dir = await freshDir('k8s-volume');
    await kubernetesAtomicWrite(dir, kubernetesFiles(pool[0]!));
    const sidecar = await start(dir, ['--reload-interval', '0']);
    await assertServing(sidecar, pool[0]!, 'initial');
    for (const [index, next] of pool.slice(1, 4).entries()) {
      await kubernetesAtomicWrite(dir, kubernetesFiles(next));
      await sidecar.waitForLog(loadedLine(next.serial), 5000);
      await assertServing(sidecar, next, `rotation ${index + 1}`);
    }
    // The writer really produced the kubelet layout: visible names are symlinks through ..data.
    assert.ok((await lstat(join(dir, 'tls.crt'))).isSymbolicLink());
    assert.equal(await readlink(join(dir, 'tls.crt')), join('..data', 'tls.crt'));
    assert.match(await readlink(join(dir, '..data')), /^\.\.\d/);
    await sidecar.stop();
  });

  test('spiffe-helper in-place rewrite (truncate, half, pause, rest; cert, key, bundle 300 ms apart): the final set is served, never a half-written or mismatched one', async (t) => {
    const dir = await freshDir('in-place');
    await writeLayout(dir, 'spiffe', certDirContent(pool[0]!));
    const sidecar = await start(dir);
    await assertServing(sidecar, pool[0]!, 'initial');
    const next = pool[1]!;
    const probe = startHandshakeProbe(sidecar.inbound, peerA);
    await rewriteInPlace(join(dir, 'svid.pem'), next.chainPem, 300);
    await sleep(300);
    await rewriteInPlace(join(dir, 'svid_key.pem'), next.keyPem, 300);
    await sleep(300);
    // The new bundle adds root B: only the final state trusts clients of B.
    await rewriteInPlace(join(dir, 'svid_bundle.pem'), rootA.certPem + rootB.certPem, 300);
    await sidecar.waitForLog((line) => loadedLine(next.serial)(line) && line.bundleSize === 2, 5000);
    await sleep(200);
    const { serials, failures } = await probe.stop();
    assert.deepEqual(failures, [], 'every handshake during the rewrite must succeed');
    assert.deepEqual(runsOf(serials), [normalizeSerial(pool[0]!.serial), normalizeSerial(next.serial)], 'served serials: old until the new pair is complete, then new');
    const rejected = rejectedLines(sidecar);
    assert.ok(rejected.length >= 1, 'the intermediate states were seen and refused');
    t.diagnostic(`handshakes: ${serials.length}; rejected intermediate states: ${rejected.map((line) => String(line.code)).join(', ')}`);
    await assertServing(sidecar, next, 'final');
    const fromB = await handshake(sidecar.inbound, { cert: clientB.chainPem, key: clientB.keyPem, ca: rootA.certPem });
    assert.equal(fromB.status, 200, 'the final bundle (A+B) is in effect');
    await sidecar.stop();
  });

  test('cert lands 1.5 s before its key: the mismatched pair is never served, the complete pair is picked up at once', async (t) => {
    const dir = await freshDir('out-of-step');
    await writeLayout(dir, 'kubernetes', certDirContent(pool[0]!));
    const sidecar = await start(dir);
    const [old, next] = [pool[0]!, pool[1]!];
    await replaceFile(join(dir, 'tls.crt'), next.chainPem);
    const certLanded = Date.now();
    const rejected = await sidecar.waitForLog((line) => line.msg === 'certificate reload rejected', 3000);
    assert.equal(rejected.code, 'key_mismatch', JSON.stringify(rejected));
    assert.equal(rejected.level, 'warn', 'a refused in-between state is a warning: the last good set still serves');
    assert.equal(await metricValue(sidecar.admin, 'sidecar_cert_reload_failing'), 1, 'the refused state shows in the gauge');
    for (const probeAt of [400, 1200]) {
      await sleep(Math.max(0, certLanded + probeAt - Date.now()));
      const during = await handshake(sidecar.inbound, peerA);
      assert.equal(during.status, 200, `handshake ${probeAt} ms into the gap`);
      assert.equal(during.servedSerial, normalizeSerial(old.serial), `${probeAt} ms into the gap the old serial is served`);
      assert.equal(await upstreamSawSerial(sidecar.outbound, upstream.port), normalizeSerial(old.serial), `${probeAt} ms into the gap the upstream sees the old client cert`);
    }
    await sleep(Math.max(0, certLanded + 1500 - Date.now()));
    await replaceFile(join(dir, 'tls.key'), next.keyPem);
    const pickupMs = await waitForServedSerial(sidecar.inbound, peerA, next.serial, 3000);
    t.diagnostic(`new pair served ${pickupMs} ms after the key landed`);
    assert.ok(pickupMs < 1000, `the consistent pair should be served within 1 s of the key landing (took ${pickupMs} ms)`);
    await assertServing(sidecar, next, 'after the key landed');
    assert.equal(await metricValue(sidecar.admin, 'sidecar_cert_reload_failing'), 0, 'the gauge clears once the complete pair is loaded');
    assert.equal(sidecar.logs().filter(loadedLine(next.serial)).length, 1);
    await sidecar.stop();
  });

  describe('broken input keeps the last good set; logged once per distinct failure, counted, the process stays up, and a good set follows', { concurrency: true }, () => {
    const brokenCases: Array<{ name: string; code: string; files: () => Promise<Record<string, string>> }> = [
      {
        name: 'truncated PEM',
        code: 'cert_parse_error',
        files: async () => ({ ...kubernetesFiles(pool[2]!), 'tls.crt': pool[2]!.chainPem.slice(0, Math.floor(pool[2]!.chainPem.length / 2)) }),
      },
      {
        name: 'junk key',
        code: 'key_parse_error',
        files: async () => ({ ...kubernetesFiles(pool[2]!), 'tls.key': '-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n' }),
      },
      { name: 'empty file', code: 'file_empty', files: async () => ({ ...kubernetesFiles(pool[2]!), 'tls.crt': '' }) },
      {
        name: 'deleted file',
        code: 'file_missing',
        files: async () => {
          const { 'tls.key': _deleted, ...rest } = kubernetesFiles(pool[2]!);
          return rest;
        },
      },
      { name: 'expired new cert', code: 'cert_expired', files: async () => kubernetesFiles(await serviceLeaf(rootA, 'expired', { expired: true })) },
      {
        // Leaf only: the files cannot tell a foreign root from a forgotten intermediate.
        name: 'leaf from a CA the directory does not hold',
        code: 'chain_incomplete',
        files: async () => kubernetesFiles(await serviceLeaf(strangerRoot, 'stranger'), rootA.certPem),
      },
      {
        name: 'complete chain ending at a root not in the bundle',
        code: 'chain_untrusted',
        files: async () => {
          const stranger = await serviceLeaf(strangerRoot, 'stranger-chained');
          return { ...kubernetesFiles(stranger, rootA.certPem), 'tls.crt': stranger.certPem + strangerRoot.certPem };
        },
      },
    ];

    for (const brokenCase of brokenCases) {
      test(`${brokenCase.name} -> ${brokenCase.code}`, async () => {
        const [old, good] = [pool[0]!, pool[3]!];
        const broken = await brokenCase.files();
        const dir = await freshDir(`broken-${brokenCase.code}`);
        await kubernetesAtomicWrite(dir, kubernetesFiles(old));
        const sidecar = await start(dir, ['--reload-interval', '1s']);
        const errorsBefore = await metricValue(sidecar.admin, 'sidecar_cert_reloads_total', { result: 'error' });

        await kubernetesAtomicWrite(dir, broken);
        const rejected = await sidecar.waitForLog((line) => line.msg === 'certificate reload rejected', 5000);
        assert.equal(rejected.code, brokenCase.code, JSON.stringify(rejected));
        const during = await handshake(sidecar.inbound, peerA);
        assert.deepEqual(during, { status: 200, servedSerial: normalizeSerial(old.serial) }, 'the last good set keeps serving');
        assert.equal(await upstreamSawSerial(sidecar.outbound, upstream.port), normalizeSerial(old.serial));

        await sleep(3500); // three or more polls of the unchanged broken content
        assert.equal(rejectedLines(sidecar, brokenCase.code).length, 1, `"certificate reload rejected" ${brokenCase.code} logged once:\n${sidecar.output().slice(-3000)}`);
        assert.equal(rejectedLines(sidecar).length, 1, 'no other rejection was logged');
        const errorsAfter = await metricValue(sidecar.admin, 'sidecar_cert_reloads_total', { result: 'error' });
        assert.ok(errorsAfter - errorsBefore >= 1, `sidecar_cert_reloads_total{result="error"} went from ${errorsBefore} to ${errorsAfter}`);
        assert.equal(sidecar.child.exitCode, null, 'the process is still running');
        assert.equal((await plainRequest({ ...sidecar.admin, path: '/healthz' })).status, 200);
        assert.equal((await handshake(sidecar.inbound, peerA)).servedSerial, normalizeSerial(old.serial));

        await kubernetesAtomicWrite(dir, kubernetesFiles(good));
        await waitForServedSerial(sidecar.inbound, peerA, good.serial, 4000);
        await assertServing(sidecar, good, 'the good set after the broken one');
        await sidecar.stop();
      });
    }
  });

  test('trust bundle rotation A -> A+B -> B: peers of B are accepted once B is in, peers of A refused once A is gone (inbound and outbound); cert-only and bundle-only reloads keep the other part', async () => {
    const serverB = await startTlsServer({ certPem: upstreamLeafB.chainPem, keyPem: upstreamLeafB.keyPem, ca: rootA.certPem + rootB.certPem });
    servers.push(serverB);
    const leafFromB = await serviceLeaf(rootB, 'rotating-to-b');
    const dir = await freshDir('bundle-rotation');
    await writeLayout(dir, 'kubernetes', { chainPem: pool[0]!.chainPem, keyPem: pool[0]!.keyPem, bundlePem: rootA.certPem });
    const sidecar = await start(dir);
    const both = rootA.certPem + rootB.certPem;

    /** The serial served to `client`, or "refused" when the sidecar refuses its certificate. */
    const inbound = (client: Leaf) =>
      handshake(sidecar.inbound, { cert: client.chainPem, key: client.keyPem, ca: both }).then(
        (outcome) => (outcome.status === 200 ? outcome.servedSerial : `status ${outcome.status}`),
        () => 'refused',
      );
    const outboundTo = async (server: TlsTestServer): Promise<string> => {
      const response = await proxyRequest({ proxy: sidecar.outbound, target: `http://localhost:${server.port}/bundle` });
      return response.status === 200 ? 'ok' : `${response.status} ${String(response.headers['x-sidecar-error'])}`;
    };
    const assertStage = async (stage: string, expected: { inA: string; inB: string; outA: string; outB: string }) => {
      const observed = { inA: await inbound(clientA), inB: await inbound(clientB), outA: await outboundTo(upstream), outB: await outboundTo(serverB) };
      assert.deepEqual(observed, expected, stage);
    };
    const untrusted = '502 upstream_cert_untrusted';

    const first = normalizeSerial(pool[0]!.serial);
    await assertStage('bundle A', { inA: first, inB: 'refused', outA: 'ok', outB: untrusted });

    let mark = sidecar.logs().length;
    await replaceFile(join(dir, 'ca.crt'), both);
    await waitForNextLog(sidecar, (line) => line.msg === 'certificates loaded' && line.bundleSize === 2, mark);
    await assertStage('bundle A+B (bundle-only reload keeps cert and key)', { inA: first, inB: first, outA: 'ok', outB: 'ok' });

    mark = sidecar.logs().length;
    await replaceFile(join(dir, 'tls.key'), leafFromB.keyPem);
    await replaceFile(join(dir, 'tls.crt'), leafFromB.chainPem);
    const loaded = await waitForNextLog(sidecar, loadedLine(leafFromB.serial), mark);
    assert.equal(loaded.bundleSize, 2, 'cert+key reload keeps the bundle');
    const second = normalizeSerial(leafFromB.serial);
    await assertStage('leaf from B, bundle A+B (cert-only reload keeps the bundle)', { inA: second, inB: second, outA: 'ok', outB: 'ok' });

    mark = sidecar.logs().length;
    await replaceFile(join(dir, 'ca.crt'), rootB.certPem);
    await waitForNextLog(sidecar, (line) => loadedLine(leafFromB.serial)(line) && line.bundleSize === 1, mark);
    await assertStage('bundle B only', { inA: 'refused', inB: second, outA: untrusted, outB: 'ok' });
    await sidecar.stop();
  });

  describe('SIGHUP and polling when the directory watch cannot work', async () => {
    // The sidecar runs in its own user namespace whose inotify instance limit is 0, so fs.watch
    // fails with EMFILE (as on a node whose inotify instances are used up); nothing else changes.
    const unavailable = await inotifyLessUnavailable();

    test('--reload-interval 0 and no working watch: nothing reloads by itself; SIGHUP reloads within 1 s', { skip: unavailable }, async (t) => {
      const dir = await freshDir('sighup');
      await kubernetesAtomicWrite(dir, kubernetesFiles(pool[0]!));
      const sidecar = await startSidecarWithoutInotify(['--cert-dir', dir, '--app', app.url, '--reload-interval', '0']);
      const warning = await sidecar.waitForLog((line) => /watch/i.test(String(line.msg)), 2000);
      assert.match(String(warning.msg), /poll|SIGHUP/, JSON.stringify(warning));
      await kubernetesAtomicWrite(dir, kubernetesFiles(pool[1]!));
      await sleep(1500);
      assert.equal((await handshake(sidecar.inbound, peerA)).servedSerial, normalizeSerial(pool[0]!.serial), 'without watch or poll the change stays unseen');
      sidecar.signal('SIGHUP');
      const pickupMs = await waitForServedSerial(sidecar.inbound, peerA, pool[1]!.serial, 1000);
      t.diagnostic(`watch warning: ${JSON.stringify(warning)}; SIGHUP pickup ${pickupMs} ms`);
      await assertServing(sidecar, pool[1]!, 'after SIGHUP');
      await sidecar.stop();
    });

    test('a directory where watching fails is still reloaded by the poll (--reload-interval 1s)', { skip: unavailable }, async () => {
      const dir = await freshDir('poll-only');
      await kubernetesAtomicWrite(dir, kubernetesFiles(pool[0]!));
      const sidecar = await startSidecarWithoutInotify(['--cert-dir', dir, '--app', app.url, '--reload-interval', '1s']);
      await kubernetesAtomicWrite(dir, kubernetesFiles(pool[1]!));
      await waitForServedSerial(sidecar.inbound, peerA, pool[1]!.serial, 3000);
      const loaded = await sidecar.waitForLog(loadedLine(pool[1]!.serial), 100);
      assert.equal(loaded.trigger, 'poll', JSON.stringify(loaded));
      await assertServing(sidecar, pool[1]!, 'after the poll');
      await sidecar.stop();
    });
  });

  test('outbound: after a rotation is logged, the next request through the forward proxy presents the new client cert (old pooled connections retired)', async () => {
    const dir = await freshDir('outbound-pool');
    await kubernetesAtomicWrite(dir, kubernetesFiles(pool[0]!));
    const sidecar = await start(dir);
    // Two requests: the second rides the pooled keep-alive connection of the first.
    assert.equal(await upstreamSawSerial(sidecar.outbound, upstream.port), normalizeSerial(pool[0]!.serial));
    assert.equal(await upstreamSawSerial(sidecar.outbound, upstream.port), normalizeSerial(pool[0]!.serial));
    for (const next of pool.slice(1, 4)) {
      await kubernetesAtomicWrite(dir, kubernetesFiles(next));
      await sidecar.waitForLog(loadedLine(next.serial), 5000);
      assert.equal(await upstreamSawSerial(sidecar.outbound, upstream.port), normalizeSerial(next.serial), `first request after "certificates loaded" ${next.serial}`);
    }
    await sidecar.stop();
  });

  test('TLS session resumption works across a rotation (session from the old set is resumed after it)', async () => {
    const dir = await freshDir('resumption');
    await kubernetesAtomicWrite(dir, kubernetesFiles(pool[0]!));
    const sidecar = await start(dir);
    // Not in the secret volume: the kubelet-style writer removes names that are not in the secret.
    const sessionDir = await freshDir('sessions');
    for (const version of ['-tls1_2', '-tls1_3']) {
      const sessionFile = join(sessionDir, `session${version}.pem`);
      const sClient = (extra: string[]) =>
        runCommand('openssl', [
          's_client', '-connect', `${sidecar.inbound.host}:${sidecar.inbound.port}`, '-servername', 'localhost', version,
          '-cert', clientA.certPath, '-key', clientA.keyPath, '-CAfile', rootA.certPath, '-ign_eof', ...extra,
        ], { input: 'GET /resume HTTP/1.0\r\nHost: localhost\r\n\r\n', timeoutMs: 10000 });
      const first = await sClient(['-sess_out', sessionFile]);
      assert.match(first.stdout, /^New,/m, `${version} first connection:\n${first.stdout}${first.stderr}`);
      assert.match(first.stdout, /HTTP\/1\.1 200/, `${version} first request`);
      const rotated = version === '-tls1_2' ? pool[1]! : pool[2]!;
      await kubernetesAtomicWrite(dir, kubernetesFiles(rotated));
      await waitForServedSerial(sidecar.inbound, peerA, rotated.serial, 5000);
      const resumed = await sClient(['-sess_in', sessionFile]);
      assert.match(resumed.stdout, /^Reused,/m, `${version} resumption after the rotation:\n${resumed.stdout}${resumed.stderr}`);
      assert.match(resumed.stdout, /HTTP\/1\.1 200/, `${version} request on the resumed session`);
    }
    await sidecar.stop();
  });

  test('/readyz answers 503 with a reason once the served leaf has expired', async () => {
    const shortLived = await serviceLeaf(rootA, 'short-lived', { days: 6 / 86400 });
    const notAfter = new Date(new X509Certificate(shortLived.certPem).validTo).getTime();
    const dir = await freshDir('expiring');
    await writeLayout(dir, 'kubernetes', certDirContent(shortLived));
    const sidecar = await start(dir);
    if (Date.now() < notAfter - 500) {
      const ready = await plainRequest({ ...sidecar.admin, path: '/readyz' });
      assert.equal(ready.status, 200, ready.text);
    }
    await sleep(Math.max(0, notAfter + 1200 - Date.now()));
    const expired = await plainRequest({ ...sidecar.admin, path: '/readyz' });
    assert.equal(expired.status, 503, expired.text);
    const body = expired.json<{ ready: boolean; reasons: string[] }>();
    assert.equal(body.ready, false);
    assert.ok(body.reasons.some((reason) => /expired/i.test(reason)), `a reason names the expiry: ${expired.text}`);
    assert.equal((await plainRequest({ ...sidecar.admin, path: '/healthz' })).status, 200, 'still alive');
    await sidecar.stop();
  });

  test('under load: 20 Kubernetes swaps of the inbound sidecar and 20 in-place rewrites of the outbound sidecar, 0 failed requests, final serials served', async (t) => {
    const inboundDir = await freshDir('load-inbound');
    const outboundDir = await freshDir('load-outbound');
    await kubernetesAtomicWrite(inboundDir, kubernetesFiles(pool[0]!));
    await writeLayout(outboundDir, 'kubernetes', certDirContent(pool[0]!));
    const [inboundSidecar, outboundSidecar] = await Promise.all([start(inboundDir, ['--outbound', 'off']), start(outboundDir, ['--inbound', 'off'])]);

    let ok = 0;
    const failures: string[] = [];
    let running = true;
    const record = (promise: Promise<number>, label: string) =>
      promise.then(
        (status) => (status === 200 ? (ok += 1) : failures.push(`${label}: status ${status}`)),
        (error: Error) => failures.push(`${label}: ${error.message}`),
      );
    const exchange = (send: () => ReturnType<typeof httpRequest>) =>
      new Promise<number>((resolve, reject) => {
        const request = send();
        request.setTimeout(10000, () => request.destroy(new Error('timed out')));
        request.on('response', (response) => {
          response.resume();
          response.on('end', () => resolve(response.statusCode ?? 0));
          response.on('error', reject);
        });
        request.on('error', reject);
        request.end();
      });
    const mtlsAgent = new HttpsAgent({ keepAlive: true, maxSockets: 2, cert: clientA.chainPem, key: clientA.keyPem, ca: rootA.certPem });
    const proxyAgent = new HttpAgent({ keepAlive: true, maxSockets: 2 });
    const inboundTarget = `http://localhost:${inboundSidecar.inbound.port}/load`;
    const loops = [
      ...[1, 2].map((n) => async () => {
        while (running) await record(exchange(() => httpsRequest({ ...inboundSidecar.inbound, path: '/load', agent: mtlsAgent, servername: 'localhost' })), `inbound keep-alive ${n}`);
      }),
      async () => {
        while (running) {
          await record(exchange(() => httpsRequest({ ...inboundSidecar.inbound, path: '/load', agent: false, cert: clientA.chainPem, key: clientA.keyPem, ca: rootA.certPem, servername: 'localhost' })), 'inbound new connection');
        }
      },
      ...[1, 2].map((n) => async () => {
        while (running) {
          await record(exchange(() => httpRequest({ ...outboundSidecar.outbound, path: inboundTarget, agent: proxyAgent, headers: { host: `localhost:${inboundSidecar.inbound.port}` } })), `outbound pair ${n}`);
        }
      }),
    ].map((loop) => loop());

    const rotations = 20;
    const cycle = (index: number) => pool[1 + (index % 4)]!;
    const swapInbound = async () => {
      for (let index = 0; index < rotations; index += 1) {
        const mark = inboundSidecar.logs().length;
        await kubernetesAtomicWrite(inboundDir, kubernetesFiles(cycle(index)));
        await waitForNextLog(inboundSidecar, loadedLine(cycle(index).serial), mark, 5000);
        await sleep(100);
      }
    };
    const rewriteOutbound = async () => {
      for (let index = 0; index < rotations; index += 1) {
        const mark = outboundSidecar.logs().length;
        const next = cycle(index + 2);
        await rewriteInPlace(join(outboundDir, 'tls.crt'), next.chainPem, 20);
        await sleep(40);
        await rewriteInPlace(join(outboundDir, 'tls.key'), next.keyPem, 20);
        await sleep(40);
        await rewriteInPlace(join(outboundDir, 'ca.crt'), rootA.certPem, 20);
        await waitForNextLog(outboundSidecar, loadedLine(next.serial), mark, 5000);
        await sleep(100);
      }
    };
    try {
      await Promise.all([swapInbound(), rewriteOutbound()]);
      await sleep(300);
    } finally {
      running = false;
      await Promise.all(loops);
      mtlsAgent.destroy();
      proxyAgent.destroy();
    }
    assert.equal(failures.length, 0, `failed requests (of ${ok + failures.length}):\n${failures.slice(0, 20).join('\n')}`);
    assert.ok(ok >= 200, `the load really ran: ${ok} requests`);
    const inboundLoads = inboundSidecar.logs().filter((line) => line.msg === 'certificates loaded').length;
    const outboundLoads = outboundSidecar.logs().filter((line) => line.msg === 'certificates loaded').length;
    assert.equal(inboundLoads, rotations + 1, 'every swap of the inbound sidecar was loaded');
    assert.equal(outboundLoads, rotations + 1, 'every rewrite of the outbound sidecar was loaded');
    const finalInbound = cycle(rotations - 1);
    const finalOutbound = cycle(rotations + 1);
    assert.equal(await servedByOpenssl(inboundSidecar), normalizeSerial(finalInbound.serial), 'final inbound serial (openssl s_client)');
    const through = await proxyRequest({ proxy: outboundSidecar.outbound, target: `${inboundTarget}?final` });
    assert.equal(through.status, 200, through.text);
    const xfcc = String(through.json<EchoReply>().headers['x-forwarded-client-cert']);
    assert.ok(xfcc.toLowerCase().includes(`hash=${finalOutbound.sha256}`), `the inbound sidecar saw the final outbound client cert: ${xfcc}`);
    t.diagnostic(`under load: ${ok} requests, ${failures.length} failed, ${rotations} + ${rotations} rotations`);
    await Promise.all([inboundSidecar.stop(), outboundSidecar.stop()]);
  });
});
