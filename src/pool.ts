/**
 * Keep-alive connections to one origin (the app, or one upstream host:port), one undici `Client`
 * per connection. A pool of our own rather than undici's `Pool` because:
 * - a client that goes away mid-request must take the request's connection with it: aborting an
 *   undici request re-queues it and opens a spare connection for nothing (nodejs/undici#5845);
 *   destroying the request's own `Client` does not;
 * - --max-connection-age closes a connection when it comes back to the pool past that age;
 * - a retired pool (certificate rotation) closes idle connections now and busy ones as they finish.
 */
import type { EventEmitter } from 'node:events';
import { Client } from 'undici';

export interface ConnectionPoolOptions {
  client: Client.Options;
  /** 0 = no limit. */
  maxConnectionAgeMs: number;
  /** Called when the pool has no connection left (owners drop empty pools). */
  onEmpty?: () => void;
  /** A Client reported an error outside any request (a bug, not a peer failure). */
  onClientError: (error: Error) => void;
}

const ignore = () => undefined;

export class ConnectionPool {
  readonly #origin: string;
  readonly #options: ConnectionPoolOptions;
  /** Most recently used last: reuse is LIFO, so spare connections age out at the idle timeout. */
  readonly #idle: Client[] = [];
  readonly #busy = new Set<Client>();
  readonly #connectedAt = new WeakMap<Client, number>();
  #closing = false;

  constructor(origin: string, options: ConnectionPoolOptions) {
    this.#origin = origin;
    this.#options = options;
  }

  get origin(): string {
    return this.#origin;
  }

  /** Connections open or opening, idle and busy. */
  get size(): number {
    return this.#idle.length + this.#busy.size;
  }

  /** A connection for one request: the most recently used idle one, or a new one (always, with `fresh`). */
  acquire(fresh = false): Client {
    let client = fresh ? undefined : this.#idle.pop();
    while (client && this.#tooOld(client)) {
      client.close().catch(ignore);
      client = this.#idle.pop();
    }
    client ??= this.#create();
    this.#busy.add(client);
    return client;
  }

  /** Whether `client` had already carried a request when it was acquired (a pooled keep-alive connection). */
  wasConnected(client: Client): boolean {
    return this.#connectedAt.has(client);
  }

  /** The request on `client` completed: it goes back to the pool unless closing or too old. */
  release(client: Client): void {
    if (!this.#busy.delete(client)) return;
    if (this.#closing || client.closed || client.destroyed || this.#tooOld(client)) {
      client.close().catch(ignore);
      this.#checkEmpty();
      return;
    }
    this.#idle.push(client);
  }

  /** The request on `client` failed, was abandoned or upgraded: its connection is not reused. */
  discard(client: Client): void {
    if (!this.#busy.delete(client)) return;
    client.destroy().catch(ignore);
    this.#checkEmpty();
  }

  /** No new requests; idle connections close now, busy ones once their request is done. */
  close(): void {
    this.#closing = true;
    for (const client of this.#idle.splice(0)) client.close().catch(ignore);
    this.#checkEmpty();
  }

  /** Every connection closes now, busy or not. */
  destroy(): void {
    this.#closing = true;
    for (const client of [...this.#idle.splice(0), ...this.#busy]) client.destroy().catch(ignore);
    this.#busy.clear();
  }

  #create(): Client {
    const client = new Client(this.#origin, this.#options.client);
    client.on('connect', () => this.#connectedAt.set(client, Date.now()));
    // An idle connection the peer closed (or that reached the keep-alive timeout) leaves the pool.
    client.on('disconnect', () => {
      const index = this.#idle.indexOf(client);
      if (index < 0) return;
      this.#idle.splice(index, 1);
      client.close().catch(ignore);
      this.#checkEmpty();
    });
    (client as EventEmitter).on('error', this.#options.onClientError);
    return client;
  }

  #tooOld(client: Client): boolean {
    const maxAgeMs = this.#options.maxConnectionAgeMs;
    const connectedAt = this.#connectedAt.get(client);
    return maxAgeMs > 0 && connectedAt !== undefined && Date.now() - connectedAt >= maxAgeMs;
  }

  #checkEmpty(): void {
    if (this.size === 0) this.#options.onEmpty?.();
  }
}
