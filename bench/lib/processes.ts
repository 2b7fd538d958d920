import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import net from 'node:net';
import { assertNotShuttingDown, onCleanup } from './cleanup.js';

const OUTPUT_LINES_KEPT = 200;

/** A long-running child (nginx, sidecar) whose output is always drained so a full pipe never stalls it. */
export interface ManagedProcess {
  readonly name: string;
  readonly pid: number;
  readonly child: ChildProcess;
  /** Last lines of stdout+stderr, for error messages. */
  readonly recentOutput: string[];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  hasExited(): boolean;
  onLine(listener: (line: string) => void): () => void;
}

export function startProcess(name: string, command: string, args: string[], options: SpawnOptions = {}): ManagedProcess {
  assertNotShuttingDown(name);
  const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
  const recentOutput: string[] = [];
  const listeners = new Set<(line: string) => void>();
  let exitedFlag = false;

  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('error', (error) => {
      recentOutput.push(`spawn error: ${error.message}`);
      exitedFlag = true;
      resolve({ code: null, signal: null });
    });
    child.once('exit', (code, signal) => {
      exitedFlag = true;
      resolve({ code, signal });
    });
  });

  for (const stream of [child.stdout, child.stderr]) {
    let partial = '';
    stream?.setEncoding('utf8');
    stream?.on('data', (chunk: string) => {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        recentOutput.push(line);
        if (recentOutput.length > OUTPUT_LINES_KEPT) recentOutput.shift();
        for (const listener of listeners) listener(line);
      }
    });
  }

  const managed: ManagedProcess = {
    name,
    pid: child.pid ?? -1,
    child,
    recentOutput,
    exited,
    hasExited: () => exitedFlag,
    onLine(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
  const unregister = onCleanup(() => stopProcess(managed));
  void exited.then(unregister);
  return managed;
}

/** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
export async function stopProcess(managed: ManagedProcess, graceMs = 5000): Promise<void> {
  if (managed.hasExited()) return;
  managed.child.kill('SIGTERM');
  const timer = setTimeout(() => managed.child.kill('SIGKILL'), graceMs);
  await managed.exited;
  clearTimeout(timer);
}

export function describeOutput(managed: ManagedProcess, lines = 20): string {
  const tail = managed.recentOutput.slice(-lines).filter((line) => line.trim() !== '');
  return tail.length === 0 ? '(no output)' : tail.map((line) => `    ${line}`).join('\n');
}

/** Resolves with the first line matching `predicate`; rejects if the process exits first or time runs out. */
export function waitForLine(managed: ManagedProcess, predicate: (line: string) => boolean, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const existing = managed.recentOutput.find(predicate);
    if (existing !== undefined) return resolve(existing);
    const timer = setTimeout(() => finish(new Error(`${managed.name}: no ready line within ${timeoutMs} ms\n${describeOutput(managed)}`)), timeoutMs);
    const stopListening = managed.onLine((line) => {
      if (predicate(line)) finish(undefined, line);
    });
    void managed.exited.then(({ code, signal }) =>
      finish(new Error(`${managed.name} exited (code ${code}, signal ${signal}) before it was ready\n${describeOutput(managed)}`)),
    );
    function finish(error: Error | undefined, line?: string): void {
      clearTimeout(timer);
      stopListening();
      if (error) reject(error);
      else resolve(line as string);
    }
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Polls until 127.0.0.1:port accepts TCP connections; fails early if `owner` exits. */
export async function waitForPort(port: number, timeoutMs: number, owner?: ManagedProcess): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (owner?.hasExited()) throw new Error(`${owner.name} exited before listening on ${port}\n${describeOutput(owner)}`);
    if (await canConnect(port)) return;
    await sleep(50);
  }
  throw new Error(`nothing listening on 127.0.0.1:${port} after ${timeoutMs} ms${owner ? `\n${describeOutput(owner)}` : ''}`);
}

/** A port that was free a moment ago (the kernel picks it; another process could take it, which we accept on loopback). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a short command to completion (wrk, openssl); it is killed by cleanup if the bench is interrupted. */
export function runCommand(command: string, args: string[], options: SpawnOptions = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    assertNotShuttingDown(command);
    const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const unregister = onCleanup(() => {
      child.kill('SIGKILL');
    });
    child.once('error', (error) => {
      unregister();
      reject(error);
    });
    child.once('close', (code) => {
      unregister();
      resolve({ code, stdout, stderr });
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---- CPU and memory of a process tree, read from /proc (Linux only; other systems report nothing) ----

const CLOCK_TICKS_PER_SECOND = 100; // USER_HZ, fixed at 100 on Linux for /proc/<pid>/stat

function readStat(pid: number): { parent: number; ticks: number } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may contain spaces and parentheses; fields after the last ')' are fixed.
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { parent: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]) };
  } catch {
    return undefined;
  }
}

function readRssKiB(pid: number): number {
  try {
    const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) : 0;
  } catch {
    return 0;
  }
}

/** `root` and all its descendants (an nginx master and its worker, a sidecar and any workers it forks). */
function processTree(root: number): number[] {
  let entries: string[];
  try {
    entries = readdirSync('/proc').filter((entry) => /^\d+$/.test(entry));
  } catch {
    return [];
  }
  const childrenOf = new Map<number, number[]>();
  for (const entry of entries) {
    const stat = readStat(Number(entry));
    if (!stat) continue;
    const siblings = childrenOf.get(stat.parent) ?? [];
    siblings.push(Number(entry));
    childrenOf.set(stat.parent, siblings);
  }
  const tree: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    const pid = queue.shift() as number;
    tree.push(pid);
    queue.push(...(childrenOf.get(pid) ?? []));
  }
  return tree;
}

export interface UsageSample {
  cpuSeconds: number;
  rssMiB: number;
}

export function sampleUsage(pids: number[]): UsageSample {
  let ticks = 0;
  let rssKiB = 0;
  for (const pid of pids.flatMap(processTree)) {
    ticks += readStat(pid)?.ticks ?? 0;
    rssKiB += readRssKiB(pid);
  }
  return { cpuSeconds: ticks / CLOCK_TICKS_PER_SECOND, rssMiB: rssKiB / 1024 };
}
