/**
 * Inbound: terminates mutual TLS from peers and forwards plaintext to the local app.
 * Request path: TLS handshake (client certificate verified) -> peer identity -> policy ->
 * header hygiene + XFCC -> Forwarder -> app.
 *
 * strict: the HTTPS server listens itself and refuses a missing or bad client certificate.
 * permissive: a TCP listener reads the first byte of each connection and hands it to the HTTPS
 * server (0x16, a TLS handshake record) or to a plaintext HTTP server; a presented certificate
 * that fails verification is still refused.
 */
import { randomBytes } from 'node:crypto';
import { Agent as HttpAgent, createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { ProxyTarget } from 'http-proxy-3';
import { certIdentity, displayName, type CertIdentity } from '../certs/identity.js';
import type { CertStore, GenerationedCertSet } from '../certs/store.js';
import type { AppTarget, Config } from '../config.js';
import { appErrors, tlsFailures, type TlsFailureReason } from '../errors.js';
import { Forwarder, classifyAppError, clientErrorHandler, httpServerOptions, type ForwardOptions } from '../forward.js';
import { stripHopByHop, stripIdentityHeaders } from '../http-headers.js';
import { listenOn, trackConnections, type BoundAddress } from '../listen.js';
import { RateLimitedLog, type Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { classifyPeerVerifyError, classifyTlsError, tlsOptionsFor } from '../tls.js';
import type { PeerTracker, TransportSecurity } from './peers.js';
import { InboundPolicy } from './policy.js';
import { ConnectionAge } from '../connection-age.js';
import { formatXfcc } from './xfcc.js';

export interface PeerInfo {
  identity: CertIdentity;
  name: string;
}

export function appProxyTarget(app: AppTarget): ProxyTarget {
  if (app.kind === 'unix') return { socketPath: app.path, host: 'localhost', port: 80 };
  return new URL(`http://${app.host.includes(':') ? `[${app.host}]` : app.host}:${app.port}`);
}

/** Free pooled connections to the app close before a typical app keep-alive timeout (5 s) ends them under us. */
const appFreeSocketTimeoutMs = 4000;
const tlsRecordHandshake = 0x16;

export class InboundListener {
  readonly #https: HttpsServer;
  /** permissive mode only: the plaintext HTTP server and the first-byte dispatcher in front. */
  readonly #plain: HttpServer | undefined;
  readonly #front: NetServer | undefined;
  readonly #config: Config;
  readonly #logger: Logger;
  readonly #metrics: Metrics;
  readonly #peersReport: PeerTracker;
  readonly #policy: InboundPolicy;
  readonly #forwarder: Forwarder;
  readonly #appAgent: HttpAgent;
  readonly #appTarget: ProxyTarget;
  readonly #peers = new WeakMap<TLSSocket, PeerInfo>();
  /** Remote address per raw socket, kept because a socket destroyed mid-handshake forgets it. */
  readonly #remoteAddresses = new WeakMap<Socket, string>();
  readonly #handshakeLog = new RateLimitedLog(10_000);
  readonly #deniedLog = new RateLimitedLog(10_000);
  /** Session ticket keys outlive certificate rotation so resumption keeps working. */
  readonly #ticketKeys = randomBytes(48);
  readonly #connectionAge: ConnectionAge;
  readonly #clientError: ReturnType<typeof clientErrorHandler>;
  #ownUris: string[];

  constructor(options: { config: Config; store: CertStore; logger: Logger; metrics: Metrics; peers: PeerTracker }) {
    const { config, store, logger, metrics } = options;
    this.#config = config;
    this.#logger = logger;
    this.#metrics = metrics;
    this.#peersReport = options.peers;
    this.#policy = new InboundPolicy(config.allow, config.trustDomain);
    this.#connectionAge = new ConnectionAge(config.maxConnectionAgeMs);
    this.#clientError = clientErrorHandler('inbound', logger, metrics);
    const set = store.current!;
    this.#ownUris = set.identity.uris;
    this.#appTarget = appProxyTarget(config.app);
    this.#appAgent = new HttpAgent({
      keepAlive: true,
      maxFreeSockets: 256,
      scheduling: 'lifo',
      noDelay: true,
      timeout: Math.min(appFreeSocketTimeoutMs, config.timeouts.idleMs || appFreeSocketTimeoutMs),
    });
    this.#forwarder = new Forwarder({ direction: 'inbound', timeouts: config.timeouts, maxHeaderSize: config.maxHeaderSize, classify: classifyAppError, logger, metrics });

    const permissive = config.mode === 'permissive';
    const httpOptions = httpServerOptions(config.timeouts, config.maxHeaderSize);
    this.#https = createHttpsServer(
      {
        ...this.#secureOptions(set),
        ...httpOptions,
        requestCert: true,
        // strict: OpenSSL refuses a missing certificate in the handshake itself.
        rejectUnauthorized: !permissive,
        handshakeTimeout: config.timeouts.handshakeMs || undefined,
      },
      (req, res) => this.#onRequest(req, res),
    );
    // Before the HTTP layer's own listener, so a refused peer's socket is gone before any request is parsed.
    this.#https.prependListener('secureConnection', (socket: TLSSocket) => this.#onSecureConnection(socket));
    this.#https.on('tlsClientError', (error, socket) => this.#onHandshakeError(error, socket));
    this.#prepareServer(this.#https);

    if (permissive) {
      this.#plain = createHttpServer(httpOptions, (req, res) => this.#onRequest(req, res));
      this.#prepareServer(this.#plain);
      this.#front = createNetServer((socket) => this.#dispatch(socket));
      this.#watchConnections(this.#front);
      if (config.maxConnections > 0) this.#front.maxConnections = config.maxConnections;
      logger.warn('--mode permissive: plaintext and certificate-less TLS callers reach the app WITHOUT identity or allow-list checks; watch /peers and switch to --mode strict when every caller uses mTLS');
    } else {
      this.#watchConnections(this.#https);
      if (config.maxConnections > 0) this.#https.maxConnections = config.maxConnections;
    }
    store.on('update', (next) => this.#onCertUpdate(next));
  }

  listen(): Promise<BoundAddress> {
    return listenOn(this.#front ?? this.#https, this.#config.inbound!, 'inbound');
  }

  /** Closes keep-alive connections that have no request in flight (repeated during a drain). */
  closeIdleConnections(): void {
    this.#https.closeIdleConnections();
    this.#plain?.closeIdleConnections();
  }

  /** Stops accepting; resolves when every connection has ended. */
  close(): Promise<void> {
    const servers: Array<NetServer | HttpServer> = [this.#https, ...(this.#plain ? [this.#plain] : []), ...(this.#front ? [this.#front] : [])];
    const closing = servers.map((server) => new Promise<void>((resolve) => (server.listening ? server.close(() => resolve()) : resolve())));
    this.closeIdleConnections();
    return Promise.all(closing).then(() => this.#appAgent.destroy());
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

  #watchConnections(server: NetServer): void {
    trackConnections(server, 'inbound', this.#metrics);
    server.on('connection', (socket: Socket) => {
      this.#remoteAddresses.set(socket, `${socket.remoteAddress}:${socket.remotePort}`);
      this.#connectionAge.born(socket);
    });
  }

  /** permissive: the first byte decides TLS or plaintext; a silent client is closed. */
  #dispatch(socket: Socket): void {
    const handshakeMs = this.#config.timeouts.handshakeMs;
    if (handshakeMs > 0) {
      socket.setTimeout(handshakeMs, () => {
        this.#recordHandshakeFailure('handshake_timeout', socket, `no data within ${handshakeMs} ms`);
        socket.destroy();
      });
    }
    socket.on('error', () => socket.destroy());
    socket.once('data', (chunk: Buffer) => {
      socket.setTimeout(0);
      socket.pause();
      socket.unshift(chunk);
      if (chunk[0] === tlsRecordHandshake) {
        this.#https.emit('connection', socket);
      } else {
        this.#plain!.emit('connection', socket);
        socket.resume();
      }
    });
  }

  #secureOptions(set: GenerationedCertSet) {
    return { ...tlsOptionsFor(set, this.#config.minTls), ticketKeys: this.#ticketKeys };
  }

  #onCertUpdate(next: GenerationedCertSet): void {
    // New handshakes use the new set; open connections keep theirs until they end.
    this.#https.setSecureContext(this.#secureOptions(next));
    this.#ownUris = next.identity.uris;
  }

  #onSecureConnection(socket: TLSSocket): void {
    const peerCert = socket.getPeerX509Certificate();
    if (!peerCert) return;
    if (!socket.authorized) {
      // permissive mode: a certificate that was presented must verify; no mode accepts a bad one.
      const verifyResult = socket.authorizationError as unknown as string | undefined;
      this.#recordHandshakeFailure(classifyPeerVerifyError(verifyResult), socket, verifyResult ?? 'certificate not verified');
      socket.destroy();
      return;
    }
    const identity = certIdentity(peerCert);
    this.#peers.set(socket, { identity, name: displayName(identity) });
  }

  #onHandshakeError(error: Error, socket: TLSSocket): void {
    // Node checks the client chain itself after the handshake and destroys the socket, so the
    // error says only "socket hang up"; the socket keeps the verify result.
    const verifyResult = socket.authorizationError as unknown as string | undefined;
    const reason = verifyResult ? classifyPeerVerifyError(verifyResult) : (classifyTlsError(error) ?? 'tls_error');
    const detail = verifyResult ?? error.message.replace(/^[0-9A-F]+:error:[0-9A-F]+:SSL routines:[^:]*:/, '').replace(/:\.\.\/deps.*$/s, '');
    this.#recordHandshakeFailure(reason, socket, detail);
  }

  #recordHandshakeFailure(reason: TlsFailureReason, socket: Socket, detail: string): void {
    const raw = (socket as Socket & { _parent?: Socket })._parent ?? socket;
    const peer = this.#remoteAddresses.get(raw) ?? this.#remoteAddresses.get(socket) ?? 'unknown';
    this.#metrics.handshakeErrors.inc({ direction: 'inbound', reason });
    const suppressed = this.#handshakeLog.admit(`${peer.slice(0, peer.lastIndexOf(':'))}|${reason}`);
    if (suppressed !== undefined) {
      this.#logger.warn({ direction: 'inbound', reason, peer, detail, hint: tlsFailures[reason], ...(suppressed ? { suppressed } : {}) }, 'TLS handshake failed');
    }
  }

  /** undefined: the socket presented a certificate that did not verify, and must not be served. */
  #security(req: IncomingMessage): { peer: PeerInfo | undefined; tls: TransportSecurity } | undefined {
    const socket = req.socket as TLSSocket;
    if (!socket.encrypted) return { peer: undefined, tls: 'plaintext' };
    const peer = this.#peers.get(socket);
    if (peer) return { peer, tls: 'mtls' };
    // permissive: "no client certificate" only if none was presented; a bad one is never admitted.
    if (!socket.authorized && socket.getPeerX509Certificate()) return undefined;
    return { peer: undefined, tls: 'tls' };
  }

  /** Applies header hygiene and identity; returns undefined (after answering 403) if denied. */
  #admit(req: IncomingMessage, keepUpgrade: boolean, deny: (body: string) => void): ForwardOptions | undefined {
    const security = this.#security(req);
    if (!security) {
      req.socket.destroy();
      return undefined;
    }
    const { peer, tls } = security;
    const address = req.socket.remoteAddress ?? '';
    const label = peer?.name ?? (tls === 'plaintext' ? 'plaintext' : 'no client cert');
    this.#metrics.inboundRequests.inc({ tls });
    this.#peersReport.record(address, label, tls);
    if (peer) {
      const decision = this.#policy.decide(peer.identity);
      if (!decision.allowed) {
        this.#metrics.authzDenied.inc();
        const suppressed = this.#deniedLog.admit(peer.name);
        if (suppressed !== undefined) {
          this.#logger.warn({ direction: 'inbound', peer: peer.name, address, reason: decision.reason, uris: peer.identity.uris, dns: peer.identity.dns, ...(suppressed ? { suppressed } : {}) }, 'peer not allowed');
        }
        deny(
          JSON.stringify({
            error: 'peer_not_allowed',
            message: `${appErrors.peer_not_allowed.message}: ${peer.name} ${decision.reason}`,
            hint: appErrors.peer_not_allowed.hint,
            peer: { uris: peer.identity.uris, dns: peer.identity.dns, subject: peer.identity.subject },
          }),
        );
        return undefined;
      }
    }
    const headers = req.headers;
    stripHopByHop(headers, keepUpgrade);
    stripIdentityHeaders(headers);
    // SPEC §4: identity and forwarding headers only for a verified peer; never for unauthenticated requests.
    if (peer) {
      headers['x-forwarded-client-cert'] = formatXfcc(this.#ownUris, peer.identity);
      headers['x-forwarded-proto'] = 'https';
      headers['x-forwarded-for'] = address;
    }
    return { target: this.#appTarget, agent: this.#appAgent, changeOrigin: false, peer: label, logFields: { tls } };
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const raw = (req.socket as Socket & { _parent?: Socket })._parent ?? req.socket;
    if (this.#connectionAge.expired(raw)) res.shouldKeepAlive = false;
    const options = this.#admit(req, false, (body) => {
      res.writeHead(appErrors.peer_not_allowed.status, { 'content-type': 'application/json', 'x-sidecar-error': 'peer_not_allowed', 'content-length': Buffer.byteLength(body) });
      res.end(body);
      this.#metrics.requests.inc({ direction: 'inbound', code: '403' });
    });
    if (options) this.#forwarder.web(req, res, options);
  }

  #onUpgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const options = this.#admit(req, true, (body) => {
      socket.end(`HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\nx-sidecar-error: peer_not_allowed\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
    });
    if (options) this.#forwarder.upgrade(req, socket, head, options);
  }
}
