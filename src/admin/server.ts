/**
 * Admin listener (SPEC §7): /healthz, /readyz, /metrics, /certs, /peers[?window=DURATION].
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { describeCertificate } from '../certs/describe.js';
import type { CertStore } from '../certs/store.js';
import type { ListenAddress } from '../config.js';
import { listenOn, type BoundAddress } from '../listen.js';
import { defaultWindowMs, parseReportWindow, type PeersReport } from '../inbound/peers.js';

export interface Readiness {
  /** Reasons the sidecar is not ready; empty when ready. */
  reasons(): string[];
}

/** Where the admin answers come from: this process, or (with --workers) all workers together. */
export interface AdminSources {
  store: CertStore;
  readiness: Readiness;
  metrics(): Promise<{ contentType: string; text: string }>;
  /** The migration report over the callers of the last `windowMs`. */
  peers(windowMs: number): Promise<PeersReport>;
}

function sendJson(res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value, null, 2);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(body);
}

export class AdminServer {
  readonly #server: Server;
  readonly #address: ListenAddress;

  constructor(options: { address: ListenAddress } & AdminSources) {
    const { store, metrics, readiness, peers } = options;
    this.#address = options.address;
    this.#server = createServer((req: IncomingMessage, res: ServerResponse) => {
      const target = req.url ?? '/';
      const queryStart = target.indexOf('?');
      const path = queryStart < 0 ? target : target.slice(0, queryStart);
      const query = new URLSearchParams(queryStart < 0 ? '' : target.slice(queryStart + 1));
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        sendJson(res, 405, { error: 'method_not_allowed' });
        return;
      }
      switch (path) {
        case '/healthz':
          sendJson(res, 200, { status: 'ok' });
          return;
        case '/readyz': {
          const reasons = readiness.reasons();
          sendJson(res, reasons.length ? 503 : 200, { ready: reasons.length === 0, reasons });
          return;
        }
        case '/metrics':
          metrics().then(
            ({ contentType, text }) => {
              res.writeHead(200, { 'content-type': contentType });
              res.end(text);
            },
            (error: Error) => sendJson(res, 500, { error: error.message }),
          );
          return;
        case '/certs': {
          const set = store.current;
          const status = store.lastStatus;
          sendJson(res, 200, {
            generation: set?.generation,
            layout: set?.files.layout,
            files: set ? { cert: set.files.cert, key: set.files.key, ca: set.files.ca } : undefined,
            leaf: set ? describeCertificate(set.leaf) : undefined,
            chain: set ? set.chain.slice(1).map(describeCertificate) : [],
            bundle: set ? set.bundle.map(describeCertificate) : [],
            loadedAt: set?.loadedAt.toISOString(),
            lastReload: status ? { at: status.at.toISOString(), trigger: status.trigger, result: status.result } : undefined,
            lastError: store.lastError,
          });
          return;
        }
        case '/peers': {
          const given = query.getAll('window');
          const requested = given.length === 0 ? { windowMs: defaultWindowMs } : given.length > 1 ? { problem: 'given more than once' } : parseReportWindow(given[0]!);
          if ('problem' in requested) {
            sendJson(res, 400, { error: 'invalid_parameter', parameter: 'window', message: `window: ${requested.problem}`, hint: 'GET /peers?window=30s (default 15m)' });
            return;
          }
          peers(requested.windowMs).then(
            (report) => sendJson(res, 200, report),
            (error: Error) => sendJson(res, 500, { error: error.message }),
          );
          return;
        }
        default:
          sendJson(res, 404, { error: 'not_found', endpoints: ['/healthz', '/readyz', '/metrics', '/certs', '/peers'] });
      }
    });
  }

  listen(): Promise<BoundAddress> {
    return listenOn(this.#server, this.#address, 'admin');
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }
}
