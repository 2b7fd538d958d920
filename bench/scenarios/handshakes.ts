import path from 'node:path';
import { expectOk } from '../lib/http-check.js';
import { nginxLogProblems, startInboundNginx } from '../lib/nginx.js';
import { freePort, runCommand, sampleUsage, stopProcess, type ManagedProcess } from '../lib/processes.js';
import { sidecarBuilt, sidecarWarnings, startInboundSidecar } from '../lib/sidecar.js';
import { formatNumber, ratio, type BenchContext, type Scenario, type ScenarioReport } from './scenario.js';

interface HandshakeResult {
  setup: string;
  label: string;
  skipped?: string;
  connections?: number;
  seconds?: number;
  handshakesPerSecond?: number;
  bytesPerConnection?: number;
  serverCpuPercent?: number;
  serverCpuMsPerHandshake?: number;
  problems?: string[];
}

interface InboundSetup {
  key: 'nginx' | 'sidecar';
  label: string;
  unavailable?: () => string | undefined;
  start(context: BenchContext, prefix: string, port: number): Promise<ManagedProcess>;
}

const setups: InboundSetup[] = [
  {
    key: 'nginx',
    label: 'inbound nginx',
    start: (context, prefix, port) => startInboundNginx(context.tools.nginx, path.join(prefix, 'nginx-inbound'), port, context.appPort, context.pki.b),
  },
  {
    key: 'sidecar',
    label: 'inbound sidecar (B)',
    unavailable: () => (sidecarBuilt() ? undefined : 'dist/cli.js not found (run `npm run build`)'),
    start: (context, _prefix, port) => startInboundSidecar(port, context.appPort, context.pki.b),
  },
];

/**
 * Several s_time processes at once: one alone is bound by its own round trips (about 2 ms per
 * connection here, with client and server both partly idle), not by the server.
 */
const HANDSHAKE_CLIENTS = Number(process.env.BENCH_HANDSHAKE_CLIENTS ?? '2');

interface ClientCount {
  connections: number;
  bytesPerConnection?: number;
}

/**
 * One `openssl s_time -new -www /` client: every connection is a full mTLS handshake (client
 * certificate A, no session resumption) followed by one HTTP/1.0 GET through to the app, then close.
 */
async function runClient(context: BenchContext, port: number): Promise<ClientCount> {
  const identity = context.pki.a;
  const args = ['s_time', '-connect', `127.0.0.1:${port}`, '-new', '-www', '/', '-time', String(context.settings.durationSeconds), '-cert', identity.cert, '-key', identity.key, '-CAfile', identity.ca];
  const result = await runCommand(context.tools.openssl, args);
  const output = result.stdout + result.stderr;
  const counted = /(\d+) connections in [\d.]+s;/.exec(output);
  if (result.code !== 0 || !counted) throw new Error(`openssl ${args.join(' ')} failed (exit ${result.code}):\n${output.slice(-2000)}`);
  const bytes = /(\d+) bytes read per connection/.exec(output);
  return { connections: Number(counted[1]), bytesPerConnection: bytes ? Number(bytes[1]) : undefined };
}

async function measure(context: BenchContext, setup: InboundSetup, dir: string): Promise<HandshakeResult> {
  if (!Number.isInteger(HANDSHAKE_CLIENTS) || HANDSHAKE_CLIENTS < 1) throw new Error(`BENCH_HANDSHAKE_CLIENTS must be a positive integer`);
  const reason = setup.unavailable?.();
  if (reason) {
    process.stderr.write(`  ${setup.label}: skipped, ${reason}\n`);
    return { setup: setup.key, label: setup.label, skipped: reason };
  }
  const port = await freePort();
  const prefix = path.join(dir, setup.key);
  process.stderr.write(`  ${setup.label}: starting\n`);
  const server = await setup.start(context, prefix, port);
  let result: HandshakeResult;
  try {
    await expectOk(`https://127.0.0.1:${port}/`, setup.label, context.pki.a);
    process.stderr.write(`  ${setup.label}: ${HANDSHAKE_CLIENTS} x openssl s_time -new for ${context.settings.durationSeconds}s\n`);
    const before = sampleUsage([server.pid]);
    const startedAt = process.hrtime.bigint();
    const clients = await Promise.all(Array.from({ length: HANDSHAKE_CLIENTS }, () => runClient(context, port)));
    // s_time's own "real seconds" is whole seconds and overshoots -time; the wall clock around the clients is finer.
    const seconds = Number(process.hrtime.bigint() - startedAt) / 1e9;
    const after = sampleUsage([server.pid]);
    if (server.hasExited()) throw new Error(`${server.name} exited during the measurement`);
    const connections = clients.reduce((sum, client) => sum + client.connections, 0);
    const cpuSeconds = after.cpuSeconds - before.cpuSeconds;
    result = {
      setup: setup.key,
      label: setup.label,
      connections,
      seconds,
      handshakesPerSecond: connections / seconds,
      bytesPerConnection: clients[0].bytesPerConnection,
      serverCpuPercent: (cpuSeconds / seconds) * 100,
      serverCpuMsPerHandshake: connections > 0 ? (cpuSeconds * 1000) / connections : undefined,
    };
  } finally {
    await stopProcess(server);
  }
  const problems = setup.key === 'nginx' ? nginxLogProblems(path.join(prefix, 'nginx-inbound')) : sidecarWarnings(server);
  return { ...result, problems };
}

export const handshakes: Scenario = {
  name: 'handshakes',
  summary: 'a new mTLS connection per request (full handshakes/s) against the inbound proxy alone',
  async run(context): Promise<ScenarioReport> {
    const results: HandshakeResult[] = [];
    for (const setup of setups) results.push(await measure(context, setup, path.join(context.workDir, 'handshakes')));
    const by = (key: string): HandshakeResult | undefined => results.find((result) => result.setup === key && result.handshakesPerSecond !== undefined);
    const sidecarOverNginx = ratio(by('sidecar')?.handshakesPerSecond, by('nginx')?.handshakesPerSecond);
    const cpuPerHandshakeSidecarOverNginx = ratio(by('sidecar')?.serverCpuMsPerHandshake, by('nginx')?.serverCpuMsPerHandshake);
    const table = {
      header: ['inbound server', 'handshakes/s', 'connections', 'server CPU %', 'server CPU ms/handshake', 'response bytes'],
      rows: [
        ...results.map((result) =>
          result.handshakesPerSecond !== undefined
            ? [
                result.label,
                formatNumber(result.handshakesPerSecond, 0),
                String(result.connections),
                formatNumber(result.serverCpuPercent, 0),
                formatNumber(result.serverCpuMsPerHandshake, 3),
                String(result.bytesPerConnection ?? 'n/a'),
              ]
            : [result.label, 'skipped', '', '', '', ''],
        ),
        ['sidecar / nginx', formatNumber(sidecarOverNginx, 2), '', '', formatNumber(cpuPerHandshakeSidecarOverNginx, 2), ''],
      ],
    };
    const notes: string[] = [];
    for (const result of results) {
      if (result.skipped) notes.push(`${result.label} skipped: ${result.skipped}.`);
      for (const problem of (result.problems ?? []).slice(0, 5)) notes.push(`logged by ${result.label}: ${problem.slice(0, 300)}`);
    }
    const keyName = context.pki.keyType === 'rsa' ? 'RSA 2048' : 'EC P-256';
    return {
      title: 'Scenario "handshakes": new mTLS connection per request',
      tables: [table],
      notes: [
        `${HANDSHAKE_CLIENTS} parallel \`openssl s_time -new -www / -time ${context.settings.durationSeconds}\` with client cert A (${keyName}): each connection is a full mTLS handshake (no resumption) + one HTTP/1.0 GET to the app + close.`,
        'The clients share the machine\'s cores with the server and can be the limit; server CPU ms/handshake (server CPU time / connections) compares cost independently of that.',
        ...notes,
      ],
      data: { clients: HANDSHAKE_CLIENTS, setups: results, ratios: { sidecarOverNginx, cpuPerHandshakeSidecarOverNginx } },
    };
  },
};
