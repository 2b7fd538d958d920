/**
 * One forwarder for both directions: http-proxy-3 with a keep-alive agent, connect/handshake/
 * response timeouts, the error catalog for failures, and one access-log line and metric per request.
 */
import type { Agent, ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { createProxyServer, type ProxyServer, type ProxyTarget } from 'http-proxy-3';
import { appErrorResponse, type AppErrorCode } from './errors.js';
import type { Timeouts } from './config.js';
import type { Logger } from './log.js';
import type { Direction, Metrics } from './metrics.js';

export interface ForwardOptions {
  target: ProxyTarget;
  agent: Agent;
  /** Rewrite Host to the target (outbound: the upstream expects its own name). */
  changeOrigin: boolean;
  /** Who asked (identity or address) for the access log. */
  peer: string;
  /** Extra access-log fields (e.g. the upstream, or an insecure marker). */
  logFields?: Record<string, unknown>;
}

/** Marks a timeout we enforce ourselves, so it maps to *_timeout rather than *_reset. */
export class ForwardTimeout extends Error {
  readonly code = 'SIDECAR_TIMEOUT';
  constructor(what: string, ms: number) {
    super(`${what} took longer than ${ms} ms`);
  }
}

interface RequestState {
  start: bigint;
  options: ForwardOptions;
  error: AppErrorCode | undefined;
}

const requestState = new WeakMap<IncomingMessage, RequestState>();

export class Forwarder {
  readonly #proxy: ProxyServer;
  readonly #direction: Direction;
  readonly #timeouts: Timeouts;
  readonly #classify: (error: Error) => AppErrorCode;
  readonly #logger: Logger;
  readonly #metrics: Metrics;

  constructor(options: { direction: Direction; timeouts: Timeouts; classify: (error: Error) => AppErrorCode; logger: Logger; metrics: Metrics }) {
    this.#direction = options.direction;
    this.#timeouts = options.timeouts;
    this.#classify = options.classify;
    this.#logger = options.logger;
    this.#metrics = options.metrics;
    this.#proxy = createProxyServer({ xfwd: false, ws: true, secure: true, prependPath: false });
    this.#proxy.on('proxyReq', (proxyReq, req) => this.#armTimeouts(proxyReq, req));
    this.#proxy.on('error', (error, req, res) => this.#onError(error, req, res));
    this.#proxy.on('econnreset', (_error, req) => {
      const state = requestState.get(req);
      if (state) this.#logger.debug({ direction: this.#direction, path: pathOf(req) }, 'client closed the connection before the response finished');
    });
  }

  /** Forwards one request; the response (or a catalog error) is written to `res`. */
  web(req: IncomingMessage, res: ServerResponse, options: ForwardOptions): void {
    const state: RequestState = { start: process.hrtime.bigint(), options, error: undefined };
    requestState.set(req, state);
    res.once('close', () => this.#logRequest(req, res, state));
    this.#proxy.web(req, res, { target: options.target, agent: options.agent, changeOrigin: options.changeOrigin });
  }

  /** Forwards a WebSocket (or other) upgrade. */
  upgrade(req: IncomingMessage, socket: Socket, head: Buffer, options: ForwardOptions): void {
    this.#proxy.ws(req, socket, head, { target: options.target, agent: options.agent, changeOrigin: options.changeOrigin }, (error) => {
      const code = this.#classify(error);
      this.#logger.warn({ direction: this.#direction, error: code, reason: error.message, path: pathOf(req) }, 'upgrade failed');
      const { status, body } = appErrorResponse(code);
      if (socket.writable) {
        socket.end(`HTTP/1.1 ${status} Bad Gateway\r\ncontent-type: application/json\r\nx-sidecar-error: ${code}\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
      }
    });
  }

  /** Writes a catalog error to the app, or cuts the response if it has already started. */
  sendError(req: IncomingMessage, res: ServerResponse, code: AppErrorCode, detail?: string): void {
    const state = requestState.get(req);
    if (state) state.error = code;
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const { status, body } = appErrorResponse(code, detail);
    res.writeHead(status, { 'content-type': 'application/json', 'x-sidecar-error': code, 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }

  #armTimeouts(proxyReq: ClientRequest, req: IncomingMessage): void {
    const { connectMs, handshakeMs, requestMs, idleMs } = this.#timeouts;
    const timers: NodeJS.Timeout[] = [];
    const fail = (what: string, ms: number) => () => proxyReq.destroy(new ForwardTimeout(what, ms));
    const clear = () => timers.forEach(clearTimeout);
    proxyReq.once('socket', (socket: Socket) => {
      if (!socket.connecting) return; // a pooled keep-alive connection: already connected
      if (connectMs > 0) {
        const timer = setTimeout(fail('connecting', connectMs), connectMs);
        timers.push(timer);
        socket.once('connect', () => clearTimeout(timer));
      }
      if ('encrypted' in socket && handshakeMs > 0) {
        const timer = setTimeout(fail('the TLS handshake', handshakeMs), connectMs + handshakeMs);
        timers.push(timer);
        (socket as TLSSocket).once('secureConnect', () => clearTimeout(timer));
      }
    });
    if (requestMs > 0) timers.push(setTimeout(fail('the response', requestMs), requestMs));
    if (idleMs > 0) proxyReq.setTimeout(idleMs, fail('waiting on an idle connection', idleMs));
    proxyReq.once('response', clear);
    proxyReq.once('close', clear);
    req.once('close', clear);
  }

  #onError(error: Error, req: IncomingMessage, res: ServerResponse | Socket): void {
    const code = this.#classify(error);
    const state = requestState.get(req);
    this.#logger.warn(
      { direction: this.#direction, error: code, reason: error.message, errno: (error as NodeJS.ErrnoException).code, path: pathOf(req), ...state?.options.logFields },
      'forwarding failed',
    );
    this.#metrics.upstreamErrors.inc({ direction: this.#direction, error: code });
    if ('writeHead' in res) this.sendError(req, res, code, error.message);
    else res.destroy();
  }

  #logRequest(req: IncomingMessage, res: ServerResponse, state: RequestState): void {
    const seconds = Number(process.hrtime.bigint() - state.start) / 1e9;
    const status = res.headersSent ? res.statusCode : 0;
    const completed = res.writableFinished;
    this.#metrics.requests.inc({ direction: this.#direction, code: completed ? String(status) : 'aborted' });
    this.#metrics.requestDuration.observe({ direction: this.#direction }, seconds);
    this.#logger.info(
      {
        direction: this.#direction,
        method: req.method,
        path: pathOf(req),
        status,
        durationMs: Math.round(seconds * 1e6) / 1e3,
        peer: state.options.peer,
        ...(state.error ? { error: state.error } : {}),
        ...(completed ? {} : { aborted: true }),
        ...state.options.logFields,
      },
      'request',
    );
  }
}

/** The request path without its query string (queries often carry tokens). */
export function pathOf(req: IncomingMessage): string {
  const url = req.url ?? '/';
  const query = url.indexOf('?');
  return query < 0 ? url : url.slice(0, query);
}

/** Errors reaching the local app (inbound direction). */
export function classifyAppError(error: Error): AppErrorCode {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'SIDECAR_TIMEOUT' || code === 'ETIMEDOUT') return 'app_timeout';
  if (code === 'ECONNREFUSED' || code === 'ENOENT' || code === 'EACCES' || code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') return 'app_refused';
  return 'app_reset';
}
