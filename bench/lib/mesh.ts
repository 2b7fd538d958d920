/**
 * The ways one mesh hop can be run, shared by the keep-alive scenarios ("hop", "large-body"):
 *
 *   client -> outbound proxy (plain) -> mTLS -> inbound proxy (verifies client cert) -> app
 *
 * plus "direct" (client -> app) as the ceiling of the machine. Each setup starts its proxies,
 * hands back the URL to load, and stops them afterwards; `measureWrk` runs wrk against it and
 * samples the proxies' CPU and RSS.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BenchContext } from '../scenarios/scenario.js';
import { nginxLogProblems, startInboundNginx, startInboundNginxStream, startOutboundNginx, startOutboundNginxStream } from './nginx.js';
import { freePort, sampleUsage, startProcess, stopProcess, waitForPort, type ManagedProcess } from './processes.js';
import { sidecarBuilt, sidecarWarnings, startInboundSidecar, startOutboundSidecar, type SidecarProtocol } from './sidecar.js';
import { runWrk, type WrkOptions, type WrkResult } from './wrk.js';

export type MeshSetupKey =
  | 'direct' | 'nginx' | 'nginx-stream' | 'sidecar' | 'sidecar-tcp' | 'node-floor' | 'node-floor-tcp'
  // scenario "workers": one outbound proxy with 1 or 2 worker processes
  | 'nginx-outbound-1' | 'nginx-outbound-2' | 'sidecar-outbound-1' | 'sidecar-outbound-2';

/** A running setup: the base URL (no trailing slash) the client loads and the proxy processes (none for direct). */
export interface RunningSetup {
  baseUrl: string;
  proxies: ManagedProcess[];
  /** Problems the proxies logged (nginx error.log at [error] or worse, sidecar lines at warn or worse). */
  problems(): string[];
}

export interface MeshSetup {
  key: MeshSetupKey;
  label: string;
  /** Why the setup cannot run here, or undefined when it can. */
  unavailable?: (context: BenchContext) => string | undefined;
  start(context: BenchContext, dir: string): Promise<RunningSetup>;
}

const sidecarMissing = (): string | undefined => (sidecarBuilt() ? undefined : 'dist/cli.js not found (run `npm run build`)');

function nginxPairProblems(prefixes: Record<string, string>): () => string[] {
  return () => Object.entries(prefixes).flatMap(([side, prefix]) => nginxLogProblems(prefix).map((line) => `${side} nginx: ${line}`));
}

function sidecarPair(protocol: SidecarProtocol): MeshSetup['start'] {
  return async (context) => {
    const [outboundPort, inboundPort] = [await freePort(), await freePort()];
    const inbound = await startInboundSidecar(inboundPort, context.appPort, context.pki.b, protocol);
    const outbound = await startOutboundSidecar(outboundPort, inboundPort, context.pki.a, protocol);
    return {
      baseUrl: `http://127.0.0.1:${outboundPort}`,
      proxies: [outbound, inbound],
      problems: () => [outbound, inbound].flatMap((proxy) => sidecarWarnings(proxy).map((line) => `${proxy.name}: ${line}`)),
    };
  };
}

export const meshSetups: readonly MeshSetup[] = [
  {
    key: 'direct',
    label: 'direct (client -> app)',
    async start(context) {
      return { baseUrl: `http://127.0.0.1:${context.appPort}`, proxies: [], problems: () => [] };
    },
  },
  {
    key: 'nginx',
    label: 'nginx pair (http)',
    async start(context, dir) {
      const [outboundPort, inboundPort] = [await freePort(), await freePort()];
      const prefixes = { outbound: path.join(dir, 'nginx-outbound'), inbound: path.join(dir, 'nginx-inbound') };
      const inbound = await startInboundNginx(context.tools.nginx, prefixes.inbound, inboundPort, context.appPort, context.pki.b);
      const outbound = await startOutboundNginx(context.tools.nginx, prefixes.outbound, outboundPort, inboundPort, context.pki.a);
      return { baseUrl: `http://127.0.0.1:${outboundPort}`, proxies: [outbound, inbound], problems: nginxPairProblems(prefixes) };
    },
  },
  {
    key: 'nginx-stream',
    label: 'nginx pair (stream, L4)',
    unavailable: (context) => (context.tools.nginxStream.available ? undefined : context.tools.nginxStream.reason),
    async start(context, dir) {
      const stream = context.tools.nginxStream;
      const loadModule = stream.available ? stream.loadModule : undefined;
      const [outboundPort, inboundPort] = [await freePort(), await freePort()];
      const prefixes = { outbound: path.join(dir, 'nginx-stream-outbound'), inbound: path.join(dir, 'nginx-stream-inbound') };
      const inbound = await startInboundNginxStream(context.tools.nginx, loadModule, prefixes.inbound, inboundPort, context.appPort, context.pki.b);
      const outbound = await startOutboundNginxStream(context.tools.nginx, loadModule, prefixes.outbound, outboundPort, inboundPort, context.pki.a);
      return { baseUrl: `http://127.0.0.1:${outboundPort}`, proxies: [outbound, inbound], problems: nginxPairProblems(prefixes) };
    },
  },
  { key: 'sidecar', label: 'sidecar pair (http)', unavailable: sidecarMissing, start: sidecarPair('http') },
  { key: 'sidecar-tcp', label: 'sidecar pair (tcp)', unavailable: sidecarMissing, start: sidecarPair('tcp') },
];

const NODE_FLOOR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'node-floor.ts');

/** The two halves of lib/node-floor.ts: what Node.js itself costs for a hop, nothing of a sidecar. */
function nodeFloorPair(protocol: SidecarProtocol): MeshSetup['start'] {
  return async (context) => {
    const [outboundPort, inboundPort] = [await freePort(), await freePort()];
    const start = async (side: 'outbound' | 'inbound', listenPort: number, targetPort: number, certDir: string) => {
      const managed = startProcess(`node floor ${protocol} (${side})`, process.execPath, ['--import', 'tsx', NODE_FLOOR, protocol, side, String(listenPort), String(targetPort), certDir]);
      await waitForPort(listenPort, 20_000, managed);
      return managed;
    };
    const inbound = await start('inbound', inboundPort, context.appPort, context.pki.b.dir);
    const outbound = await start('outbound', outboundPort, inboundPort, context.pki.a.dir);
    return { baseUrl: `http://127.0.0.1:${outboundPort}`, proxies: [outbound, inbound], problems: () => [] };
  };
}

/**
 * References for the hop scenario only: the cheapest Node.js pairs (lib/node-floor.ts), so the
 * report shows how much of the gap to nginx is the runtime and how much the sidecar's own work.
 */
export const nodeFloorSetups: readonly MeshSetup[] = [
  { key: 'node-floor', label: 'node floor (http)', start: nodeFloorPair('http') },
  { key: 'node-floor-tcp', label: 'node floor (tcp)', start: nodeFloorPair('tcp') },
];

export function meshSetup(key: MeshSetupKey): MeshSetup {
  return meshSetups.find((setup) => setup.key === key) as MeshSetup;
}

export interface SetupRun<T> {
  setup: MeshSetupKey;
  label: string;
  skipped?: string;
  measured?: T;
  problems?: string[];
}

/**
 * Starts `setup`, hands it to `use`, and always stops its proxies; problems they logged are read
 * after they stopped, so lines logged at shutdown count too. An unavailable setup is skipped.
 */
export async function withSetup<T>(context: BenchContext, setup: MeshSetup, dir: string, use: (running: RunningSetup) => Promise<T>): Promise<SetupRun<T>> {
  const reason = setup.unavailable?.(context);
  if (reason) {
    process.stderr.write(`  ${setup.label}: skipped, ${reason}\n`);
    return { setup: setup.key, label: setup.label, skipped: reason };
  }
  process.stderr.write(`  ${setup.label}: starting\n`);
  const running = await setup.start(context, path.join(dir, setup.key));
  let measured: T;
  try {
    measured = await use(running);
  } finally {
    for (const proxy of running.proxies) await stopProcess(proxy);
  }
  return { setup: setup.key, label: setup.label, measured, problems: running.problems() };
}

export interface LoadResult {
  wrk: WrkResult;
  /** Wall time of the measured wrk run. */
  seconds: number;
  /** CPU time of the proxies (all their processes) during the measured run; undefined for direct. */
  proxyCpuSeconds?: number;
  /** proxyCpuSeconds / seconds, in % of one core. */
  proxyCpuPercent?: number;
  /** proxyCpuSeconds per 10,000 requests. */
  proxyCpuSecondsPer10k?: number;
  /** RSS of the proxies right after the measured run. */
  proxyRssMiB?: number;
}

/** A warm-up wrk run, then the measured one with the proxies' CPU sampled around it. */
export async function measureWrk(context: BenchContext, running: RunningSetup, what: string, load: Omit<WrkOptions, 'wrk' | 'duration'>): Promise<LoadResult> {
  const { settings, tools } = context;
  process.stderr.write(`  ${what}: warm-up ${settings.warmup}, then ${settings.duration}\n`);
  await runWrk({ ...load, wrk: tools.wrk, duration: settings.warmup });
  const pids = running.proxies.map((proxy) => proxy.pid);
  const before = sampleUsage(pids);
  const startedAt = process.hrtime.bigint();
  const wrk = await runWrk({ ...load, wrk: tools.wrk, duration: settings.duration });
  const seconds = Number(process.hrtime.bigint() - startedAt) / 1e9;
  const after = sampleUsage(pids);
  for (const proxy of running.proxies) {
    if (proxy.hasExited()) throw new Error(`${proxy.name} exited during the measurement`);
  }
  if (pids.length === 0) return { wrk, seconds };
  const proxyCpuSeconds = after.cpuSeconds - before.cpuSeconds;
  return {
    wrk,
    seconds,
    proxyCpuSeconds,
    proxyCpuPercent: (proxyCpuSeconds / seconds) * 100,
    proxyCpuSecondsPer10k: wrk.requests > 0 ? (proxyCpuSeconds / wrk.requests) * 10_000 : undefined,
    proxyRssMiB: after.rssMiB,
  };
}

export function wrkErrors(wrk: WrkResult): number {
  return wrk.non2xx + Object.values(wrk.socketErrors).reduce((sum, n) => sum + n, 0);
}

/** Notes for skipped setups, logged problems (first five) and wrk errors. */
export function setupNotes<T>(runs: SetupRun<T>[], loadsOf: (measured: T, label: string) => { what: string; wrk: WrkResult }[]): string[] {
  const notes: string[] = [];
  for (const run of runs) {
    if (run.skipped) notes.push(`${run.label} skipped: ${run.skipped}.`);
    const problems = run.problems ?? [];
    for (const problem of problems.slice(0, 5)) notes.push(`logged during ${run.label}: ${problem.slice(0, 300)}`);
    if (problems.length > 5) notes.push(`... and ${problems.length - 5} more problem lines from ${run.label}`);
    for (const { what, wrk } of run.measured === undefined ? [] : loadsOf(run.measured, run.label)) {
      if (wrkErrors(wrk) > 0) notes.push(`${what}: ${wrkErrors(wrk)} errors (non-2xx ${wrk.non2xx}, socket ${JSON.stringify(wrk.socketErrors)})`);
    }
  }
  return notes;
}
