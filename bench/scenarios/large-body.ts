import path from 'node:path';
import { expectResponse } from '../lib/http-check.js';
import { measureWrk, meshSetups, setupNotes, withSetup, wrkErrors, type LoadResult, type MeshSetupKey, type RunningSetup, type SetupRun } from '../lib/mesh.js';
import { LARGE_BODY_BYTES, LARGE_BODY_PATH, UPLOAD_PATH } from '../lib/nginx.js';
import { SIDECAR_LOG_LEVEL } from '../lib/sidecar.js';
import { writePostScript } from '../lib/wrk.js';
import { formatNumber, ratio, type BenchContext, type ChartBar, type Scenario, type ScenarioReport, type Table } from './scenario.js';

type Direction = 'download' | 'upload';

interface BodyLoad extends LoadResult {
  /** Body bytes moved per second (the 1 MiB bodies only, not headers), in MiB/s. */
  mibPerSecond: number;
  /** Proxy CPU seconds per GiB of bodies. */
  proxyCpuSecondsPerGiB?: number;
}

type BodyLoads = Record<Direction, BodyLoad>;

const BODY_MIB = LARGE_BODY_BYTES / 2 ** 20;

const DIRECTIONS: Record<Direction, string> = {
  download: `GET ${LARGE_BODY_PATH} (1 MiB response)`,
  upload: `POST ${UPLOAD_PATH} with a 1 MiB body (response "ok")`,
};

const RATIOS: [string, MeshSetupKey, MeshSetupKey][] = [
  ['sidecar (http) / nginx (http)', 'sidecar', 'nginx'],
  ['sidecar (tcp) / nginx (http)', 'sidecar-tcp', 'nginx'],
  ['sidecar (tcp) / nginx (stream)', 'sidecar-tcp', 'nginx-stream'],
  ['nginx (http) / direct', 'nginx', 'direct'],
  ['sidecar (http) / direct', 'sidecar', 'direct'],
];

function withBodyRates(load: LoadResult): BodyLoad {
  const gib = (load.wrk.requests * LARGE_BODY_BYTES) / 2 ** 30;
  return {
    ...load,
    mibPerSecond: load.wrk.rps * BODY_MIB,
    proxyCpuSecondsPerGiB: load.proxyCpuSeconds !== undefined && gib > 0 ? load.proxyCpuSeconds / gib : undefined,
  };
}

async function measureBoth(context: BenchContext, label: string, running: RunningSetup, postScript: string): Promise<BodyLoads> {
  const { settings } = context;
  const load = { threads: settings.threads, connections: settings.largeBodyConnections };
  const downloadUrl = `${running.baseUrl}${LARGE_BODY_PATH}`;
  const uploadUrl = `${running.baseUrl}${UPLOAD_PATH}`;
  await expectResponse(downloadUrl, label, {}, { bodyBytes: LARGE_BODY_BYTES });
  await expectResponse(uploadUrl, label, { method: 'POST', bodyBytes: LARGE_BODY_BYTES }, { body: 'ok' });
  const download = withBodyRates(await measureWrk(context, running, `${label}, download`, { ...load, url: downloadUrl }));
  const upload = withBodyRates(await measureWrk(context, running, `${label}, upload`, { ...load, url: uploadUrl, script: postScript }));
  return { download, upload };
}

function directionTable(direction: Direction, runs: SetupRun<BodyLoads>[]): Table {
  return {
    header: [DIRECTIONS[direction], 'MiB/s', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'proxy CPU %', 'CPU s/GiB', 'proxy RSS MiB'],
    rows: runs.map(({ label, measured }) => {
      const load = measured?.[direction];
      return load
        ? [
            label,
            formatNumber(load.mibPerSecond, 0),
            formatNumber(load.wrk.rps, 0),
            formatNumber(load.wrk.p50Ms, 2),
            formatNumber(load.wrk.p99Ms, 2),
            String(wrkErrors(load.wrk)),
            formatNumber(load.proxyCpuPercent, 0),
            formatNumber(load.proxyCpuSecondsPerGiB, 2),
            formatNumber(load.proxyRssMiB, 1),
          ]
        : [label, 'skipped', '', '', '', '', '', '', ''];
    }),
  };
}

export const largeBody: Scenario = {
  name: 'large-body',
  summary: '1 MiB response bodies and 1 MiB request bodies over keep-alive, through one mesh hop',
  async run(context): Promise<ScenarioReport> {
    const { settings } = context;
    const dir = path.join(context.workDir, 'large-body');
    const postScript = await writePostScript(path.join(context.workDir, 'post-1mib.lua'), LARGE_BODY_BYTES);
    const runs: SetupRun<BodyLoads>[] = [];
    for (const setup of meshSetups) runs.push(await withSetup(context, setup, dir, (running) => measureBoth(context, setup.label, running, postScript)));
    const by = (key: MeshSetupKey): BodyLoads | undefined => runs.find((run) => run.setup === key)?.measured;

    const ratios = RATIOS.map(([label, top, bottom]) => ({
      label,
      downloadMiBps: ratio(by(top)?.download.mibPerSecond, by(bottom)?.download.mibPerSecond),
      uploadMiBps: ratio(by(top)?.upload.mibPerSecond, by(bottom)?.upload.mibPerSecond),
      downloadCpuPerGiB: ratio(by(top)?.download.proxyCpuSecondsPerGiB, by(bottom)?.download.proxyCpuSecondsPerGiB),
      uploadCpuPerGiB: ratio(by(top)?.upload.proxyCpuSecondsPerGiB, by(bottom)?.upload.proxyCpuSecondsPerGiB),
    }));
    const ratioTable: Table = {
      header: ['ratio', 'GET MiB/s', 'POST MiB/s', 'GET CPU s/GiB', 'POST CPU s/GiB'],
      rows: ratios.map((r) => [r.label, ...[r.downloadMiBps, r.uploadMiBps, r.downloadCpuPerGiB, r.uploadCpuPerGiB].map((value) => formatNumber(value, 2))]),
    };
    const chart: ChartBar[] = ratios.slice(0, 2).flatMap((r) => [
      { group: 'higher is better' as const, label: `1 MiB GET MiB/s: ${r.label}`, value: r.downloadMiBps },
      { group: 'higher is better' as const, label: `1 MiB POST MiB/s: ${r.label}`, value: r.uploadMiBps },
    ]);
    return {
      title: 'Scenario "large-body": 1 MiB bodies, keep-alive',
      tables: [directionTable('download', runs), directionTable('upload', runs), ratioTable],
      notes: [
        `wrk -t${settings.threads} -c${settings.largeBodyConnections} -d${settings.duration} --latency per direction, after a ${settings.warmup} warm-up each; uploads use a wrk Lua script (POST, 1 MiB body of "x", Content-Length).`,
        `app: ${context.appDescription}; the same app for all setups (the upload is answered only after the whole body has arrived).`,
        'MiB/s counts the 1 MiB bodies only (req/s x 1 MiB); CPU s/GiB = proxy CPU seconds per GiB of bodies moved.',
        'nginx pair (http): request bodies streamed (proxy_request_buffering off), responses buffered in memory only (proxy_max_temp_file_size 0), so neither side touches the disk.',
        `sidecar pairs at --log-level ${SIDECAR_LOG_LEVEL}; (tcp) pipes bytes with --protocol tcp.`,
        ...setupNotes(runs, (measured, label) => (Object.keys(DIRECTIONS) as Direction[]).map((direction) => ({ what: `${label}, ${direction}`, wrk: measured[direction].wrk }))),
      ],
      data: { bodyBytes: LARGE_BODY_BYTES, connections: settings.largeBodyConnections, setups: runs, ratios },
      chart,
    };
  },
};
