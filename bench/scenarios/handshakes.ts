import path from 'node:path';
import { expectOk } from '../lib/http-check.js';
import { nginxLogProblems, startInboundNginx } from '../lib/nginx.js';
import type { BenchPki, KeyType } from '../lib/pki.js';
import { freePort, runCommand, sampleUsage, stopProcess, type ManagedProcess } from '../lib/processes.js';
import { sidecarBuilt, sidecarWarnings, startInboundSidecar } from '../lib/sidecar.js';
import { formatNumber, keyName, ratio, type BenchContext, type ChartBar, type Scenario, type ScenarioReport, type Table } from './scenario.js';

type TlsVersion = '1.3' | '1.2';
type ServerKey = 'nginx' | 'sidecar' | 'sidecar-tcp';

const KEY_TYPES: KeyType[] = ['rsa', 'ec'];
const TLS_VERSIONS: TlsVersion[] = ['1.3', '1.2'];

interface Negotiated {
  protocol?: string;
  cipher?: string;
  /** Key exchange group (e.g. X25519). */
  group?: string;
}

interface HandshakeResult {
  keyType: KeyType;
  tls: TlsVersion;
  server: ServerKey;
  label: string;
  negotiated: Negotiated;
  connections: number;
  seconds: number;
  handshakesPerSecond: number;
  bytesPerConnection?: number;
  serverCpuPercent: number;
  serverCpuMsPerHandshake?: number;
}

interface ServerRun {
  keyType: KeyType;
  server: ServerKey;
  label: string;
  skipped?: string;
  results: HandshakeResult[];
  problems: string[];
}

interface InboundServer {
  key: ServerKey;
  label: string;
  unavailable?: () => string | undefined;
  start(context: BenchContext, pki: BenchPki, prefix: string, port: number): Promise<ManagedProcess>;
  problems(server: ManagedProcess, prefix: string): string[];
}

const sidecarMissing = (): string | undefined => (sidecarBuilt() ? undefined : 'dist/cli.js not found (run `npm run build`)');

const servers: InboundServer[] = [
  {
    key: 'nginx',
    label: 'inbound nginx',
    start: (context, pki, prefix, port) => startInboundNginx(context.tools.nginx, path.join(prefix, 'nginx-inbound'), port, context.appPort, pki.b),
    problems: (_server, prefix) => nginxLogProblems(path.join(prefix, 'nginx-inbound')),
  },
  {
    key: 'sidecar',
    label: 'inbound sidecar (http)',
    unavailable: sidecarMissing,
    start: (context, pki, _prefix, port) => startInboundSidecar(port, context.appPort, pki.b),
    problems: (server) => sidecarWarnings(server),
  },
  {
    key: 'sidecar-tcp',
    label: 'inbound sidecar (tcp)',
    unavailable: sidecarMissing,
    start: (context, pki, _prefix, port) => startInboundSidecar(port, context.appPort, pki.b, 'tcp'),
    problems: (server) => sidecarWarnings(server),
  },
];

/**
 * Several s_time processes at once: one alone is bound by its own round trips (about 2 ms per
 * connection here, with client and server both partly idle), not by the server.
 */
const HANDSHAKE_CLIENTS = Number(process.env.BENCH_HANDSHAKE_CLIENTS ?? '2');

function clientArgs(pki: BenchPki, port: number, tls: TlsVersion): string[] {
  const identity = pki.a;
  return ['-connect', `127.0.0.1:${port}`, tls === '1.3' ? '-tls1_3' : '-tls1_2', '-cert', identity.cert, '-key', identity.key, '-CAfile', identity.ca];
}

/** What one handshake negotiates, from `openssl s_client -brief`, so the table says what was compared. */
async function negotiated(context: BenchContext, pki: BenchPki, port: number, tls: TlsVersion): Promise<Negotiated> {
  const result = await runCommand(context.tools.openssl, ['s_client', ...clientArgs(pki, port, tls), '-servername', 'localhost', '-brief']);
  const output = result.stdout + result.stderr;
  return {
    protocol: /Protocol version:\s*(\S+)/.exec(output)?.[1],
    cipher: /Ciphersuite:\s*(\S+)/.exec(output)?.[1],
    group: /(?:Peer|Server) Temp Key:\s*([^,\n]+)/.exec(output)?.[1]?.trim(),
  };
}

interface ClientCount {
  connections: number;
  bytesPerConnection?: number;
}

/**
 * One `openssl s_time -new -www /` client: every connection is a full mTLS handshake (client
 * certificate A, no session resumption) followed by one HTTP/1.0 GET through to the app, then close.
 */
async function runClient(context: BenchContext, pki: BenchPki, port: number, tls: TlsVersion): Promise<ClientCount> {
  const args = ['s_time', ...clientArgs(pki, port, tls), '-new', '-www', '/', '-time', String(context.settings.durationSeconds)];
  const result = await runCommand(context.tools.openssl, args);
  const output = result.stdout + result.stderr;
  const counted = /(\d+) connections in [\d.]+s;/.exec(output);
  if (result.code !== 0 || !counted) throw new Error(`openssl ${args.join(' ')} failed (exit ${result.code}):\n${output.slice(-2000)}`);
  const bytes = /(\d+) bytes read per connection/.exec(output);
  return { connections: Number(counted[1]), bytesPerConnection: bytes ? Number(bytes[1]) : undefined };
}

async function measureVersion(context: BenchContext, pki: BenchPki, setup: InboundServer, server: ManagedProcess, port: number, tls: TlsVersion): Promise<HandshakeResult> {
  const what = `${setup.label}, ${keyName(pki.keyType)}, TLS ${tls}`;
  const negotiation = await negotiated(context, pki, port, tls);
  process.stderr.write(`  ${what}: ${HANDSHAKE_CLIENTS} x openssl s_time -new for ${context.settings.durationSeconds}s (${negotiation.protocol ?? '?'} ${negotiation.cipher ?? '?'})\n`);
  const before = sampleUsage([server.pid]);
  const startedAt = process.hrtime.bigint();
  const clients = await Promise.all(Array.from({ length: HANDSHAKE_CLIENTS }, () => runClient(context, pki, port, tls)));
  // s_time's own "real seconds" is whole seconds and overshoots -time; the wall clock around the clients is finer.
  const seconds = Number(process.hrtime.bigint() - startedAt) / 1e9;
  const after = sampleUsage([server.pid]);
  if (server.hasExited()) throw new Error(`${server.name} exited during the measurement`);
  const connections = clients.reduce((sum, client) => sum + client.connections, 0);
  const cpuSeconds = after.cpuSeconds - before.cpuSeconds;
  return {
    keyType: pki.keyType,
    tls,
    server: setup.key,
    label: setup.label,
    negotiated: negotiation,
    connections,
    seconds,
    handshakesPerSecond: connections / seconds,
    bytesPerConnection: clients[0].bytesPerConnection,
    serverCpuPercent: (cpuSeconds / seconds) * 100,
    serverCpuMsPerHandshake: connections > 0 ? (cpuSeconds * 1000) / connections : undefined,
  };
}

/** One server process per key type; both TLS versions are measured against it. */
async function measureServer(context: BenchContext, pki: BenchPki, setup: InboundServer, dir: string): Promise<ServerRun> {
  const base = { keyType: pki.keyType, server: setup.key, label: setup.label };
  const reason = setup.unavailable?.();
  if (reason) {
    process.stderr.write(`  ${setup.label}: skipped, ${reason}\n`);
    return { ...base, skipped: reason, results: [], problems: [] };
  }
  const port = await freePort();
  const prefix = path.join(dir, pki.keyType, setup.key);
  process.stderr.write(`  ${setup.label} (${keyName(pki.keyType)}): starting\n`);
  const server = await setup.start(context, pki, prefix, port);
  const results: HandshakeResult[] = [];
  try {
    await expectOk(`https://127.0.0.1:${port}/`, setup.label, pki.a);
    for (const tls of TLS_VERSIONS) results.push(await measureVersion(context, pki, setup, server, port, tls));
  } finally {
    await stopProcess(server);
  }
  return { ...base, results, problems: setup.problems(server, prefix) };
}

const keyTls = (keyType: KeyType, tls: TlsVersion): string => `${keyName(keyType)}, TLS ${tls}`;

export const handshakes: Scenario = {
  name: 'handshakes',
  summary: 'a new mTLS connection per request (full handshakes/s), TLS 1.3 and 1.2, RSA and ECDSA, against the inbound proxy alone',
  async run(context): Promise<ScenarioReport> {
    if (!Number.isInteger(HANDSHAKE_CLIENTS) || HANDSHAKE_CLIENTS < 1) throw new Error('BENCH_HANDSHAKE_CLIENTS must be a positive integer');
    const dir = path.join(context.workDir, 'handshakes');
    const runs: ServerRun[] = [];
    for (const keyType of KEY_TYPES) {
      const pki = await context.pkiFor(keyType);
      for (const setup of servers) runs.push(await measureServer(context, pki, setup, dir));
    }
    const results = runs.flatMap((run) => run.results);
    const find = (keyType: KeyType, tls: TlsVersion, server: ServerKey): HandshakeResult | undefined =>
      results.find((result) => result.keyType === keyType && result.tls === tls && result.server === server);

    const main: Table = {
      textColumns: [0, 1, 6],
      header: ['certificates, TLS', 'inbound server', 'handshakes/s', 'connections', 'server CPU %', 'CPU ms/handshake', 'negotiated'],
      rows: KEY_TYPES.flatMap((keyType) =>
        TLS_VERSIONS.flatMap((tls) =>
          servers.map((setup) => {
            const result = find(keyType, tls, setup.key);
            if (!result) return [keyTls(keyType, tls), setup.label, 'skipped', '', '', '', ''];
            const { protocol, cipher, group } = result.negotiated;
            return [
              keyTls(keyType, tls),
              setup.label,
              formatNumber(result.handshakesPerSecond, 0),
              String(result.connections),
              formatNumber(result.serverCpuPercent, 0),
              formatNumber(result.serverCpuMsPerHandshake, 3),
              [protocol, cipher, group].filter(Boolean).join(' ') || 'n/a',
            ];
          }),
        ),
      ),
    };

    const sidecarRatios = KEY_TYPES.flatMap((keyType) =>
      TLS_VERSIONS.flatMap((tls) =>
        (['sidecar', 'sidecar-tcp'] as const).map((server) => ({
          keyType,
          tls,
          label: `${server === 'sidecar' ? 'sidecar (http)' : 'sidecar (tcp)'} / nginx, ${keyTls(keyType, tls)}`,
          handshakesPerSecond: ratio(find(keyType, tls, server)?.handshakesPerSecond, find(keyType, tls, 'nginx')?.handshakesPerSecond),
          cpuMsPerHandshake: ratio(find(keyType, tls, server)?.serverCpuMsPerHandshake, find(keyType, tls, 'nginx')?.serverCpuMsPerHandshake),
        })),
      ),
    );
    const ecOverRsa = TLS_VERSIONS.flatMap((tls) =>
      servers.map((setup) => ({
        tls,
        label: `${setup.label}, TLS ${tls}`,
        handshakesPerSecond: ratio(find('ec', tls, setup.key)?.handshakesPerSecond, find('rsa', tls, setup.key)?.handshakesPerSecond),
        cpuMsPerHandshake: ratio(find('ec', tls, setup.key)?.serverCpuMsPerHandshake, find('rsa', tls, setup.key)?.serverCpuMsPerHandshake),
      })),
    );
    const ratioTable: Table = {
      header: ['ratio', 'handshakes/s', 'CPU ms/handshake'],
      rows: sidecarRatios.map((r) => [r.label, formatNumber(r.handshakesPerSecond, 2), formatNumber(r.cpuMsPerHandshake, 2)]),
    };
    const ecTable: Table = {
      header: ['ECDSA P-256 / RSA 2048', 'handshakes/s', 'CPU ms/handshake'],
      rows: ecOverRsa.map((r) => [r.label, formatNumber(r.handshakesPerSecond, 2), formatNumber(r.cpuMsPerHandshake, 2)]),
    };
    const httpRatios = sidecarRatios.filter((r) => r.label.startsWith('sidecar (http)'));
    const chart: ChartBar[] = [
      ...httpRatios.map((r) => ({ group: 'higher is better' as const, label: `handshakes/s: sidecar (http) / nginx, ${keyTls(r.keyType, r.tls)}`, value: r.handshakesPerSecond })),
      ...httpRatios.map((r) => ({ group: 'lower is better' as const, label: `CPU ms/handshake: sidecar (http) / nginx, ${keyTls(r.keyType, r.tls)}`, value: r.cpuMsPerHandshake })),
    ];

    const notes = [
      `${HANDSHAKE_CLIENTS} parallel \`openssl s_time -new -www / -time ${context.settings.durationSeconds} -tls1_3|-tls1_2\` with client cert A: each connection is a full mTLS handshake (no resumption) + one HTTP/1.0 GET to the app + close.`,
      'One server process per certificate type, measured with TLS 1.3 then TLS 1.2. Both certificate sets (CA and leaves) are minted by openssl and used by every server; "negotiated" is what `openssl s_client -brief` got from that server.',
      'The clients share the machine\'s cores with the server and can be the limit; server CPU ms/handshake (server CPU time / connections) compares cost independently of that.',
      'inbound sidecar (tcp): --protocol tcp, the GET is piped to the app as bytes.',
    ];
    for (const run of runs) {
      if (run.skipped) notes.push(`${run.label} (${keyName(run.keyType)}) skipped: ${run.skipped}.`);
      for (const problem of run.problems.slice(0, 5)) notes.push(`logged by ${run.label} (${keyName(run.keyType)}): ${problem.slice(0, 300)}`);
    }
    return {
      title: 'Scenario "handshakes": new mTLS connection per request',
      tables: [main, ratioTable, ecTable],
      notes,
      data: { clients: HANDSHAKE_CLIENTS, runs, ratios: { sidecarOverNginx: sidecarRatios, ecdsaOverRsa: ecOverRsa } },
      chart,
    };
  },
};
