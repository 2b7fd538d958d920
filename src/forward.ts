/**
 * One forwarder for both directions: http-proxy-3 with a keep-alive agent, connect/handshake/
 * response timeouts, the error catalog for failures, and one access-log line and metric per request.
 */
import type { Agent, ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { createProxyServer, type ProxyServer, type ProxyTarget } from 'http-proxy-3';
import { appErrorResponse, appErrors, type AppErrorCode } from './errors.js';
import { stripHopByHop } from './http-headers.js';
import type { Timeouts } from './config.js';
import { RateLimitedLog, type Logger } from './log.js';
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

/** What is known about the connection a request went out on, for classifying its failure. */
export interface ConnectionFacts {
  /** A new connection (not a pooled keep-alive one). */
  fresh: boolean;
  /** Its TLS handshake completed (always true for a pooled one). */
  tlsEstablished: boolean;
  /** Response headers arrived. */
  responded: boolean;
}

interface RequestState {
  start: bigint;
  options: ForwardOptions;
  error: AppErrorCode | undefined;
  connection: ConnectionFacts | undefined;
}

const requestState = new WeakMap<IncomingMessage, RequestState>();

export class Forwarder {
  readonly #proxy: ProxyServer;
  readonly #direction: Direction;
  readonly #timeouts: Timeouts;
  readonly #classify: (error: Error, connection: ConnectionFacts | undefined) => AppErrorCode;
  readonly #logger: Logger;
  readonly #metrics: Metrics;
  readonly #maxHeaderSize: number;

  constructor(options: { direction: Direction; timeouts: Timeouts; maxHeaderSize: number; classify: (error: Error, connection: ConnectionFacts | undefined) => AppErrorCode; logger: Logger; metrics: Metrics }) {
    this.#direction = options.direction;
    this.#maxHeaderSize = options.maxHeaderSize;
    this.#timeouts = options.timeouts;
    this.#classify = options.classify;
    this.#logger = options.logger;
    this.#metrics = options.metrics;
    this.#proxy = createProxyServer({ xfwd: false, ws: true, secure: true, prependPath: false });
    withoutDeleteLengthPass(this.#proxy);
    // http-proxy-3 emits proxyReq from inside the request's 'socket' event, with the socket.
    this.#proxy.on('proxyReq', (proxyReq, req, res, _options, socket) => this.#watchUpstream(proxyReq, req, res, socket));
    this.#proxy.on('proxyRes', (proxyRes, _req, res) => {
      // Hop-by-hop headers of the app/upstream hop stop here (a stray `Trailer` with a
      // Content-Length would even make Node throw). The client hop's Connection header is ours:
      // http-proxy-3 would otherwise copy the app's or force keep-alive over a drain or
      // --max-connection-age decision.
      stripHopByHop(proxyRes.headers);
      proxyRes.headers.connection = res.shouldKeepAlive ? 'keep-alive' : 'close';
    });
    this.#proxy.on('error', (error, req, res) => this.#onError(error, req, res));
    this.#proxy.on('econnreset', (_error, req) => {
      const state = requestState.get(req);
      if (state) this.#logger.debug({ direction: this.#direction, path: pathOf(req) }, 'client closed the connection before the response finished');
    });
  }

  /** Forwards one request; the response (or a catalog error) is written to `res`. */
  web(req: IncomingMessage, res: ServerResponse, options: ForwardOptions): void {
    const state: RequestState = { start: process.hrtime.bigint(), options, error: undefined, connection: undefined };
    requestState.set(req, state);
    res.once('close', () => this.#logRequest(req, res, state));
    // Node answers a client HTTP/1.0 request that sent `TE: chunked` with chunked framing, which
    // HTTP/1.0 does not have; such a response is delimited by closing the connection instead.
    if (req.httpVersionMajor === 1 && req.httpVersionMinor === 0) res.useChunkedEncodingByDefault = false;
    // Node's server has already answered `Expect: 100-continue` on this hop (like Envoy, the
    // expectation is not forwarded); forwarding it would also skip http-proxy-3's proxyReq event.
    delete req.headers.expect;
    this.#proxy.web(req, res, { ...this.#proxyOptions(options) });
  }

  /** Forwards a WebSocket (or other) upgrade. */
  upgrade(req: IncomingMessage, socket: Socket, head: Buffer, options: ForwardOptions): void {
    this.#proxy.ws(req, socket, head, this.#proxyOptions(options), (error) => {
      const code = this.#classify(error, undefined);
      this.#logger.warn({ direction: this.#direction, error: code, reason: error.message, path: pathOf(req) }, 'upgrade failed');
      const { status, body } = appErrorResponse(code);
      if (socket.writable) {
        socket.end(`HTTP/1.1 ${status} Bad Gateway\r\ncontent-type: application/json\r\nx-sidecar-error: ${code}\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
      }
    });
  }

  #proxyOptions(options: ForwardOptions) {
    // http-proxy-3 builds the outgoing request options on top of `ssl` (a fresh object per request),
    // so this is how --max-header-size reaches the parser of the app's/upstream's response.
    return { target: options.target, agent: options.agent, changeOrigin: options.changeOrigin, ssl: { maxHeaderSize: this.#maxHeaderSize } };
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

  /** Arms the connect/handshake/response/idle timeouts and records the connection facts. */
  #watchUpstream(proxyReq: ClientRequest, req: IncomingMessage, res: ServerResponse, socket: Socket): void {
    const { connectMs, handshakeMs, requestMs, idleMs } = this.#timeouts;
    const timers: NodeJS.Timeout[] = [];
    const fail = (what: string, ms: number) => () => proxyReq.destroy(new ForwardTimeout(what, ms));
    const clear = () => timers.forEach(clearTimeout);
    const isTls = 'encrypted' in socket;
    const connection: ConnectionFacts = { fresh: socket.connecting, tlsEstablished: !socket.connecting, responded: false };
    const state = requestState.get(req);
    if (state) state.connection = connection;
    if (socket.connecting) {
      if (connectMs > 0) {
        const timer = setTimeout(fail('connecting', connectMs), connectMs);
        timers.push(timer);
        socket.once('connect', () => clearTimeout(timer));
      }
      if (isTls) {
        const timer = handshakeMs > 0 ? setTimeout(fail('the TLS handshake', handshakeMs), connectMs + handshakeMs) : undefined;
        if (timer) timers.push(timer);
        (socket as TLSSocket).once('secureConnect', () => {
          clearTimeout(timer);
          connection.tlsEstablished = true;
        });
      }
    }
    proxyReq.once('response', () => (connection.responded = true));
    if (requestMs > 0) timers.push(setTimeout(fail('the response', requestMs), requestMs));
    if (idleMs > 0) proxyReq.setTimeout(idleMs, fail('waiting on an idle connection', idleMs));
    proxyReq.once('response', clear);
    proxyReq.once('close', clear);
    // Not the request's 'close': that fires as soon as the request body has been read.
    res.once('close', clear);
  }

  #onError(error: Error, req: IncomingMessage, res: ServerResponse | Socket): void {
    const state = requestState.get(req);
    const code = this.#classify(error, state?.connection);
    this.#logger.warn(
      { direction: this.#direction, error: code, reason: error.message, errno: (error as NodeJS.ErrnoException).code, path: pathOf(req), hint: appErrors[code].hint, ...state?.options.logFields },
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

/**
 * http-proxy(-3)'s `deleteLength` pass sets `Content-Length: 0` and drops `Transfer-Encoding` on a
 * DELETE/OPTIONS without Content-Length, yet still pipes the body: a chunked body then reaches the
 * next hop unframed and is parsed as a second request (request smuggling). Node frames a bodiless
 * DELETE correctly on its own, so the pass is removed.
 */
function withoutDeleteLengthPass(proxy: ProxyServer): void {
  const passes = proxy as unknown as { webPasses: Array<(...args: unknown[]) => unknown> };
  passes.webPasses = passes.webPasses.filter((pass) => pass.name !== 'deleteLength');
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
  if (code === 'ECONNREFUSED' || code === 'ENOENT' || code === 'EACCES' || code === 'ENOTDIR' || code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') return 'app_refused';
  if (code?.startsWith('HPE_')) return 'app_response_invalid';
  return 'app_reset';
}

/**
 * Options for every HTTP server the sidecar runs. Node enforces headersTimeout only when it sweeps
 * its connections (every 30 s by default), so the sweep runs often enough for the flag to hold.
 */
export function httpServerOptions(timeouts: Timeouts, maxHeaderSize: number) {
  const sweepMs = timeouts.headersMs > 0 ? Math.min(1000, Math.max(100, Math.floor(timeouts.headersMs / 4))) : 30_000;
  return { maxHeaderSize, headersTimeout: timeouts.headersMs, requestTimeout: 0, keepAliveTimeout: timeouts.idleMs, connectionsCheckingInterval: sweepMs };
}

const clientErrorCodes: Record<string, AppErrorCode> = {
  HPE_HEADER_OVERFLOW: 'request_headers_too_large',
  ERR_HTTP_REQUEST_TIMEOUT: 'request_headers_timeout',
};

/**
 * A server 'clientError' listener (a request Node's parser refused: oversized or malformed header
 * block, ambiguous framing, headers timeout): answers with the catalog status, logs (rate-limited
 * per address and code) and closes the connection. Without a listener Node answers but nobody
 * learns why.
 */
export function clientErrorHandler(direction: Direction, logger: Logger, metrics: Metrics): (error: NodeJS.ErrnoException, socket: Duplex) => void {
  const log = new RateLimitedLog(10_000);
  return (error, socket) => {
    const errno = error.code ?? '';
    if (errno === 'ECONNRESET' || errno === 'EPIPE' || !(errno.startsWith('HPE_') || errno in clientErrorCodes)) {
      socket.destroy();
      return;
    }
    const code = clientErrorCodes[errno] ?? 'malformed_request';
    const { status, body } = appErrorResponse(code, error.message);
    const address = (socket as Socket).remoteAddress ?? 'unknown';
    metrics.requests.inc({ direction, code: String(status) });
    const suppressed = log.admit(`${address}|${code}`);
    if (suppressed !== undefined) {
      logger.warn({ direction, error: code, reason: error.message, errno, peer: address, hint: appErrors[code].hint, ...(suppressed ? { suppressed } : {}) }, 'request refused');
    }
    const httpMessage = (socket as Socket & { _httpMessage?: ServerResponse })._httpMessage;
    if (socket.writable && !httpMessage?.headersSent) {
      socket.end(`HTTP/1.1 ${status} ${statusText[status] ?? 'Error'}\r\ncontent-type: application/json\r\nx-sidecar-error: ${code}\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
    }
    setTimeout(() => socket.destroy(), 1000).unref();
  };
}

const statusText: Record<number, string> = { 400: 'Bad Request', 408: 'Request Timeout', 431: 'Request Header Fields Too Large' };
