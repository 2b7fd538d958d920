/**
 * The TLS side of an inbound listener, shared by HTTP and TCP mode: server options from the
 * current certificate generation (and rotation via setSecureContext), the verified peer identity of
 * each connection, refusal of a presented certificate that fails verification, handshake-failure
 * classification and logging, and the first-byte dispatch of permissive mode.
 */
import { randomBytes } from 'node:crypto';
import type { Server as NetServer, Socket } from 'node:net';
import type { Server as TlsServer, TlsOptions, TLSSocket } from 'node:tls';
import { certIdentity, displayName, type CertIdentity } from '../certs/identity.js';
import type { CertStore, GenerationedCertSet } from '../certs/store.js';
import type { Config } from '../config.js';
import { tlsFailures, type TlsFailureReason } from '../errors.js';
import { RateLimitedLog, type Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { classifyPeerVerifyError, classifyTlsError, tlsOptionsFor } from '../tls.js';
import type { PeerTracker, TransportSecurity } from './peers.js';
import { InboundPolicy } from './policy.js';

export interface PeerInfo {
  identity: CertIdentity;
  name: string;
}

/** How a connection is secured: mTLS with a verified peer, TLS without a client cert, or plaintext. */
export type ConnectionSecurity = { peer: PeerInfo; tls: 'mtls' } | { peer: undefined; tls: Exclude<TransportSecurity, 'mtls'> };

/** The outcome of admitting a request (HTTP) or a connection (TCP). */
export type Admission =
  | { admitted: true; security: ConnectionSecurity; label: string; address: string }
  | { admitted: false; refused: 'bad_certificate' }
  | { admitted: false; refused: 'peer_not_allowed'; peer: PeerInfo; reason: string };

const tlsRecordHandshake = 0x16;

export class PeerTls {
  readonly #config: Config;
  readonly #logger: Logger;
  readonly #metrics: Metrics;
  readonly #peers = new WeakMap<TLSSocket, PeerInfo>();
  /** Sockets whose presented certificate failed verification: a destroyed socket forgets it had one. */
  readonly #refused = new WeakSet<TLSSocket>();
  /** Remote address per raw socket, kept because a socket destroyed mid-handshake forgets it. */
  readonly #remoteAddresses = new WeakMap<Socket, string>();
  readonly #handshakeLog = new RateLimitedLog(10_000);
  readonly #deniedLog = new RateLimitedLog(10_000);
  readonly #policy: InboundPolicy;
  readonly #tracker: PeerTracker;
  /**
   * Session ticket keys outlive a rotation that keeps every CA of the bundle, so resumption keeps
   * working across leaf renewals. A resumed session skips chain verification, so when a CA leaves
   * the bundle the keys are renewed: no session verified under the old trust can resume.
   */
  #ticketKeys = randomBytes(48);
  /** sha256 fingerprints of the bundle the current ticket keys were issued under. */
  #ticketTrust: Set<string>;
  readonly #servers: TlsServer[] = [];
  readonly #store: CertStore;
  #ownUris: string[];

  constructor(options: { config: Config; store: CertStore; logger: Logger; metrics: Metrics; peers: PeerTracker }) {
    this.#config = options.config;
    this.#policy = new InboundPolicy(options.config.allow, options.config.trustDomain);
    this.#tracker = options.peers;
    if (this.permissive) {
      options.logger.warn('--mode permissive: plaintext and certificate-less TLS callers reach the app WITHOUT identity or allow-list checks; watch /peers and switch to --mode strict when every caller uses mTLS');
    }
    this.#logger = options.logger;
    this.#metrics = options.metrics;
    this.#store = options.store;
    this.#ownUris = options.store.current!.identity.uris;
    this.#ticketTrust = fingerprints(options.store.current!);
    options.store.on('update', (next) => {
      const trust = fingerprints(next);
      const removed = [...this.#ticketTrust].filter((fingerprint) => !trust.has(fingerprint));
      if (removed.length > 0) {
        this.#ticketKeys = randomBytes(48);
        this.#logger.info({ direction: 'inbound', removedCas: removed.length, generation: next.generation }, 'a CA left the trust bundle: TLS session tickets renewed, callers verify again on their next connection');
      }
      this.#ticketTrust = trust;
      // New handshakes use the new set; open connections keep theirs until they end.
      for (const server of this.#servers) server.setSecureContext(this.#secureContext(next));
      this.#ownUris = next.identity.uris;
    });
  }

  /** Our own URI SANs (XFCC `By=`), of the current generation. */
  get ownUris(): string[] {
    return this.#ownUris;
  }

  get permissive(): boolean {
    return this.#config.mode === 'permissive';
  }

  /** Options for a TLS/HTTPS server: our certificate, client certificates requested and verified. */
  serverOptions(extra: TlsOptions = {}): TlsOptions {
    return {
      ...this.#secureContext(this.#store.current!),
      ...extra,
      requestCert: true,
      // strict: OpenSSL refuses a missing certificate in the handshake itself.
      rejectUnauthorized: !this.permissive,
      handshakeTimeout: this.#config.timeouts.handshakeMs || undefined,
    };
  }

  /** Wires verification and failure reporting into a TLS server (and rotation into its context). */
  attach(server: TlsServer): void {
    this.#servers.push(server);
    // Before any protocol layer's listener, so a refused peer's socket is gone before it is read.
    server.prependListener('secureConnection', (socket: TLSSocket) => this.#onSecureConnection(socket));
    server.on('tlsClientError', (error, socket) => this.#onHandshakeError(error, socket));
  }

  /** Remembers each raw connection's address (for failure logs after the socket is gone). */
  watch(server: NetServer): void {
    server.on('connection', (socket: Socket) => this.#remoteAddresses.set(socket, `${socket.remoteAddress}:${socket.remotePort}`));
  }

  /** undefined: the socket presented a certificate that did not verify, and must not be served. */
  security(socket: Socket): ConnectionSecurity | undefined {
    const tlsSocket = socket as TLSSocket;
    if (!tlsSocket.encrypted) return { peer: undefined, tls: 'plaintext' };
    if (this.#refused.has(tlsSocket) || tlsSocket.destroyed) return undefined;
    const peer = this.#peers.get(tlsSocket);
    if (peer) return { peer, tls: 'mtls' };
    // permissive: "no client certificate" only if none was presented; a bad one is never admitted.
    if (!tlsSocket.authorized && tlsSocket.getPeerX509Certificate()) return undefined;
    return { peer: undefined, tls: 'tls' };
  }

  /**
   * Classifies a request's (or TCP connection's) socket, records it for /peers and the metrics, and
   * applies the allow-list and trust domain to a verified peer. Unauthenticated traffic (permissive
   * mode only) is admitted without checks: that is the point of the mode.
   */
  admit(socket: Socket): Admission {
    const security = this.security(socket);
    if (!security) return { admitted: false, refused: 'bad_certificate' };
    const address = socket.remoteAddress ?? '';
    const label = security.peer?.name ?? (security.tls === 'plaintext' ? 'plaintext' : 'no client cert');
    this.#metrics.inboundRequests.inc({ tls: security.tls });
    this.#tracker.record(address, label, security.tls);
    if (security.peer) {
      const decision = this.#policy.decide(security.peer.identity);
      if (!decision.allowed) {
        const peer = security.peer;
        this.#metrics.authzDenied.inc();
        const suppressed = this.#deniedLog.admit(peer.name);
        if (suppressed !== undefined) {
          this.#logger.warn({ direction: 'inbound', peer: peer.name, address, reason: decision.reason, uris: peer.identity.uris, dns: peer.identity.dns, ...(suppressed ? { suppressed } : {}) }, 'peer not allowed');
        }
        return { admitted: false, refused: 'peer_not_allowed', peer, reason: decision.reason };
      }
    }
    return { admitted: true, security, label, address };
  }

  /** permissive: the first byte decides TLS or plaintext; a silent client is closed. */
  dispatchFirstByte(socket: Socket, toTls: (socket: Socket) => void, toPlain: (socket: Socket) => void): void {
    const handshakeMs = this.#config.timeouts.handshakeMs;
    if (handshakeMs > 0) {
      socket.setTimeout(handshakeMs, () => {
        this.recordFailure('handshake_timeout', socket, `no data within ${handshakeMs} ms`);
        socket.destroy();
      });
    }
    socket.on('error', () => socket.destroy());
    socket.once('data', (chunk: Buffer) => {
      socket.setTimeout(0);
      socket.pause();
      socket.unshift(chunk);
      if (chunk[0] === tlsRecordHandshake) {
        toTls(socket);
      } else {
        toPlain(socket);
        socket.resume();
      }
    });
  }

  /** Logs (rate-limited per address and reason) and counts an inbound TLS failure. */
  recordFailure(reason: TlsFailureReason, socket: Socket, detail: string): void {
    const raw = (socket as Socket & { _parent?: Socket })._parent ?? socket;
    const peer = this.#remoteAddresses.get(raw) ?? this.#remoteAddresses.get(socket) ?? 'unknown';
    this.#metrics.handshakeErrors.inc({ direction: 'inbound', reason });
    const suppressed = this.#handshakeLog.admit(`${peer.slice(0, peer.lastIndexOf(':'))}|${reason}`);
    if (suppressed !== undefined) {
      this.#logger.warn({ direction: 'inbound', reason, peer, detail, hint: tlsFailures[reason], ...(suppressed ? { suppressed } : {}) }, 'TLS handshake failed');
    }
  }

  #secureContext(set: GenerationedCertSet) {
    return { ...tlsOptionsFor(set, this.#config.minTls), ticketKeys: this.#ticketKeys };
  }

  #onSecureConnection(socket: TLSSocket): void {
    const peerCert = socket.getPeerX509Certificate();
    if (!peerCert) return;
    if (!socket.authorized) {
      // permissive mode: a certificate that was presented must verify; no mode accepts a bad one.
      const verifyResult = socket.authorizationError as unknown as string | undefined;
      this.recordFailure(classifyPeerVerifyError(verifyResult), socket, verifyResult ?? 'certificate not verified');
      this.#refused.add(socket);
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
    const reason = verifyResult ? classifyPeerVerifyError(verifyResult) : (classifyTlsError(error, 'server') ?? 'tls_error');
    const detail = verifyResult ?? error.message.replace(/^[0-9A-F]+:error:[0-9A-F]+:SSL routines:[^:]*:/, '').replace(/:\.\.\/deps.*$/s, '');
    this.recordFailure(reason, socket, detail);
    // Node leaves a socket whose handshake failed (or timed out) open when 'tlsClientError' has a
    // listener: an HTTPS server's own timers close it eventually, a plain TLS server's (TCP mode)
    // never would, and silent clients would hold --max-connections slots for good.
    socket.destroy();
  }
}

function fingerprints(set: GenerationedCertSet): Set<string> {
  return new Set(set.bundle.map((ca) => ca.fingerprint256));
}
