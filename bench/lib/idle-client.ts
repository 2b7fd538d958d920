import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { onCleanup } from './cleanup.js';
import type { ServiceCertDir } from './pki.js';

/** Connections opened by `holdConnections`, kept open (idle) until `close`. */
export interface HeldConnections {
  /** How many are still open: a server that closed some (idle timeout, limits) shows here. */
  open(): number;
  close(): Promise<void>;
}

export interface HoldOptions {
  port: number;
  identity: ServiceCertDir;
  count: number;
  /** Handshakes in flight at once while opening. */
  concurrency?: number;
  /** Request sent on each connection once, before it goes idle. */
  path?: string;
}

/**
 * Resolves once the response to one request has fully arrived: status line, headers, and a body of
 * exactly Content-Length bytes (the bench's app always sends one). Only a 200 counts.
 */
function oneRequest(socket: tls.TLSSocket, requestPath: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let received = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      received = Buffer.concat([received, chunk]);
      const headerEnd = received.indexOf('\r\n\r\n');
      if (headerEnd < 0) return;
      const head = received.subarray(0, headerEnd).toString('latin1');
      const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      if (!length) return finish(new Error(`response without Content-Length: ${head.slice(0, 200)}`));
      if (received.length - headerEnd - 4 < Number(length[1])) return;
      if (!/^HTTP\/1\.1 200 /.test(head)) return finish(new Error(`unexpected response: ${head.split('\r\n')[0]}`));
      finish();
    };
    const onClose = (): void => finish(new Error('connection closed before the response'));
    function finish(error?: Error): void {
      socket.off('data', onData);
      socket.off('close', onClose);
      if (error) reject(error);
      else resolve();
    }
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.write(`GET ${requestPath} HTTP/1.1\r\nHost: localhost\r\n\r\n`);
  });
}

function connect(port: number, credentials: tls.ConnectionOptions): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    // No `session`: every connection is a full handshake, as from distinct clients.
    const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ...credentials }, () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/**
 * Opens `count` keep-alive mTLS connections with client certificate `identity`, does one request on
 * each, and then holds them idle in this process (which is not measured). Registered for cleanup.
 */
export async function holdConnections(options: HoldOptions): Promise<HeldConnections> {
  const credentials = { cert: readFileSync(options.identity.cert), key: readFileSync(options.identity.key), ca: readFileSync(options.identity.ca) };
  const sockets: tls.TLSSocket[] = [];
  let closed = 0;
  const close = async (): Promise<void> => {
    await Promise.all(
      sockets.map((socket) => new Promise<void>((resolve) => {
        if (socket.destroyed) return resolve();
        socket.once('close', () => resolve());
        socket.destroy();
      })),
    );
  };
  const unregister = onCleanup(close);
  let next = 0;
  const opener = async (): Promise<void> => {
    while (next < options.count) {
      next += 1;
      const socket = await connect(options.port, credentials);
      sockets.push(socket);
      // Errors after the request (a server closing idle connections) only count as closed.
      socket.on('error', () => undefined);
      socket.once('close', () => (closed += 1));
      await oneRequest(socket, options.path ?? '/');
    }
  };
  try {
    await Promise.all(Array.from({ length: options.concurrency ?? 20 }, opener));
  } catch (error) {
    await close();
    unregister();
    throw new Error(`opening ${options.count} idle connections to 127.0.0.1:${options.port} failed after ${sockets.length}: ${(error as Error).message}`);
  }
  return {
    open: () => sockets.length - closed,
    async close() {
      await close();
      unregister();
    },
  };
}
