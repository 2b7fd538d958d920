import path from 'node:path';
import { nginxLogProblems, startInboundNginx, startOutboundNginx } from '../lib/nginx.js';
import { expectOk } from '../lib/http-check.js';
import { freePort, sampleUsage, stopProcess, type ManagedProcess } from '../lib/processes.js';
import { SIDECAR_LOG_LEVEL, sidecarBuilt, sidecarWarnings, startInboundSidecar, startOutboundSidecar } from '../lib/sidecar.js';
import { runWrk, type WrkResult } from '../lib/wrk.js';
import { formatNumber, ratio, type BenchContext, type Scenario, type ScenarioReport } from './scenario.js';

/** A running setup: the URL wrk hits and the proxy processes (empty for direct) whose CPU/RSS we sample. */
interface RunningSetup {
  url: string;
  proxies: ManagedProcess[];
  /** Problems the proxies logged (nginx error.log at [error] or worse, sidecar lines at warn or worse). */
  problems(): string[];
}

interface Setup {
  key: 'direct' | 'nginx' | 'sidecar';
  label: string;
  /** Why the setup cannot run here, or undefined when it can. */
  unavailable?: () => string | undefined;
  start(context: BenchContext, dir: string): Promise<RunningSetup>;
}

interface SetupResult {
  setup: string;
  label: string;
  skipped?: string;
  wrk?: WrkResult;
  /** CPU used by the proxy pair during the measured window, in % of one core. */
  proxyCpuPercent?: number;
  proxyRssMiB?: number;
  problems?: string[];
}

const setups: Setup[] = [
  {
    key: 'direct',
    label: 'direct (wrk -> app)',
    async start(context) {
      return { url: `http://127.0.0.1:${context.appPort}/`, proxies: [], problems: () => [] };
    },
  },
  {
    key: 'nginx',
    label: 'nginx pair',
    async start(context, dir) {
      const [outboundPort, inboundPort] = [await freePort(), await freePort()];
      const prefixes = { outbound: path.join(dir, 'nginx-outbound'), inbound: path.join(dir, 'nginx-inbound') };
      const inbound = await startInboundNginx(context.tools.nginx, prefixes.inbound, inboundPort, context.appPort, context.pki.b);
      const outbound = await startOutboundNginx(context.tools.nginx, prefixes.outbound, outboundPort, inboundPort, context.pki.a);
      return {
        url: `http://127.0.0.1:${outboundPort}/`,
        proxies: [outbound, inbound],
        problems: () => Object.entries(prefixes).flatMap(([side, prefix]) => nginxLogProblems(prefix).map((line) => `${side} nginx: ${line}`)),
      };
    },
  },
  {
    key: 'sidecar',
    label: 'sidecar pair',
    unavailable: () => (sidecarBuilt() ? undefined : 'dist/cli.js not found (run `npm run build`)'),
    async start(context) {
      const [outboundPort, inboundPort] = [await freePort(), await freePort()];
      const inbound = await startInboundSidecar(inboundPort, context.appPort, context.pki.b);
      const outbound = await startOutboundSidecar(outboundPort, inboundPort, context.pki.a);
      return {
        url: `http://127.0.0.1:${outboundPort}/`,
        proxies: [outbound, inbound],
        problems: () => [outbound, inbound].flatMap((proxy) => sidecarWarnings(proxy).map((line) => `${proxy.name}: ${line}`)),
      };
    },
  },
];

async function measure(context: BenchContext, setup: Setup, dir: string): Promise<SetupResult> {
  const reason = setup.unavailable?.();
  if (reason) {
    process.stderr.write(`  ${setup.label}: skipped, ${reason}\n`);
    return { setup: setup.key, label: setup.label, skipped: reason };
  }
  const { settings, tools } = context;
  process.stderr.write(`  ${setup.label}: starting\n`);
  const running = await setup.start(context, path.join(dir, setup.key));
  let result: SetupResult;
  try {
    await expectOk(running.url, setup.label);
    process.stderr.write(`  ${setup.label}: warm-up ${settings.warmup}, then ${settings.duration}\n`);
    const wrkOptions = { wrk: tools.wrk, url: running.url, threads: settings.threads, connections: settings.connections };
    await runWrk({ ...wrkOptions, duration: settings.warmup });
    const pids = running.proxies.map((proxy) => proxy.pid);
    const before = sampleUsage(pids);
    const startedAt = process.hrtime.bigint();
    const wrk = await runWrk({ ...wrkOptions, duration: settings.duration });
    const seconds = Number(process.hrtime.bigint() - startedAt) / 1e9;
    const after = sampleUsage(pids);
    for (const proxy of running.proxies) {
      if (proxy.hasExited()) throw new Error(`${proxy.name} exited during the measurement`);
    }
    result = {
      setup: setup.key,
      label: setup.label,
      wrk,
      proxyCpuPercent: pids.length > 0 ? ((after.cpuSeconds - before.cpuSeconds) / seconds) * 100 : undefined,
      proxyRssMiB: pids.length > 0 ? after.rssMiB : undefined,
    };
  } finally {
    for (const proxy of running.proxies) await stopProcess(proxy);
  }
  // Read after the proxies stopped, so problems logged at shutdown count too.
  return { ...result, problems: running.problems() };
}

export const keepaliveHop: Scenario = {
  name: 'hop',
  summary: 'one mesh hop over keep-alive: wrk -> outbound proxy -> mTLS -> inbound proxy -> app',
  async run(context): Promise<ScenarioReport> {
    const { settings } = context;
    const results: SetupResult[] = [];
    for (const setup of setups) results.push(await measure(context, setup, path.join(context.workDir, 'hop')));
    const by = (key: string): SetupResult | undefined => results.find((result) => result.setup === key && result.wrk);

    const errorsOf = (wrk: WrkResult): number => wrk.non2xx + Object.values(wrk.socketErrors).reduce((sum, n) => sum + n, 0);
    const main = {
      header: ['setup', 'req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'errors', 'proxy CPU %', 'proxy RSS MiB'],
      rows: results.map((result) =>
        result.wrk
          ? [
              result.label,
              formatNumber(result.wrk.rps, 0),
              formatNumber(result.wrk.p50Ms, 3),
              formatNumber(result.wrk.p90Ms, 3),
              formatNumber(result.wrk.p99Ms, 3),
              String(errorsOf(result.wrk)),
              formatNumber(result.proxyCpuPercent, 0),
              formatNumber(result.proxyRssMiB, 1),
            ]
          : [result.label, 'skipped', '', '', '', '', '', ''],
      ),
    };
    const pairs: [string, string, string][] = [
      ['sidecar / nginx', 'sidecar', 'nginx'],
      ['nginx / direct', 'nginx', 'direct'],
      ['sidecar / direct', 'sidecar', 'direct'],
    ];
    const ratios = pairs.map(([label, top, bottom]) => {
      const a = by(top)?.wrk;
      const b = by(bottom)?.wrk;
      return {
        label,
        rps: ratio(a?.rps, b?.rps),
        p50: ratio(a?.p50Ms, b?.p50Ms),
        p99: ratio(a?.p99Ms, b?.p99Ms),
        cpu: ratio(by(top)?.proxyCpuPercent, by(bottom)?.proxyCpuPercent),
      };
    });
    const ratioTable = {
      header: ['ratio', 'req/s', 'p50', 'p99', 'proxy CPU'],
      rows: ratios.map((r) => [r.label, formatNumber(r.rps, 2), formatNumber(r.p50, 2), formatNumber(r.p99, 2), formatNumber(r.cpu, 2)]),
    };

    const notes = [
      `wrk -t${settings.threads} -c${settings.connections} -d${settings.duration} --latency (keep-alive), after a ${settings.warmup} warm-up per setup; tiny body ("ok").`,
      `app: ${context.appDescription}, the same for all setups. Certificates: ${context.pki.keyType === 'rsa' ? 'RSA 2048' : 'EC P-256'}, minted by openssl, shared by nginx and the sidecar.`,
      'nginx pair: 2 processes x 1 worker; upstream keepalive 64 on both hops, proxy_ssl_session_reuse on, inbound sets an XFCC-like header (fingerprint + subject DN).',
      `sidecar pair: 2 processes (A: --upstream, B: --inbound), --log-level ${SIDECAR_LOG_LEVEL} so the per-request info access log is off.`,
      'proxy CPU % = CPU time of both proxies (all their processes) during the measured window / wall time (100 % = one core). All of wrk, the app and both proxies share this machine\'s cores.',
    ];
    for (const result of results) {
      if (result.skipped) notes.push(`${result.label} skipped: ${result.skipped}.`);
      const problems = result.problems ?? [];
      for (const problem of problems.slice(0, 5)) notes.push(`logged during ${result.label}: ${problem.slice(0, 300)}`);
      if (problems.length > 5) notes.push(`... and ${problems.length - 5} more problem lines from ${result.label}`);
      if (result.wrk && errorsOf(result.wrk) > 0) notes.push(`${result.label}: ${errorsOf(result.wrk)} errors (non-2xx ${result.wrk.non2xx}, socket ${JSON.stringify(result.wrk.socketErrors)})`);
    }
    return {
      title: 'Scenario "hop": one mesh hop, keep-alive',
      tables: [main, ratioTable],
      notes,
      data: { setups: results, ratios },
    };
  },
};
