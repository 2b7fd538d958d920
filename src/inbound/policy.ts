/**
 * Inbound authorization: the allow-list (OR of every --allow-* flag) and the trust domain.
 * No allow flag set means any peer whose chain verifies is allowed.
 */
import { inTrustDomain, isSpiffeId, type CertIdentity } from '../certs/identity.js';
import type { AllowList } from '../config.js';

export type PolicyDecision = { allowed: true } | { allowed: false; reason: string };

/**
 * `*` matches exactly one path segment; a trailing `**` matches one or more remaining segments.
 * Only a valid SPIFFE ID matches (`..` is not a segment `**` may cover).
 */
export function spiffePatternMatches(pattern: string, id: string): boolean {
  if (!isSpiffeId(id)) return false;
  const patternParts = pattern.split('/');
  const idParts = id.split('/');
  for (let index = 0; index < patternParts.length; index += 1) {
    const part = patternParts[index]!;
    if (part === '**' && index === patternParts.length - 1) return idParts.length > index && idParts.slice(index).every((segment) => segment !== '');
    if (index >= idParts.length) return false;
    if (part === '*') {
      if (idParts[index] === '') return false;
      continue;
    }
    if (part !== idParts[index]) return false;
  }
  return patternParts.length === idParts.length;
}

/** Exact (case-insensitive), or `*.domain` for exactly one leading label. */
export function dnsPatternMatches(pattern: string, name: string): boolean {
  const host = name.toLowerCase();
  if (!pattern.startsWith('*.')) return pattern === host;
  const suffix = pattern.slice(1);
  return host.endsWith(suffix) && !host.slice(0, -suffix.length).includes('.') && host.length > suffix.length;
}

export class InboundPolicy {
  readonly #allow: AllowList;
  readonly #trustDomain: string | undefined;
  readonly #open: boolean;

  constructor(allow: AllowList, trustDomain: string | undefined) {
    this.#allow = allow;
    this.#trustDomain = trustDomain;
    this.#open = allow.spiffe.length + allow.dns.length + allow.cn.length + allow.ou.length === 0;
  }

  get hasAllowList(): boolean {
    return !this.#open;
  }

  decide(peer: CertIdentity): PolicyDecision {
    const trustDomain = this.#trustDomain;
    if (trustDomain && !peer.uris.some((uri) => inTrustDomain(uri, trustDomain))) {
      return { allowed: false, reason: `no SPIFFE ID in trust domain ${this.#trustDomain} (--trust-domain)` };
    }
    if (this.#open) return { allowed: true };
    const allow = this.#allow;
    const matched =
      allow.spiffe.some((pattern) => peer.uris.some((uri) => spiffePatternMatches(pattern, uri))) ||
      allow.dns.some((pattern) => peer.dns.some((name) => dnsPatternMatches(pattern, name))) ||
      (peer.commonName !== undefined && allow.cn.includes(peer.commonName)) ||
      allow.ou.some((ou) => peer.organizationalUnits.includes(ou));
    return matched ? { allowed: true } : { allowed: false, reason: 'matches no --allow-spiffe/--allow-dns/--allow-cn/--allow-ou entry' };
  }
}
