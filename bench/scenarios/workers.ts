import os from 'node:os';
import path from 'node:path';
import { expectOk } from '../lib/http-check.js';
import { measureWrk, setupNotes, withSetup, wrkErrors, type LoadResult, type MeshSetup, type MeshSetupKey, type SetupRun } from '../lib/mesh.js';
import { nginxLogProblems, startInboundNginx, startOutboundNginx } from '../lib/nginx.js';
import { freePort, stopProcess } from '../lib/processes.js';
import { sidecarBuilt, sidecarWarnings, startOutboundSidecar } from '../lib/sidecar.js';
import { formatNumber, ratio, type ChartBar, type Scenario, type ScenarioReport } from './scenario.js';

/**
 * How one proxy scales with worker processes: wrk -> outbound proxy (1 or 2 workers) -> mTLS ->
 * one inbound nginx (the same for every setup) -> app. Only the outbound proxy changes, so the
 * difference between 1 and 2 workers is that proxy's; nginx's own scaling is the reference.
 */
function outboundSetup(key: MeshSetupKey, label: string, kind: 'nginx' | 'sidecar', workers: number, upstreamPort: () => number): MeshSetup {
  return {
    key,
    label,
    unavailable: kind === 'sidecar' && !sidecarBuilt() ? () => 'dist/cli.js not found (run `npm run build`)' : undefined,
    async start(context, dir) {
      const port = await freePort();
      const proxy =
        kind === 'nginx'
          ? await startOutboundNginx(context.tools.nginx, dir, port, upstreamPort(), context.pki.a, workers)
          : await startOutboundSidecar(port, upstreamPort(), context.pki.a, 'http', workers);
      const problems = kind === 'nginx' ? () => nginxLogProblems(dir) : () => sidecarWarnings(proxy);
      return { baseUrl: `http://127.0.0.1:${port}`, proxies: [proxy], problems };
    },
  };
}

const RATIOS: [string, MeshSetupKey, MeshSetupKey][] = [
  ['sidecar: 2 workers / 1 worker', 'sidecar-outbound-2', 'sidecar-outbound-1'],
  ['nginx: 2 workers / 1 worker', 'nginx-outbound-2', 'nginx-outbound-1'],
  ['sidecar / nginx, 1 worker each', 'sidecar-outbound-1', 'nginx-outbound-1'],
  ['sidecar / nginx, 2 workers each', 'sidecar-outbound-2', 'nginx-outbound-2'],
];

export const workers: Scenario = {
  name: 'workers',
  summary: 'one outbound proxy with 1 and 2 worker processes (--workers / worker_processes) in front of an inbound nginx',
  async run(context): Promise<ScenarioReport> {
    const { settings } = context;
    const dir = path.join(context.workDir, 'workers');
    const upstreamPort = await freePort();
    const inbound = await startInboundNginx(context.tools.nginx, path.join(dir, 'inbound-nginx'), upstreamPort, context.appPort, context.pki.b);
    const runs: SetupRun<LoadResult>[] = [];
    try {
      const setups = [
        outboundSetup('nginx-outbound-1', 'nginx, 1 worker', 'nginx', 1, () => upstreamPort),
        outboundSetup('nginx-outbound-2', 'nginx, 2 workers', 'nginx', 2, () => upstreamPort),
        outboundSetup('sidecar-outbound-1', 'sidecar, --workers 1', 'sidecar', 1, () => upstreamPort),
        outboundSetup('sidecar-outbound-2', 'sidecar, --workers 2', 'sidecar', 2, () => upstreamPort),
      ];
      for (const setup of setups) {
        runs.push(
          await withSetup(context, setup, dir, async (running) => {
            const url = `${running.baseUrl}/`;
            await expectOk(url, setup.label);
            return measureWrk(context, running, setup.label, { url, threads: settings.threads, connections: settings.connections });
          }),
        );
      }
    } finally {
      await stopProcess(inbound);
    }
    const by = (key: MeshSetupKey): LoadResult | undefined => runs.find((run) => run.setup === key)?.measured;
    const main = {
      header: ['outbound proxy', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'proxy CPU %', 'CPU s/10k req'],
      rows: runs.map(({ label, measured }) =>
        measured
          ? [label, formatNumber(measured.wrk.rps, 0), formatNumber(measured.wrk.p50Ms, 3), formatNumber(measured.wrk.p99Ms, 3), String(wrkErrors(measured.wrk)), formatNumber(measured.proxyCpuPercent, 0), formatNumber(measured.proxyCpuSecondsPer10k, 3)]
          : [label, 'skipped', '', '', '', '', ''],
      ),
    };
    const ratios = RATIOS.map(([label, top, bottom]) => ({
      label,
      rps: ratio(by(top)?.wrk.rps, by(bottom)?.wrk.rps),
      cpuPercent: ratio(by(top)?.proxyCpuPercent, by(bottom)?.proxyCpuPercent),
      cpuPer10k: ratio(by(top)?.proxyCpuSecondsPer10k, by(bottom)?.proxyCpuSecondsPer10k),
    }));
    const ratioTable = {
      header: ['ratio', 'req/s', 'proxy CPU %', 'CPU s/10k req'],
      rows: ratios.map((r) => [r.label, formatNumber(r.rps, 2), formatNumber(r.cpuPercent, 2), formatNumber(r.cpuPer10k, 2)]),
    };
    const chart: ChartBar[] = ratios.slice(0, 2).map((r) => ({ group: 'higher is better' as const, label: `workers req/s, ${r.label}`, value: r.rps }));
    const notes = [
      `wrk -t${settings.threads} -c${settings.connections} -d${settings.duration} --latency (keep-alive) -> outbound proxy -> mTLS -> one inbound nginx (1 worker, started once for all setups) -> app; tiny body, after a ${settings.warmup} warm-up per setup.`,
      'Only the outbound proxy differs between setups: nginx with worker_processes 1 or 2, the sidecar with --workers 1 or 2 (HTTP mode, --upstream listener, node:cluster).',
      `This machine has ${os.availableParallelism()} cores, shared by wrk, the inbound nginx, the app and the proxy's workers: a second worker can only use what those leave, so read the 2/1 ratio against nginx's in the same run rather than against ${os.availableParallelism()}x.`,
      ...setupNotes(runs, (measured, label) => [{ what: label, wrk: measured.wrk }]),
    ];
    return { title: 'Scenario "workers": one outbound proxy, 1 and 2 worker processes', tables: [main, ratioTable], notes, data: { setups: runs, ratios }, chart };
  },
};
