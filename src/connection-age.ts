/**
 * --max-connection-age (inbound): a keep-alive connection older than this is closed once it is
 * idle, so a removed root or a revoked peer is not trusted forever on a long-lived connection. A
 * request that arrives on it after that age is answered with `Connection: close`; a request in
 * flight when the age passes finishes first (never cut mid-request), then the connection closes;
 * an idle one closes when the age passes. Upgraded connections (WebSocket) are tunnels, not
 * keep-alive connections, and are left alone.
 */
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

interface Tracked {
  born: number;
  /** Responses in flight: the connection is idle when there are none (and it was not upgraded). */
  responses: Set<ServerResponse>;
  upgraded: boolean;
  /** The age passed while a request was in flight: close when the last one ends. */
  closeWhenIdle: boolean;
  /** The socket HTTP runs on (the TLS socket over `raw`), for a graceful end. */
  httpSocket: Socket | undefined;
}

export class ConnectionAge {
  readonly #tracked = new WeakMap<Socket, Tracked>();
  readonly #maxAgeMs: number;

  constructor(maxAgeMs: number) {
    this.#maxAgeMs = maxAgeMs;
  }

  get enabled(): boolean {
    return this.#maxAgeMs > 0;
  }

  /** A new connection (`raw`: the accepted TCP socket): its clock starts now. */
  born(raw: Socket, now = Date.now()): void {
    if (!this.enabled || this.#tracked.has(raw)) return;
    const tracked: Tracked = { born: now, responses: new Set(), upgraded: false, closeWhenIdle: false, httpSocket: undefined };
    this.#tracked.set(raw, tracked);
    const timer = setTimeout(() => {
      if (tracked.upgraded) return;
      if (tracked.responses.size === 0) return this.#close(raw, tracked);
      tracked.closeWhenIdle = true;
      // The client must not reuse a connection about to close: say so where headers are still to come.
      for (const res of tracked.responses) if (!res.headersSent) res.shouldKeepAlive = false;
    }, this.#maxAgeMs);
    timer.unref();
    raw.once('close', () => clearTimeout(timer));
  }

  /** A request on `raw` (HTTP over `httpSocket`); past the age, its response closes the connection. */
  request(raw: Socket, httpSocket: Socket, res: ServerResponse, now = Date.now()): void {
    const tracked = this.#tracked.get(raw);
    if (!tracked) return;
    tracked.httpSocket = httpSocket;
    if (now - tracked.born >= this.#maxAgeMs) res.shouldKeepAlive = false;
    tracked.responses.add(res);
    res.once('close', () => {
      tracked.responses.delete(res);
      if (tracked.responses.size === 0 && tracked.closeWhenIdle && !tracked.upgraded) this.#close(raw, tracked);
    });
  }

  /** `raw` now carries an upgraded protocol: no longer a keep-alive connection to retire. */
  upgraded(raw: Socket): void {
    const tracked = this.#tracked.get(raw);
    if (tracked) tracked.upgraded = true;
  }

  #close(raw: Socket, tracked: Tracked): void {
    // A graceful end of the TLS session where there is one (close_notify, then FIN).
    const socket = tracked.httpSocket ?? raw;
    if (!socket.destroyed) socket.end();
    socket.setTimeout(5000, () => raw.destroy());
  }
}
