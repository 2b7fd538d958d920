/**
 * --workers N: N worker processes share the listeners (node:cluster); the primary process owns the
 * admin listener and answers for all of them (readiness of every worker, metrics summed with
 * prom-client's AggregatorRegistry, /peers merged). Every worker watches and validates the cert
 * directory itself, so no worker can keep serving an old set after a rotation.
 */
import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry } from 'prom-client';
import { AdminServer } from './admin/server.js';
import { CertStore, loadAtStart } from './certs/store.js';
import type { Config } from './config.js';
import { PeerTracker, type PeerSnapshot } from './inbound/peers.js';
import { ListenError } from './listen.js';
import type { Logger } from './log.js';
import type { Registry } from 'prom-client';

type WorkerMessage =
  | { type: 'sidecar:ready'; listeners: Record<string, unknown> }
  | { type: 'sidecar:peers'; requestId: number; snapshot: PeerSnapshot };

/** The primary asks every worker for its callers; `windowMs` (`/peers?window=`) lets it say whether it forgot any of that window. */
type PrimaryMessage = { type: 'sidecar:peers'; requestId: number; windowMs: number };

function isWorkerMessage(message: unknown): message is WorkerMessage {
  return typeof message === 'object' && message !== null && typeof (message as { type?: unknown }).type === 'string' && (message as { type: string }).type.startsWith('sidecar:');
}

/** In a worker: answer the primary's metric and /peers requests, and say when ready. */
export const workerChannel = {
  active(): boolean {
    return cluster.isWorker;
  },
  serve(registry: Registry, peers: PeerTracker): void {
    new AggregatorRegistry();
    AggregatorRegistry.setRegistries([registry]);
    process.on('message', (message: PrimaryMessage) => {
      if (message?.type === 'sidecar:peers') process.send?.({ type: 'sidecar:peers', requestId: message.requestId, snapshot: peers.snapshot(message.windowMs) } satisfies WorkerMessage);
    });
  },
  ready(listeners: Record<string, unknown>): void {
    process.send?.({ type: 'sidecar:ready', listeners } satisfies WorkerMessage);
  },
};

/** The primary of `run --workers N`: forks, supervises, answers admin requests, forwards signals. */
export async function runPrimary(config: Config, logger: Logger): Promise<number> {
  // Fail before forking: a certificate problem is reported once, with exit 1, as in one process.
  const store = new CertStore(config.certs, logger.child({ role: 'primary' }, { level: 'silent' }));
  if (!(await loadAtStart(store, logger))) return 1;
  store.start(config.reloadIntervalMs);

  let draining = false;
  const ready = new Map<number, Record<string, unknown>>();
  const aggregator = new AggregatorRegistry();
  let nextRequest = 0;
  const pendingPeers = new Map<number, { snapshots: PeerSnapshot[]; waiting: number; done: () => void }>();

  const readiness = {
    reasons(): string[] {
      const reasons: string[] = [];
      if (draining) reasons.push('draining: shutting down');
      const live = Object.values(cluster.workers ?? {}).filter((worker): worker is Worker => worker !== undefined);
      const notReady = live.filter((worker) => !ready.has(worker.id)).length + Math.max(0, config.workers - live.length);
      if (notReady > 0) reasons.push(`${notReady} of ${config.workers} workers not ready`);
      const set = store.current;
      if (set && set.notAfter.getTime() < Date.now()) reasons.push(`the served certificate expired at ${set.notAfter.toISOString()}`);
      return reasons;
    },
  };

  const peers = (windowMs: number): Promise<ReturnType<typeof PeerTracker.merged>> =>
    new Promise((resolve) => {
      const workers = Object.values(cluster.workers ?? {}).filter((worker): worker is Worker => worker?.isConnected() === true);
      const requestId = (nextRequest += 1);
      const entry = { snapshots: [] as PeerSnapshot[], waiting: workers.length, done: () => resolve(PeerTracker.merged(entry.snapshots, windowMs)) };
      if (workers.length === 0) return entry.done();
      pendingPeers.set(requestId, entry);
      setTimeout(() => {
        if (!pendingPeers.delete(requestId)) return;
        // A worker that did not answer may hold callers the report would otherwise vouch for.
        entry.snapshots.push({ records: [], incomplete: `${entry.waiting} worker(s) did not answer within 2 s` });
        entry.done();
      }, 2000).unref();
      for (const worker of workers) worker.send({ type: 'sidecar:peers', requestId, windowMs } satisfies PrimaryMessage);
    });

  const admin = config.admin
    ? new AdminServer({
        address: config.admin,
        store,
        readiness,
        metrics: async () => ({ contentType: aggregator.contentType, text: await aggregator.clusterMetrics() }),
        peers,
      })
    : undefined;
  let adminAddress: string | undefined;
  try {
    adminAddress = await admin?.listen();
  } catch (error) {
    if (!(error instanceof ListenError)) throw error;
    process.stderr.write(`mtls-sidecar: ${error.message}\n`);
    return 1;
  }

  // Workers run the same command line; they leave the admin listener to the primary (cli.ts).
  let announced = false;
  const fork = () => cluster.fork();
  cluster.on('message', (worker, message: unknown) => {
    if (!isWorkerMessage(message)) return;
    if (message.type === 'sidecar:ready') {
      ready.set(worker.id, message.listeners);
      if (!announced && ready.size === config.workers) {
        announced = true;
        logger.info({ listeners: { ...message.listeners, ...(adminAddress ? { admin: adminAddress } : {}) }, workers: config.workers, mode: config.mode, protocol: config.protocol, serial: store.current?.leaf.serialNumber }, 'sidecar ready');
      }
    } else if (message.type === 'sidecar:peers') {
      const entry = pendingPeers.get(message.requestId);
      if (!entry) return;
      entry.snapshots.push(message.snapshot);
      entry.waiting -= 1;
      if (entry.waiting === 0) {
        pendingPeers.delete(message.requestId);
        entry.done();
      }
    }
  });

  const exitCodes: number[] = [];
  let resolveStopped: (code: number) => void = () => undefined;
  const stopped = new Promise<number>((resolve) => (resolveStopped = resolve));
  cluster.on('exit', (worker, code, signal) => {
    ready.delete(worker.id);
    if (draining) {
      // Our SIGTERM reached a worker still loading, before it could take the signal: it held
      // nothing in flight, so that is a clean stop, not a failure.
      exitCodes.push(code ?? (signal === 'SIGTERM' ? 0 : 1));
      if (Object.keys(cluster.workers ?? {}).length === 0) resolveStopped(Math.max(0, ...exitCodes));
      return;
    }
    if (!announced) {
      // A worker that cannot start (listen error, bad config) would fail again: stop.
      logger.fatal({ worker: worker.process.pid, code, signal }, 'a worker failed to start');
      draining = true;
      for (const other of Object.values(cluster.workers ?? {})) other?.kill('SIGTERM');
      exitCodes.push(code ?? 1);
      if (Object.keys(cluster.workers ?? {}).length === 0) resolveStopped(Math.max(1, ...exitCodes));
      return;
    }
    logger.error({ worker: worker.process.pid, code, signal }, 'worker exited; starting a replacement');
    fork();
  });
  for (let index = 0; index < config.workers; index += 1) fork();

  const forward = (signal: NodeJS.Signals) => {
    for (const worker of Object.values(cluster.workers ?? {})) if (worker?.process.pid) process.kill(worker.process.pid, signal);
  };
  process.on('SIGHUP', () => {
    logger.info('SIGHUP: reloading certificates in every worker');
    void store.reload('sighup');
    forward('SIGHUP');
  });
  const stop = (signal: NodeJS.Signals) => {
    if (draining) return;
    draining = true;
    logger.info({ signal, workers: Object.keys(cluster.workers ?? {}).length }, 'draining: stopping every worker');
    store.stop();
    forward('SIGTERM');
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  const code = await stopped;
  await admin?.close();
  logger.info({ exitCode: code }, 'stopped');
  return code;
}
