import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import type { ServiceCertDir } from './pki.js';
import { describeOutput, sleep, startProcess, waitForLine, waitForPort, type ManagedProcess } from './processes.js';

export const SIDECAR_CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../dist/cli.js');

/**
 * The per-request access log is an info line; the bench runs at warn so it measures proxying,
 * not JSON logging to a pipe. Say so wherever results are shown.
 */
export const SIDECAR_LOG_LEVEL = 'warn';

export function sidecarBuilt(): boolean {
  return existsSync(SIDECAR_CLI);
}

/**
 * Starts `node dist/cli.js run ...` and waits until it is serving. The contract's ready signal is
 * the `"msg":"sidecar ready"` log line, but that is an info line, filtered out at --log-level warn,
 * so `serving` (a port check) counts too, whichever comes first. Callers then send a real request
 * through before measuring.
 */
async function startSidecar(name: string, args: string[], serving: (managed: ManagedProcess) => Promise<void>, logLevel: string | undefined = SIDECAR_LOG_LEVEL): Promise<ManagedProcess> {
  const managed = startProcess(name, process.execPath, [SIDECAR_CLI, 'run', ...args, ...(logLevel ? ['--log-level', logLevel] : [])]);
  const readyLine = waitForLine(managed, (line) => line.includes('"msg":"sidecar ready"'), 20_000);
  const listening = serving(managed);
  // The slower of the two settles later; keep its rejection from crashing the run.
  readyLine.catch(() => undefined);
  listening.catch(() => undefined);
  await Promise.race([readyLine, listening]);
  return managed;
}

/**
 * Polls until an mTLS handshake with `identity` succeeds, then closes cleanly. A bare TCP probe
 * would show up in the sidecar's log as a failed handshake.
 */
async function waitForMutualTls(port: number, identity: ServiceCertDir, owner: ManagedProcess, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const credentials = { cert: readFileSync(identity.cert), key: readFileSync(identity.key), ca: readFileSync(identity.ca) };
  while (Date.now() < deadline) {
    if (owner.hasExited()) throw new Error(`${owner.name} exited before serving mTLS on ${port}\n${describeOutput(owner)}`);
    const connected = await new Promise<boolean>((resolve) => {
      const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ...credentials }, () => {
        socket.end();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (connected) return;
    await sleep(100);
  }
  throw new Error(`${owner.name}: no mTLS handshake on 127.0.0.1:${port} after ${timeoutMs} ms\n${describeOutput(owner)}`);
}

/** `http` (L7, the default) or `tcp` (`--protocol tcp`: L4, bytes piped). */
export type SidecarProtocol = 'http' | 'tcp';

function protocolArgs(protocol: SidecarProtocol): string[] {
  return protocol === 'tcp' ? ['--protocol', 'tcp'] : [];
}

function appUrl(protocol: SidecarProtocol, appPort: number): string {
  return `${protocol === 'tcp' ? 'tcp' : 'http'}://127.0.0.1:${appPort}`;
}

function nameOf(base: string, protocol: SidecarProtocol): string {
  return protocol === 'tcp' ? `${base}, tcp` : base;
}

/** Sidecar B: mTLS inbound on `inboundPort`, forwarding to the app. */
export function startInboundSidecar(inboundPort: number, appPort: number, identity: ServiceCertDir, protocol: SidecarProtocol = 'http'): Promise<ManagedProcess> {
  return startSidecar(
    nameOf('inbound sidecar (B)', protocol),
    ['--cert-dir', identity.dir, ...protocolArgs(protocol), '--inbound', `127.0.0.1:${inboundPort}`, '--outbound', 'off', '--admin', 'off', '--app', appUrl(protocol, appPort)],
    (managed) => waitForMutualTls(inboundPort, identity, managed),
  );
}

/** Sidecar A: a fixed upstream listener on `localPort` that goes over mTLS to localhost:`peerPort`. */
export function startOutboundSidecar(localPort: number, peerPort: number, identity: ServiceCertDir, protocol: SidecarProtocol = 'http', workers = 1): Promise<ManagedProcess> {
  return startSidecar(
    nameOf(workers === 1 ? 'outbound sidecar (A)' : `outbound sidecar (A, ${workers} workers)`, protocol),
    [
      '--cert-dir', identity.dir, ...protocolArgs(protocol), '--inbound', 'off', '--outbound', 'off', '--admin', 'off', '--upstream', `${localPort}=localhost:${peerPort}`,
      ...(workers === 1 ? [] : ['--workers', String(workers)]),
    ],
    (managed) => waitForPort(localPort, 20_000, managed),
  );
}

export interface SidecarPorts {
  inbound: number;
  outbound: number;
  admin: number;
}

/**
 * A sidecar as deployed: inbound, outbound forward proxy and admin all on, every other flag at its
 * default (including `--log-level info`), only the ports chosen. Ready when the ready line is
 * logged or an mTLS handshake on the inbound port succeeds.
 */
export function startDefaultSidecar(ports: SidecarPorts, appPort: number, identity: ServiceCertDir, protocol: SidecarProtocol = 'http'): Promise<ManagedProcess> {
  return startSidecar(
    nameOf('sidecar (B, defaults)', protocol),
    [
      '--cert-dir', identity.dir, ...protocolArgs(protocol),
      '--inbound', `127.0.0.1:${ports.inbound}`, '--outbound', `127.0.0.1:${ports.outbound}`, '--admin', `127.0.0.1:${ports.admin}`,
      '--app', appUrl(protocol, appPort),
    ],
    (managed) => waitForMutualTls(ports.inbound, identity, managed),
    undefined,
  );
}

/** Lines at warn or above that a sidecar printed (pino levels: 40 warn, 50 error, 60 fatal). */
export function sidecarWarnings(managed: ManagedProcess): string[] {
  return managed.recentOutput.filter((line) => /"level":(4|5|6)0\b/.test(line) || (line.trim() !== '' && !line.startsWith('{')));
}
