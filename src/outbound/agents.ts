/**
 * TLS origination: connection pools per upstream that present our certificate, verify the
 * upstream chain against our bundle, its name against DNS/IP SANs, and (when asked) its SPIFFE
 * identity.
 *
 * Pools belong to one certificate generation. On rotation new pools are built; the old ones are
 * retired: idle connections close now, busy ones once their request finishes. With
 * --max-connection-age a pooled connection past that age is closed when its request ends.
 */
import { checkServerIdentity as defaultCheckServerIdentity, type PeerCertificate } from 'node:tls';
import { inTrustDomain, parseSubjectAltName } from '../certs/identity.js';
import type { CertStore, GenerationedCertSet } from '../certs/store.js';
import type { Config } from '../config.js';
import { upstreamConnector, type AfterHandshakeCheck, type Connector } from '../connector.js';
import { clientOptions } from '../forward.js';
import type { Logger } from '../log.js';
import { ConnectionPool } from '../pool.js';
import { clientSecureContext } from '../tls.js';

export class IdentityMismatchError extends Error {
  readonly code = 'SIDECAR_IDENTITY_MISMATCH';
  constructor(expected: string, presented: string[]) {
    super(`expected ${expected}, the upstream presented ${presented.length ? presented.join(', ') : 'no URI SAN'}`);
  }
}

/**
 * Checks name (DNS/IP SANs), then the pinned SPIFFE ID, then the trust domain. With
 * --insecure-skip-verify (`checkName` false) the chain and the name are not checked, but an
 * explicit SPIFFE pin or trust domain still is: the operator asked for it by name.
 */
export function upstreamIdentityCheck(expectedSpiffe: string | undefined, trustDomain: string | undefined, checkName = true) {
  return (hostname: string, cert: PeerCertificate): Error | undefined => {
    const sans = parseSubjectAltName(cert.subjectaltname);
    const nameError = checkName ? defaultCheckServerIdentity(hostname, cert) : undefined;
    if (nameError) {
      // Node's text ends in an empty list for a certificate with no DNS/IP SAN; say what it has.
      const names = sans.filter((san) => san.type === 'DNS' || san.type === 'IP Address').map((san) => san.value);
      nameError.message = `${hostname} is not among the certificate's DNS/IP SANs (it has: ${names.length ? names.join(', ') : 'none'})`;
      return nameError;
    }
    const uris = sans.filter((san) => san.type === 'URI').map((san) => san.value);
    if (expectedSpiffe && !uris.includes(expectedSpiffe)) return new IdentityMismatchError(expectedSpiffe, uris);
    if (trustDomain && !uris.some((uri) => inTrustDomain(uri, trustDomain))) {
      return new IdentityMismatchError(`an ID in trust domain ${trustDomain}`, uris);
    }
    return undefined;
  };
}

/**
 * With --insecure-skip-verify Node does not refuse a connection whose checkServerIdentity fails
 * (rejectUnauthorized is off), and skips the check entirely when the chain does not verify; an
 * explicit SPIFFE pin or --trust-domain is then enforced here, after the handshake. Undefined when
 * there is nothing to enforce.
 */
export function insecureIdentityCheck(insecure: boolean, expectedSpiffe: string | undefined, trustDomain: string | undefined): AfterHandshakeCheck | undefined {
  if (!insecure || (expectedSpiffe === undefined && trustDomain === undefined)) return undefined;
  const check = upstreamIdentityCheck(expectedSpiffe, trustDomain, false);
  return (hostname, socket) => check(hostname, socket.getPeerCertificate());
}

const idleSocketTimeoutMs = 30_000;

export class UpstreamAgents {
  /** Pools of the current generation, by expected SPIFFE ID and origin. */
  #pools = new Map<string, ConnectionPool>();
  /** One connector per expected SPIFFE ID (and so one TLS session cache), of the current generation. */
  #connectors = new Map<string, Connector>();
  #set: GenerationedCertSet;
  readonly #config: Config;
  readonly #logger: Logger;

  constructor(options: { config: Config; store: CertStore; logger: Logger }) {
    this.#config = options.config;
    this.#logger = options.logger;
    this.#set = options.store.current!;
    options.store.on('update', (next) => this.#rotate(next));
  }

  /** The pool for `origin` (`https://host:port`) whose upstream must present `expectedSpiffe` (or any identity). */
  poolFor(origin: string, expectedSpiffe: string | undefined): ConnectionPool {
    const key = `${expectedSpiffe ?? ''} ${origin}`;
    let pool = this.#pools.get(key);
    if (!pool) {
      const pools = this.#pools;
      const created = new ConnectionPool(origin, {
        client: clientOptions(this.#connectorFor(expectedSpiffe), {
          maxHeaderSize: this.#config.maxHeaderSize,
          keepAliveMs: Math.min(idleSocketTimeoutMs, this.#config.timeouts.idleMs || idleSocketTimeoutMs),
        }),
        maxConnectionAgeMs: this.#config.maxConnectionAgeMs,
        // A forward proxy reaches many hosts: a pool whose connections are all gone is dropped.
        onEmpty: () => {
          if (pools.get(key) === created) pools.delete(key);
        },
        onClientError: (error) => this.#logger.error({ direction: 'outbound', origin, reason: error.message }, 'connection pool error'),
      });
      pool = created;
      this.#pools.set(key, pool);
    }
    return pool;
  }

  get generation(): number {
    return this.#set.generation;
  }

  destroy(): void {
    for (const pool of this.#pools.values()) pool.destroy();
    this.#pools.clear();
  }

  #connectorFor(expectedSpiffe: string | undefined): Connector {
    const key = expectedSpiffe ?? '';
    let connector = this.#connectors.get(key);
    if (!connector) {
      const insecure = this.#config.insecureSkipVerify;
      const { connectMs, handshakeMs } = this.#config.timeouts;
      connector = upstreamConnector(
        {
          secureContext: clientSecureContext(this.#set, this.#config.minTls),
          rejectUnauthorized: !insecure,
          checkServerIdentity: upstreamIdentityCheck(expectedSpiffe, this.#config.trustDomain, !insecure),
        },
        { connectMs, handshakeMs },
        insecureIdentityCheck(insecure, expectedSpiffe, this.#config.trustDomain),
      );
      this.#connectors.set(key, connector);
    }
    return connector;
  }

  /** New requests get new pools (and connectors) of the new generation; the old pools retire. */
  #rotate(next: GenerationedCertSet): void {
    const retired = [...this.#pools.values()];
    this.#pools = new Map();
    this.#connectors = new Map();
    this.#set = next;
    for (const pool of retired) pool.close();
    if (retired.length) this.#logger.debug({ generation: next.generation, retired: retired.length }, 'outbound connection pools rebuilt for the new certificates');
  }
}
