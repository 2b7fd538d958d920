// Helpers for the deploy tests: read the sidecar's flags and environment out of a manifest and
// validate them with the product's own option table (src/config.ts), re-point them at loopback for
// a local run, and run processes in network namespaces ("pods") joined by a veth pair.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { buildConfig, envName, readEnv, runOptions, type Config, type RawRunArgs, type RunOptionName } from '../../src/config.js';
import { runCommand, type CommandResult } from './clients.js';
import { REPO_ROOT, startSidecar, type Sidecar, type StartSidecarOptions } from './sidecar.js';

// ---- the sidecar's command line, as a manifest writes it ----

export interface SidecarInvocation {
  /** Arguments after the image's ENTRYPOINT (`run`, flags...). */
  args: string[];
  /** Environment variables given to the container. */
  env: Record<string, string>;
}

export interface ParsedInvocation {
  command: string | undefined;
  /** Flag values by flag name (repeatable flags collected), as yargs would hand them to `run`. */
  flags: RawRunArgs;
  /** Flags the `run` command does not define. */
  unknownFlags: string[];
  /** `SIDECAR_*` variables that match no flag (the CLI ignores them with a warning). */
  unknownEnv: string[];
}

function isRunOption(name: string): name is RunOptionName {
  return Object.hasOwn(runOptions, name);
}

/** Splits `run --flag value --other=value` the way yargs reads it, against `runOptions`. */
export function parseInvocation(invocation: SidecarInvocation): ParsedInvocation {
  const [first, ...rest] = invocation.args;
  const command = first !== undefined && !first.startsWith('-') ? first : undefined;
  const tokens = command === undefined ? invocation.args : rest;
  const flags: Record<string, unknown> = {};
  const unknownFlags: string[] = [];
  for (let index = 0; index < tokens.length; index += 1) {
    const token = tokens[index]!;
    if (!token.startsWith('--')) {
      unknownFlags.push(token);
      continue;
    }
    const equals = token.indexOf('=');
    const name = token.slice(2, equals === -1 ? undefined : equals);
    if (!isRunOption(name)) {
      unknownFlags.push(`--${name}`);
      continue;
    }
    const spec = runOptions[name];
    let value: string | boolean;
    if (equals !== -1) value = token.slice(equals + 1);
    else if (spec.type === 'boolean') value = true;
    else value = tokens[(index += 1)] ?? '';
    if (spec.type === 'array') flags[name] = [...((flags[name] as string[] | undefined) ?? []), String(value)];
    else flags[name] = value;
  }
  const sidecarEnv = Object.fromEntries(Object.entries(invocation.env).filter(([name]) => name.startsWith('SIDECAR_')));
  const { unknown } = readEnv(runOptions, sidecarEnv);
  return { command, flags: flags as RawRunArgs, unknownFlags, unknownEnv: unknown };
}

/** The validated Config the CLI builds from these flags and env (flags win over env). */
export function configOf(invocation: SidecarInvocation): Config {
  const { values } = readEnv(runOptions, invocation.env);
  return buildConfig({ ...values, ...parseInvocation(invocation).flags } as RawRunArgs);
}

/** Flags that name a place on the host; a local run re-points exactly these. */
export interface LocalPlaces {
  certDir: string;
  app: string;
}

const LOOPBACK_LISTENERS: ReadonlyArray<RunOptionName> = ['inbound', 'outbound', 'admin'];

/**
 * The same invocation with the listeners on 127.0.0.1:0, the cert dir and the app replaced
 * (wherever they are given: flag or env), every other flag and variable left exactly as written.
 * Listeners left to their defaults are given explicitly, so nothing binds a fixed port here.
 */
export function localInvocation(invocation: SidecarInvocation, places: LocalPlaces): SidecarInvocation {
  const replacement = (name: RunOptionName): string | undefined => {
    if (LOOPBACK_LISTENERS.includes(name)) return '127.0.0.1:0';
    if (name === 'cert-dir') return places.certDir;
    if (name === 'app') return places.app;
    return undefined;
  };
  const args: string[] = [];
  const given = new Set<RunOptionName>();
  for (let index = 0; index < invocation.args.length; index += 1) {
    const token = invocation.args[index]!;
    const equals = token.indexOf('=');
    const name = token.startsWith('--') ? token.slice(2, equals === -1 ? undefined : equals) : '';
    const value = isRunOption(name) ? replacement(name) : undefined;
    if (value === undefined || !isRunOption(name)) {
      args.push(token);
      continue;
    }
    given.add(name);
    args.push(`--${name}`, value);
    if (equals === -1) index += 1;
  }
  const env: Record<string, string> = {};
  for (const [variable, text] of Object.entries(invocation.env)) {
    const name = Object.keys(runOptions).find((flag) => envName(flag) === variable) as RunOptionName | undefined;
    const value = name === undefined ? undefined : replacement(name);
    env[variable] = value ?? text;
    if (name !== undefined && value !== undefined) given.add(name);
  }
  for (const name of [...LOOPBACK_LISTENERS, 'cert-dir', 'app'] as const) {
    if (!given.has(name)) args.push(`--${name}`, replacement(name)!);
  }
  return { args, env };
}

// ---- pods: network namespaces joined by a veth pair ----

export interface Pod {
  /** Network namespace name. */
  readonly ns: string;
  /** The pod's address on the veth link. */
  readonly address: string;
}

export interface PodPair {
  readonly a: Pod;
  readonly b: Pod;
  /** Deletes both namespaces (and with them the veth pair); safe to call twice. */
  destroy(): Promise<void>;
}

async function ip(args: string[]): Promise<CommandResult> {
  const result = await runCommand('ip', args, { timeoutMs: 10000 });
  if (result.code !== 0) throw new Error(`ip ${args.join(' ')} failed (exit ${result.code}): ${result.stderr}`);
  return result;
}

/** Why pods cannot be made here (not root, no iproute2, no netns support), or undefined. */
export async function podsUnavailable(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'network namespaces need root (run the tests as root, as CI does)';
  const probe = await runCommand('ip', ['netns', 'list'], { timeoutMs: 5000 });
  if (probe.code !== 0) return `\`ip netns\` is unavailable (exit ${probe.code}): ${probe.stderr.trim() || 'is iproute2 installed?'}`;
  return undefined;
}

/**
 * Two namespaces `sidecar-a-<random>` and `sidecar-b-<random>`, each with loopback up and one end of
 * a veth pair addressed 10.231.X.1/30 and 10.231.X.2/30. Nothing is routed outside the pair.
 */
export async function createPodPair(): Promise<PodPair> {
  const suffix = randomBytes(3).toString('hex');
  const subnet = 1 + (randomBytes(1)[0]! % 254);
  const a: Pod = { ns: `sidecar-a-${suffix}`, address: `10.231.${subnet}.1` };
  const b: Pod = { ns: `sidecar-b-${suffix}`, address: `10.231.${subnet}.2` };
  const links = { a: `sca${suffix}`, b: `scb${suffix}` };
  let destroyed = false;
  const destroy = async () => {
    if (destroyed) return;
    destroyed = true;
    for (const pod of [a, b]) await runCommand('ip', ['netns', 'delete', pod.ns], { timeoutMs: 10000 });
  };
  try {
    await ip(['netns', 'add', a.ns]);
    await ip(['netns', 'add', b.ns]);
    await ip(['link', 'add', links.a, 'netns', a.ns, 'type', 'veth', 'peer', 'name', links.b, 'netns', b.ns]);
    for (const [pod, link] of [[a, links.a], [b, links.b]] as const) {
      await ip(['-n', pod.ns, 'link', 'set', 'lo', 'up']);
      await ip(['-n', pod.ns, 'addr', 'add', `${pod.address}/30`, 'dev', link]);
      await ip(['-n', pod.ns, 'link', 'set', link, 'up']);
    }
  } catch (error) {
    await destroy();
    throw error;
  }
  return { a, b, destroy };
}

/** Runs a command to completion inside a pod. */
export function runInPod(pod: Pod, file: string, args: string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<CommandResult> {
  return runCommand('ip', ['netns', 'exec', pod.ns, file, ...args], { timeoutMs: options.timeoutMs ?? 15000, env: options.env, cwd: REPO_ROOT });
}

/** `startSidecar` with the process inside the pod (`ip netns exec` execs node, so signals reach it). */
export function startSidecarInPod(pod: Pod, args: string[], options: Omit<StartSidecarOptions, 'launcher'> = {}): Promise<Sidecar> {
  return startSidecar(args, { ...options, launcher: ['ip', 'netns', 'exec', pod.ns] });
}

/** What the echo app in a pod reports for each request it receives. */
export interface PodAppRequest {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
}

export interface PodApp {
  readonly port: number;
  /** Requests received so far (reported by the app process as they arrive). */
  requests(): PodAppRequest[];
  waitForRequest(predicate: (request: PodAppRequest) => boolean, timeoutMs?: number): Promise<PodAppRequest>;
  close(): Promise<void>;
}

// The echo app of test/helpers/apps.ts, in its own process, printing its port and then each request.
const POD_APP_SCRIPT = `
import { startEchoApp } from './test/helpers/apps.ts';
const app = await startEchoApp();
console.log(JSON.stringify({ port: app.port }));
let reported = 0;
setInterval(() => {
  for (; reported < app.requests.length; reported += 1) {
    const { method, url, headers } = app.requests[reported];
    console.log(JSON.stringify({ request: { method, url, headers } }));
  }
}, 20);
`;

/** The echo app (apps.ts: `/slow?ms=N`, echo of anything else) on the pod's 127.0.0.1. */
export async function startEchoAppInPod(pod: Pod): Promise<PodApp> {
  const child = spawn('ip', ['netns', 'exec', pod.ns, process.execPath, '--import', 'tsx', '--input-type=module', '-e', POD_APP_SCRIPT], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const received: PodAppRequest[] = [];
  const waiters = new Set<{ predicate: (request: PodAppRequest) => boolean; resolve: (request: PodAppRequest) => void }>();
  let output = '';
  let partial = '';
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the echo app in ${pod.ns} did not start: ${output}`)), 20000);
    child.once('exit', (code) => reject(new Error(`the echo app in ${pod.ns} exited (${code}): ${output}`)));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      output += chunk;
      partial += chunk;
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        const message = JSON.parse(line) as { port?: number; request?: PodAppRequest };
        if (message.port !== undefined) {
          clearTimeout(timer);
          resolve(message.port);
        }
        if (message.request) {
          received.push(message.request);
          for (const waiter of waiters) {
            if (waiter.predicate(message.request)) {
              waiters.delete(waiter);
              waiter.resolve(message.request);
            }
          }
        }
      }
    });
  });
  return {
    port,
    requests: () => [...received],
    waitForRequest(predicate, timeoutMs = 10000) {
      const seen = received.find(predicate);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const waiter = {
          predicate,
          resolve: (request: PodAppRequest) => {
            clearTimeout(timer);
            resolve(request);
          },
        };
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`no matching request reached the app in ${pod.ns} within ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.add(waiter);
      });
    },
    async close() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
    },
  };
}
