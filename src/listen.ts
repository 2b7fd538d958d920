/**
 * Binding listeners, with errors that name the flag and address, and connection accounting.
 */
import type { Server } from 'node:net';
import type { ListenAddress } from './config.js';
import { RateLimitedLog, type Logger } from './log.js';
import type { Direction, Metrics } from './metrics.js';

/** "host:port" as actually bound (port 0 resolves to the chosen port). */
export type BoundAddress = string;

export class ListenError extends Error {
  constructor(readonly flag: string, address: string, cause: NodeJS.ErrnoException) {
    const why =
      cause.code === 'EADDRINUSE' ? 'the address is already in use (is another sidecar running?)'
      : cause.code === 'EACCES' ? 'permission denied (ports below 1024 need privileges; use a higher port)'
      : cause.code === 'EADDRNOTAVAIL' ? 'no interface has this address'
      : cause.message;
    super(`--${flag} ${address}: cannot listen: ${why}`);
    this.name = 'ListenError';
  }
}

export function formatAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

export function listenOn(server: Server, address: ListenAddress, flag: string): Promise<BoundAddress> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => reject(new ListenError(flag, formatAddress(address.host, address.port), error));
    server.once('error', onError);
    server.listen({ host: address.host, port: address.port }, () => {
      server.off('error', onError);
      const bound = server.address();
      resolve(bound && typeof bound === 'object' ? formatAddress(bound.address, bound.port) : formatAddress(address.host, address.port));
    });
  });
}

/** Keeps sidecar_connections_active{direction} in step with the server's open connections. */
export function trackConnections(server: Server, direction: Direction, metrics: Metrics): void {
  server.on('connection', (socket) => {
    metrics.connectionsActive.inc({ direction });
    socket.once('close', () => metrics.connectionsActive.dec({ direction }));
  });
}

/**
 * --max-connections: Node closes a connection that arrives while `max` are open before any byte is
 * read (the client sees a reset or an aborted handshake); each one is counted and logged (at most
 * one line per 10 s, with the number suppressed) so the operator sees the cap being hit.
 */
export function limitConnections(server: Server, max: number, direction: Direction, metrics: Metrics, logger: Logger): void {
  if (max <= 0) return;
  server.maxConnections = max;
  const log = new RateLimitedLog(10_000);
  server.on('drop', (dropped) => {
    metrics.connectionsDropped.inc({ direction });
    const suppressed = log.admit('drop');
    if (suppressed === undefined) return;
    logger.warn(
      { direction, peer: dropped ? `${dropped.remoteAddress}:${dropped.remotePort}` : undefined, maxConnections: max, ...(suppressed ? { suppressed } : {}), hint: 'raise --max-connections, or add replicas' },
      'connection dropped: --max-connections reached',
    );
  });
}
