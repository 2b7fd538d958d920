// --workers N (SPEC §2): worker processes share the listeners; the primary owns the admin listener
// and answers for all of them; a rotation reaches every worker; SIGTERM drains them all.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startEchoApp, type EchoApp } from './helpers/apps.js';
import { mtlsRequest, servedCertificates } from './helpers/clients.js';
import { freshDir, issueLeaf, kubernetesAtomicWrite, layoutFiles, normalizeSerial, sharedRootCA, type CertificateAuthority, type Leaf } from './helpers/pki.js';
import { runCli, startSidecar, stopAllSidecars, type Sidecar } from './helpers/sidecar.js';

const serviceLeaf = (root: CertificateAuthority): Promise<Leaf> =>
  issueLeaf(root, { cn: 'workers', dns: ['localhost'], ips: ['127.0.0.1'], uris: ['spiffe://test.local/ns/default/sa/workers'] });

describe('--workers 2', () => {
  let root: CertificateAuthority;
  let client: Leaf;
  let app: EchoApp;
  let certDir: string;
  let sidecar: Sidecar;

  before(async () => {
    root = await sharedRootCA();
    [client, app, certDir] = await Promise.all([
      issueLeaf(root, { cn: 'caller', uris: ['spiffe://test.local/ns/default/sa/caller'] }),
      startEchoApp(),
      freshDir('workers-certs'),
    ]);
    const leaf = await serviceLeaf(root);
    await kubernetesAtomicWrite(certDir, layoutFiles('kubernetes', { chainPem: leaf.chainPem, keyPem: leaf.keyPem, bundlePem: root.certPem }));
    sidecar = await startSidecar(['--workers', '2', '--cert-dir', certDir, '--app', app.url, '--outbound', 'off', '--reload-interval', '0']);
  });
  after(async () => {
    await stopAllSidecars();
    await app?.close();
  });

  const call = (path: string) =>
    mtlsRequest({ host: sidecar.inbound.host, port: sidecar.inbound.port, path, ca: root.certPem, cert: client.chainPem, key: client.keyPem });

  test('the primary says ready once both workers are; /readyz answers 200 from the primary', async () => {
    const ready = sidecar.logs().find((line) => line.msg === 'sidecar ready');
    assert.equal(ready?.workers, 2);
    // Each worker logs from its own process, so its line may reach stdout after the primary's.
    const deadline = Date.now() + 5000;
    while (sidecar.logs().filter((line) => line.msg === 'worker ready').length < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(sidecar.logs().filter((line) => line.msg === 'worker ready').length, 2);
    const response = await fetch(`http://${sidecar.admin.host}:${sidecar.admin.port}/readyz`);
    assert.equal(response.status, 200);
  });

  test('requests are served by both workers, and /metrics and /peers count all of them', async () => {
    for (let index = 0; index < 20; index += 1) assert.equal((await call(`/w/${index}`)).status, 200);
    const servingPids = new Set(sidecar.logs().filter((line) => line.msg === 'request' && String(line.path).startsWith('/w/')).map((line) => line.pid));
    assert.equal(servingPids.size, 2, `requests should spread over both workers, saw pids ${[...servingPids].join(', ')}`);
    const metrics = await (await fetch(`http://${sidecar.admin.host}:${sidecar.admin.port}/metrics`)).text();
    const total = Number(/^sidecar_requests_total\{direction="inbound",code="200"\} (\d+)/m.exec(metrics)?.[1]);
    assert.ok(total >= 20, `aggregated sidecar_requests_total should count both workers' requests, got ${total}`);
    const peers = (await (await fetch(`http://${sidecar.admin.host}:${sidecar.admin.port}/peers`)).json()) as { peers: Array<{ identity: string; requests: number }> };
    const caller = peers.peers.find((peer) => peer.identity === 'spiffe://test.local/ns/default/sa/caller');
    assert.ok(caller && caller.requests >= 20, `/peers merges both workers: ${JSON.stringify(peers.peers)}`);
  });

  test('a rotated certificate is served by every worker', async () => {
    const next = await serviceLeaf(root);
    await kubernetesAtomicWrite(certDir, layoutFiles('kubernetes', { chainPem: next.chainPem, keyPem: next.keyPem, bundlePem: root.certPem }));
    const deadline = Date.now() + 10_000;
    let loaded = 0;
    while (Date.now() < deadline && loaded < 2) {
      loaded = sidecar.logs().filter((line) => line.msg === 'certificates loaded' && normalizeSerial(String(line.serial)) === normalizeSerial(next.serial)).length;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal(loaded, 2, 'both workers log the new certificate');
    const serials = new Set<string>();
    for (let index = 0; index < 8; index += 1) {
      const served = await servedCertificates({ host: sidecar.inbound.host, port: sidecar.inbound.port, certPath: client.certPath, keyPath: client.keyPath });
      serials.add(normalizeSerial(served.serials[0] ?? ''));
    }
    assert.deepEqual([...serials], [normalizeSerial(next.serial)], 'no handshake may be served the old certificate');
  });

  test('SIGTERM drains every worker and the primary exits 0', async () => {
    const code = await sidecar.stop();
    assert.equal(code, 0);
    assert.equal(sidecar.logs().filter((line) => line.msg === 'stopped').length, 3);
  });
});

test('--workers 2 with an invalid cert dir exits 1 before starting any worker', async () => {
  const dir = await freshDir('workers-empty');
  const result = await runCli(['run', '--workers', '2', '--cert-dir', dir, '--inbound', '127.0.0.1:0', '--outbound', 'off', '--admin', 'off']);
  assert.equal(result.code, 1, result.stderr);
  assert.match(result.stderr, /no recognised file set/);
  assert.doesNotMatch(result.stdout, /worker ready/);
});
