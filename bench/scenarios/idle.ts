import path from 'node:path';
import { expectOk } from '../lib/http-check.js';
import { holdConnections } from '../lib/idle-client.js';
import { nginxLogProblems, startInboundNginx, startInboundNginxStream } from '../lib/nginx.js';
import { freePort, sampleUsage, sleep, stopProcess, type ManagedProcess } from '../lib/processes.js';
import { sidecarBuilt, sidecarWarnings, startDefaultSidecar, type SidecarProtocol } from '../lib/sidecar.js';
import { formatNumber, keyName, ratio, type BenchContext, type ChartBar, type Scenario, type ScenarioReport } from './scenario.js';

/** Memory settles for this long after start, after the warm-up request and after opening or closing the connections. */
const SETTLE_MS = 2000;

type ServerKey = 'nginx' | 'nginx-stream' | 'sidecar' | 'sidecar-tcp';

interface RunningServer {
  process: ManagedProcess;
  port: number;
  /** The sidecar's own count of open inbound connections (admin /metrics), when it has one. */
  activeConnections?: () => Promise<number | undefined>;
  problems(): string[];
}

interface IdleServer {
  key: ServerKey;
  label: string;
  unavailable?: (context: BenchContext) => string | undefined;
  start(context: BenchContext, dir: string): Promise<RunningServer>;
}

interface IdleResult {
  server: ServerKey;
  label: string;
  skipped?: string;
  /** Right after start, before any request (the sidecar's readiness probe did one handshake). */
  freshRssMiB?: number;
  /** After one request on one connection, closed again: the base for the per-connection figure. */
  warmRssMiB?: number;
  withConnectionsRssMiB?: number;
  afterCloseRssMiB?: number;
  /** (withConnections - warm) / connections held. */
  kibPerConnection?: number;
  connectionsHeld?: number;
  serverCountedConnections?: number;
  problems?: string[];
}

async function inboundGauge(adminPort: number): Promise<number | undefined> {
  try {
    const response = await fetch(`http://127.0.0.1:${adminPort}/metrics`);
    const text = await response.text();
    const line = /^sidecar_connections_active\{[^}]*direction="inbound"[^}]*\}\s+(\d+)/m.exec(text);
    return line ? Number(line[1]) : undefined;
  } catch {
    return undefined;
  }
}

function defaultSidecar(protocol: SidecarProtocol): IdleServer['start'] {
  return async (context) => {
    const ports = { inbound: await freePort(), outbound: await freePort(), admin: await freePort() };
    const managed = await startDefaultSidecar(ports, context.appPort, context.pki.b, protocol);
    return { process: managed, port: ports.inbound, activeConnections: () => inboundGauge(ports.admin), problems: () => sidecarWarnings(managed) };
  };
}

const sidecarMissing = (): string | undefined => (sidecarBuilt() ? undefined : 'dist/cli.js not found (run `npm run build`)');

const idleServers: IdleServer[] = [
  {
    key: 'nginx',
    label: 'inbound nginx (http)',
    async start(context, dir) {
      const port = await freePort();
      const prefix = path.join(dir, 'nginx-inbound');
      const managed = await startInboundNginx(context.tools.nginx, prefix, port, context.appPort, context.pki.b);
      return { process: managed, port, problems: () => nginxLogProblems(prefix) };
    },
  },
  {
    key: 'nginx-stream',
    label: 'inbound nginx (stream)',
    unavailable: (context) => (context.tools.nginxStream.available ? undefined : context.tools.nginxStream.reason),
    async start(context, dir) {
      const stream = context.tools.nginxStream;
      const port = await freePort();
      const prefix = path.join(dir, 'nginx-stream-inbound');
      const managed = await startInboundNginxStream(context.tools.nginx, stream.available ? stream.loadModule : undefined, prefix, port, context.appPort, context.pki.b);
      return { process: managed, port, problems: () => nginxLogProblems(prefix) };
    },
  },
  { key: 'sidecar', label: 'sidecar (http, defaults)', unavailable: sidecarMissing, start: defaultSidecar('http') },
  { key: 'sidecar-tcp', label: 'sidecar (tcp, defaults)', unavailable: sidecarMissing, start: defaultSidecar('tcp') },
];

function connectionCount(): number {
  const value = process.env.BENCH_IDLE_CONNECTIONS ?? '1000';
  if (!/^[1-9]\d*$/.test(value)) throw new Error(`BENCH_IDLE_CONNECTIONS=${value}: expected a positive integer`);
  return Number(value);
}

const rssOf = (managed: ManagedProcess): number => sampleUsage([managed.pid]).rssMiB;

async function measure(context: BenchContext, setup: IdleServer, dir: string, count: number): Promise<IdleResult> {
  const base = { server: setup.key, label: setup.label };
  const reason = setup.unavailable?.(context);
  if (reason) {
    process.stderr.write(`  ${setup.label}: skipped, ${reason}\n`);
    return { ...base, skipped: reason };
  }
  process.stderr.write(`  ${setup.label}: starting\n`);
  const running = await setup.start(context, dir);
  const server = running.process;
  let result: IdleResult;
  try {
    await sleep(SETTLE_MS);
    const freshRssMiB = rssOf(server);
    await expectOk(`https://127.0.0.1:${running.port}/`, setup.label, context.pki.a);
    await sleep(SETTLE_MS);
    const warmRssMiB = rssOf(server);
    process.stderr.write(`  ${setup.label}: opening ${count} keep-alive mTLS connections, one request each\n`);
    const held = await holdConnections({ port: running.port, identity: context.pki.a, count });
    await sleep(SETTLE_MS);
    const withConnectionsRssMiB = rssOf(server);
    const connectionsHeld = held.open();
    const serverCountedConnections = await running.activeConnections?.();
    await held.close();
    await sleep(SETTLE_MS);
    const afterCloseRssMiB = rssOf(server);
    if (server.hasExited()) throw new Error(`${server.name} exited during the measurement`);
    result = {
      ...base,
      freshRssMiB,
      warmRssMiB,
      withConnectionsRssMiB,
      afterCloseRssMiB,
      kibPerConnection: connectionsHeld > 0 ? ((withConnectionsRssMiB - warmRssMiB) * 1024) / connectionsHeld : undefined,
      connectionsHeld,
      serverCountedConnections,
    };
  } finally {
    await stopProcess(server);
  }
  return { ...result, problems: running.problems() };
}

export const idle: Scenario = {
  name: 'idle',
  summary: 'memory: idle RSS of a fresh sidecar (inbound + outbound + admin) and RSS per idle keep-alive mTLS connection, vs inbound nginx',
  async run(context): Promise<ScenarioReport> {
    const count = connectionCount();
    const dir = path.join(context.workDir, 'idle');
    const results: IdleResult[] = [];
    for (const setup of idleServers) results.push(await measure(context, setup, dir, count));
    const by = (key: ServerKey): IdleResult | undefined => results.find((result) => result.server === key && !result.skipped);
    const table = {
      header: ['server', 'fresh RSS MiB', 'after 1 request MiB', `with ${count} conns MiB`, 'after close MiB', 'KiB/connection', 'held', 'server counted'],
      rows: results.map((result) =>
        result.skipped
          ? [result.label, 'skipped', '', '', '', '', '', '']
          : [
              result.label,
              formatNumber(result.freshRssMiB, 1),
              formatNumber(result.warmRssMiB, 1),
              formatNumber(result.withConnectionsRssMiB, 1),
              formatNumber(result.afterCloseRssMiB, 1),
              formatNumber(result.kibPerConnection, 1),
              String(result.connectionsHeld ?? 'n/a'),
              String(result.serverCountedConnections ?? 'n/a'),
            ],
      ),
    };
    const pairs: [string, ServerKey, ServerKey][] = [
      ['sidecar (http) / nginx (http)', 'sidecar', 'nginx'],
      ['sidecar (tcp) / nginx (stream)', 'sidecar-tcp', 'nginx-stream'],
    ];
    const ratios = pairs.map(([label, top, bottom]) => ({
      label,
      freshRss: ratio(by(top)?.freshRssMiB, by(bottom)?.freshRssMiB),
      perConnection: ratio(by(top)?.kibPerConnection, by(bottom)?.kibPerConnection),
    }));
    const ratioTable = {
      header: ['ratio', 'fresh RSS', 'KiB/connection'],
      rows: ratios.map((r) => [r.label, formatNumber(r.freshRss, 2), formatNumber(r.perConnection, 2)]),
    };
    const chart: ChartBar[] = ratios.slice(0, 1).flatMap((r) => [
      { group: 'lower is better' as const, label: `idle RSS: ${r.label}`, value: r.freshRss },
      { group: 'lower is better' as const, label: `RSS per idle connection: ${r.label}`, value: r.perConnection },
    ]);
    const notes = [
      `Each server is started fresh; RSS is sampled ${SETTLE_MS / 1000} s after start, after one request (GET /, connection closed), with ${count} idle keep-alive mTLS connections held by a Node client in the bench process (client cert A, ${keyName(context.pki.keyType)}, full handshakes, one GET / each, opened 20 at a time), and after closing them.`,
      'KiB/connection = (RSS with the connections - RSS after 1 request) / connections still open; "server counted" is the sidecar\'s sidecar_connections_active{direction="inbound"} from /metrics at that moment.',
      'sidecar: inbound, outbound forward proxy and admin listeners, every flag at its default (log level info) except the ports; (tcp) adds --protocol tcp and --app tcp://. Its idle timeout (60 s default) is longer than the measurement.',
      'nginx: master + worker RSS summed (their shared pages count twice), 1 worker, the same config as in "hop" (keepalive_timeout 75 s default).',
    ];
    for (const result of results) {
      if (result.skipped) notes.push(`${result.label} skipped: ${result.skipped}.`);
      for (const problem of (result.problems ?? []).slice(0, 5)) notes.push(`logged by ${result.label}: ${problem.slice(0, 300)}`);
      if (result.connectionsHeld !== undefined && result.connectionsHeld < count) notes.push(`${result.label}: only ${result.connectionsHeld} of ${count} connections were still open when sampled.`);
    }
    return {
      title: 'Scenario "idle": idle memory and memory per idle connection',
      tables: [table, ratioTable],
      notes,
      data: { connections: count, settleMs: SETTLE_MS, servers: results, ratios },
      chart,
    };
  },
};
