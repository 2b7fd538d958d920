/**
 * Rotation latency: time from a kubelet-style `..data` swap to the first handshake that is served
 * the new certificate, over N rotations (default 20) of one sidecar with `--reload-interval 0` (so
 * the directory watch alone picks them up). Not a test: it prints numbers and never fails on them.
 *
 *   npm run build && node --import tsx bench/rotation-latency.ts [ROTATIONS]
 *
 * t0 is taken just before the atomic write starts (the three small files are written, then the
 * rename): the figure is an upper bound by the write time, which is printed too. The client
 * handshakes back to back on fresh connections, so the resolution is one handshake.
 */
import { startEchoApp } from '../test/helpers/apps.js';
import { freshDir, issueLeaf, kubernetesAtomicWrite, layoutFiles, normalizeSerial, sharedRootCA, type Leaf } from '../test/helpers/pki.js';
import { handshake, loadedLine, waitForNextLog, type PeerCredentials } from '../test/helpers/rotation.js';
import { startSidecar } from '../test/helpers/sidecar.js';

const rotations = Number(process.argv[2] ?? '20');

function percentile(sorted: number[], fraction: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))]!;
}

function summary(label: string, values: number[], unit = 'ms'): string {
  const sorted = [...values].sort((a, b) => a - b);
  const median = sorted.length % 2 ? sorted[(sorted.length - 1) / 2]! : (sorted[sorted.length / 2 - 1]! + sorted[sorted.length / 2]!) / 2;
  return `${label.padEnd(34)} median ${median.toFixed(1)} ${unit}   p90 ${percentile(sorted, 0.9).toFixed(1)}   min ${sorted[0]!.toFixed(1)}   max ${sorted.at(-1)!.toFixed(1)}`;
}

const root = await sharedRootCA();
const leaves: Leaf[] = await Promise.all([0, 1, 2, 3].map((index) => issueLeaf(root, { cn: `latency-${index}`, dns: ['localhost'], ips: ['127.0.0.1'] })));
const client = await issueLeaf(root, { cn: 'latency-client' });
const peer: PeerCredentials = { cert: client.chainPem, key: client.keyPem, ca: root.certPem };
const files = (leaf: Leaf) => layoutFiles('kubernetes', { chainPem: leaf.chainPem, keyPem: leaf.keyPem, bundlePem: root.certPem });

const app = await startEchoApp();
const dir = await freshDir('latency-volume');
await kubernetesAtomicWrite(dir, files(leaves[0]!));
const sidecar = await startSidecar(['--cert-dir', dir, '--app', app.url, '--outbound', 'off', '--reload-interval', '0', '--log-level', 'info']);

const served: number[] = [];
const logged: number[] = [];
const writes: number[] = [];
const handshakesPerRotation: number[] = [];
try {
  for (let index = 1; index <= rotations; index += 1) {
    const next = leaves[index % leaves.length]!;
    const wanted = normalizeSerial(next.serial);
    const mark = sidecar.logs().length;
    const loaded = waitForNextLog(sidecar, loadedLine(next.serial), mark, 10000).then(() => performance.now());
    const t0 = performance.now();
    await kubernetesAtomicWrite(dir, files(next));
    writes.push(performance.now() - t0);
    let attempts = 0;
    for (;;) {
      attempts += 1;
      const outcome = await handshake(sidecar.inbound, peer);
      if (outcome.servedSerial === wanted) break;
      if (performance.now() - t0 > 10000) throw new Error(`rotation ${index}: serial ${wanted} not served within 10 s`);
    }
    served.push(performance.now() - t0);
    logged.push((await loaded) - t0);
    handshakesPerRotation.push(attempts);
    // Let the old version directory removal and any trailing events settle.
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
} finally {
  await sidecar.stop();
  await app.close();
}

console.log(`rotation latency over ${rotations} kubelet-style ..data swaps (--reload-interval 0; watch debounce is 150 ms in src/certs/store.ts)`);
console.log(summary('swap -> first new-serial handshake', served));
console.log(summary('swap -> "certificates loaded" line', logged));
console.log(summary('atomic write itself (t0 -> return)', writes));
console.log(summary('handshakes per rotation', handshakesPerRotation, 'handshakes'));
console.log(`raw served ms: ${served.map((value) => value.toFixed(0)).join(' ')}`);
