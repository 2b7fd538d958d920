/**
 * Byte pipes for TCP mode: both directions with backpressure (stream.pipe) and half-close (one
 * side's FIN ends the other side's writing only); an error on either side closes both.
 */
import type { Socket } from 'node:net';

export interface PipeStats {
  /** Bytes from the client side to the server side. */
  bytesUp: number;
  bytesDown: number;
  durationMs: number;
  error: Error | undefined;
}

export function pipeBothWays(client: Socket, server: Socket, onDone: (stats: PipeStats) => void): void {
  const started = Date.now();
  let error: Error | undefined;
  let closed = 0;
  const fail = (cause: Error) => {
    error ??= cause;
    client.destroy();
    server.destroy();
  };
  const onClose = () => {
    closed += 1;
    if (closed === 2) onDone({ bytesUp: client.bytesRead, bytesDown: server.bytesRead, durationMs: Date.now() - started, error });
  };
  client.on('error', fail);
  server.on('error', fail);
  // A side that closes without having ended cleanly (reset, timeout) takes the other down with it.
  client.once('close', (hadError) => (hadError || !client.readableEnded ? server.destroy() : undefined));
  server.once('close', (hadError) => (hadError || !server.readableEnded ? client.destroy() : undefined));
  client.once('close', onClose);
  server.once('close', onClose);
  client.pipe(server);
  server.pipe(client);
}
