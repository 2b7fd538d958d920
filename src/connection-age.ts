/**
 * --max-connection-age: a keep-alive connection older than this is closed after its current
 * request, so a removed root or a revoked peer is not trusted forever on a long-lived connection.
 */
import type { Socket } from 'node:net';

export class ConnectionAge {
  readonly #born = new WeakMap<Socket, number>();
  readonly #maxAgeMs: number;

  constructor(maxAgeMs: number) {
    this.#maxAgeMs = maxAgeMs;
  }

  get enabled(): boolean {
    return this.#maxAgeMs > 0;
  }

  born(socket: Socket, now = Date.now()): void {
    if (this.enabled && !this.#born.has(socket)) this.#born.set(socket, now);
  }

  expired(socket: Socket, now = Date.now()): boolean {
    const born = this.#born.get(socket);
    return this.enabled && born !== undefined && now - born >= this.#maxAgeMs;
  }
}
