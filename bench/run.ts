/**
 * `npm run bench [-- SCENARIO...]`: compares the sidecar with an nginx pair and with no proxy at all,
 * on the same machine, app and certificates. See bench/README.md.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CHART_FILE, RESULTS_FILE, writeChart } from './chart.js';
import { installSignalHandlers, interruptedBySignal, onCleanup, runCleanup } from './lib/cleanup.js';
import { APP_DESCRIPTION, startAppNginx } from './lib/nginx.js';
import { mintBenchPki, type BenchPki, type KeyType } from './lib/pki.js';
import { freePort } from './lib/processes.js';
import { SIDECAR_LOG_LEVEL, sidecarBuilt } from './lib/sidecar.js';
import { ensureTools } from './lib/tools.js';
import { handshakes } from './scenarios/handshakes.js';
import { idle } from './scenarios/idle.js';
import { keepaliveHop } from './scenarios/keepalive-hop.js';
import { largeBody } from './scenarios/large-body.js';
import { soak } from './scenarios/soak.js';
import { workers } from './scenarios/workers.js';
import { keyName, type BenchContext, type BenchSettings, type Scenario, type ScenarioReport, type Table } from './scenarios/scenario.js';

const scenarios: Scenario[] = [keepaliveHop, largeBody, handshakes, idle, workers, soak];
/** Not a scenario: redraws bench/results/chart.svg from the last results, without measuring. */
const CHART_COMMAND = 'chart';

class UsageError extends Error {}

function usage(): string {
  return [
    'usage: npm run bench [-- SCENARIO...]        (default: every scenario)',
    '',
    'scenarios:',
    ...scenarios.map((scenario) => `  ${scenario.name.padEnd(12)} ${scenario.summary}`),
    '',
    `  ${CHART_COMMAND.padEnd(12)} only redraw ${path.relative(process.cwd(), CHART_FILE)} from ${path.relative(process.cwd(), RESULTS_FILE)} (also done after every run)`,
    '',
    'environment:',
    '  BENCH_DURATION=10s     measured time per setup (wrk syntax: 30s, 1m)',
    '  BENCH_WARMUP=2s        warm-up per setup before measuring',
    '  BENCH_CONNECTIONS=50   wrk connections;  BENCH_THREADS=2 wrk threads',
    '  BENCH_LARGE_BODY_CONNECTIONS=10  wrk connections in "large-body"',
    '  BENCH_KEY=rsa|ec       RSA 2048 (default, like `certs issue`) or EC P-256 ("handshakes" always runs both)',
    '  BENCH_HANDSHAKE_CLIENTS=2  parallel openssl s_time clients in "handshakes"',
    '  BENCH_IDLE_CONNECTIONS=1000  idle keep-alive connections held in "idle"',
    '  BENCH_NGINX, BENCH_WRK paths to nginx / wrk if not on PATH',
    '  SOAK_DURATION=60s      load time of "soak" (60s, 5m, or seconds)',
  ].join('\n');
}

function durationSeconds(name: string, value: string): number {
  const match = /^(\d+)(s|m)?$/.exec(value);
  if (!match || Number(match[1]) === 0) throw new UsageError(`${name}=${value}: expected a duration like 10s, 30s or 1m`);
  return Number(match[1]) * (match[2] === 'm' ? 60 : 1);
}

function positiveInteger(name: string, value: string): number {
  if (!/^[1-9]\d*$/.test(value)) throw new UsageError(`${name}=${value}: expected a positive integer`);
  return Number(value);
}

function readSettings(): BenchSettings {
  const duration = process.env.BENCH_DURATION ?? '10s';
  const warmup = process.env.BENCH_WARMUP ?? '2s';
  durationSeconds('BENCH_WARMUP', warmup);
  const keyType = (process.env.BENCH_KEY ?? 'rsa') as KeyType;
  if (keyType !== 'rsa' && keyType !== 'ec') throw new UsageError(`BENCH_KEY=${keyType}: expected rsa or ec`);
  const threads = positiveInteger('BENCH_THREADS', process.env.BENCH_THREADS ?? '2');
  const connections = positiveInteger('BENCH_CONNECTIONS', process.env.BENCH_CONNECTIONS ?? '50');
  const largeBodyConnections = positiveInteger('BENCH_LARGE_BODY_CONNECTIONS', process.env.BENCH_LARGE_BODY_CONNECTIONS ?? '10');
  for (const [name, value] of [['BENCH_CONNECTIONS', connections], ['BENCH_LARGE_BODY_CONNECTIONS', largeBodyConnections]] as const) {
    if (value < threads) throw new UsageError(`${name} (${value}) must be at least BENCH_THREADS (${threads})`);
  }
  return { duration, durationSeconds: durationSeconds('BENCH_DURATION', duration), warmup, connections, threads, largeBodyConnections, keyType };
}

function commandLine(): string[] {
  return process.argv.slice(2).filter((arg) => arg !== '--');
}

function selectScenarios(names: string[]): Scenario[] {
  if (names.includes('--help') || names.includes('-h')) {
    process.stdout.write(`${usage()}\n`);
    process.exit(0);
  }
  if (names.length === 0) return scenarios;
  return names.map((name) => {
    const scenario = scenarios.find((candidate) => candidate.name === name);
    if (scenario) return scenario;
    if (name === CHART_COMMAND) throw new UsageError(`"${CHART_COMMAND}" runs alone: \`npm run bench -- ${CHART_COMMAND}\``);
    throw new UsageError(`unknown scenario "${name}".\n\n${usage()}`);
  });
}

async function chartOnly(): Promise<void> {
  const written = await writeChart();
  process.stdout.write(`chart written to ${written.map((file) => path.relative(process.cwd(), file)).join(', ')}\n`);
}

function renderTable(table: Table): string {
  const widths = table.header.map((cell, column) => Math.max(cell.length, ...table.rows.map((row) => (row[column] ?? '').length)));
  const line = (cells: string[]): string =>
    cells.map((cell, column) => ((table.textColumns ?? [0]).includes(column) ? cell.padEnd(widths[column]) : cell.padStart(widths[column]))).join('  ').trimEnd();
  return [line(table.header), widths.map((width) => '-'.repeat(width)).join('  '), ...table.rows.map(line)].join('\n');
}

function renderReport(report: ScenarioReport): string {
  return [`\n== ${report.title} ==`, ...report.tables.map((table) => `\n${renderTable(table)}`), '', ...report.notes.map((note) => `  * ${note}`)].join('\n');
}

async function main(): Promise<void> {
  installSignalHandlers();
  const args = commandLine();
  if (args.length === 1 && args[0] === CHART_COMMAND) return chartOnly();
  const selected = selectScenarios(args);
  const settings = readSettings();
  const tools = ensureTools();
  if (!sidecarBuilt()) process.stderr.write('bench: dist/cli.js not found, sidecar setups will be skipped (run `npm run build`)\n');

  const workDir = await mkdtemp(path.join(os.tmpdir(), 'mtls-sidecar-bench-'));
  onCleanup(() => rm(workDir, { recursive: true, force: true }));
  const minted = new Map<KeyType, Promise<BenchPki>>();
  const pkiFor = (keyType: KeyType): Promise<BenchPki> => {
    let pki = minted.get(keyType);
    if (!pki) {
      process.stderr.write(`bench: minting ${keyName(keyType)} certificates with openssl in ${workDir}\n`);
      pki = mintBenchPki(path.join(workDir, `pki-${keyType}`), keyType);
      minted.set(keyType, pki);
    }
    return pki;
  };
  const pki = await pkiFor(settings.keyType);

  const appPort = await freePort();
  await startAppNginx(tools.nginx, path.join(workDir, 'app'), appPort);
  const context: BenchContext = {
    tools,
    settings,
    pki,
    pkiFor,
    workDir,
    appPort,
    appDescription: APP_DESCRIPTION,
  };

  const reports: Record<string, ScenarioReport> = {};
  for (const scenario of selected) {
    process.stderr.write(`bench: scenario ${scenario.name}: ${scenario.summary}\n`);
    const report = await scenario.run(context);
    reports[scenario.name] = report;
    process.stdout.write(`${renderReport(report)}\n`);
  }

  const cpus = os.cpus();
  const result = {
    date: new Date().toISOString(),
    command: `BENCH_DURATION=${settings.duration} npm run bench${args.length > 0 ? ` -- ${args.join(' ')}` : ''}`,
    machine: { cpus: cpus.length, cpuModel: cpus[0]?.model ?? 'unknown', memoryGiB: Math.round(os.totalmem() / 2 ** 30), platform: `${os.platform()} ${os.release()}` },
    versions: { node: process.version, ...tools.versions },
    settings: {
      ...settings,
      app: context.appDescription,
      sidecarLogLevel: SIDECAR_LOG_LEVEL,
      nginxStream: tools.nginxStream.available ? (tools.nginxStream.loadModule ?? 'built in') : `unavailable: ${tools.nginxStream.reason}`,
    },
    scenarios: Object.fromEntries(Object.entries(reports).map(([name, report]) => [name, { title: report.title, notes: report.notes, ...report.data }])),
    chart: Object.values(reports).flatMap((report) => report.chart),
  };
  await mkdir(path.dirname(RESULTS_FILE), { recursive: true });
  await writeFile(RESULTS_FILE, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(`\nmachine: ${cpus.length} x ${result.machine.cpuModel}; node ${process.version}, nginx ${tools.versions.nginx}, ${tools.versions.wrk}, ${tools.versions.openssl}\n`);
  const charted = await writeChart();
  process.stdout.write(`results written to ${[RESULTS_FILE, ...charted].map((file) => path.relative(process.cwd(), file)).join(', ')}\n`);
}

let exitCode = 0;
try {
  await main();
} catch (error) {
  if (error instanceof UsageError) {
    process.stderr.write(`bench: ${error.message}\n`);
    exitCode = 2;
  } else if (!interruptedBySignal()) {
    process.stderr.write(`bench failed: ${error instanceof Error ? error.message : String(error)}\n`);
    exitCode = 1;
  }
} finally {
  await runCleanup();
}
process.exit(exitCode);
