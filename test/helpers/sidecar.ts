// Runs the real sidecar binary (dist/cli.js) as a child process, the way an operator would.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { runCommand, type CommandResult } from './clients.js';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const CLI_PATH = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));

export interface Address {
  host: string;
  port: number;
}

/** The `listeners` field of the "sidecar ready" line. */
export interface ReadyListeners {
  inbound?: string;
  outbound?: string;
  admin?: string;
  upstreams?: Record<string, string>;
}

/** One pino line from stdout. */
export interface LogLine {
  msg?: string;
  level?: number | string;
  [field: string]: unknown;
}

export interface Sidecar {
  readonly child: ChildProcess;
  readonly listeners: ReadyListeners;
  readonly inbound: Address;
  readonly outbound: Address;
  readonly admin: Address;
  /** The local listener of `--upstream LOCAL=...`, keyed by the LOCAL port as written in the flag. */
  upstream(localPort: string | number): Address;
  /** Every JSON log line so far. */
  logs(): LogLine[];
  /** Everything written to stdout and stderr so far (raw), for failure messages. */
  output(): string;
  stderr(): string;
  /** Resolves with the first log line (past or future) matching; rejects after `timeoutMs`. */
  waitForLog(predicate: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Sends a signal (e.g. SIGHUP to reload certificates). */
  signal(signal: NodeJS.Signals): void;
  /** SIGTERM, then waits for the exit (SIGKILL after `timeoutMs`); resolves with the exit code. */
  stop(timeoutMs?: number): Promise<number | null>;
  /** Resolves when the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const liveChildren = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of liveChildren) child.kill('SIGKILL');
});

/** Stops every sidecar this process started; for `after()` hooks. */
export async function stopAllSidecars(): Promise<void> {
  await Promise.all([...liveChildren].map((child) => terminate(child, 5000)));
}

function terminate(child: ChildProcess, timeoutMs: number): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
    child.kill('SIGTERM');
  });
}

export function parseAddress(text: string): Address {
  const separator = text.lastIndexOf(':');
  return { host: text.slice(0, separator).replace(/^\[|\]$/g, ''), port: Number(text.slice(separator + 1)) };
}

/** The parent's environment without any SIDECAR_* variable, plus `extra`. */
function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) if (!name.startsWith('SIDECAR_')) env[name] = value;
  return { ...env, ...extra };
}

const LISTENER_DEFAULTS: ReadonlyArray<[flag: string, env: string]> = [
  ['--inbound', 'SIDECAR_INBOUND'],
  ['--outbound', 'SIDECAR_OUTBOUND'],
  ['--admin', 'SIDECAR_ADMIN'],
];

export interface StartSidecarOptions {
  env?: Record<string, string>;
  readyTimeoutMs?: number;
  /**
   * A command prefix that runs node somewhere else, e.g. `['ip', 'netns', 'exec', ns]`. It must
   * exec node (not fork it), so the child's pid is node's and signals reach the sidecar.
   */
  launcher?: string[];
}

/**
 * Spawns `node dist/cli.js run ...args` (behind `launcher` when given) and resolves once it logs
 * "sidecar ready". Listeners not given by flag or env default to 127.0.0.1:0. Rejects with the
 * collected output when the process exits first or is not ready within `readyTimeoutMs`.
 */
export async function startSidecar(args: string[], options: StartSidecarOptions = {}): Promise<Sidecar> {
  const fullArgs = [...args];
  for (const [flag, envName] of LISTENER_DEFAULTS) {
    const given = args.some((arg) => arg === flag || arg.startsWith(`${flag}=`)) || options.env?.[envName] !== undefined;
    if (!given) fullArgs.push(flag, '127.0.0.1:0');
  }
  const [file, ...argv] = [...(options.launcher ?? []), process.execPath, CLI_PATH, 'run', ...fullArgs];
  const child = spawn(file!, argv, { cwd: REPO_ROOT, env: childEnv(options.env), stdio: ['ignore', 'pipe', 'pipe'] });
  liveChildren.add(child);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      liveChildren.delete(child);
      resolve({ code, signal });
    });
  });

  const lines: LogLine[] = [];
  let raw = '';
  let stderrText = '';
  let partial = '';
  const waiters = new Set<{ predicate: (line: LogLine) => boolean; resolve: (line: LogLine) => void }>();
  child.stdout?.setEncoding('utf8');
  child.stderr?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    raw += chunk;
    partial += chunk;
    const complete = partial.split('\n');
    partial = complete.pop() ?? '';
    for (const text of complete) {
      if (!text.trim()) continue;
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        line = { msg: undefined, text };
      }
      lines.push(line);
      for (const waiter of waiters) {
        if (waiter.predicate(line)) {
          waiters.delete(waiter);
          waiter.resolve(line);
        }
      }
    }
  });
  child.stderr?.on('data', (chunk: string) => {
    raw += chunk;
    stderrText += chunk;
  });

  const output = () => `command: ${[...(options.launcher ?? []), 'node dist/cli.js run', ...fullArgs].join(' ')}\n${raw}`;

  const waitForLog = (predicate: (line: LogLine) => boolean, timeoutMs = 15000): Promise<LogLine> => {
    const seen = lines.find(predicate);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const waiter = {
        predicate,
        resolve: (line: LogLine) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      const timer = setTimeout(() => {
        waiters.delete(waiter);
        reject(new Error(`no matching log line within ${timeoutMs} ms; output so far:\n${output()}`));
      }, timeoutMs);
      waiters.add(waiter);
    });
  };

  const readyTimeout = options.readyTimeoutMs ?? 15000;
  let ready: LogLine;
  try {
    ready = await Promise.race([
      waitForLog((line) => line.msg === 'sidecar ready', readyTimeout),
      exited.then(({ code, signal }) => {
        throw new Error(`sidecar exited (code ${code}, signal ${signal}) before "sidecar ready"; output:\n${output()}`);
      }),
    ]);
  } catch (error) {
    await terminate(child, 2000);
    throw error;
  }
  const listeners = (ready.listeners ?? {}) as ReadyListeners;
  const require = (name: 'inbound' | 'outbound' | 'admin'): Address => {
    const value = listeners[name];
    if (!value) throw new Error(`the ready line has no ${name} listener: ${JSON.stringify(ready)}`);
    return parseAddress(value);
  };

  return {
    child,
    listeners,
    get inbound() {
      return require('inbound');
    },
    get outbound() {
      return require('outbound');
    },
    get admin() {
      return require('admin');
    },
    upstream(localPort) {
      const value = listeners.upstreams?.[String(localPort)];
      if (!value) throw new Error(`the ready line has no upstream listener ${localPort}: ${JSON.stringify(ready)}`);
      return parseAddress(value);
    },
    logs: () => [...lines],
    output,
    stderr: () => stderrText,
    waitForLog,
    signal: (signal) => void child.kill(signal),
    stop: (timeoutMs = 10000) => terminate(child, timeoutMs),
    exited,
  };
}

/** Runs a one-shot command (`node dist/cli.js ...args`) to completion, with a clean SIDECAR_* env. */
export function runCli(args: string[], options: { env?: Record<string, string>; timeoutMs?: number } = {}): Promise<CommandResult> {
  return runCommand(process.execPath, [CLI_PATH, ...args], { env: childEnv(options.env), timeoutMs: options.timeoutMs ?? 15000, cwd: REPO_ROOT });
}

/** A TCP port that was free a moment ago on 127.0.0.1 (for `--upstream LOCAL=...`, which needs a fixed number). */
export async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}
