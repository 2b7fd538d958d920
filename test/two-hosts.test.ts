// Two hosts, for real: two "pods" are Linux network namespaces joined by a veth pair, each with an
// app and a sidecar at the sidecar's default ports. App A is curl using HTTP_PROXY; it calls app B by
// B's pod address, through A's forward proxy and over mTLS to B's inbound listener. B's certificate
// is rotated the way the kubelet updates a secret while the calls go on, and B's sidecar is stopped
// with SIGTERM while a slow call is in flight.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { join } from 'node:path';
import { createPodPair, podsUnavailable, runInPod, startEchoAppInPod, startSidecarInPod, type PodApp, type PodPair } from './helpers/deploy.js';
import {
  certDirContent,
  describeCertificate,
  freshDir,
  issueLeaf,
  kubernetesAtomicWrite,
  layoutFiles,
  normalizeSerial,
  sharedRootCA,
  spiffeIdOf,
  splitPem,
  TRUST_DOMAIN,
  type CertificateAuthority,
  type Leaf,
} from './helpers/pki.js';
import { stopAllSidecars, type Sidecar } from './helpers/sidecar.js';

const unavailable = await podsUnavailable();

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface CallResult {
  status: number;
  body: string;
}

describe('two hosts: pods in network namespaces joined by a veth pair', { skip: unavailable ? `skipped: ${unavailable}` : false }, () => {
  let pods: PodPair;
  let root: CertificateAuthority;
  let leafA: Leaf;
  let leafB: Leaf;
  let certDirA: string;
  let certDirB: string;
  let appB: PodApp;
  let sidecarA: Sidecar;
  let sidecarB: Sidecar;
  const idA = spiffeIdOf('pod-a');
  const idB = spiffeIdOf('pod-b');
  const leafOf = (name: string, ip: string) => issueLeaf(root, { cn: name, uris: [spiffeIdOf(name)], ips: [ip], dns: [name] });

  /** App A: curl with HTTP_PROXY set to A's outbound listener, calling B by its pod address. */
  const callB = async (path: string, timeoutMs = 15000): Promise<CallResult> => {
    const url = `http://${pods.b.address}:8443${path}`;
    const result = await runInPod(pods.a, 'curl', ['-sS', '--max-time', String(timeoutMs / 1000), '-w', '\n%{http_code}', url], {
      timeoutMs: timeoutMs + 5000,
      env: { PATH: process.env.PATH, http_proxy: 'http://127.0.0.1:15001', HTTP_PROXY: 'http://127.0.0.1:15001' },
    });
    const lines = result.stdout.split('\n');
    const status = Number(lines.pop());
    assert.equal(result.code, 0, `curl in ${pods.a.ns} failed: ${result.stderr}`);
    return { status, body: lines.join('\n') };
  };

  /** Serial of the leaf B's inbound listener presents, seen from pod A with openssl s_client. */
  const servedSerialOfB = async (): Promise<string> => {
    const result = await runInPod(pods.a, 'openssl', [
      's_client', '-connect', `${pods.b.address}:8443`, '-showcerts', '-cert', join(certDirA, 'tls.crt'), '-key', join(certDirA, 'tls.key'),
    ], { timeoutMs: 10000 });
    const [leaf] = splitPem(result.stdout);
    assert.ok(leaf, `openssl s_client in ${pods.a.ns} showed no certificate:\n${result.stdout}\n${result.stderr}`);
    return normalizeSerial((await describeCertificate(leaf)).serial);
  };

  before(async () => {
    pods = await createPodPair();
    root = await sharedRootCA();
    leafA = await leafOf('pod-a', pods.a.address);
    leafB = await leafOf('pod-b', pods.b.address);
    certDirA = await freshDir('pod-a-certs');
    certDirB = await freshDir('pod-b-certs');
    await kubernetesAtomicWrite(certDirA, layoutFiles('kubernetes', certDirContent(leafA)));
    await kubernetesAtomicWrite(certDirB, layoutFiles('kubernetes', certDirContent(leafB)));
    appB = await startEchoAppInPod(pods.b);
    // The sidecar's own defaults for every listener: each pod has its own ports.
    const defaults = ['--inbound', '0.0.0.0:8443', '--outbound', '127.0.0.1:15001', '--admin', '127.0.0.1:15000'];
    sidecarB = await startSidecarInPod(pods.b, [...defaults, '--cert-dir', certDirB, '--app', `http://127.0.0.1:${appB.port}`, '--allow-spiffe', idA, '--reload-interval', '1s'], {
      env: { SIDECAR_TRUST_DOMAIN: TRUST_DOMAIN },
    });
    sidecarA = await startSidecarInPod(pods.a, [...defaults, '--cert-dir', certDirA, '--expect-spiffe', `${pods.b.address}=${idB}`], {
      env: { SIDECAR_TRUST_DOMAIN: TRUST_DOMAIN },
    });
  });

  after(async () => {
    await stopAllSidecars();
    await appB?.close();
    await pods?.destroy();
  });

  test("app A reaches app B by B's pod address through both sidecars over mTLS", async () => {
    const { status, body } = await callB('/hello-from-a');
    assert.equal(status, 200, body);
    const reply = JSON.parse(body) as { url: string; headers: Record<string, string> };
    assert.equal(reply.url, '/hello-from-a');
    // B's app learns A's identity from B's sidecar, and the socket peer is pod A's address.
    assert.match(reply.headers['x-forwarded-client-cert'] ?? '', new RegExp(`URI=${idA.replace(/[/.]/g, '\\$&')}`));
    assert.equal(reply.headers['x-forwarded-for'], pods.a.address);
    assert.equal(reply.headers['x-forwarded-proto'], 'https');
    const inbound = await sidecarB.waitForLog((line) => line.msg === 'request' && line.direction === 'inbound' && line.path === '/hello-from-a');
    assert.equal(inbound.peer, idA);
    // A's sidecar carried it to B's pod address (where --expect-spiffe requires B's SPIFFE ID).
    const outbound = await sidecarA.waitForLog((line) => line.msg === 'request' && line.direction === 'outbound' && String(line.path).includes('/hello-from-a'));
    assert.equal(outbound.status, 200);
    assert.equal(outbound.upstream, `${pods.b.address}:8443`);
  });

  test("B's certificate is rotated (kubelet-style swap) during the calls: no call fails and the new serial is served", async () => {
    assert.equal(await servedSerialOfB(), normalizeSerial(leafB.serial));
    const calls: CallResult[] = [];
    let stopping = false;
    const callLoop = (async () => {
      while (!stopping) calls.push(await callB(`/during-rotation-${calls.length}`));
    })();
    const callsReach = async (count: number) => {
      const deadline = Date.now() + 20000;
      while (calls.length < count && Date.now() < deadline) await sleep(20);
      assert.ok(calls.length >= count, `only ${calls.length} calls completed`);
    };
    try {
      await callsReach(3);
      const next = await leafOf('pod-b', pods.b.address);
      await kubernetesAtomicWrite(certDirB, layoutFiles('kubernetes', certDirContent(next)));
      await sidecarB.waitForLog((line) => line.msg === 'certificates loaded' && normalizeSerial(String(line.serial)) === normalizeSerial(next.serial), 15000);
      const callsAtReload = calls.length;
      assert.equal(await servedSerialOfB(), normalizeSerial(next.serial));
      await callsReach(callsAtReload + 3);
    } finally {
      stopping = true;
      await callLoop;
    }
    assert.deepEqual(calls.filter((call) => call.status !== 200), [], 'every call during the rotation answered 200');
  });

  test("SIGTERM to B's sidecar while a slow call is in flight: the call completes with 200 and the sidecar exits 0", async () => {
    const slow = callB('/slow?ms=2500');
    await appB.waitForRequest((request) => request.url === '/slow?ms=2500');
    sidecarB.signal('SIGTERM');
    const { status, body } = await slow;
    assert.equal(status, 200, body);
    assert.equal((JSON.parse(body) as { url: string }).url, '/slow?ms=2500');
    const exit = await sidecarB.exited;
    assert.deepEqual(exit, { code: 0, signal: null });
  });
});
