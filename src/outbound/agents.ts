/**
 * TLS origination: keep-alive HTTPS agents that present our certificate, verify the upstream chain
 * against our bundle, its name against DNS/IP SANs, and (when asked) its SPIFFE identity.
 *
 * Agents belong to one certificate generation. On rotation new agents are built; the old ones stop
 * pooling: idle connections close now, busy ones close when their request finishes.
 */
import { Agent as HttpsAgent } from 'node:https';
import { checkServerIdentity as defaultCheckServerIdentity, type PeerCertificate } from 'node:tls';
import { parseSubjectAltName } from '../certs/identity.js';
import type { CertStore, GenerationedCertSet } from '../certs/store.js';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { tlsOptionsFor } from '../tls.js';
import { ConnectionAge } from '../connection-age.js';

export class IdentityMismatchError extends Error {
  readonly code = 'SIDECAR_IDENTITY_MISMATCH';
  constructor(expected: string, presented: string[]) {
    super(`expected ${expected}, the upstream presented ${presented.length ? presented.join(', ') : 'no URI SAN'}`);
  }
}

/** Checks name (DNS/IP SANs), then the pinned SPIFFE ID, then the trust domain. */
export function upstreamIdentityCheck(expectedSpiffe: string | undefined, trustDomain: string | undefined) {
  return (hostname: string, cert: PeerCertificate): Error | undefined => {
    const nameError = defaultCheckServerIdentity(hostname, cert);
    if (nameError) return nameError;
    const uris = parseSubjectAltName(cert.subjectaltname).filter((san) => san.type === 'URI').map((san) => san.value);
    if (expectedSpiffe && !uris.includes(expectedSpiffe)) return new IdentityMismatchError(expectedSpiffe, uris);
    if (trustDomain && !uris.some((uri) => uri.startsWith(`spiffe://${trustDomain}/`))) {
      return new IdentityMismatchError(`an ID in trust domain ${trustDomain}`, uris);
    }
    return undefined;
  };
}

const idleSocketTimeoutMs = 30_000;

export class UpstreamAgents {
  #agents = new Map<string, HttpsAgent>();
  #set: GenerationedCertSet;
  readonly #config: Config;
  readonly #logger: Logger;
  readonly #connectionAge: ConnectionAge;

  constructor(options: { config: Config; store: CertStore; logger: Logger }) {
    this.#config = options.config;
    this.#connectionAge = new ConnectionAge(options.config.maxConnectionAgeMs);
    this.#logger = options.logger;
    this.#set = options.store.current!;
    options.store.on('update', (next) => this.#rotate(next));
  }

  /** The agent for upstreams that must present `expectedSpiffe` (or any identity). */
  agentFor(expectedSpiffe: string | undefined): HttpsAgent {
    const key = expectedSpiffe ?? '';
    let agent = this.#agents.get(key);
    if (!agent) {
      agent = this.#createAgent(expectedSpiffe);
      this.#agents.set(key, agent);
    }
    return agent;
  }

  get generation(): number {
    return this.#set.generation;
  }

  destroy(): void {
    for (const agent of this.#agents.values()) agent.destroy();
    this.#agents.clear();
  }

  #createAgent(expectedSpiffe: string | undefined): HttpsAgent {
    const insecure = this.#config.insecureSkipVerify;
    const agent = new HttpsAgent({
      ...tlsOptionsFor(this.#set, this.#config.minTls),
      keepAlive: true,
      noDelay: true,
      maxFreeSockets: 256,
      scheduling: 'lifo',
      timeout: Math.min(idleSocketTimeoutMs, this.#config.timeouts.idleMs || idleSocketTimeoutMs),
      rejectUnauthorized: !insecure,
      checkServerIdentity: insecure ? () => undefined : upstreamIdentityCheck(expectedSpiffe, this.#config.trustDomain),
    });
    if (this.#connectionAge.enabled) {
      // A pooled connection past --max-connection-age is closed when its request ends. Its age
      // counts from its first return to the pool (the end of its first request).
      agent.on('free', (socket) => {
        this.#connectionAge.born(socket);
        if (this.#connectionAge.expired(socket)) socket.destroy();
      });
    }
    return agent;
  }

  #rotate(next: GenerationedCertSet): void {
    const retired = [...this.#agents.values()];
    this.#agents = new Map();
    this.#set = next;
    for (const agent of retired) retire(agent);
    if (retired.length) this.#logger.debug({ generation: next.generation, retired: retired.length }, 'outbound connection pools rebuilt for the new certificates');
  }
}

/** Stops an agent pooling: idle sockets close now, busy ones when their response ends. */
function retire(agent: HttpsAgent): void {
  // Node's agent destroys a socket on 'free' instead of pooling it when keepAlive is false.
  (agent as HttpsAgent & { keepAlive: boolean }).keepAlive = false;
  for (const sockets of Object.values(agent.freeSockets)) {
    for (const socket of sockets ?? []) socket.destroy();
  }
}
