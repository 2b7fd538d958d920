// Raw HTTP/1.1 over TLS or TCP: writes exact bytes (Node's HTTP client would normalise header case,
// merge duplicates and fix framing) and reads the raw answer, so tests control every byte both ways.
import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import type { Leaf } from './pki.js';
import type { Address } from './sidecar.js';

export interface RawExchange {
  /** Every byte the server sent, as latin1 text (status lines and headers are ASCII). */
  text: string;
  /** Whether the server closed (or reset) the connection before `timeoutMs`. */
  closedByServer: boolean;
  elapsedMs: number;
}

export interface RawTlsOptions {
  address: Address;
  /** Client certificate chain and key (the peer identity). */
  leaf: Pick<Leaf, 'chainPem' | 'keyPem'>;
  ca: string;
}

/** An open mTLS connection to the inbound listener; `write` sends exact bytes. */
export function openTls(options: RawTlsOptions): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({
      host: options.address.host,
      port: options.address.port,
      cert: options.leaf.chainPem,
      key: options.leaf.keyPem,
      ca: options.ca,
      servername: 'localhost',
      rejectUnauthorized: true,
    });
    socket.once('secureConnect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/**
 * Reads from `socket` until the server closes it, `until` says the text is complete, or
 * `timeoutMs` passes (then the socket is destroyed by us and `closedByServer` is false).
 */
export function readRaw(socket: Socket, options: { timeoutMs?: number; until?: (text: string) => boolean } = {}): Promise<RawExchange> {
  const started = Date.now();
  return new Promise((resolve) => {
    let text = '';
    let done = false;
    const finish = (closedByServer: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (!closedByServer) socket.destroy();
      resolve({ text, closedByServer, elapsedMs: Date.now() - started });
    };
    const timer = setTimeout(() => finish(false), options.timeoutMs ?? 5000);
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString('latin1');
      if (options.until?.(text)) finish(false);
    });
    socket.on('error', () => finish(true));
    socket.on('close', () => finish(true));
    socket.on('end', () => finish(true));
  });
}

/** One connection: write `bytes` exactly, then read the raw answer until close or `timeoutMs`. */
export async function rawTlsExchange(options: RawTlsOptions & { bytes: string | Buffer; timeoutMs?: number; until?: (text: string) => boolean }): Promise<RawExchange> {
  const socket = await openTls(options);
  const reading = readRaw(socket, options);
  socket.write(options.bytes);
  return reading;
}

/** The same over plain TCP (outbound listeners). */
export async function rawTcpExchange(options: { address: Address; bytes: string | Buffer; timeoutMs?: number; until?: (text: string) => boolean }): Promise<RawExchange> {
  const socket = netConnect({ host: options.address.host, port: options.address.port });
  await once(socket, 'connect');
  const reading = readRaw(socket, options);
  socket.write(options.bytes);
  return reading;
}

export interface RawResponse {
  status: number;
  /** Header names lowercased; repeated headers joined with ", ". */
  headers: Record<string, string>;
  /** Header names exactly as sent, in order. */
  headerNames: string[];
  body: string;
  /** Bytes after this response (a following pipelined response). */
  rest: string;
}

/**
 * Parses responses from a raw byte stream (Content-Length, chunked, or read-to-close bodies).
 * 1xx interim responses are returned like any other.
 */
export function parseResponses(text: string): RawResponse[] {
  const responses: RawResponse[] = [];
  let rest = text;
  while (rest.length > 0) {
    const end = rest.indexOf('\r\n\r\n');
    if (end < 0) break;
    const [statusLine, ...lines] = rest.slice(0, end).split('\r\n');
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine ?? '')?.[1] ?? 0);
    const headers: Record<string, string> = {};
    const headerNames: string[] = [];
    for (const line of lines) {
      const colon = line.indexOf(':');
      const name = line.slice(0, colon).trim();
      headerNames.push(name);
      const key = name.toLowerCase();
      const value = line.slice(colon + 1).trim();
      headers[key] = headers[key] === undefined ? value : `${headers[key]}, ${value}`;
    }
    rest = rest.slice(end + 4);
    let body = '';
    if (status >= 100 && status < 200) {
      body = '';
    } else if (headers['content-length'] !== undefined) {
      const length = Number(headers['content-length']);
      body = rest.slice(0, length);
      rest = rest.slice(length);
    } else if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
      for (;;) {
        const lineEnd = rest.indexOf('\r\n');
        if (lineEnd < 0) break;
        const size = parseInt(rest.slice(0, lineEnd), 16);
        rest = rest.slice(lineEnd + 2);
        if (!size) {
          rest = rest.slice(rest.indexOf('\r\n') + 2);
          break;
        }
        body += rest.slice(0, size);
        rest = rest.slice(size + 2);
      }
    } else {
      body = rest;
      rest = '';
    }
    responses.push({ status, headers, headerNames, body, rest });
  }
  return responses;
}

/**
 * An `until` for the exchanges: `text` holds at least one whole non-interim response, framed by
 * Content-Length or chunking (a read-to-close body is only whole when the server closes).
 */
export function holdsWholeResponse(text: string): boolean {
  let rest = text;
  for (;;) {
    const end = rest.indexOf('\r\n\r\n');
    if (end < 0) return false;
    const head = rest.slice(0, end);
    rest = rest.slice(end + 4);
    if (/^HTTP\/1\.[01] 1\d\d/.test(head)) continue;
    const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    if (length) return rest.length >= Number(length[1]);
    if (/\r\ntransfer-encoding:[^\r]*chunked/i.test(head)) return holdsLastChunk(rest);
    return false;
  }
}

/** Whether a chunked body starting at `body` has reached its last chunk and the empty trailer. */
function holdsLastChunk(body: string): boolean {
  let rest = body;
  for (;;) {
    const lineEnd = rest.indexOf('\r\n');
    if (lineEnd < 0) return false;
    const size = parseInt(rest.slice(0, lineEnd), 16);
    if (Number.isNaN(size)) return false;
    if (size === 0) return rest.includes('\r\n\r\n', lineEnd);
    if (rest.length < lineEnd + 2 + size + 2) return false;
    rest = rest.slice(lineEnd + 2 + size + 2);
  }
}

/**
 * The first non-interim response of an exchange read with `until: holdsWholeResponse`; throws
 * (with what arrived) when it is not whole: the exchange timed out before the response ended.
 */
export function wholeResponse(exchange: RawExchange): RawResponse {
  const response = parseResponses(exchange.text).find((candidate) => candidate.status >= 200);
  if (!response || !(holdsWholeResponse(exchange.text) || exchange.closedByServer)) {
    throw new Error(`no whole response within the exchange's timeout (${exchange.elapsedMs} ms); received: ${exchange.text.slice(0, 500)}`);
  }
  return response;
}
