/**
 * The migration report behind /peers: recent inbound callers, by address and identity, with how
 * they connected (mtls, tls without a client certificate, or plaintext). When no caller in the
 * window is anything but mtls, `--mode strict` is safe.
 */
export type TransportSecurity = 'mtls' | 'tls' | 'plaintext';

interface PeerRecord {
  address: string;
  identity: string;
  tls: TransportSecurity;
  requests: number;
  firstSeen: number;
  lastSeen: number;
}

const maxPeers = 2000;

export class PeerTracker {
  readonly #peers = new Map<string, PeerRecord>();
  readonly #windowMs: number;

  constructor(windowMs = 15 * 60_000) {
    this.#windowMs = windowMs;
  }

  record(address: string, identity: string, tls: TransportSecurity, now = Date.now()): void {
    // Addresses only (no port): ephemeral ports would make every connection a new caller.
    const key = `${address}|${tls}|${identity}`;
    const entry = this.#peers.get(key);
    if (entry) {
      entry.requests += 1;
      entry.lastSeen = now;
      // Re-insert so the map stays ordered by last use and eviction drops the stalest.
      this.#peers.delete(key);
      this.#peers.set(key, entry);
      return;
    }
    if (this.#peers.size >= maxPeers) this.#peers.delete(this.#peers.keys().next().value!);
    this.#peers.set(key, { address, identity, tls, requests: 1, firstSeen: now, lastSeen: now });
  }

  report(now = Date.now()) {
    for (const [key, entry] of this.#peers) if (now - entry.lastSeen > this.#windowMs) this.#peers.delete(key);
    const peers = [...this.#peers.values()]
      .sort((a, b) => b.lastSeen - a.lastSeen)
      .map((entry) => ({
        address: entry.address,
        identity: entry.identity,
        tls: entry.tls,
        requests: entry.requests,
        firstSeen: new Date(entry.firstSeen).toISOString(),
        lastSeen: new Date(entry.lastSeen).toISOString(),
      }));
    const count = (tls: TransportSecurity) => peers.filter((peer) => peer.tls === tls).length;
    const notMtls = count('tls') + count('plaintext');
    return {
      windowSeconds: this.#windowMs / 1000,
      summary: { mtls: count('mtls'), tls: count('tls'), plaintext: count('plaintext') },
      strictSafe: notMtls === 0,
      verdict:
        notMtls === 0
          ? 'every caller seen in the window used mTLS: --mode strict is safe'
          : `${notMtls} caller(s) in the window did not use mTLS: move them to mTLS before switching to --mode strict`,
      peers,
    };
  }
}
