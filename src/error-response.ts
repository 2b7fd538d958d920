/**
 * Writes a catalog error (SPEC §6) to the client: status, `x-sidecar-error`, JSON body. On a
 * ServerResponse when there is one; as a raw HTTP/1.1 message (then the connection closes) on a
 * socket where Node's server has handed the connection over (upgrades, CONNECT, parse errors).
 */
import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { appErrorResponse, type AppErrorCode } from './errors.js';

export function writeErrorResponse(res: ServerResponse, code: AppErrorCode, detail?: string, extra?: Record<string, unknown>): void {
  const { status, body } = appErrorResponse(code, detail, extra);
  res.writeHead(status, { 'content-type': 'application/json', 'x-sidecar-error': code, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** The status line and headers of a response, for a socket. */
export function rawResponseHead(status: number, headers: readonly string[], statusMessage = STATUS_CODES[status] ?? ''): string {
  let head = `HTTP/1.1 ${status} ${statusMessage}\r\n`;
  for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return `${head}\r\n`;
}

export function endWithErrorResponse(socket: Duplex, code: AppErrorCode, detail?: string, extra?: Record<string, unknown>): void {
  const { status, body } = appErrorResponse(code, detail, extra);
  const head = rawResponseHead(status, ['content-type', 'application/json', 'x-sidecar-error', code, 'content-length', String(Buffer.byteLength(body)), 'connection', 'close']);
  socket.end(head + body);
}
