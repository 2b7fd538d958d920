/**
 * The migration report behind /peers: recent inbound callers, by address and identity, with how
 * they connected (mtls, tls without a client certificate, or plaintext). When no caller in the
 * window is anything but mtls, `--mode strict` is safe.
 */
export type TransportSecurity = 'mtls' | 'tls' | 'plaintext';

export interface PeerRecord {
  address: string;
  identity: string;
  tls: TransportSecurity;
  requests: number;
  firstSeen: number;
  lastSeen: number;
}

const maxPeers = 2000;
const defaultWindowMs = 15 * 60_000;

export type PeersReport = ReturnType<typeof PeerTracker.reportOf>;

export class PeerTracker {
  readonly #peers = new Map<string, PeerRecord>();
  readonly #windowMs: number;

  constructor(windowMs = defaultWindowMs) {
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

  /** The raw records in the window (for a cluster primary to merge). */
  records(now = Date.now()): PeerRecord[] {
    for (const [key, entry] of this.#peers) if (now - entry.lastSeen > this.#windowMs) this.#peers.delete(key);
    return [...this.#peers.values()];
  }

  report(now = Date.now()): PeersReport {
    return PeerTracker.reportOf(this.records(now), this.#windowMs);
  }

  /** One report over several processes' records (--workers): same caller, counts added. */
  static merged(recordSets: PeerRecord[][], windowMs = defaultWindowMs): PeersReport {
    const merged = new Map<string, PeerRecord>();
    for (const entry of recordSets.flat()) {
      const key = `${entry.address}|${entry.tls}|${entry.identity}`;
      const seen = merged.get(key);
      if (!seen) merged.set(key, { ...entry });
      else {
        seen.requests += entry.requests;
        seen.firstSeen = Math.min(seen.firstSeen, entry.firstSeen);
        seen.lastSeen = Math.max(seen.lastSeen, entry.lastSeen);
      }
    }
    return PeerTracker.reportOf([...merged.values()], windowMs);
  }

  static reportOf(records: PeerRecord[], windowMs: number) {
    const peers = [...records]
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
      windowSeconds: windowMs / 1000,
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
