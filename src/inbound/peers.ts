/**
 * The migration report behind /peers: recent inbound callers, by address and identity, with how
 * they connected (mtls, tls without a client certificate, or plaintext). When no caller in the
 * window is anything but mtls, `--mode strict` is safe.
 */
import { parseDuration } from '../config.js';
import { ConfigError } from '../errors.js';

export type TransportSecurity = 'mtls' | 'tls' | 'plaintext';

export interface PeerRecord {
  address: string;
  identity: string;
  tls: TransportSecurity;
  requests: number;
  firstSeen: number;
  lastSeen: number;
}

/** One process's callers, with what it knows about a report window. */
export interface PeerSnapshot {
  /** Every caller remembered (the report keeps those last seen within its window). */
  records: PeerRecord[];
  /** Why some callers of the window are missing (e.g. dropped to stay under the cap), if they are. */
  incomplete: string | undefined;
}

const maxPeers = 2000;
/** The window of `GET /peers` without `?window=`. */
export const defaultWindowMs = 15 * 60_000;
/**
 * How long a caller is remembered after its last request, and so the longest window a report can
 * cover: a day, so a nightly job that still calls in plaintext shows up before anyone goes strict.
 */
export const maxWindowMs = 24 * 60 * 60_000;

/** `?window=` in the CLI's duration syntax (`500ms`, `30s`, `5m`, `1h`, plain seconds), more than 0 and at most `maxWindowMs`. */
export function parseReportWindow(text: string): { windowMs: number } | { problem: string } {
  let windowMs: number;
  try {
    windowMs = parseDuration('window', text);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    return { problem: `${JSON.stringify(text)} is not a duration: use 500ms, 30s, 5m, 1h or a plain number of seconds` };
  }
  if (windowMs <= 0) return { problem: `${JSON.stringify(text)} is not a window: it must be longer than 0` };
  if (windowMs > maxWindowMs) return { problem: `${JSON.stringify(text)} is longer than the ${maxWindowMs / 3_600_000} h callers are remembered` };
  return { windowMs };
}

export type PeersReport = ReturnType<typeof PeerTracker.reportOf>;

export class PeerTracker {
  readonly #peers = new Map<string, PeerRecord>();
  /** lastSeen of the most recently active caller evicted by the cap. */
  #evictedLastSeen = Number.NEGATIVE_INFINITY;

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
    if (this.#peers.size >= maxPeers) {
      const stalest = this.#peers.keys().next().value!;
      this.#evictedLastSeen = Math.max(this.#evictedLastSeen, this.#peers.get(stalest)!.lastSeen);
      this.#peers.delete(stalest);
    }
    this.#peers.set(key, { address, identity, tls, requests: 1, firstSeen: now, lastSeen: now });
  }

  /**
   * Every caller remembered, for this process's report or a cluster primary to merge (before the
   * window is applied, so a caller's count is its total whichever worker saw it last).
   */
  snapshot(windowMs = defaultWindowMs, now = Date.now()): PeerSnapshot {
    for (const [key, entry] of this.#peers) if (now - entry.lastSeen > maxWindowMs) this.#peers.delete(key);
    const records = [...this.#peers.values()];
    const forgotten = now - this.#evictedLastSeen <= windowMs;
    return { records, incomplete: forgotten ? `more than ${maxPeers} callers in the window: the least recent were forgotten` : undefined };
  }

  report(windowMs = defaultWindowMs, now = Date.now()): PeersReport {
    return PeerTracker.reportOf(this.snapshot(windowMs, now), windowMs, now);
  }

  /** One report over several processes' snapshots (--workers): same caller, counts added. */
  static merged(snapshots: PeerSnapshot[], windowMs: number, now = Date.now()): PeersReport {
    const merged = new Map<string, PeerRecord>();
    for (const entry of snapshots.flatMap((snapshot) => snapshot.records)) {
      const key = `${entry.address}|${entry.tls}|${entry.identity}`;
      const seen = merged.get(key);
      if (!seen) merged.set(key, { ...entry });
      else {
        seen.requests += entry.requests;
        seen.firstSeen = Math.min(seen.firstSeen, entry.firstSeen);
        seen.lastSeen = Math.max(seen.lastSeen, entry.lastSeen);
      }
    }
    const reasons = [...new Set(snapshots.map((snapshot) => snapshot.incomplete).filter((reason) => reason !== undefined))];
    return PeerTracker.reportOf({ records: [...merged.values()], incomplete: reasons.length ? reasons.join('; ') : undefined }, windowMs, now);
  }

  /** The report over the callers last seen within `windowMs` before `now`. */
  static reportOf(snapshot: PeerSnapshot, windowMs: number, now: number) {
    const peers = snapshot.records
      .filter((entry) => now - entry.lastSeen <= windowMs)
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
      // A report missing callers of its window cannot vouch for them.
      complete: snapshot.incomplete === undefined,
      // No caller at all is no evidence (callers are remembered in memory, from this start only).
      strictSafe: notMtls === 0 && peers.length > 0 && snapshot.incomplete === undefined,
      verdict:
        notMtls > 0
          ? `${notMtls} caller(s) in the window did not use mTLS: move them to mTLS before switching to --mode strict`
          : snapshot.incomplete !== undefined
            ? `this report cannot show that every caller used mTLS: ${snapshot.incomplete}`
            : peers.length === 0
              ? 'no caller in the window, so nothing shows that --mode strict is safe: callers are remembered since this sidecar started; ask again after traffic, or with a longer ?window='
              : 'every caller seen in the window used mTLS: --mode strict is safe',
      peers,
    };
  }
}
