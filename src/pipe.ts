/**
 * Byte pipes for TCP mode: both directions with backpressure and half-close (one side's FIN ends
 * the other side's writing only); an error on either side closes both.
 */
import type { Socket } from 'node:net';

export interface PipeStats {
  /** Bytes from the client side to the server side. */
  bytesUp: number;
  bytesDown: number;
  durationMs: number;
  error: Error | undefined;
}

/** One read buffer for every socket opened with `directReads()`: each read is copied out before the next. */
const sharedReadBuffer = Buffer.allocUnsafe(64 * 1024);

/**
 * Reads of a socket we open ourselves (net.connect and tls.connect take `onread`) that skip the
 * stream machinery and go straight to the pipe's other side (as copies: the buffer is shared and a
 * write may be queued). Until the pipe starts the socket is paused after a read and the chunk waits.
 */
export interface DirectReads {
  readonly onread: { buffer: Buffer; callback: (bytes: number, buffer: Buffer) => boolean };
  to: Socket | undefined;
  readonly early: Buffer[];
}

export function directReads(): DirectReads {
  const reads: DirectReads = {
    to: undefined,
    early: [],
    onread: {
      buffer: sharedReadBuffer,
      callback: (bytes, buffer) => {
        const chunk = Buffer.from(buffer.subarray(0, bytes));
        if (reads.to === undefined) {
          reads.early.push(chunk);
          return false;
        }
        return reads.to.write(chunk);
      },
    },
  };
  return reads;
}

/**
 * Joins `client` and `server`. `serverReads`: the server socket was opened with
 * `onread: serverReads.onread`, so its chunks arrive through that callback instead of 'data'.
 */
export function pipeBothWays(client: Socket, server: Socket, onDone: (stats: PipeStats) => void, serverReads?: DirectReads): void {
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
  forward(client, server);
  forward(server, client, serverReads);
}

/**
 * What stream.pipe does for two sockets, without its bookkeeping for many destinations and
 * unpiping: write each chunk, pause the source while the sink is full, end the sink after the
 * source's FIN. A source opened with `reads` delivers its chunks through that callback instead of
 * 'data' (the callback pauses it on a full sink); its chunks from before the pipe go first.
 */
function forward(from: Socket, to: Socket, reads?: DirectReads): void {
  if (reads) {
    reads.to = to;
    for (const chunk of reads.early.splice(0)) to.write(chunk);
  } else {
    from.on('data', (chunk: Buffer) => {
      if (!to.write(chunk)) from.pause();
    });
  }
  to.on('drain', () => from.resume());
  // A client that connects and closes without a byte, while the upstream is still handshaking,
  // has already emitted 'end' by the time the pipe starts.
  if (from.readableEnded) to.end();
  else from.once('end', () => to.end());
  // A source paused before the pipe started stays paused when a 'data' listener is added.
  from.resume();
}
