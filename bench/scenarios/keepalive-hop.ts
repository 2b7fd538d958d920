import path from 'node:path';
import { expectOk } from '../lib/http-check.js';
import { measureWrk, meshSetups, nodeFloorSetups, setupNotes, withSetup, wrkErrors, type LoadResult, type MeshSetupKey, type SetupRun } from '../lib/mesh.js';
import { SIDECAR_LOG_LEVEL } from '../lib/sidecar.js';
import { formatNumber, keyName, ratio, type ChartBar, type Scenario, type ScenarioReport } from './scenario.js';

/** The ratio rows: [label, numerator setup, denominator setup]. */
const RATIOS: [string, MeshSetupKey, MeshSetupKey][] = [
  ['sidecar (http) / nginx (http)', 'sidecar', 'nginx'],
  ['sidecar (tcp) / nginx (http)', 'sidecar-tcp', 'nginx'],
  ['sidecar (tcp) / nginx (stream)', 'sidecar-tcp', 'nginx-stream'],
  ['nginx (http) / direct', 'nginx', 'direct'],
  ['sidecar (http) / direct', 'sidecar', 'direct'],
  ['sidecar (http) / node floor (http)', 'sidecar', 'node-floor'],
  ['sidecar (tcp) / node floor (tcp)', 'sidecar-tcp', 'node-floor-tcp'],
  ['node floor (http) / nginx (http)', 'node-floor', 'nginx'],
];

export const keepaliveHop: Scenario = {
  name: 'hop',
  summary: 'one mesh hop over keep-alive: wrk -> outbound proxy -> mTLS -> inbound proxy -> app',
  async run(context): Promise<ScenarioReport> {
    const { settings } = context;
    const dir = path.join(context.workDir, 'hop');
    const runs: SetupRun<LoadResult>[] = [];
    for (const setup of [...meshSetups, ...nodeFloorSetups]) {
      runs.push(
        await withSetup(context, setup, dir, async (running) => {
          const url = `${running.baseUrl}/`;
          await expectOk(url, setup.label);
          return measureWrk(context, running, setup.label, { url, threads: settings.threads, connections: settings.connections });
        }),
      );
    }
    const by = (key: MeshSetupKey): LoadResult | undefined => runs.find((run) => run.setup === key)?.measured;

    const main = {
      header: ['setup', 'req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'errors', 'proxy CPU %', 'CPU s/10k req', 'proxy RSS MiB'],
      rows: runs.map(({ label, measured }) =>
        measured
          ? [
              label,
              formatNumber(measured.wrk.rps, 0),
              formatNumber(measured.wrk.p50Ms, 3),
              formatNumber(measured.wrk.p90Ms, 3),
              formatNumber(measured.wrk.p99Ms, 3),
              String(wrkErrors(measured.wrk)),
              formatNumber(measured.proxyCpuPercent, 0),
              formatNumber(measured.proxyCpuSecondsPer10k, 3),
              formatNumber(measured.proxyRssMiB, 1),
            ]
          : [label, 'skipped', '', '', '', '', '', '', ''],
      ),
    };
    const ratios = RATIOS.map(([label, top, bottom]) => ({
      label,
      rps: ratio(by(top)?.wrk.rps, by(bottom)?.wrk.rps),
      p50: ratio(by(top)?.wrk.p50Ms, by(bottom)?.wrk.p50Ms),
      p99: ratio(by(top)?.wrk.p99Ms, by(bottom)?.wrk.p99Ms),
      cpuPer10k: ratio(by(top)?.proxyCpuSecondsPer10k, by(bottom)?.proxyCpuSecondsPer10k),
    }));
    const ratioTable = {
      header: ['ratio', 'req/s', 'p50', 'p99', 'CPU s/10k req'],
      rows: ratios.map((r) => [r.label, formatNumber(r.rps, 2), formatNumber(r.p50, 2), formatNumber(r.p99, 2), formatNumber(r.cpuPer10k, 2)]),
    };
    const chart: ChartBar[] = ratios.slice(0, 3).flatMap((r) => [
      { group: 'higher is better' as const, label: `hop req/s: ${r.label}`, value: r.rps },
      { group: 'lower is better' as const, label: `hop CPU s/10k req: ${r.label}`, value: r.cpuPer10k },
    ]);

    const notes = [
      `wrk -t${settings.threads} -c${settings.connections} -d${settings.duration} --latency (keep-alive), after a ${settings.warmup} warm-up per setup; tiny body ("ok").`,
      `app: ${context.appDescription}, the same for all setups. Certificates: ${keyName(context.pki.keyType)}, minted by openssl, shared by nginx and the sidecar.`,
      'nginx pair (http): 2 processes x 1 worker; upstream keepalive 64 on both hops, proxy_ssl_session_reuse on, inbound sets an XFCC-like header (fingerprint + subject DN).',
      'nginx pair (stream, L4): 2 processes x 1 worker, the same TLS settings, bytes piped, one upstream connection per client connection (no pool), no header.',
      'node floor pairs (lib/node-floor.ts): the least a Node.js proxy pair can do for the same hop, as a reference for what the runtime costs: (http) node:http/https servers forwarding with undici Pools (the sidecar\'s libraries), (tcp) the same TLS legs joined with stream.pipe; no allow-list, identity header, header filtering, error catalogue, logs, metrics or timeouts.',
      `sidecar pairs: 2 processes (A: --upstream, B: --inbound), --log-level ${SIDECAR_LOG_LEVEL} so the per-request info access log is off; (tcp) adds --protocol tcp on both and B's --app tcp://.`,
      'proxy CPU % = CPU time of both proxies (all their processes) during the measured window / wall time (100 % = one core); CPU s/10k req = that CPU time / requests x 10,000. All of wrk, the app and both proxies share this machine\'s cores.',
      ...setupNotes(runs, (measured, label) => [{ what: label, wrk: measured.wrk }]),
    ];
    return {
      title: 'Scenario "hop": one mesh hop, keep-alive',
      tables: [main, ratioTable],
      notes,
      data: { setups: runs, ratios },
      chart,
    };
  },
};
