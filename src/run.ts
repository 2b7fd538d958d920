/**
 * `mtls-sidecar run`: loads certificates, binds the listeners, reports readiness, reloads on
 * change/SIGHUP, and drains on SIGTERM/SIGINT.
 */
import { AdminServer } from './admin/server.js';
import { CertStore, loadAtStart } from './certs/store.js';
import type { Config } from './config.js';
import { InboundListener } from './inbound/server.js';
import { ListenError } from './listen.js';
import type { Logger } from './log.js';
import { Metrics } from './metrics.js';
import { UpstreamAgents } from './outbound/agents.js';
import { OutboundListeners } from './outbound/proxy.js';
import { PeerTracker } from './inbound/peers.js';
import { workerChannel } from './cluster.js';
import { PeerTls } from './inbound/peer-tls.js';
import { TcpInboundListener } from './inbound/tcp.js';
import { TcpUpstreamListeners } from './outbound/tcp.js';

export interface RunningSidecar {
  listeners: Record<string, unknown>;
  /** Resolves with the process exit code once the sidecar has stopped. */
  stopped: Promise<number>;
  stop(signal: string): void;
}

export async function runSidecar(config: Config, logger: Logger): Promise<RunningSidecar | number> {
  const metrics = new Metrics();
  const store = new CertStore(config.certs, logger, metrics);
  if (!(await loadAtStart(store, logger))) return 1;

  let draining = false;
  const bound = new Set<string>();
  const expected = new Set<string>();
  const readiness = {
    reasons(): string[] {
      const reasons: string[] = [];
      if (draining) reasons.push('draining: shutting down');
      const set = store.current;
      if (!set) reasons.push('no valid certificate set loaded');
      else if (set.notAfter.getTime() < Date.now()) reasons.push(`the served certificate expired at ${set.notAfter.toISOString()}`);
      for (const name of expected) if (!bound.has(name)) reasons.push(`listener ${name} is not bound yet`);
      return reasons;
    },
  };

  const peers = new PeerTracker();
  const agents = new UpstreamAgents({ config, store, logger });
  const tcp = config.protocol === 'tcp';
  const peerTls = config.inbound ? new PeerTls({ config, store, logger, metrics, peers }) : undefined;
  const inbound = !peerTls ? undefined : tcp ? new TcpInboundListener({ config, logger, metrics, peerTls }) : new InboundListener({ config, logger, metrics, peerTls });
  // TCP mode: --upstream listeners pipe bytes; the forward proxy (if on) stays HTTP.
  const outbound = new OutboundListeners({ config: tcp ? { ...config, upstreams: [] } : config, agents, logger, metrics });
  const tcpUpstreams = tcp ? new TcpUpstreamListeners({ config, store, logger, metrics }) : undefined;
  const admin = config.admin
    ? new AdminServer({
        address: config.admin,
        store,
        readiness,
        metrics: async () => ({ contentType: metrics.registry.contentType, text: await metrics.registry.metrics() }),
        peers: async (windowMs) => peers.report(windowMs),
      })
    : undefined;

  const listeners: { inbound?: string; outbound?: string; admin?: string; upstreams?: Record<string, string> } = {};
  if (inbound) expected.add('inbound');
  if (config.outbound) expected.add('outbound');
  for (const route of config.upstreams) expected.add(`upstream ${route.localPort}`);
  try {
    if (admin) listeners.admin = await admin.listen();
    if (inbound) {
      listeners.inbound = await inbound.listen();
      bound.add('inbound');
    }
    const out = await outbound.listen();
    if (out.outbound) {
      listeners.outbound = out.outbound;
      bound.add('outbound');
    }
    if (tcpUpstreams) out.upstreams = await tcpUpstreams.listen();
    if (config.upstreams.length) {
      listeners.upstreams = out.upstreams;
      for (const port of Object.keys(out.upstreams)) bound.add(`upstream ${port}`);
    }
  } catch (error) {
    if (!(error instanceof ListenError)) throw error;
    logger.fatal({ reason: error.message }, 'cannot bind a listener');
    process.stderr.write(`mtls-sidecar: ${error.message}\n`);
    await Promise.allSettled([inbound?.close(), outbound.close(), tcpUpstreams?.close(), admin?.close()]);
    return 1;
  }

  store.start(config.reloadIntervalMs);
  const onHangup = () => {
    logger.info('SIGHUP: reloading certificates');
    void store.reload('sighup');
  };
  process.on('SIGHUP', onHangup);

  const set = store.current!;
  if (workerChannel.active()) {
    workerChannel.serve(metrics.registry, peers);
    workerChannel.ready(listeners);
  }
  logger.info(
    {
      listeners,
      mode: config.mode,
      protocol: config.protocol,
      app: config.app.kind === 'unix' ? `unix:${config.app.path}` : `${config.app.kind}://${config.app.host}:${config.app.port}`,
      identity: set.identity.uris,
      serial: set.leaf.serialNumber,
    },
    // With --workers the primary says "sidecar ready" once every worker is.
    workerChannel.active() ? 'worker ready' : 'sidecar ready',
  );

  let resolveStopped: (code: number) => void = () => undefined;
  const stopped = new Promise<number>((resolve) => {
    resolveStopped = resolve;
  });

  const stop = (signal: string) => {
    if (draining) return;
    draining = true;
    const drainMs = config.timeouts.drainMs;
    const finished = Promise.all([inbound?.close(), outbound.close(), tcpUpstreams?.close()]);
    // Logged once the listeners have stopped accepting, so the line is true when it is read.
    logger.info({ signal, drainTimeoutMs: drainMs }, 'draining: no new connections, finishing in-flight requests');
    store.stop();
    process.off('SIGHUP', onHangup);
    // Keep-alive connections that go idle during the drain are closed as soon as they do.
    const idleSweep = setInterval(() => {
      inbound?.closeIdleConnections();
      outbound.closeIdleConnections();
    }, 100);
    const deadline = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), drainMs).unref());
    void Promise.race([finished.then(() => 'done' as const), deadline]).then(async (outcome) => {
      clearInterval(idleSweep);
      let code = 0;
      if (outcome === 'timeout') {
        const open = ((await inbound?.openConnections()) ?? 0) + (await outbound.openConnections()) + (tcpUpstreams?.openConnections() ?? 0);
        logger.warn({ cutConnections: open, drainTimeoutMs: drainMs }, 'drain timeout: cutting the connections still open');
        inbound?.closeAllConnections();
        outbound.closeAllConnections();
        tcpUpstreams?.closeAllConnections();
        code = 1;
      }
      agents.destroy();
      await admin?.close();
      logger.info({ exitCode: code }, 'stopped');
      resolveStopped(code);
    });
  };

  return { listeners, stopped, stop };
}
