/**
 * Prometheus metrics (SPEC §7). Label sets are bounded: no paths, no peer identities.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export type Direction = 'inbound' | 'outbound';

export class Metrics {
  readonly registry = new Registry();

  readonly requests = new Counter({
    name: 'sidecar_requests_total',
    help: 'Requests proxied, by direction and status code',
    labelNames: ['direction', 'code'] as const,
    registers: [this.registry],
  });

  readonly requestDuration = new Histogram({
    name: 'sidecar_request_duration_seconds',
    help: 'Time from request received to response finished',
    labelNames: ['direction'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
    registers: [this.registry],
  });

  readonly handshakeErrors = new Counter({
    name: 'sidecar_tls_handshake_errors_total',
    help: 'TLS handshakes that failed, by direction and catalog reason',
    labelNames: ['direction', 'reason'] as const,
    registers: [this.registry],
  });

  readonly upstreamErrors = new Counter({
    name: 'sidecar_errors_total',
    help: 'Errors returned to the app, by catalog code',
    labelNames: ['direction', 'error'] as const,
    registers: [this.registry],
  });

  readonly authzDenied = new Counter({
    name: 'sidecar_authz_denied_total',
    help: 'Inbound requests denied by the allow-list',
    registers: [this.registry],
  });

  readonly certNotAfter = new Gauge({
    name: 'sidecar_cert_not_after_timestamp_seconds',
    help: 'Expiry (notAfter, unix seconds) of the served leaf and of each trust-bundle certificate',
    labelNames: ['cert'] as const,
    registers: [this.registry],
  });

  readonly certReloads = new Counter({
    name: 'sidecar_cert_reloads_total',
    help: 'Certificate directory reloads, by result (success, error; unchanged content is not counted)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly connectionsActive = new Gauge({
    name: 'sidecar_connections_active',
    help: 'Open client connections, by direction',
    labelNames: ['direction'] as const,
    registers: [this.registry],
  });

  readonly connectionsDropped = new Counter({
    name: 'sidecar_connections_dropped_total',
    help: 'Client connections closed on arrival because --max-connections were open, by direction',
    labelNames: ['direction'] as const,
    registers: [this.registry],
  });

  readonly tcpConnections = new Counter({
    name: 'sidecar_tcp_connections_total',
    help: 'TCP-mode connections, by direction and result (ok, error, or a catalog code)',
    labelNames: ['direction', 'result'] as const,
    registers: [this.registry],
  });

  readonly inboundRequests = new Counter({
    name: 'sidecar_inbound_requests_total',
    help: 'Inbound requests by transport security: mtls, tls (no client certificate) or plaintext',
    labelNames: ['tls'] as const,
    registers: [this.registry],
  });

  readonly certReloadFailing = new Gauge({
    name: 'sidecar_cert_reload_failing',
    help: '1 while the cert directory holds a set that was refused (the last good set is served), else 0: alert on this staying 1, not on single reload errors',
    aggregator: 'max',
    registers: [this.registry],
  });

  readonly insecureSkipVerify = new Gauge({
    name: 'sidecar_insecure_skip_verify',
    help: '1 while --insecure-skip-verify is on (upstream certificates are not verified), else 0',
    // --workers: every worker has the same flag; the cluster's value is 1, not the number of workers.
    aggregator: 'max',
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
    for (const result of ['success', 'error']) this.certReloads.inc({ result }, 0);
    this.authzDenied.inc(0);
  }
}
