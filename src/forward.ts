/**
 * One forwarder for both directions: the request goes out through an undici connection pool (the
 * app's, or an upstream's of the current certificate generation), with the error catalog for
 * failures, and one access-log line and metric per request. Bodies stream both ways with
 * backpressure; nothing is buffered.
 *
 * undici rather than http-proxy-3 over node:http's client: on this project's benchmark machine a
 * node:http server forwarding through http-proxy-3 cost 147 µs of CPU per request, through
 * http.request 75 µs, through undici 46 µs (README, Benchmarks).
 */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import type { Client, Dispatcher } from 'undici';
import { connectionOpenedAt, ForwardTimeout, type Connector } from './connector.js';
import { appErrors, type AppErrorCode } from './errors.js';
import { endWithErrorResponse, rawResponseHead, writeErrorResponse } from './error-response.js';
import { flatHeaders, responseHeaders } from './http-headers.js';
import type { Timeouts } from './config.js';
import { RateLimitedLog, type Logger } from './log.js';
import type { Direction, Metrics } from './metrics.js';
import { pipeBothWays } from './pipe.js';
import type { ConnectionPool } from './pool.js';

export { ForwardTimeout };

export interface ForwardOptions {
  /** The connection pool the request goes out on (the app's, or an upstream's). */
  pool: ConnectionPool;
  /** The Host header for the next hop; undefined passes the client's on (inbound). */
  host: string | undefined;
  /** Who asked (identity or address) for the access log. */
  peer: string;
  /** Extra access-log fields (e.g. the upstream, or an insecure marker). */
  logFields?: Record<string, unknown>;
}

/** What is known about the connection a request went out on, for classifying its failure. */
export interface ConnectionFacts {
  /** A connection opened for this request (not a pooled keep-alive one). */
  fresh: boolean;
  /** Response headers arrived. */
  responded: boolean;
}

/** Connection settings shared by the app's pool and the upstreams' pools. */
export function clientOptions(connect: Connector, options: { maxHeaderSize: number; keepAliveMs: number }): Client.Options {
  return {
    connect,
    maxHeaderSize: options.maxHeaderSize,
    keepAliveTimeout: options.keepAliveMs,
    keepAliveMaxTimeout: options.keepAliveMs,
    pipelining: 1,
  };
}

interface RequestState {
  start: bigint;
  /** Date.now() at the start, to tell a connection opened for this request from a pooled one. */
  startedAt: number;
  options: ForwardOptions;
  /** The pooled connection the request went out on. */
  connection: Client;
  /** That connection was a kept-alive one from the pool (not opened for this request). */
  reused: boolean;
  /** The request was already sent again once on a new connection. */
  retried: boolean;
  /** The client's socket (undici detaches `req.socket` when it destroys a request body). */
  clientSocket: Socket;
  error: AppErrorCode | undefined;
  responded: boolean;
  /** The client went away: nothing more is written to it, and its failure is not the peer's. */
  clientGone: boolean;
}

/** What a request handler needs from its Forwarder. */
interface ForwarderCore {
  fail(req: IncomingMessage, res: ServerResponse | Socket, state: RequestState, error: Error): void;
}

/** Response hop of one proxied request: undici's events onto the client's ServerResponse. */
class ProxiedResponse implements Dispatcher.DispatchHandler {
  readonly #core: ForwarderCore;
  readonly #req: IncomingMessage;
  readonly #res: ServerResponse;
  readonly #state: RequestState;
  #controller: Dispatcher.DispatchController | undefined;
  readonly #resume = () => this.#controller?.resume();

  constructor(core: ForwarderCore, req: IncomingMessage, res: ServerResponse, state: RequestState) {
    this.#core = core;
    this.#req = req;
    this.#res = res;
    this.#state = state;
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    // Interim responses stop here: Node's server already answered `Expect: 100-continue`.
    if (statusCode < 200) return;
    this.#state.responded = true;
    try {
      // The client hop's Connection is ours: keep-alive unless draining, --max-connection-age or the client said otherwise.
      const res = this.#res;
      const flat = responseHeaders(headers);
      flat.push('connection', res.shouldKeepAlive ? 'keep-alive' : 'close');
      res.writeHead(statusCode, statusMessage ?? '', flat);
    } catch (error) {
      controller.abort(Object.assign(new Error(`the response's headers cannot be forwarded: ${(error as Error).message}`), { code: 'HPE_INVALID_HEADER_TOKEN' }));
    }
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.#res.write(chunk)) {
      controller.pause();
      this.#res.once('drain', this.#resume);
    }
  }

  onResponseEnd(): void {
    this.#state.options.pool.release(this.#state.connection);
    this.#res.end();
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    this.#state.options.pool.discard(this.#state.connection);
    this.#core.fail(this.#req, this.#res, this.#state, error);
  }
}

/** An upgrade (WebSocket): 101 joins the two sockets; any other answer is relayed, then closed. */
class ProxiedUpgrade implements Dispatcher.DispatchHandler {
  readonly #core: ForwarderCore;
  readonly #req: IncomingMessage;
  readonly #socket: Socket;
  readonly #head: Buffer;
  readonly #state: RequestState;
  readonly #onJoined: (status: number) => void;

  constructor(core: ForwarderCore, req: IncomingMessage, socket: Socket, head: Buffer, state: RequestState, onJoined: (status: number) => void) {
    this.#core = core;
    this.#req = req;
    this.#socket = socket;
    this.#head = head;
    this.#state = state;
    this.#onJoined = onJoined;
  }

  onRequestStart(): void {}

  onRequestUpgrade(_controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, upstream: Duplex): void {
    this.#state.responded = true;
    // The socket is the upgraded stream's now; its pooled connection object is done.
    this.#state.options.pool.discard(this.#state.connection);
    const socket = this.#socket;
    if (this.#state.clientGone) {
      upstream.destroy();
      return;
    }
    socket.write(rawResponseHead(statusCode, flatHeaders(headers)));
    if (this.#head.length) upstream.write(this.#head);
    pipeBothWays(socket, upstream as Socket, () => undefined);
    this.#onJoined(statusCode);
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    if (statusCode < 200) return;
    this.#state.responded = true;
    // Not upgraded: the answer is relayed as is and the connection closes after it.
    const flat = responseHeaders(headers);
    flat.push('connection', 'close');
    this.#socket.write(rawResponseHead(statusCode, flat, statusMessage));
    this.#onJoined(statusCode);
  }

  onResponseData(_controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.#socket.write(chunk);
  }

  onResponseEnd(): void {
    this.#state.options.pool.discard(this.#state.connection);
    this.#socket.end();
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    this.#state.options.pool.discard(this.#state.connection);
    this.#core.fail(this.#req, this.#socket, this.#state, error);
  }
}


/** RFC 9110 §9.2.2: a request with one of these methods may be sent again. */
const idempotentMethods = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/** undici's and the socket's words for a connection that the other side closed or reset. */
const staleConnectionErrors = new Set(['UND_ERR_SOCKET', 'ECONNRESET', 'EPIPE']);

/** A request has a body if it declares a length above zero or is chunked (Node's server checked the framing). */
function hasBody(headers: IncomingHttpHeaders): boolean {
  const length = headers['content-length'];
  if (length !== undefined) return length !== '0';
  return headers['transfer-encoding'] !== undefined;
}

/** Request headers the next hop must not get from us as they are, whatever the direction. */
function prepareRequestHeaders(headers: IncomingHttpHeaders, host: string | undefined): void {
  // Node's server has already answered `Expect: 100-continue` on this hop (like Envoy, the
  // expectation is not forwarded), and undici frames the body itself (Content-Length when the
  // client gave one, chunked otherwise), so the client's Transfer-Encoding is not passed on.
  delete headers.expect;
  delete headers['transfer-encoding'];
  if (host !== undefined) headers.host = host;
}

export class Forwarder {
  readonly #direction: Direction;
  readonly #timeouts: Timeouts;
  readonly #classify: (error: Error, connection: ConnectionFacts | undefined) => AppErrorCode;
  readonly #logger: Logger;
  readonly #metrics: Metrics;
  readonly #maxHeaderSize: number;
  readonly #core: ForwarderCore = { fail: (req, res, state, error) => this.#fail(req, res, state, error) };

  constructor(options: { direction: Direction; timeouts: Timeouts; maxHeaderSize: number; classify: (error: Error, connection: ConnectionFacts | undefined) => AppErrorCode; logger: Logger; metrics: Metrics }) {
    this.#direction = options.direction;
    this.#maxHeaderSize = options.maxHeaderSize;
    this.#timeouts = options.timeouts;
    this.#classify = options.classify;
    this.#logger = options.logger;
    this.#metrics = options.metrics;
  }

  /** Forwards one request; the response (or a catalog error) is written to `res`. */
  web(req: IncomingMessage, res: ServerResponse, options: ForwardOptions): void {
    const state = this.#newState(req, options);
    res.once('close', () => {
      if (!res.writableFinished) this.#clientGone(state);
      this.#logRequest(req, res, state);
    });
    // Node answers a client HTTP/1.0 request that sent `TE: chunked` with chunked framing, which
    // HTTP/1.0 does not have; such a response is delimited by closing the connection instead.
    if (req.httpVersionMajor === 1 && req.httpVersionMinor === 0) res.useChunkedEncodingByDefault = false;
    const withBody = hasBody(req.headers);
    prepareRequestHeaders(req.headers, options.host);
    state.connection.dispatch(this.#dispatchOptions(req, withBody ? req : null), new ProxiedResponse(this.#core, req, res, state));
  }

  /** Forwards a WebSocket (or other) upgrade. */
  upgrade(req: IncomingMessage, socket: Socket, head: Buffer, options: ForwardOptions): void {
    const state = this.#newState(req, options);
    const protocol = String(req.headers.upgrade);
    delete req.headers.connection;
    delete req.headers.upgrade;
    prepareRequestHeaders(req.headers, options.host);
    socket.once('close', () => {
      if (!state.responded) this.#clientGone(state);
    });
    const onAnswered = (status: number) => {
      this.#metrics.requests.inc({ direction: this.#direction, code: String(status) });
      this.#logger.info({ direction: this.#direction, method: req.method, path: pathOf(req), status, upgrade: protocol, peer: options.peer, ...options.logFields }, 'request');
    };
    state.connection.dispatch({ ...this.#dispatchOptions(req, null), upgrade: protocol }, new ProxiedUpgrade(this.#core, req, socket, head, state, onAnswered));
  }

  #newState(req: IncomingMessage, options: ForwardOptions): RequestState {
    const connection = options.pool.acquire();
    return { start: process.hrtime.bigint(), startedAt: Date.now(), options, connection, reused: options.pool.wasConnected(connection), retried: false, clientSocket: req.socket, error: undefined, responded: false, clientGone: false };
  }

  /**
   * A kept-alive connection can be closed by the other side (idle timeout, drain, restart) just as
   * a request goes out on it: the request was never processed. Like Go's http.Transport, such a
   * request is sent once more on a new connection when that is safe: nothing of the response has
   * arrived, the method is idempotent and there is no body (a streamed body cannot be replayed).
   */
  #retryable(req: IncomingMessage, state: RequestState, cause: Error): boolean {
    return (
      state.reused &&
      !state.retried &&
      !state.responded &&
      idempotentMethods.has(req.method ?? '') &&
      !hasBody(req.headers) &&
      staleConnectionErrors.has((cause as NodeJS.ErrnoException).code ?? '')
    );
  }

  #retry(req: IncomingMessage, res: ServerResponse, state: RequestState, cause: Error): void {
    this.#logger.debug({ direction: this.#direction, path: pathOf(req), reason: cause.message }, 'kept-alive connection closed before the request was answered: sending it again on a new connection');
    state.retried = true;
    state.reused = false;
    state.connection = state.options.pool.acquire(true);
    state.connection.dispatch(this.#dispatchOptions(req, null), new ProxiedResponse(this.#core, req, res, state));
  }

  #dispatchOptions(req: IncomingMessage, body: IncomingMessage | null): Dispatcher.DispatchOptions {
    return {
      body,
      path: req.url ?? '/',
      method: (req.method ?? 'GET') as Dispatcher.HttpMethod,
      headers: req.headers as Record<string, string | string[]>,
      headersTimeout: this.#timeouts.requestMs,
      bodyTimeout: this.#timeouts.idleMs,
    };
  }

  /** The client went away mid-request: its connection to the next hop goes too, so the app or upstream learns. */
  #clientGone(state: RequestState): void {
    state.clientGone = true;
    state.options.pool.discard(state.connection);
  }

  /**
   * Answers a request the sidecar refuses itself (403 peer_not_allowed, 400 bad_request), with its
   * access-log line and metrics, like any forwarded request that failed.
   */
  refuse(req: IncomingMessage, res: ServerResponse, code: AppErrorCode, detail: string, who: Pick<ForwardOptions, 'peer' | 'logFields'>, extra?: Record<string, unknown>): void {
    const state = { start: process.hrtime.bigint(), options: who, error: code };
    this.#metrics.upstreamErrors.inc({ direction: this.#direction, error: code });
    res.once('close', () => this.#logRequest(req, res, state));
    writeErrorResponse(res, code, detail, extra);
  }

  /** Writes a catalog error to the app, or cuts the response if it has already started. */
  sendError(res: ServerResponse, code: AppErrorCode, detail?: string): void {
    if (res.headersSent) res.destroy();
    else writeErrorResponse(res, code, detail);
  }

  #fail(req: IncomingMessage, res: ServerResponse | Socket, state: RequestState, cause: Error): void {
    if (state.clientGone || state.clientSocket.destroyed) {
      this.#logger.debug({ direction: this.#direction, path: pathOf(req) }, 'client closed the connection before the response finished');
      return;
    }
    if ('writeHead' in res && this.#retryable(req, state, cause)) {
      this.#retry(req, res, state, cause);
      return;
    }
    const openedAt = connectionOpenedAt(cause);
    const error = this.#explain(cause);
    const code = this.#classify(error, { fresh: openedAt !== undefined && openedAt >= state.startedAt, responded: state.responded });
    state.error = code;
    this.#logger.warn(
      { direction: this.#direction, error: code, reason: error.message, errno: (error as NodeJS.ErrnoException).code, path: pathOf(req), hint: appErrors[code].hint, ...state.options.logFields },
      'forwarding failed',
    );
    this.#metrics.upstreamErrors.inc({ direction: this.#direction, error: code });
    if ('writeHead' in res) this.sendError(res, code, error.message);
    else if (!state.responded && res.writable) endWithErrorResponse(res, code, error.message);
    else res.destroy();
  }

  /** undici's errors in the sidecar's words (and errno codes the classifiers know). */
  #explain(error: Error): Error {
    switch ((error as NodeJS.ErrnoException).code) {
      case 'UND_ERR_HEADERS_TIMEOUT':
        return new ForwardTimeout('the response (--request-timeout)', this.#timeouts.requestMs);
      case 'UND_ERR_BODY_TIMEOUT':
        return new ForwardTimeout('waiting on an idle connection (--idle-timeout)', this.#timeouts.idleMs);
      case 'UND_ERR_HEADERS_OVERFLOW':
        return Object.assign(new Error(`the response's headers exceed --max-header-size (${this.#maxHeaderSize} bytes)`), { code: 'HPE_HEADER_OVERFLOW' });
      case 'UND_ERR_SOCKET':
        return Object.assign(new Error(`the connection closed before the response was complete (${error.message})`), { code: 'ECONNRESET' });
      default:
        // undici's parser errors carry no code for some malformations (a status line that is not HTTP).
        if (error.name === 'HTTPParserError') return Object.assign(new Error(`the response is not valid HTTP/1.1: ${error.message}`), { code: (error as NodeJS.ErrnoException).code ?? 'HPE_INVALID_RESPONSE' });
        return error;
    }
  }

  #logRequest(req: IncomingMessage, res: ServerResponse, state: { start: bigint; options: Pick<ForwardOptions, 'peer' | 'logFields'>; error: AppErrorCode | undefined }): void {
    const seconds = Number(process.hrtime.bigint() - state.start) / 1e9;
    const status = res.headersSent ? res.statusCode : 0;
    const completed = res.writableFinished;
    this.#metrics.requests.inc({ direction: this.#direction, code: completed ? String(status) : 'aborted' });
    this.#metrics.requestDuration.observe({ direction: this.#direction }, seconds);
    if (!this.#logger.isLevelEnabled('info')) return;
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

const h2cRefusal = {
  reason: 'HTTP/2 without TLS (h2c prior knowledge) is not served here',
  hint: 'send HTTP/1.1, or use --protocol tcp, which passes HTTP/2 (gRPC) through',
};

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
    // HPE_INVALID_EOF_STATE: the client closed the connection in the middle of its request.
    if (errno === 'ECONNRESET' || errno === 'EPIPE' || errno === 'HPE_INVALID_EOF_STATE' || !(errno.startsWith('HPE_') || errno in clientErrorCodes)) {
      socket.destroy();
      return;
    }
    const code = clientErrorCodes[errno] ?? 'malformed_request';
    const address = (socket as Socket).remoteAddress ?? 'unknown';
    // The HTTP/2 connection preface (`PRI * HTTP/2.0`): an h2c client, not a smuggling attempt.
    const h2c = errno === 'HPE_PAUSED_H2_UPGRADE' ? h2cRefusal : undefined;
    const reason = h2c?.reason ?? error.message;
    const hint = h2c?.hint ?? appErrors[code].hint;
    metrics.requests.inc({ direction, code: String(appErrors[code].status) });
    const suppressed = log.admit(`${address}|${code}`);
    if (suppressed !== undefined) {
      logger.warn({ direction, error: code, reason, errno, peer: address, hint, ...(suppressed ? { suppressed } : {}) }, 'request refused');
    }
    const httpMessage = (socket as Socket & { _httpMessage?: ServerResponse })._httpMessage;
    if (socket.writable && !httpMessage?.headersSent) endWithErrorResponse(socket, code, reason, h2c ? { hint } : undefined);
    setTimeout(() => socket.destroy(), 1000).unref();
  };
}

