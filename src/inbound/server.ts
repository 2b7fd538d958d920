/**
 * Inbound in HTTP mode: terminates mutual TLS from peers and forwards plaintext to the local app.
 * Request path: TLS handshake (PeerTls: client certificate verified) -> PeerTls.admit (identity,
 * allow-list) -> header hygiene + XFCC -> Forwarder -> app.
 *
 * strict: the HTTPS server listens itself and refuses a missing or bad client certificate.
 * permissive: a TCP listener reads the first byte of each connection and hands it to the HTTPS
 * server (a TLS handshake record) or to a plaintext HTTP server; a presented certificate that fails
 * verification is still refused.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import type { AppTarget, Config } from '../config.js';
import { ConnectionAge } from '../connection-age.js';
import { appConnector } from '../connector.js';
import { endWithErrorResponse } from '../error-response.js';
import { Forwarder, classifyAppError, clientErrorHandler, clientOptions, httpServerOptions, type ForwardOptions } from '../forward.js';
import { stripHopByHop, stripIdentityHeaders } from '../http-headers.js';
import { limitConnections, listenOn, trackConnections, type BoundAddress } from '../listen.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { ConnectionPool } from '../pool.js';
import type { PeerTls } from './peer-tls.js';
import { formatXfcc } from './xfcc.js';

/** The origin requests to the app are addressed to (a unix socket app is `http://localhost`). */
export function appOrigin(app: AppTarget): string {
  if (app.kind === 'unix') return 'http://localhost';
  return `http://${app.host.includes(':') ? `[${app.host}]` : app.host}:${app.port}`;
}

/** Free pooled connections to the app close before a typical app keep-alive timeout (5 s) ends them under us. */
const appFreeSocketTimeoutMs = 4000;

export class InboundListener {
  readonly #https: HttpsServer;
  /** permissive mode only: the plaintext HTTP server and the first-byte dispatcher in front. */
  readonly #plain: HttpServer | undefined;
  readonly #front: NetServer | undefined;
  readonly #config: Config;
  readonly #peerTls: PeerTls;
  readonly #forwarder: Forwarder;
  readonly #appPool: ConnectionPool;
  readonly #connectionAge: ConnectionAge;
  readonly #clientError: ReturnType<typeof clientErrorHandler>;

  constructor(options: { config: Config; logger: Logger; metrics: Metrics; peerTls: PeerTls }) {
    const { config, logger, metrics, peerTls } = options;
    this.#config = config;
    this.#peerTls = peerTls;
    this.#connectionAge = new ConnectionAge(config.maxConnectionAgeMs);
    this.#clientError = clientErrorHandler('inbound', logger, metrics);
    this.#appPool = new ConnectionPool(appOrigin(config.app), {
      client: clientOptions(appConnector(config.app, config.timeouts.connectMs), {
        maxHeaderSize: config.maxHeaderSize,
        keepAliveMs: Math.min(appFreeSocketTimeoutMs, config.timeouts.idleMs || appFreeSocketTimeoutMs),
      }),
      maxConnectionAgeMs: 0,
      onClientError: (error) => logger.error({ direction: 'inbound', reason: error.message }, 'connection pool error'),
    });
    this.#forwarder = new Forwarder({ direction: 'inbound', timeouts: config.timeouts, maxHeaderSize: config.maxHeaderSize, classify: classifyAppError, logger, metrics });

    // A request without Host is refused by requestTargetProblem, with the catalog's 400 (Node's own is bare).
    const httpOptions = { ...httpServerOptions(config.timeouts, config.maxHeaderSize), requireHostHeader: false };
    this.#https = createHttpsServer({ ...peerTls.serverOptions(), ...httpOptions }, (req, res) => this.#onRequest(req, res));
    peerTls.attach(this.#https);
    this.#prepareServer(this.#https);
    if (peerTls.permissive) {
      this.#plain = createHttpServer(httpOptions, (req, res) => this.#onRequest(req, res));
      this.#prepareServer(this.#plain);
      this.#front = createNetServer({ noDelay: true }, (socket) =>
        peerTls.dispatchFirstByte(socket, (tlsBound) => this.#https.emit('connection', tlsBound), (plain) => this.#plain!.emit('connection', plain)),
      );
    }
    const listening = this.#front ?? this.#https;
    trackConnections(listening, 'inbound', metrics);
    peerTls.watch(listening);
    listening.on('connection', (socket: Socket) => this.#connectionAge.born(socket));
    limitConnections(listening, config.maxConnections, 'inbound', metrics, logger);
  }

  async listen(): Promise<BoundAddress> {
    const bound = await listenOn(this.#front ?? this.#https, this.#config.inbound!, 'inbound');
    // permissive: the HTTPS and plaintext servers get their connections from the first-byte
    // dispatcher and never listen themselves, but Node starts the connection sweep that enforces
    // --headers-timeout only on a server's 'listening' event.
    if (this.#front) for (const server of [this.#https, this.#plain!]) server.emit('listening');
    return bound;
  }

  /** Closes keep-alive connections that have no request in flight (repeated during a drain). */
  closeIdleConnections(): void {
    this.#https.closeIdleConnections();
    this.#plain?.closeIdleConnections();
  }

  /** Stops accepting; resolves when every connection has ended. */
  close(): Promise<void> {
    const servers: Array<NetServer | HttpServer> = [this.#https, ...(this.#plain ? [this.#plain] : []), ...(this.#front ? [this.#front] : [])];
    // Also the servers that never listened (permissive): close() stops their connection sweep.
    const closing = servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    this.closeIdleConnections();
    return Promise.all(closing).then(() => this.#appPool.destroy());
  }

  /** Counts connections still open (for the drain report). */
  openConnections(): Promise<number> {
    const server = this.#front ?? this.#https;
    return new Promise((resolve) => server.getConnections((_error, count) => resolve(count)));
  }

  closeAllConnections(): void {
    this.#https.closeAllConnections();
    this.#plain?.closeAllConnections();
  }

  #prepareServer(server: HttpServer): void {
    server.setTimeout(this.#config.timeouts.idleMs);
    server.on('clientError', this.#clientError);
    server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.#onUpgrade(req, socket, head));
  }

  /** Applies header hygiene and identity; returns undefined (after answering 403) if denied. */
  #admit(req: IncomingMessage, keepUpgrade: boolean, deny: (detail: string, who: { peer: string; logFields: Record<string, unknown> }, peer: Record<string, unknown>) => void): ForwardOptions | undefined {
    const admission = this.#peerTls.admit(req.socket);
    if (!admission.admitted) {
      if (admission.refused === 'bad_certificate') {
        req.socket.destroy();
      } else {
        const { peer, reason } = admission;
        deny(`${peer.name} ${reason}`, { peer: peer.name, logFields: { tls: 'mtls' } }, { peer: { uris: peer.identity.uris, dns: peer.identity.dns, subject: peer.identity.subject } });
      }
      return undefined;
    }
    const { security, label, address } = admission;
    const peer = security.peer;
    const headers = req.headers;
    stripHopByHop(headers, keepUpgrade);
    stripIdentityHeaders(headers);
    // SPEC §4: identity and forwarding headers only for a verified peer; never for unauthenticated requests.
    if (peer) {
      headers['x-forwarded-client-cert'] = formatXfcc(this.#peerTls.ownUris, peer.identity);
      headers['x-forwarded-proto'] = 'https';
      headers['x-forwarded-for'] = address;
    }
    return { pool: this.#appPool, host: undefined, peer: label, logFields: { tls: security.tls } };
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    this.#connectionAge.request(acceptedSocket(req.socket), req.socket, res);
    const options = this.#admit(req, false, (detail, who, peer) => this.#forwarder.refuse(req, res, 'peer_not_allowed', detail, who, peer));
    if (!options) return;
    const problem = requestTargetProblem(req);
    if (problem) this.#forwarder.refuse(req, res, 'bad_request', problem, options);
    else this.#forwarder.web(req, res, options);
  }

  #onUpgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    this.#connectionAge.upgraded(acceptedSocket(socket));
    const options = this.#admit(req, true, (detail, _who, peer) => endWithErrorResponse(socket, 'peer_not_allowed', detail, peer));
    if (!options) return;
    const problem = requestTargetProblem(req);
    if (problem) endWithErrorResponse(socket, 'bad_request', problem);
    else this.#forwarder.upgrade(req, socket, head, options);
  }
}

const absoluteForm = /^https?:\/\/([^/?#@\s]+)((?:[/?][^#\s]*)?)$/i;

/**
 * RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host, and a server given an absolute-form
 * target (`GET http://name/path`, what proxies get) uses that authority instead of any Host sent.
 * Rewrites such a request to origin-form with that Host, so the app sees one consistent name;
 * returns why a request is refused (400 bad_request), or undefined.
 */
function requestTargetProblem(req: IncomingMessage): string | undefined {
  let hosts = 0;
  for (let index = 0; index < req.rawHeaders.length; index += 2) {
    const name = req.rawHeaders[index]!;
    // Per request on the hot path: lowercase only the names that can be "host".
    if (name.length === 4 && name.toLowerCase() === 'host') hosts += 1;
  }
  if (hosts > 1) return `${hosts} Host headers: a request carries exactly one`;
  const target = req.url ?? '';
  if (target.startsWith('/') || (target === '*' && req.method === 'OPTIONS')) {
    return hosts === 0 && req.httpVersion === '1.1' ? 'an HTTP/1.1 request without a Host header' : undefined;
  }
  const absolute = absoluteForm.exec(target);
  if (!absolute) return `request target ${JSON.stringify(target.slice(0, 200))} is neither a path nor an http(s) URL without user info`;
  req.url = absolute[2]!.startsWith('/') ? absolute[2]! : `/${absolute[2]!}`;
  req.headers.host = absolute[1]!;
  return undefined;
}

/** The TCP socket the listener accepted (the one under a TLS socket), which --max-connection-age times. */
function acceptedSocket(socket: Socket): Socket {
  return (socket as Socket & { _parent?: Socket })._parent ?? socket;
}
