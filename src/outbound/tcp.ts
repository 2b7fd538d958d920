/**
 * Outbound in TCP mode (--protocol tcp): each `--upstream LOCAL_PORT=HOST:PORT[@SPIFFE_ID]`
 * listener originates verified mutual TLS to its upstream and pipes bytes, with no HTTP parsing.
 * Failures cannot be answered in HTTP here: they are logged and counted with the catalog code and
 * the app's connection is closed. TLS sessions are resumed per upstream (full handshakes are the
 * main cost of short connections).
 */
import { createServer, type Server, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { isIP } from 'node:net';
import type { CertStore } from '../certs/store.js';
import type { Config, UpstreamRoute } from '../config.js';
import { appErrors } from '../errors.js';
import { listenOn, trackConnections, type BoundAddress } from '../listen.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { directReads, pipeBothWays, type DirectReads } from '../pipe.js';
import { clientSecureContext } from '../tls.js';
import type { AfterHandshakeCheck } from '../connector.js';
import { alpnProtocols } from '../inbound/tcp.js';
import { insecureIdentityCheck, upstreamIdentityCheck } from './agents.js';
import { classifyUpstreamError, outboundLogger } from './proxy.js';

export class TcpUpstreamListeners {
  readonly #config: Config;
  readonly #store: CertStore;
  readonly #logger: Logger;
  readonly #metrics: Metrics;
  readonly #servers: Server[] = [];
  readonly #sockets = new Set<Socket>();
  /** The upstream identity checks of each route (by local port): fixed by the flags, built once. */
  readonly #identityChecks = new Map<number, { duringHandshake: ReturnType<typeof upstreamIdentityCheck>; afterHandshake: AfterHandshakeCheck | undefined }>();
  /** Resumable TLS session per route, of the current certificate generation. */
  #sessions = new Map<number, Buffer>();

  constructor(options: { config: Config; store: CertStore; logger: Logger; metrics: Metrics }) {
    this.#config = options.config;
    this.#store = options.store;
    this.#logger = outboundLogger(options.logger, options.config);
    this.#metrics = options.metrics;
    // A session from the old generation would resume with the old client certificate.
    options.store.on('update', () => (this.#sessions = new Map()));
    const { insecureSkipVerify: insecure, trustDomain } = options.config;
    for (const route of options.config.upstreams) {
      this.#identityChecks.set(route.localPort, {
        duringHandshake: upstreamIdentityCheck(route.spiffeId, trustDomain, !insecure),
        afterHandshake: insecureIdentityCheck(insecure, route.spiffeId, trustDomain),
      });
    }
  }

  async listen(): Promise<Record<string, BoundAddress>> {
    const bound: Record<string, BoundAddress> = {};
    for (const route of this.#config.upstreams) {
      const server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => this.#onConnection(route, socket));
      trackConnections(server, 'outbound', this.#metrics);
      this.#servers.push(server);
      bound[String(route.localPort)] = await listenOn(server, { host: '127.0.0.1', port: route.localPort }, 'upstream');
    }
    return bound;
  }

  close(): Promise<void> {
    return Promise.all(this.#servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve())))).then(() => undefined);
  }

  openConnections(): number {
    return this.#sockets.size;
  }

  closeAllConnections(): void {
    for (const socket of this.#sockets) socket.destroy();
  }

  #onConnection(route: UpstreamRoute, client: Socket): void {
    const insecure = this.#config.insecureSkipVerify;
    const { connectMs, handshakeMs, idleMs } = this.#config.timeouts;
    const checks = this.#identityChecks.get(route.localPort)!;
    const reads = directReads();
    const options: ConnectionOptions & { allowHalfOpen: boolean; onread: DirectReads['onread'] } = {
      onread: reads.onread,
      secureContext: clientSecureContext(this.#store.current!, this.#config.minTls),
      host: route.host,
      port: route.port,
      servername: isIP(route.host) ? undefined : route.host,
      ALPNProtocols: alpnProtocols,
      allowHalfOpen: true,
      session: this.#sessions.get(route.localPort),
      rejectUnauthorized: !insecure,
      checkServerIdentity: checks.duringHandshake,
    };
    // allowHalfOpen and onread are honoured by tls.connect (it builds the TLSSocket with them) but not in its types.
    const upstream: TLSSocket = tlsConnect(options);
    upstream.setNoDelay(true);
    upstream.on('session', (session: Buffer) => this.#sessions.set(route.localPort, session));
    this.#sockets.add(client);
    client.once('close', () => this.#sockets.delete(client));
    if (idleMs > 0) client.setTimeout(idleMs, () => client.destroy());
    const where = `${route.host}:${route.port}`;
    const deadline = connectMs + handshakeMs;
    const timer = deadline > 0 ? setTimeout(() => upstream.destroy(Object.assign(new Error(`connecting and the TLS handshake took longer than ${deadline} ms`), { code: 'SIDECAR_TIMEOUT' })), deadline) : undefined;
    // Nothing is read from the app before the upstream is verified: piping starts at secureConnect.
    const abandon = () => upstream.destroy();
    client.once('close', abandon);
    client.on('error', abandon);
    upstream.once('error', (error) => {
      clearTimeout(timer);
      client.destroy();
      if (upstream.bytesRead > 0) return;
      const { code, tlsReason } = classifyUpstreamError(error, { fresh: true, responded: false });
      if (tlsReason) this.#metrics.handshakeErrors.inc({ direction: 'outbound', reason: tlsReason });
      this.#metrics.upstreamErrors.inc({ direction: 'outbound', error: code });
      this.#metrics.tcpConnections.inc({ direction: 'outbound', result: code });
      this.#logger.warn({ direction: 'outbound', protocol: 'tcp', upstream: where, error: code, reason: error.message, hint: appErrors[code].hint }, 'forwarding failed');
    });
    upstream.once('secureConnect', () => {
      clearTimeout(timer);
      const refused = checks.afterHandshake?.(route.host, upstream);
      if (refused) {
        upstream.destroy(refused);
        return;
      }
      const resumed = upstream.isSessionReused();
      client.off('close', abandon);
      client.off('error', abandon);
      pipeBothWays(client, upstream, (stats) => {
        this.#metrics.tcpConnections.inc({ direction: 'outbound', result: stats.error ? 'error' : 'ok' });
        this.#logger.info(
          { direction: 'outbound', protocol: 'tcp', upstream: where, alpn: upstream.alpnProtocol || undefined, resumed, bytesOut: stats.bytesUp, bytesIn: stats.bytesDown, durationMs: stats.durationMs, ...(stats.error ? { error: stats.error.message } : {}) },
          'connection',
        );
      }, reads);
    });
  }
}
