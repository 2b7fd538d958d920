/**
 * How the forwarder's connection pools (undici) open a connection: plain TCP or a unix socket to
 * the local app, or verified mutual TLS to an upstream. We open sockets ourselves rather than with
 * undici's connector so that connect and handshake timeouts are ours (and say which phase ran
 * out), SNI follows the dialled host rather than a client-sent Host header, and every error a
 * connection produces carries when that connection was opened: a brand-new connection closed
 * before any answer is how a peer refuses our client certificate, a pooled one closed is a reset.
 */
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import type { buildConnector } from 'undici';
import type { AppTarget } from './config.js';

/** Marks a timeout we enforce ourselves, so it maps to *_timeout rather than *_reset. */
export class ForwardTimeout extends Error {
  readonly code = 'SIDECAR_TIMEOUT';
  constructor(what: string, ms: number) {
    super(`${what} took longer than ${ms} ms`);
  }
}

const openedAtOfError = new WeakMap<object, number>();

/** When the connection that produced `error` was opened (ms since epoch), if one of ours did. */
export function connectionOpenedAt(error: unknown): number | undefined {
  return typeof error === 'object' && error !== null ? openedAtOfError.get(error) : undefined;
}

function stamp(error: Error, openedAt: number): Error {
  if (!openedAtOfError.has(error)) openedAtOfError.set(error, openedAt);
  return error;
}

export type Connector = buildConnector.connector;

interface ConnectPhases {
  connectMs: number;
  /** TLS only: time allowed for the handshake once TCP is connected. */
  handshakeMs?: number;
}

/**
 * Arms the timeouts, stamps errors with the opening time, and calls back once the socket is
 * ready: on 'connect' for plain sockets, 'secureConnect' for TLS.
 */
function whenReady(socket: Socket, ready: 'connect' | 'secureConnect', phases: ConnectPhases, callback: buildConnector.Callback, check?: () => Error | undefined): void {
  const openedAt = Date.now();
  let settled = false;
  let timer: NodeJS.Timeout | undefined;
  const arm = (what: string, ms: number | undefined) => {
    clearTimeout(timer);
    timer = ms ? setTimeout(() => socket.destroy(new ForwardTimeout(what, ms)), ms) : undefined;
  };
  // Before undici's own listener, so the error it sees is already stamped.
  socket.prependListener('error', (error: Error) => {
    stamp(error, openedAt);
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    callback(error, null);
  });
  arm('connecting', phases.connectMs);
  if (ready === 'secureConnect') socket.once('connect', () => arm('the TLS handshake', phases.handshakeMs));
  socket.once(ready, () => {
    clearTimeout(timer);
    if (settled) return;
    const refused = check?.();
    if (refused) {
      socket.destroy(refused);
      return;
    }
    settled = true;
    socket.setNoDelay(true);
    callback(null, socket);
  });
}

/** Connections to the local app (`--app`): TCP or a unix socket. */
export function appConnector(app: AppTarget, connectMs: number): Connector {
  return (_options, callback) => {
    const socket = app.kind === 'unix' ? netConnect({ path: app.path }) : netConnect({ host: app.host, port: app.port, noDelay: true });
    whenReady(socket, 'connect', { connectMs }, callback);
  };
}

const maxCachedSessions = 1000;

/** A check of the upstream's certificate once the handshake is done; an error refuses the connection. */
export type AfterHandshakeCheck = (hostname: string, socket: TLSSocket) => Error | undefined;

/**
 * Verified mutual TLS to upstreams, with TLS sessions resumed per host and port. `tls` holds our
 * certificate, key, bundle and verification of one certificate generation; a new generation
 * gets a new connector (and so a fresh session cache: an old session would resume with the old
 * client certificate). `afterHandshake` is for what Node's own verification does not enforce.
 */
export function upstreamConnector(tls: ConnectionOptions, phases: Required<ConnectPhases>, afterHandshake?: AfterHandshakeCheck): Connector {
  const sessions = new Map<string, Buffer>();
  return (options, callback) => {
    const host = options.hostname.replace(/^\[(.*)\]$/, '$1');
    const port = Number(options.port) || 443;
    const key = `${host}:${port}`;
    const socket = tlsConnect({
      ...tls,
      host,
      port,
      // SNI is the dialled name, never an IP literal (RFC 6066) and never the client's Host header.
      servername: isIP(host) ? undefined : host,
      session: sessions.get(key),
      ALPNProtocols: ['http/1.1'],
    });
    socket.on('session', (session: Buffer) => {
      if (sessions.size >= maxCachedSessions && !sessions.has(key)) sessions.delete(sessions.keys().next().value!);
      sessions.set(key, session);
    });
    whenReady(socket, 'secureConnect', phases, callback, afterHandshake && (() => afterHandshake(host, socket)));
  };
}
