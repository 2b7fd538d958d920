/**
 * Inbound in TCP mode (--protocol tcp): mutual TLS terminated, the peer checked against the
 * allow-list at the handshake, then bytes piped to a `tcp://` (or unix socket) app. For gRPC,
 * databases and anything else that is not HTTP/1.1; ALPN `h2` and `http/1.1` are advertised so an
 * h2 client (gRPC) keeps speaking h2 end to end. With --proxy-protocol v2 the app first gets a
 * PROXY protocol v2 header naming the peer (proxy-protocol.ts).
 */
import { connect, createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import type { Config } from '../config.js';
import { limitConnections, listenOn, trackConnections, type BoundAddress } from '../listen.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { directReads, pipeBothWays } from '../pipe.js';
import { appErrors } from '../errors.js';
import type { PeerTls } from './peer-tls.js';
import { encodeProxyHeader, proxyHeaderFor } from './proxy-protocol.js';

export const alpnProtocols = ['h2', 'http/1.1'];

export class TcpInboundListener {
  readonly #tls: TlsServer;
  readonly #front: NetServer | undefined;
  readonly #config: Config;
  readonly #logger: Logger;
  readonly #metrics: Metrics;
  readonly #peerTls: PeerTls;
  readonly #sockets = new Set<Socket>();

  constructor(options: { config: Config; logger: Logger; metrics: Metrics; peerTls: PeerTls }) {
    const { config, logger, metrics, peerTls } = options;
    this.#config = config;
    this.#logger = logger;
    this.#metrics = metrics;
    this.#peerTls = peerTls;
    this.#tls = createTlsServer(peerTls.serverOptions({ allowHalfOpen: true, noDelay: true, ALPNProtocols: alpnProtocols }), (socket) => this.#onConnection(socket));
    peerTls.attach(this.#tls);
    if (peerTls.permissive) {
      this.#front = createNetServer({ allowHalfOpen: true, noDelay: true }, (socket) =>
        peerTls.dispatchFirstByte(socket, (tlsBound) => this.#tls.emit('connection', tlsBound), (plain) => this.#onConnection(plain)),
      );
    }
    const listening = this.#front ?? this.#tls;
    trackConnections(listening, 'inbound', metrics);
    peerTls.watch(listening);
    limitConnections(listening, config.maxConnections, 'inbound', metrics, logger);
  }

  listen(): Promise<BoundAddress> {
    return listenOn(this.#front ?? this.#tls, this.#config.inbound!, 'inbound');
  }

  closeIdleConnections(): void {
    // A byte pipe has no request boundary: it is idle only when its peers close it.
  }

  close(): Promise<void> {
    const servers = [this.#tls, ...(this.#front ? [this.#front] : [])];
    return Promise.all(servers.map((server) => new Promise<void>((resolve) => (server.listening ? server.close(() => resolve()) : resolve())))).then(() => undefined);
  }

  openConnections(): Promise<number> {
    return Promise.resolve(this.#sockets.size);
  }

  closeAllConnections(): void {
    for (const socket of this.#sockets) socket.destroy();
  }

  #onConnection(client: Socket): void {
    const admission = this.#peerTls.admit(client);
    if (!admission.admitted) {
      if (admission.refused === 'peer_not_allowed') this.#metrics.tcpConnections.inc({ direction: 'inbound', result: 'peer_not_allowed' });
      client.destroy();
      return;
    }
    const { security, label } = admission;
    let proxyHeader: Buffer | undefined;
    if (this.#config.proxyProtocol === 'v2') {
      try {
        proxyHeader = encodeProxyHeader(proxyHeaderFor(client, security));
      } catch (error) {
        // A header we cannot build (a socket already gone, a certificate with 64 KiB of SANs) must
        // not become a connection the app sees without one.
        this.#metrics.tcpConnections.inc({ direction: 'inbound', result: 'error' });
        this.#logger.warn({ direction: 'inbound', protocol: 'tcp', peer: label, reason: (error as Error).message }, 'PROXY protocol header not sent; connection closed');
        client.destroy();
        return;
      }
    }
    const app = this.#config.app;
    const reads = directReads();
    const upstream = app.kind === 'unix' ? connect({ path: app.path, allowHalfOpen: true, onread: reads.onread }) : connect({ host: app.host, port: app.port, allowHalfOpen: true, onread: reads.onread });
    upstream.setNoDelay(true);
    // Queued before the pipe starts, so it reaches the app ahead of any byte of the peer's.
    if (proxyHeader) upstream.write(proxyHeader);
    const connectMs = this.#config.timeouts.connectMs;
    const timer = connectMs > 0 ? setTimeout(() => upstream.destroy(Object.assign(new Error(`connecting took longer than ${connectMs} ms`), { code: 'SIDECAR_TIMEOUT' })), connectMs) : undefined;
    this.#sockets.add(client);
    client.once('close', () => this.#sockets.delete(client));
    if (this.#config.timeouts.idleMs > 0) client.setTimeout(this.#config.timeouts.idleMs, () => client.destroy());
    let connected = false;
    upstream.once('connect', () => {
      connected = true;
      clearTimeout(timer);
    });
    upstream.once('error', (error: NodeJS.ErrnoException) => {
      // Only a failed connect is reported here; later errors end the pipe and show in its line.
      // (bytesWritten cannot tell: it counts bytes queued before the connect, such as the header.)
      if (connected) return;
      clearTimeout(timer);
      const code = error.code === 'SIDECAR_TIMEOUT' ? 'app_timeout' : 'app_refused';
      this.#metrics.upstreamErrors.inc({ direction: 'inbound', error: code });
      this.#logger.warn({ direction: 'inbound', protocol: 'tcp', error: code, reason: error.message, peer: label, hint: appErrors[code].hint }, 'forwarding failed');
    });
    pipeBothWays(client, upstream, (stats) => {
      this.#metrics.tcpConnections.inc({ direction: 'inbound', result: stats.error ? 'error' : 'ok' });
      this.#logger.info(
        { direction: 'inbound', protocol: 'tcp', peer: label, tls: security.tls, alpn: (client as TLSSocket).alpnProtocol || undefined, bytesIn: stats.bytesUp, bytesOut: stats.bytesDown, durationMs: stats.durationMs, ...(stats.error ? { error: stats.error.message } : {}) },
        'connection',
      );
    }, reads);
  }
}
