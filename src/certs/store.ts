/**
 * Holds the current certificate set and replaces it when the directory changes. Certificate
 * generations flow one way: the store validates a new set and emits it; listeners and agents
 * subscribe. Nobody else reads the files.
 *
 * Change detection is a watch on the directory (debounced) plus a content-hash poll plus SIGHUP.
 * The directory, not the files, is watched: Kubernetes secret volumes swap a `..data` symlink, so
 * a watch on a file follows the old inode and goes silent after the first rotation. The poll
 * covers filesystems where watching does not work at all (some network and FUSE mounts).
 */
import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';
import type { CertDirConfig } from '../config.js';
import { CertError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { leafUsageProblems } from './describe.js';
import { readCertFiles, validateCertFiles, validityOf, type CertSet } from './load.js';

export interface GenerationedCertSet extends CertSet {
  generation: number;
  loadedAt: Date;
}

export type ReloadTrigger = 'start' | 'watch' | 'poll' | 'sighup' | 'api';

export interface ReloadStatus {
  at: Date;
  trigger: ReloadTrigger;
  result: 'success' | 'error' | 'unchanged';
  error: { code: string; file: string | undefined; message: string } | undefined;
}

export interface CertStoreEvents {
  update: [GenerationedCertSet];
}

const debounceMs = 150;

export class CertStore extends EventEmitter<CertStoreEvents> {
  #current: GenerationedCertSet | undefined;
  #generation = 0;
  #lastStatus: ReloadStatus | undefined;
  #lastError: ReloadStatus['error'];
  /** Hash of the last content that failed validation, so the poll does not re-log the same failure. */
  #lastFailedHash: string | undefined;
  #watchers: FSWatcher[] = [];
  #pollTimer: NodeJS.Timeout | undefined;
  #expiryTimer: NodeJS.Timeout | undefined;
  /** The expiry notice already logged for the current generation, so it is logged once. */
  #expiryNotice: { generation: number; level: 'warn' | 'error' } | undefined;
  #debounceTimer: NodeJS.Timeout | undefined;
  #reloading: Promise<ReloadStatus['result']> | undefined;
  #reloadAgain = false;
  readonly #config: CertDirConfig;
  readonly #logger: Logger;
  readonly #metrics: Metrics | undefined;

  constructor(config: CertDirConfig, logger: Logger, metrics?: Metrics) {
    super();
    this.#config = config;
    this.#logger = logger;
    this.#metrics = metrics;
  }

  get current(): GenerationedCertSet | undefined {
    return this.#current;
  }

  get lastStatus(): ReloadStatus | undefined {
    return this.#lastStatus;
  }

  get lastError(): ReloadStatus['error'] {
    return this.#lastError;
  }

  /** Loads the first set; throws the CertError that explains why there is none. */
  async loadInitial(): Promise<GenerationedCertSet> {
    const raw = await readCertFiles(this.#config);
    this.#accept(validateCertFiles(raw), 'start');
    return this.#current!;
  }

  /** Starts the directory watch and the poll (interval 0: watch and SIGHUP only). */
  start(reloadIntervalMs: number): void {
    const set = this.#current;
    const dirs = new Set([this.#config.dir, ...(set ? [set.files.cert, set.files.key, set.files.ca].map((file) => dirname(file)) : [])]);
    for (const dir of dirs) {
      try {
        const watcher = watch(dir, { persistent: false }, () => this.#scheduleReload());
        watcher.on('error', (error) => {
          this.#logger.warn({ dir, err: error.message }, 'certificate directory watch failed; relying on the poll and SIGHUP');
        });
        this.#watchers.push(watcher);
      } catch (error) {
        this.#logger.warn({ dir, err: (error as Error).message, reloadIntervalMs }, 'cannot watch the certificate directory; relying on the poll and SIGHUP');
      }
    }
    if (reloadIntervalMs > 0) {
      this.#pollTimer = setInterval(() => void this.reload('poll'), reloadIntervalMs);
      this.#pollTimer.unref();
    }
    this.checkExpiry();
    this.#expiryTimer = setInterval(() => this.checkExpiry(), 10_000);
    this.#expiryTimer.unref();
  }

  /**
   * Warns when less than a third of the leaf's lifetime remains (renewal should have happened:
   * cert-manager renews at two thirds) and logs an error once it has expired.
   */
  checkExpiry(now = Date.now()): void {
    const set = this.#current;
    if (!set) return;
    const notAfter = set.notAfter.getTime();
    const lifetime = notAfter - set.notBefore.getTime();
    const level = now >= notAfter ? 'error' : notAfter - now < lifetime / 3 ? 'warn' : undefined;
    if (!level || (this.#expiryNotice?.generation === set.generation && (this.#expiryNotice.level === level || this.#expiryNotice.level === 'error'))) return;
    this.#expiryNotice = { generation: set.generation, level };
    const fields = { serial: set.leaf.serialNumber, notAfter: set.notAfter.toISOString(), file: set.files.cert };
    if (level === 'error') {
      this.#logger.error({ ...fields, code: 'cert_expired' }, 'the served certificate has EXPIRED: peers will refuse it; renew it (mtls-sidecar check)');
    } else {
      this.#logger.warn({ ...fields, remainingSeconds: Math.round((notAfter - now) / 1000) }, 'the served certificate expires soon and has not been renewed: check the issuer (cert-manager, SPIRE) and that new files reach the cert dir');
    }
  }

  stop(): void {
    for (const watcher of this.#watchers) watcher.close();
    this.#watchers = [];
    clearInterval(this.#pollTimer);
    clearInterval(this.#expiryTimer);
    clearTimeout(this.#debounceTimer);
  }

  #scheduleReload(): void {
    // Writers touch several files in a burst (and kubelet several symlinks): wait for quiet.
    clearTimeout(this.#debounceTimer);
    this.#debounceTimer = setTimeout(() => void this.reload('watch'), debounceMs);
    this.#debounceTimer.unref();
  }

  /** Re-reads the directory; serialised so two triggers never validate concurrently. */
  async reload(trigger: ReloadTrigger): Promise<ReloadStatus['result']> {
    if (this.#reloading) {
      this.#reloadAgain = true;
      return this.#reloading;
    }
    this.#reloading = this.#reloadOnce(trigger);
    try {
      return await this.#reloading;
    } finally {
      this.#reloading = undefined;
      if (this.#reloadAgain) {
        this.#reloadAgain = false;
        void this.reload(trigger);
      }
    }
  }

  async #reloadOnce(trigger: ReloadTrigger): Promise<ReloadStatus['result']> {
    let hash: string | undefined;
    try {
      const raw = await readCertFiles(this.#config);
      hash = raw.contentHash;
      if (hash === this.#current?.contentHash) {
        this.#lastFailedHash = undefined;
        this.#lastError = undefined;
        this.#metrics?.certReloadFailing.set(0);
        return this.#record(trigger, 'unchanged');
      }
      if (hash === this.#lastFailedHash && trigger !== 'sighup' && this.#lastError?.code !== 'cert_not_yet_valid') {
        return this.#record(trigger, 'error');
      }
      this.#accept(validateCertFiles(raw), trigger);
      return 'success';
    } catch (error) {
      const certError = error instanceof CertError ? error : new CertError('file_unreadable', undefined, (error as Error).message);
      const detail = { code: certError.code, file: certError.file, message: certError.message };
      const repeated = this.#lastError?.message === detail.message;
      this.#lastError = detail;
      this.#lastFailedHash = hash;
      this.#metrics?.certReloadFailing.set(1);
      if (!repeated) {
        this.#metrics?.certReloads.inc({ result: 'error' });
        // warn, not error: nothing stopped working (the last good set serves), and a writer that
        // updates files one by one passes through such a state on every rotation.
        this.#logger.warn({ trigger, code: detail.code, file: detail.file, reason: detail.message, servingSerial: this.#current?.leaf.serialNumber }, 'certificate reload rejected');
      }
      return this.#record(trigger, 'error');
    }
  }

  #record(trigger: ReloadTrigger, result: ReloadStatus['result']): ReloadStatus['result'] {
    this.#lastStatus = { at: new Date(), trigger, result, error: result === 'error' ? this.#lastError : undefined };
    return result;
  }

  #accept(set: CertSet, trigger: ReloadTrigger): void {
    this.#generation += 1;
    const next: GenerationedCertSet = { ...set, generation: this.#generation, loadedAt: new Date() };
    const previous = this.#current;
    this.#current = next;
    this.#lastError = undefined;
    this.#lastFailedHash = undefined;
    this.#record(trigger, 'success');
    this.#metrics?.certReloads.inc({ result: 'success' });
    this.#metrics?.certReloadFailing.set(0);
    this.#metrics?.certNotAfter.reset();
    this.#metrics?.certNotAfter.set({ cert: 'leaf' }, Math.floor(next.notAfter.getTime() / 1000));
    next.bundle.forEach((root, index) => {
      this.#metrics?.certNotAfter.set({ cert: `bundle_${index}` }, Math.floor(validityOf(root).notAfter.getTime() / 1000));
    });
    this.#logger.info(
      {
        trigger,
        generation: next.generation,
        layout: next.files.layout,
        serial: next.leaf.serialNumber,
        previousSerial: previous?.leaf.serialNumber,
        subject: next.identity.subject,
        uris: next.identity.uris,
        notAfter: next.notAfter.toISOString(),
        bundleSize: next.bundle.length,
      },
      'certificates loaded',
    );
    // Served all the same (peers decide, and the last good set may be no better), but said loudly.
    for (const problem of leafUsageProblems(next.leaf, next.files.cert)) {
      this.#logger.warn({ trigger, generation: next.generation, code: problem.code, file: problem.file, reason: problem.problem, fix: problem.fix }, 'the served certificate will be refused by peers (mtls-sidecar check)');
    }
    this.emit('update', next);
    this.checkExpiry();
  }
}

/**
 * Loads the first set for `run` (one process or a cluster primary): a certificate problem is
 * logged and said on stderr once, and false is returned (the caller exits 1).
 */
export async function loadAtStart(store: CertStore, logger: Logger): Promise<boolean> {
  try {
    await store.loadInitial();
    return true;
  } catch (error) {
    if (!(error instanceof CertError)) throw error;
    logger.fatal({ code: error.code, file: error.file, reason: error.message }, 'no valid certificate set at start');
    process.stderr.write(`mtls-sidecar: cannot start: ${error.message} [${error.code}]\n`);
    return false;
  }
}
