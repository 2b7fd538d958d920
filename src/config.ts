/**
 * Flags + `SIDECAR_*` environment -> one validated, typed Config (SPEC §2).
 * The option table below is the single definition of the `run` command's flags: yargs, the env
 * mapping and the deploy-manifest tests all read it.
 */
import { isIP } from 'node:net';
import { ConfigError } from './errors.js';

type OptionType = 'string' | 'number' | 'boolean' | 'array';

export interface OptionSpec {
  type: OptionType;
  default?: string | number | boolean | string[];
  describe: string;
  choices?: string[];
}

/** Every flag of `mtls-sidecar run`. Keys are the flag names without `--`. */
export const runOptions = {
  'cert-dir': { type: 'string', default: '/etc/sidecar/certs', describe: 'directory holding certificate chain, key and trust bundle' },
  'cert-file': { type: 'string', describe: 'certificate chain file (relative to --cert-dir, or absolute); default: detected layout' },
  'key-file': { type: 'string', describe: 'private key file (relative to --cert-dir, or absolute); default: detected layout' },
  'ca-file': { type: 'string', describe: 'trust bundle file (relative to --cert-dir, or absolute); default: detected layout' },
  'key-passphrase-file': { type: 'string', describe: 'file holding the passphrase of an encrypted private key (relative to --cert-dir, or absolute)' },
  inbound: { type: 'string', default: '0.0.0.0:8443', describe: 'mTLS listener for peers (HOST:PORT, or off)' },
  app: { type: 'string', default: 'http://127.0.0.1:8080', describe: 'the local app: http://HOST:PORT or unix:/path.sock (tcp://HOST:PORT with --protocol tcp)' },
  outbound: { type: 'string', default: '127.0.0.1:15001', describe: 'plaintext HTTP forward proxy for the app (HOST:PORT, or off)' },
  upstream: { type: 'array', describe: 'LOCAL_PORT=HOST:PORT[@SPIFFE_ID]: a local plaintext listener that always goes to that TLS upstream (repeatable)' },
  'expect-spiffe': { type: 'array', describe: 'HOST=SPIFFE_ID: forward-proxy calls to HOST must present that URI SAN (repeatable)' },
  admin: { type: 'string', default: '127.0.0.1:15000', describe: 'admin listener: health, readiness, metrics, cert status (HOST:PORT, or off)' },
  mode: { type: 'string', default: 'strict', choices: ['strict', 'permissive'], describe: 'inbound: strict (mTLS only) or permissive (mTLS, TLS without a client certificate and plaintext on one port, for migration)' },
  'allow-spiffe': { type: 'array', describe: 'allow peers with this SPIFFE ID (* = one segment, ** = the rest) (repeatable)' },
  'allow-dns': { type: 'array', describe: 'allow peers with this DNS SAN (*.example.com for one label) (repeatable)' },
  'allow-cn': { type: 'array', describe: 'allow peers with this subject CN (repeatable)' },
  'allow-ou': { type: 'array', describe: 'allow peers with this subject OU (repeatable)' },
  'trust-domain': { type: 'string', describe: 'peers (both directions) must present a spiffe://<trust-domain>/… URI SAN' },
  protocol: { type: 'string', default: 'http', choices: ['http', 'tcp'], describe: 'http (L7) or tcp (L4: bytes piped)' },
  'proxy-protocol': { type: 'string', default: 'off', choices: ['off', 'v2'], describe: 'with --protocol tcp: send the app a PROXY protocol v2 header (peer address, TLS and SPIFFE identity) before the peer bytes' },
  'min-tls': { type: 'string', default: '1.2', choices: ['1.2', '1.3'], describe: 'lowest TLS version, both directions' },
  'insecure-skip-verify': { type: 'boolean', default: false, describe: 'outbound only: do NOT verify upstream certificates (dev only)' },
  'reload-interval': { type: 'string', default: '30s', describe: 'poll the cert dir this often in addition to watching it; 0 = watch + SIGHUP only' },
  workers: { type: 'number', default: 1, describe: 'processes sharing the listeners' },
  'connect-timeout': { type: 'string', default: '5s', describe: 'TCP connect timeout (app and upstreams); 0 = none' },
  'handshake-timeout': { type: 'string', default: '10s', describe: 'TLS handshake timeout; 0 = none' },
  'idle-timeout': { type: 'string', default: '60s', describe: 'close connections idle this long; 0 = none' },
  'headers-timeout': { type: 'string', default: '15s', describe: 'time a client has to send the request headers; 0 = none' },
  'request-timeout': { type: 'string', default: '0', describe: 'time the app/upstream has to answer a request; 0 = none' },
  'drain-timeout': { type: 'string', default: '15s', describe: 'on SIGTERM, time in-flight requests have to finish' },
  'max-header-size': { type: 'number', default: 16384, describe: 'largest request/response header block in bytes' },
  'max-connections': { type: 'number', default: 0, describe: 'cap on concurrent inbound connections; 0 = none' },
  'max-connection-age': { type: 'string', default: '0', describe: 'close keep-alive connections older than this once idle (a request in flight finishes first); 0 = never' },
  'log-level': { type: 'string', default: 'info', choices: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'], describe: 'log level' },
  'log-format': { type: 'string', default: 'json', choices: ['json', 'pretty'], describe: 'log format' },
} as const satisfies Record<string, OptionSpec>;

export type RunOptionName = keyof typeof runOptions;

export interface ListenAddress {
  host: string;
  port: number;
}

export type AppTarget =
  | { kind: 'http'; host: string; port: number }
  | { kind: 'unix'; path: string }
  | { kind: 'tcp'; host: string; port: number };

export interface UpstreamRoute {
  localPort: number;
  host: string;
  port: number;
  spiffeId: string | undefined;
}

export interface AllowList {
  spiffe: string[];
  dns: string[];
  cn: string[];
  ou: string[];
}

export interface Timeouts {
  connectMs: number;
  handshakeMs: number;
  idleMs: number;
  headersMs: number;
  requestMs: number;
  drainMs: number;
}

export interface CertDirConfig {
  dir: string;
  certFile: string | undefined;
  keyFile: string | undefined;
  caFile: string | undefined;
  keyPassphraseFile: string | undefined;
}

export interface Config {
  certs: CertDirConfig;
  inbound: ListenAddress | null;
  app: AppTarget;
  outbound: ListenAddress | null;
  upstreams: UpstreamRoute[];
  expectSpiffe: Map<string, string>;
  admin: ListenAddress | null;
  mode: 'strict' | 'permissive';
  allow: AllowList;
  trustDomain: string | undefined;
  protocol: 'http' | 'tcp';
  proxyProtocol: 'off' | 'v2';
  minTls: 'TLSv1.2' | 'TLSv1.3';
  insecureSkipVerify: boolean;
  reloadIntervalMs: number;
  workers: number;
  timeouts: Timeouts;
  maxHeaderSize: number;
  maxConnections: number;
  maxConnectionAgeMs: number;
  logLevel: string;
  logFormat: 'json' | 'pretty';
}

/** `500ms`, `15s`, `2m`, `1h` or a plain number of seconds -> milliseconds. */
export function parseDuration(flag: string, value: unknown): number {
  const text = String(value).trim();
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text);
  if (!match) throw new ConfigError(flag, value, 'a duration such as 500ms, 15s, 2m, or a plain number of seconds');
  const amount = Number(match[1]);
  const unit = match[2] ?? 's';
  const factor = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[unit] ?? 1000;
  const ms = Math.round(amount * factor);
  // Node's timers take at most 2^31-1 ms and silently turn a longer delay into 1 ms.
  if (ms > 2_147_483_647) throw new ConfigError(flag, value, 'at most 596h (24.8 days); 0 means none where the flag allows it');
  return ms;
}

/** A listener may take port 0 (any free port); a port to connect to may not. */
function parsePort(flag: string, value: unknown, text: string, allowZero = true): number {
  const allowed = `a port must be a number from ${allowZero ? 0 : 1} to 65535`;
  const port = Number(text);
  if (!/^\d+$/.test(text) || port > 65535 || (!allowZero && port === 0)) throw new ConfigError(flag, value, allowed);
  return port;
}

/** Splits `HOST:PORT` / `[v6]:PORT`; the host must be a name or an IP literal. */
function splitHostPort(flag: string, value: unknown, text: string): { host: string; port: string } {
  const v6 = /^\[([^\]]+)\]:(.*)$/.exec(text);
  if (v6) {
    if (isIP(v6[1]!) !== 6) throw new ConfigError(flag, value, 'HOST:PORT with a valid IPv6 literal in brackets');
    return { host: v6[1]!, port: v6[2]! };
  }
  const colon = text.lastIndexOf(':');
  if (colon <= 0) throw new ConfigError(flag, value, 'HOST:PORT, e.g. 127.0.0.1:8443');
  const host = text.slice(0, colon);
  if (!/^[A-Za-z0-9.-]+$/.test(host)) throw new ConfigError(flag, value, 'HOST:PORT with a host name or IP address');
  return { host, port: text.slice(colon + 1) };
}

export function parseListen(flag: string, value: unknown): ListenAddress | null {
  const text = String(value).trim();
  if (text === 'off') return null;
  const { host, port } = splitHostPort(flag, value, text);
  return { host, port: parsePort(flag, value, port) };
}

export function parseApp(value: unknown, protocol: 'http' | 'tcp'): AppTarget {
  const text = String(value).trim();
  if (text.startsWith('unix:')) {
    const path = text.slice('unix:'.length).replace(/^\/\/(?=\/)/, '');
    if (!path.startsWith('/')) throw new ConfigError('app', value, 'unix:/absolute/path.sock');
    return { kind: 'unix', path };
  }
  const match = /^(https?|tcp):\/\/([^/]+)\/?$/.exec(text);
  if (!match) throw new ConfigError('app', value, 'http://HOST:PORT or unix:/path.sock (tcp://HOST:PORT with --protocol tcp)');
  const scheme = match[1]!;
  if (scheme === 'https') throw new ConfigError('app', value, 'the local app is reached in plaintext: http://HOST:PORT');
  if (scheme === 'tcp' && protocol !== 'tcp') throw new ConfigError('app', value, 'tcp://HOST:PORT needs --protocol tcp; use http://HOST:PORT');
  if (scheme === 'http' && protocol === 'tcp') throw new ConfigError('app', value, 'with --protocol tcp use tcp://HOST:PORT');
  const { host, port } = splitHostPort('app', value, match[2]!);
  const portNumber = parsePort('app', value, port, false);
  return scheme === 'tcp' ? { kind: 'tcp', host, port: portNumber } : { kind: 'http', host, port: portNumber };
}

const spiffeIdPattern = /^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._~%!$&'()*+,;=:@-]+)*$/;

function parseSpiffeId(flag: string, value: unknown, text: string): string {
  if (!spiffeIdPattern.test(text)) throw new ConfigError(flag, value, 'a SPIFFE ID such as spiffe://mesh.local/ns/default/sa/web');
  return text;
}

export function parseUpstream(value: unknown): UpstreamRoute {
  const text = String(value).trim();
  const match = /^(\d+)=([^@]+)(?:@(.+))?$/.exec(text);
  if (!match) throw new ConfigError('upstream', value, 'LOCAL_PORT=HOST:PORT[@spiffe://…], e.g. 7001=payments.svc:8443');
  const localPort = parsePort('upstream', value, match[1]!, false);
  const { host, port } = splitHostPort('upstream', value, match[2]!);
  const spiffeId = match[3] === undefined ? undefined : parseSpiffeId('upstream', value, match[3]);
  return { localPort, host, port: parsePort('upstream', value, port, false), spiffeId };
}

function parseExpectSpiffe(value: unknown): [string, string] {
  const text = String(value).trim();
  const eq = text.indexOf('=');
  if (eq <= 0) throw new ConfigError('expect-spiffe', value, 'HOST=spiffe://…, e.g. payments.svc=spiffe://mesh.local/ns/pay/sa/api');
  return [text.slice(0, eq).toLowerCase(), parseSpiffeId('expect-spiffe', value, text.slice(eq + 1))];
}

function validateSpiffePattern(value: string): string {
  if (!/^spiffe:\/\/[a-z0-9._-]+(\/([A-Za-z0-9._~%!$&'()+,;=:@-]+|\*|\*\*))*$/.test(value) || /\*\*\/./.test(value)) {
    throw new ConfigError('allow-spiffe', value, 'spiffe://DOMAIN/path where * matches one segment and ** (last only) the rest');
  }
  return value;
}

function validateDnsPattern(value: string): string {
  if (!/^(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$/.test(value)) {
    throw new ConfigError('allow-dns', value, 'a DNS name, or *.domain for one leading label');
  }
  return value.toLowerCase();
}

/**
 * A repeatable flag's values. Only env values are comma-separated lists (SPEC §2; split in
 * readEnv), so a flag value such as `--allow-ou "Acme, Inc"` stays one entry.
 */
function toList(value: unknown): string[] {
  if (value === undefined || value === null) return [];
  const items = Array.isArray(value) ? value : [value];
  return items.map((item) => String(item).trim()).filter((item) => item !== '');
}

function splitEnvList(value: string): string[] {
  return value.split(',').map((item) => item.trim()).filter((item) => item !== '');
}

/**
 * Boolean flags. yargs gives the flag form a boolean (`--insecure-skip-verify`, `=true`, `=false`);
 * an env value arrives as text (readEnv keeps a word it does not know as text). A value that is
 * none of these words is an error, not false: `SIDECAR_INSECURE_SKIP_VERIFY=maybe` must not
 * quietly mean "verify" any more than "skip".
 */
const booleanWords: Readonly<Record<string, boolean>> = { true: true, false: false, '1': true, '0': false, yes: true, no: false };

/** A boolean word (any case), or undefined when `text` is none of them. */
function booleanFromText(text: string): boolean | undefined {
  return booleanWords[text.trim().toLowerCase()];
}

function parseBoolean(flag: string, value: unknown): boolean {
  if (typeof value === 'boolean') return value;
  const parsed = typeof value === 'string' ? booleanFromText(value) : undefined;
  if (parsed === undefined) throw new ConfigError(flag, value, `${envName(flag)} takes true, false, 1, 0, yes or no`);
  return parsed;
}

/** A whole number of at least `min`; one message for every bad value, whether `two` or too small. */
function wholeNumber(flag: string, value: unknown, min: 0 | 1): number {
  const text = String(value).trim();
  const number = Number(text);
  if (!/^\d+$/.test(text) || number < min) throw new ConfigError(flag, value, `a whole number, ${min} or more`);
  return number;
}

/** Parsed flag values keyed by flag name (as yargs produces them). */
export type RawRunArgs = Partial<Record<RunOptionName, unknown>>;

export function buildConfig(args: RawRunArgs): Config {
  const protocol = args.protocol === 'tcp' ? 'tcp' : 'http';
  if (args.protocol !== undefined && args.protocol !== 'http' && args.protocol !== 'tcp') {
    throw new ConfigError('protocol', args.protocol, 'http or tcp');
  }
  const mode = String(args.mode ?? 'strict');
  if (mode !== 'strict' && mode !== 'permissive') throw new ConfigError('mode', mode, 'strict or permissive');
  const proxyProtocol = String(args['proxy-protocol'] ?? 'off');
  if (proxyProtocol !== 'off' && proxyProtocol !== 'v2') throw new ConfigError('proxy-protocol', proxyProtocol, 'off or v2');
  if (proxyProtocol === 'v2' && protocol !== 'tcp') {
    throw new ConfigError('proxy-protocol', proxyProtocol, 'needs --protocol tcp (the header is sent by the TCP-mode inbound listener; in HTTP mode the app gets x-forwarded-client-cert instead)');
  }
  const minTls = String(args['min-tls'] ?? '1.2');
  if (minTls !== '1.2' && minTls !== '1.3') throw new ConfigError('min-tls', minTls, '1.2 or 1.3');
  const logFormat = String(args['log-format'] ?? 'json');
  if (logFormat !== 'json' && logFormat !== 'pretty') throw new ConfigError('log-format', logFormat, 'json or pretty');
  const workers = wholeNumber('workers', args.workers ?? 1, 1);

  const upstreams = toList(args.upstream).map(parseUpstream);
  const seenPorts = new Set<number>();
  for (const route of upstreams) {
    if (seenPorts.has(route.localPort)) throw new ConfigError('upstream', route.localPort, 'each LOCAL_PORT once');
    seenPorts.add(route.localPort);
  }
  const trustDomain = args['trust-domain'] === undefined ? undefined : String(args['trust-domain']);
  if (trustDomain !== undefined && !/^[a-z0-9._-]+$/.test(trustDomain)) {
    throw new ConfigError('trust-domain', trustDomain, 'a trust domain name such as mesh.local (lowercase, no scheme)');
  }
  const optionalString = (name: RunOptionName): string | undefined => (args[name] === undefined || args[name] === '' ? undefined : String(args[name]));

  return {
    certs: {
      dir: String(args['cert-dir'] ?? runOptions['cert-dir'].default),
      certFile: optionalString('cert-file'),
      keyFile: optionalString('key-file'),
      caFile: optionalString('ca-file'),
      keyPassphraseFile: optionalString('key-passphrase-file'),
    },
    inbound: parseListen('inbound', args.inbound ?? runOptions.inbound.default),
    // The default app address is plain host:port; in TCP mode it means tcp://127.0.0.1:8080.
    app: parseApp(args.app === undefined || args.app === runOptions.app.default ? (protocol === 'tcp' ? 'tcp://127.0.0.1:8080' : runOptions.app.default) : args.app, protocol),
    outbound: parseListen('outbound', args.outbound ?? runOptions.outbound.default),
    upstreams,
    expectSpiffe: new Map(toList(args['expect-spiffe']).map(parseExpectSpiffe)),
    admin: parseListen('admin', args.admin ?? runOptions.admin.default),
    mode,
    allow: {
      spiffe: toList(args['allow-spiffe']).map(validateSpiffePattern),
      dns: toList(args['allow-dns']).map(validateDnsPattern),
      cn: toList(args['allow-cn']),
      ou: toList(args['allow-ou']),
    },
    trustDomain,
    protocol,
    proxyProtocol,
    minTls: minTls === '1.3' ? 'TLSv1.3' : 'TLSv1.2',
    insecureSkipVerify: parseBoolean('insecure-skip-verify', args['insecure-skip-verify'] ?? false),
    reloadIntervalMs: parseDuration('reload-interval', args['reload-interval'] ?? runOptions['reload-interval'].default),
    workers,
    timeouts: {
      connectMs: parseDuration('connect-timeout', args['connect-timeout'] ?? runOptions['connect-timeout'].default),
      handshakeMs: parseDuration('handshake-timeout', args['handshake-timeout'] ?? runOptions['handshake-timeout'].default),
      idleMs: parseDuration('idle-timeout', args['idle-timeout'] ?? runOptions['idle-timeout'].default),
      headersMs: parseDuration('headers-timeout', args['headers-timeout'] ?? runOptions['headers-timeout'].default),
      requestMs: parseDuration('request-timeout', args['request-timeout'] ?? runOptions['request-timeout'].default),
      drainMs: parseDuration('drain-timeout', args['drain-timeout'] ?? runOptions['drain-timeout'].default),
    },
    // undici refuses a 0 limit, and Node's HTTP server would read 0 as its own default.
    maxHeaderSize: wholeNumber('max-header-size', args['max-header-size'] ?? runOptions['max-header-size'].default, 1),
    maxConnections: wholeNumber('max-connections', args['max-connections'] ?? 0, 0),
    maxConnectionAgeMs: parseDuration('max-connection-age', args['max-connection-age'] ?? '0'),
    logLevel: String(args['log-level'] ?? 'info'),
    logFormat,
  };
}

/**
 * What only `run` needs of its listeners: something to serve, and no two on one address (they
 * would fail at start with "already in use", as if another process held the port).
 */
export function checkRunListeners(config: Config): void {
  if (!config.inbound && !config.outbound && config.upstreams.length === 0) {
    throw new ConfigError('inbound', 'off', 'with --outbound off and no --upstream there is nothing to serve: turn on at least one of them');
  }
  const wildcard = (host: string) => host === '0.0.0.0' || host === '::';
  const listeners: Array<[string, ListenAddress]> = [
    ...(config.inbound ? [['inbound', config.inbound] as [string, ListenAddress]] : []),
    ...(config.outbound ? [['outbound', config.outbound] as [string, ListenAddress]] : []),
    ...(config.admin ? [['admin', config.admin] as [string, ListenAddress]] : []),
    ...config.upstreams.map((route): [string, ListenAddress] => ['upstream', { host: '127.0.0.1', port: route.localPort }]),
  ];
  for (let index = 0; index < listeners.length; index += 1) {
    for (const [otherFlag, other] of listeners.slice(index + 1)) {
      const [flag, address] = listeners[index]!;
      const clash = address.port !== 0 && address.port === other.port && (address.host === other.host || wildcard(address.host) || wildcard(other.host));
      if (clash) throw new ConfigError(otherFlag, `${other.host}:${other.port}`, `--${flag} already listens on ${address.host}:${address.port}: give each listener its own port`);
    }
  }
}

/** Env var name for a flag: `cert-dir` -> `SIDECAR_CERT_DIR`. */
export function envName(flag: string): string {
  return `SIDECAR_${flag.toUpperCase().replace(/-/g, '_')}`;
}

/**
 * Reads `SIDECAR_*` variables for the given flags. Returns their values (repeatable flags split on
 * commas) and the names of variables that match no flag: Kubernetes injects `SIDECAR_PORT=tcp://…`
 * for a Service named `sidecar`, so those are warned about, never fatal.
 */
export function readEnv(
  options: Record<string, OptionSpec>,
  env: NodeJS.ProcessEnv,
): { values: Record<string, string | string[] | boolean>; unknown: string[] } {
  const byEnv = new Map(Object.keys(options).map((flag) => [envName(flag), flag]));
  const values: Record<string, string | string[] | boolean> = {};
  const unknown: string[] = [];
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith('SIDECAR_') || raw === undefined) continue;
    const flag = byEnv.get(name);
    if (!flag) {
      unknown.push(name);
      continue;
    }
    const spec = options[flag]!;
    if (spec.type === 'array') values[flag] = splitEnvList(raw);
    // An invalid boolean is kept as text, so that buildConfig reports it (exit 2) naming the flag.
    else if (spec.type === 'boolean') values[flag] = booleanFromText(raw) ?? raw;
    else values[flag] = raw;
  }
  return { values, unknown };
}
