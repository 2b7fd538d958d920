/**
 * Outbound: the app's plaintext HTTP in, verified mutual TLS out.
 * - the forward proxy (the app's HTTP_PROXY) takes absolute-form requests and tunnels CONNECT;
 * - each `--upstream LOCAL_PORT=HOST:PORT` listener sends everything to one upstream.
 * Request path: listener -> upstreamTarget -> Forwarder (agent of the current cert generation).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, isIP, type Socket } from 'node:net';
import type { Config, ListenAddress, UpstreamRoute } from '../config.js';
import { appErrors, type AppErrorCode, type TlsFailureReason } from '../errors.js';
import { endWithErrorResponse } from '../error-response.js';
import { Forwarder, clientErrorHandler, httpServerOptions, type ConnectionFacts, type ForwardOptions } from '../forward.js';
import { stripHopByHop } from '../http-headers.js';
import { listenOn, trackConnections, type BoundAddress } from '../listen.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { classifyTlsError } from '../tls.js';
import type { UpstreamAgents } from './agents.js';

const tlsFailureToAppError: Partial<Record<TlsFailureReason, AppErrorCode>> = {
  cert_untrusted: 'upstream_cert_untrusted',
  cert_expired: 'upstream_cert_expired',
  cert_not_yet_valid: 'upstream_cert_expired',
  name_mismatch: 'upstream_name_mismatch',
  identity_mismatch: 'upstream_identity_mismatch',
  our_cert_rejected: 'upstream_rejected_our_cert',
  our_cert_wrong_purpose: 'upstream_rejected_our_cert',
  cert_wrong_purpose: 'upstream_cert_wrong_purpose',
  chain_incomplete: 'upstream_chain_incomplete',
  handshake_timeout: 'upstream_timeout',
  connection_reset: 'upstream_reset',
};

/**
 * Maps an outbound failure to its catalog code (SPEC §6) and the handshake reason, if TLS.
 *
 * A peer that refuses our client certificate often sends no alert saying so: Node-based servers
 * (mtls-sidecar included) verify after the handshake and just close. So a new connection closed
 * during the handshake, or after it but before any response, is reported as a refused certificate.
 */
export function classifyUpstreamError(error: Error, connection?: ConnectionFacts): { code: AppErrorCode; tlsReason: TlsFailureReason | undefined } {
  const errno = (error as NodeJS.ErrnoException).code;
  if (errno === 'ECONNREFUSED') return { code: 'upstream_refused', tlsReason: undefined };
  if (errno === 'ENOTFOUND' || errno === 'EAI_AGAIN') return { code: 'upstream_unresolvable', tlsReason: undefined };
  if (errno === 'SIDECAR_TIMEOUT' || errno === 'ETIMEDOUT') return { code: 'upstream_timeout', tlsReason: undefined };
  if (errno?.startsWith('HPE_')) return { code: 'upstream_response_invalid', tlsReason: undefined };
  const tlsReason = classifyTlsError(error);
  if (tlsReason === undefined || tlsReason === 'connection_reset') {
    if (connection?.fresh && !connection.responded) return { code: 'upstream_rejected_our_cert', tlsReason: 'our_cert_rejected' };
    return { code: 'upstream_reset', tlsReason: undefined };
  }
  return { code: tlsFailureToAppError[tlsReason] ?? 'upstream_tls_error', tlsReason };
}

/**
 * The logger of the outbound side: with --insecure-skip-verify every line it writes (requests,
 * tunnels, failures, refused requests, TCP connections) carries `insecureSkipVerify: true`, so
 * unverified traffic can always be told from verified traffic in the logs.
 */
export function outboundLogger(logger: Logger, config: Pick<Config, 'insecureSkipVerify'>): Logger {
  return config.insecureSkipVerify ? logger.child({ insecureSkipVerify: true }) : logger;
}

/** Why the forward proxy cannot route a request: the app sent an origin-form target, not a proxy request. */
function notAbsolute(target: string | undefined): string {
  return `request target ${JSON.stringify(target)} is not an absolute http:// URL: set the app's HTTP_PROXY to this listener, or use an --upstream listener for a fixed upstream`;
}

function badPort(target: string | undefined, port: string): string {
  return `request target ${JSON.stringify(target)} names port ${port}: a TCP port is 1 to 65535`;
}

/** A port as written in a request target, if it is one a connection can go to (0 is "any" to the socket API). */
function portNumber(text: string): number | undefined {
  if (!/^\d+$/.test(text)) return undefined;
  const port = Number(text);
  return port >= 1 && port <= 65535 ? port : undefined;
}

function authority(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Where an absolute-form request goes, and the origin-form target to send there. */
export interface ProxyTarget {
  host: string;
  port: number;
  /** Path and query exactly as the app wrote them; `/` when the app wrote none. */
  path: string;
}

/**
 * Splits an absolute-form request target (RFC 9112 §3.2.2: `http://host[:port]`, path-abempty,
 * optional query) into upstream and origin-form target, or says why it cannot be proxied.
 *
 * Only the authority goes through WHATWG URL (host syntax, IDNA, lowercasing). The path and query
 * are cut from the raw text: URL would resolve dot-segments (`%2e%2e` included), turn `\` into `/`
 * and percent-encode characters, and a proxy passes the target on as the app sent it. A fragment
 * is not part of a request target and is not sent.
 */
export function parseAbsoluteTarget(target: string): ProxyTarget | { problem: string } {
  const parts = /^(https?):\/\/([^/?#]*)([^#]*)/i.exec(target);
  if (!parts) return { problem: notAbsolute(target) };
  const [, scheme = '', authorityText = '', rest = ''] = parts;
  const portText = /:(\d+)$/.exec(authorityText)?.[1];
  if (portText !== undefined && portNumber(portText) === undefined) return { problem: badPort(target, portText) };
  let url: URL;
  try {
    url = new URL(`${scheme}://${authorityText}/`);
  } catch {
    return { problem: notAbsolute(target) };
  }
  // URL also ends a host at `\`; Node's parser refuses one there today, and this keeps the two from
  // ever disagreeing on where the path starts (and so on which host the request goes to).
  if (url.pathname !== '/' || url.search !== '' || url.hash !== '') return { problem: notAbsolute(target) };
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = portText !== undefined ? Number(portText) : url.protocol === 'https:' ? 443 : 80;
  const path = rest.startsWith('/') ? rest : `/${rest}`;
  return { host, port, path };
}

interface Upstream {
  host: string;
  port: number;
  expectedSpiffe: string | undefined;
}

export class OutboundListeners {
  readonly #config: Config;
  readonly #agents: UpstreamAgents;
  readonly #logger: Logger;
  readonly #metrics: Metrics;
  readonly #forwarder: Forwarder;
  readonly #servers: Server[] = [];
  readonly #clientError: ReturnType<typeof clientErrorHandler>;

  constructor(options: { config: Config; agents: UpstreamAgents; logger: Logger; metrics: Metrics }) {
    this.#config = options.config;
    this.#agents = options.agents;
    this.#logger = outboundLogger(options.logger, options.config);
    this.#metrics = options.metrics;
    this.#clientError = clientErrorHandler('outbound', this.#logger, options.metrics);
    this.#forwarder = new Forwarder({
      direction: 'outbound',
      timeouts: options.config.timeouts,
      maxHeaderSize: options.config.maxHeaderSize,
      logger: this.#logger,
      metrics: options.metrics,
      classify: (error, connection) => {
        const { code, tlsReason } = classifyUpstreamError(error, connection);
        if (tlsReason) this.#metrics.handshakeErrors.inc({ direction: 'outbound', reason: tlsReason });
        return code;
      },
    });
    this.#metrics.insecureSkipVerify.set(options.config.insecureSkipVerify ? 1 : 0);
    if (options.config.insecureSkipVerify) {
      this.#logger.warn('--insecure-skip-verify is set: upstream certificates are NOT verified; anyone on the path can impersonate upstreams. Development only.');
    }
  }

  /** Binds the forward proxy and every --upstream listener; returns their bound addresses. */
  async listen(): Promise<{ outbound: BoundAddress | undefined; upstreams: Record<string, BoundAddress> }> {
    let outbound: BoundAddress | undefined;
    if (this.#config.outbound) {
      const server = this.#createServer((req, res) => this.#onProxyRequest(req, res));
      server.on('connect', (req: IncomingMessage, socket: Socket, head: Buffer) => this.#guardSocket(req, socket, () => this.#onConnect(req, socket, head)));
      outbound = await this.#bind(server, this.#config.outbound, 'outbound');
    }
    const upstreams: Record<string, BoundAddress> = {};
    for (const route of this.#config.upstreams) {
      const server = this.#createServer((req, res) => this.#onRouteRequest(route, req, res));
      upstreams[String(route.localPort)] = await this.#bind(server, { host: '127.0.0.1', port: route.localPort }, 'upstream');
    }
    return { outbound, upstreams };
  }

  closeIdleConnections(): void {
    for (const server of this.#servers) server.closeIdleConnections();
  }

  closeAllConnections(): void {
    for (const server of this.#servers) server.closeAllConnections();
  }

  /** Connections still open on the forward proxy and the --upstream listeners (CONNECT tunnels included). */
  openConnections(): Promise<number> {
    const counts = this.#servers.map((server) => new Promise<number>((resolve) => server.getConnections((_error, count) => resolve(count))));
    return Promise.all(counts).then((each) => each.reduce((sum, count) => sum + count, 0));
  }

  close(): Promise<void> {
    return Promise.all(
      this.#servers.map(
        (server) =>
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeIdleConnections();
          }),
      ),
    ).then(() => undefined);
  }

  #createServer(handler: (req: IncomingMessage, res: ServerResponse) => void): Server {
    const { timeouts, maxHeaderSize } = this.#config;
    const server = createServer(httpServerOptions(timeouts, maxHeaderSize), (req, res) => this.#guardRequest(req, res, handler));
    server.setTimeout(timeouts.idleMs);
    server.on('clientError', this.#clientError);
    server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.#guardSocket(req, socket, () => this.#onUpgrade(req, socket, head)));
    trackConnections(server, 'outbound', this.#metrics);
    this.#servers.push(server);
    return server;
  }

  /**
   * Node's server calls these handlers from its parser: an exception escaping one is uncaught and
   * ends the process, cutting every connection of every app. A request that trips a check nobody
   * wrote is refused (400 bad_request) on its own connection instead.
   */
  #guardRequest(req: IncomingMessage, res: ServerResponse, handler: (req: IncomingMessage, res: ServerResponse) => void): void {
    try {
      handler(req, res);
    } catch (error) {
      const detail = this.#handlerFailed(req, error);
      if (res.headersSent) res.destroy();
      else this.#forwarder.refuse(req, res, 'bad_request', detail, { peer: 'app' });
    }
  }

  /** The same for the handlers that own the socket (CONNECT, upgrades). */
  #guardSocket(req: IncomingMessage, socket: Socket, handle: () => void): void {
    try {
      handle();
    } catch (error) {
      const detail = this.#handlerFailed(req, error);
      if (socket.writable) this.#refuseRaw(req, socket, 'bad_request', detail);
      else socket.destroy();
    }
  }

  /** Logs a handler's exception with its stack (a check is missing: a bug); returns the answer's detail. */
  #handlerFailed(req: IncomingMessage, error: unknown): string {
    const message = error instanceof Error ? error.message : String(error);
    const stack = error instanceof Error ? error.stack : undefined;
    this.#logger.error({ direction: 'outbound', method: req.method, target: req.url, reason: message, stack }, 'request handler threw; the request is refused');
    return `the request could not be proxied: ${message}`;
  }

  async #bind(server: Server, address: ListenAddress, flag: string): Promise<BoundAddress> {
    return listenOn(server, address, flag);
  }

  #forwardOptions(upstream: Upstream): ForwardOptions {
    const where = authority(upstream.host, upstream.port);
    return {
      pool: this.#agents.poolFor(`https://${where}`, upstream.expectedSpiffe),
      // The upstream expects its own name, not the local listener's or the proxy's.
      host: where,
      peer: 'app',
      logFields: { upstream: where },
    };
  }

  /** Absolute-form request target -> upstream (or why not); rewrites the request line to origin-form. */
  #upstreamFromProxyRequest(req: IncomingMessage): Upstream | { problem: string } {
    const target = parseAbsoluteTarget(req.url ?? '');
    if ('problem' in target) return target;
    req.url = target.path;
    return { host: target.host, port: target.port, expectedSpiffe: this.#config.expectSpiffe.get(target.host.toLowerCase()) };
  }

  #onProxyRequest(req: IncomingMessage, res: ServerResponse): void {
    const upstream = this.#upstreamFromProxyRequest(req);
    if ('problem' in upstream) {
      this.#forwarder.refuse(req, res, 'bad_request', upstream.problem, { peer: 'app' });
      return;
    }
    stripHopByHop(req.headers);
    this.#forwarder.web(req, res, this.#forwardOptions(upstream));
  }

  #onRouteRequest(route: UpstreamRoute, req: IncomingMessage, res: ServerResponse): void {
    stripHopByHop(req.headers);
    this.#forwarder.web(req, res, this.#forwardOptions({ host: route.host, port: route.port, expectedSpiffe: route.spiffeId }));
  }

  #onUpgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const localPort = socket.localPort;
    const route = this.#config.upstreams.find((candidate) => candidate.localPort === localPort);
    const upstream = route ? { host: route.host, port: route.port, expectedSpiffe: route.spiffeId } : this.#upstreamFromProxyRequest(req);
    if ('problem' in upstream) {
      this.#refuseRaw(req, socket, 'bad_request', upstream.problem);
      return;
    }
    stripHopByHop(req.headers, true);
    this.#forwarder.upgrade(req, socket, head, this.#forwardOptions(upstream));
  }

  /** A catalog error on a socket that left node:http (CONNECT, upgrade): logged, counted, answered, closed. */
  #refuseRaw(req: IncomingMessage, socket: Socket, code: AppErrorCode, detail: string): void {
    this.#logger.warn({ direction: 'outbound', method: req.method, target: req.url, error: code, reason: detail, hint: appErrors[code].hint }, req.method === 'CONNECT' ? 'tunnel failed' : 'request refused');
    this.#metrics.requests.inc({ direction: 'outbound', code: String(appErrors[code].status) });
    this.#metrics.upstreamErrors.inc({ direction: 'outbound', error: code });
    endWithErrorResponse(socket, code, detail);
  }

  /** CONNECT host:port: a raw tunnel; the app does its own TLS through it. */
  #onConnect(req: IncomingMessage, client: Socket, head: Buffer): void {
    const match = /^\[?([^\]]+?)\]?:(\d+)$/.exec(req.url ?? '');
    const refuse = (code: AppErrorCode, detail: string) => this.#refuseRaw(req, client, code, detail);
    if (!match) {
      refuse('bad_request', `CONNECT target ${JSON.stringify(req.url)} is not HOST:PORT`);
      return;
    }
    const [, host = '', portText = ''] = match;
    const port = portNumber(portText);
    if (port === undefined) {
      refuse('bad_request', badPort(req.url, portText));
      return;
    }
    const connectMs = this.#config.timeouts.connectMs;
    const upstream = connect({ host, port });
    const timer = connectMs > 0 ? setTimeout(() => upstream.destroy(Object.assign(new Error(`connecting took longer than ${connectMs} ms`), { code: 'SIDECAR_TIMEOUT' })), connectMs) : undefined;
    let connected = false;
    client.on('error', () => upstream.destroy());
    upstream.once('error', (error) => {
      clearTimeout(timer);
      if (connected) client.destroy();
      else refuse(classifyUpstreamError(error).code, error.message);
    });
    upstream.once('connect', () => {
      connected = true;
      clearTimeout(timer);
      this.#logger.info({ direction: 'outbound', method: 'CONNECT', upstream: req.url, status: 200 }, 'request');
      this.#metrics.requests.inc({ direction: 'outbound', code: '200' });
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
      upstream.on('error', () => client.destroy());
      upstream.on('close', () => client.destroy());
      client.on('close', () => upstream.destroy());
    });
  }
}
