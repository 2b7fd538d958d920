/**
 * Inbound: terminates mutual TLS from peers and forwards plaintext to the local app.
 * Request path: TLS handshake (client certificate required and verified) -> peerIdentity ->
 * header hygiene + XFCC -> Forwarder -> app.
 */
import { Agent as HttpAgent, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { randomBytes } from 'node:crypto';
import type { ProxyTarget } from 'http-proxy-3';
import { certIdentity, displayName, type CertIdentity } from '../certs/identity.js';
import type { CertStore, GenerationedCertSet } from '../certs/store.js';
import type { AppTarget, Config } from '../config.js';
import { Forwarder, classifyAppError, type ForwardOptions } from '../forward.js';
import { stripHopByHop, stripIdentityHeaders } from '../http-headers.js';
import { RateLimitedLog, type Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { classifyPeerVerifyError, classifyTlsError, tlsOptionsFor } from '../tls.js';
import { formatXfcc } from './xfcc.js';
import { tlsFailures } from '../errors.js';
import { listenOn, trackConnections, type BoundAddress } from '../listen.js';

export interface PeerInfo {
  identity: CertIdentity;
  name: string;
}

export function appProxyTarget(app: AppTarget): ProxyTarget {
  if (app.kind === 'unix') return { socketPath: app.path, host: 'localhost', port: 80 };
  return new URL(`http://${app.host.includes(':') ? `[${app.host}]` : app.host}:${app.port}`);
}

/** Free pooled connections to the app are closed before a typical app keep-alive timeout (5 s) ends them under us. */
const appFreeSocketTimeoutMs = 4000;

export class InboundListener {
  readonly #server: HttpsServer;
  readonly #config: Config;
  readonly #logger: Logger;
  readonly #metrics: Metrics;
  readonly #forwarder: Forwarder;
  readonly #appAgent: HttpAgent;
  readonly #appTarget: ProxyTarget;
  readonly #peers = new WeakMap<TLSSocket, PeerInfo>();
  /** Remote address per raw socket, kept because a socket destroyed mid-handshake forgets it. */
  readonly #remoteAddresses = new WeakMap<Socket, string>();
  readonly #handshakeLog = new RateLimitedLog(10_000);
  /** Session ticket keys outlive certificate rotation so resumption keeps working. */
  readonly #ticketKeys = randomBytes(48);
  #ownUris: string[];

  constructor(options: { config: Config; store: CertStore; logger: Logger; metrics: Metrics }) {
    const { config, store, logger, metrics } = options;
    this.#config = config;
    this.#logger = logger;
    this.#metrics = metrics;
    const set = store.current!;
    this.#ownUris = set.identity.uris;
    this.#appTarget = appProxyTarget(config.app);
    this.#appAgent = new HttpAgent({ keepAlive: true, maxFreeSockets: 256, scheduling: 'lifo', timeout: Math.min(appFreeSocketTimeoutMs, config.timeouts.idleMs || appFreeSocketTimeoutMs) });
    this.#forwarder = new Forwarder({ direction: 'inbound', timeouts: config.timeouts, classify: classifyAppError, logger, metrics });
    this.#server = createHttpsServer(
      {
        ...this.#secureOptions(set),
        requestCert: true,
        rejectUnauthorized: true,
        handshakeTimeout: config.timeouts.handshakeMs || undefined,
        maxHeaderSize: config.maxHeaderSize,
        headersTimeout: config.timeouts.headersMs,
        requestTimeout: 0,
        keepAliveTimeout: config.timeouts.idleMs,
      },
      (req, res) => this.#onRequest(req, res),
    );
    this.#server.setTimeout(config.timeouts.idleMs);
    if (config.maxConnections > 0) this.#server.maxConnections = config.maxConnections;
    this.#server.on('secureConnection', (socket: TLSSocket) => this.#onSecureConnection(socket));
    this.#server.on('tlsClientError', (error, socket) => this.#onHandshakeError(error, socket));
    this.#server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.#onUpgrade(req, socket, head));
    trackConnections(this.#server, 'inbound', metrics);
    this.#server.on('connection', (socket: Socket) => this.#remoteAddresses.set(socket, `${socket.remoteAddress}:${socket.remotePort}`));
    store.on('update', (next) => this.#onCertUpdate(next));
  }

  listen(): Promise<BoundAddress> {
    return listenOn(this.#server, this.#config.inbound!, 'inbound');
  }

  /** Stops accepting; closes idle keep-alive connections; resolves when all connections are gone. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeIdleConnections();
      this.#appAgent.destroy();
    });
  }

  get server(): HttpsServer {
    return this.#server;
  }

  #secureOptions(set: GenerationedCertSet) {
    return { ...tlsOptionsFor(set, this.#config.minTls), ticketKeys: this.#ticketKeys };
  }

  #onCertUpdate(next: GenerationedCertSet): void {
    // New handshakes use the new set; open connections keep theirs until they end.
    this.#server.setSecureContext(this.#secureOptions(next));
    this.#ownUris = next.identity.uris;
  }

  #onSecureConnection(socket: TLSSocket): void {
    const peerCert = socket.getPeerX509Certificate();
    if (!peerCert) return;
    const identity = certIdentity(peerCert);
    this.#peers.set(socket, { identity, name: displayName(identity) });
  }

  #onHandshakeError(error: Error, socket: TLSSocket): void {
    // Node checks the client chain itself after the handshake and destroys the socket, so the
    // error says only "socket hang up"; the socket keeps the verify result and its parent the address.
    const verifyResult = socket.authorizationError as unknown as string | undefined;
    const reason = verifyResult ? classifyPeerVerifyError(verifyResult) : (classifyTlsError(error) ?? 'tls_error');
    const raw = (socket as TLSSocket & { _parent?: Socket })._parent;
    const peer = (raw && this.#remoteAddresses.get(raw)) ?? 'unknown';
    const address = peer.slice(0, peer.lastIndexOf(':'));
    this.#metrics.handshakeErrors.inc({ direction: 'inbound', reason });
    const suppressed = this.#handshakeLog.admit(`${address}|${reason}`);
    if (suppressed !== undefined) {
      const detail = verifyResult ?? error.message.replace(/^[0-9A-F]+:error:[0-9A-F]+:SSL routines:[^:]*:/, '').replace(/:\.\.\/deps.*$/s, '');
      this.#logger.warn({ direction: 'inbound', reason, peer, detail, hint: tlsFailures[reason], ...(suppressed ? { suppressed } : {}) }, 'TLS handshake failed');
    }
  }

  #peerOf(req: IncomingMessage): PeerInfo | undefined {
    return this.#peers.get(req.socket as TLSSocket);
  }

  #prepare(req: IncomingMessage, peer: PeerInfo | undefined, keepUpgrade: boolean): ForwardOptions {
    const headers = req.headers;
    stripHopByHop(headers, keepUpgrade);
    stripIdentityHeaders(headers);
    if (peer) headers['x-forwarded-client-cert'] = formatXfcc(this.#ownUris, peer.identity);
    headers['x-forwarded-proto'] = 'https';
    headers['x-forwarded-for'] = req.socket.remoteAddress ?? '';
    this.#metrics.inboundRequests.inc({ tls: peer ? 'mtls' : 'tls' });
    return { target: this.#appTarget, agent: this.#appAgent, changeOrigin: false, peer: peer?.name ?? 'no client cert' };
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const peer = this.#peerOf(req);
    this.#forwarder.web(req, res, this.#prepare(req, peer, false));
  }

  #onUpgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const peer = this.#peerOf(req);
    this.#forwarder.upgrade(req, socket, head, this.#prepare(req, peer, true));
  }
}
