import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

/**
 * nginx's `stream` (L4) module, the reference for the sidecar's `--protocol tcp`. Optional: when it
 * cannot be had, the stream setups are skipped with `reason`.
 */
export type NginxStream =
  | { available: true; /** `load_module` argument when the module is dynamic, undefined when built in. */ loadModule?: string }
  | { available: false; reason: string };

/** Absolute paths of the external programs the bench drives. */
export interface BenchTools {
  nginx: string;
  wrk: string;
  openssl: string;
  nginxStream: NginxStream;
  versions: { nginx: string; wrk: string; openssl: string };
}

/** Debian's package for the dynamic stream module (nginx itself is built `--with-stream=dynamic`). */
const STREAM_PACKAGE = 'libnginx-mod-stream';

// nginx lives in /usr/sbin on Debian, which is not on a normal user's PATH.
const EXTRA_DIRS = ['/usr/sbin', '/usr/local/sbin', '/sbin', '/usr/local/nginx/sbin'];

export function findExecutable(name: string, override?: string): string | undefined {
  if (override) return existsSync(override) ? override : undefined;
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean), ...EXTRA_DIRS];
  return dirs.map((dir) => path.join(dir, name)).find((candidate) => existsSync(candidate));
}

function versionOf(command: string, args: string[]): string {
  const result = spawnSync(command, args, { encoding: 'utf8' });
  return `${result.stdout ?? ''}${result.stderr ?? ''}`.split('\n')[0].trim();
}

function aptCandidate(pkg: string): boolean {
  const result = spawnSync('apt-cache', ['policy', pkg], { encoding: 'utf8' });
  const match = /Candidate:\s*(\S+)/.exec(result.stdout ?? '');
  return match !== null && match[1] !== '(none)';
}

function canAptInstall(): boolean {
  return process.getuid?.() === 0 && findExecutable('apt-get') !== undefined;
}

let aptUpdated = false;

function aptInstall(packages: string[]): void {
  const run = (args: string[]): void => {
    process.stderr.write(`bench: ${args.join(' ')}\n`);
    const result = spawnSync(args[0], args.slice(1), { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    if (result.status !== 0) throw new Error(`\`${args.join(' ')}\` failed (exit ${result.status})`);
  };
  if (!aptUpdated) run(['apt-get', 'update']);
  aptUpdated = true;
  run(['apt-get', 'install', '-y', '--no-install-recommends', ...packages]);
}

function aptPackageFor(tool: string): string {
  // Debian 12 ships the full nginx as "nginx" (nginx-light is a metapackage on top of it); older releases had nginx-light alone.
  if (tool === 'nginx') return aptCandidate('nginx') ? 'nginx' : 'nginx-light';
  return tool;
}

function streamModuleFile(build: string): string | undefined {
  const modulesPath = /--modules-path=(\S+)/.exec(build)?.[1] ?? '/usr/lib/nginx/modules';
  const file = path.join(modulesPath, 'ngx_stream_module.so');
  return existsSync(file) ? file : undefined;
}

/**
 * Built in (`--with-stream`): nothing to load. Dynamic (`--with-stream=dynamic`, Debian): the
 * module file, installed from libnginx-mod-stream like nginx and wrk when we are root on Debian.
 * The bench loads it by absolute path in its own configs, so /etc/nginx/modules-enabled is not used.
 */
function findNginxStream(nginx: string, build: string): NginxStream {
  if (!build.includes('--with-stream_ssl_module')) return { available: false, reason: `${nginx} was built without stream_ssl_module` };
  if (/--with-stream(\s|$)/.test(build)) return { available: true };
  if (!build.includes('--with-stream=dynamic')) return { available: false, reason: `${nginx} was built without the stream module` };
  let file = streamModuleFile(build);
  if (!file && canAptInstall() && aptCandidate(STREAM_PACKAGE)) {
    process.stderr.write(`bench: nginx stream module not found; installing ${STREAM_PACKAGE} with apt-get (running as root)\n`);
    try {
      aptInstall([STREAM_PACKAGE]);
    } catch (error) {
      return { available: false, reason: (error as Error).message };
    }
    file = streamModuleFile(build);
  }
  if (!file) {
    return { available: false, reason: `ngx_stream_module.so not found (Debian/Ubuntu: sudo apt-get install -y ${STREAM_PACKAGE})` };
  }
  return { available: true, loadModule: file };
}

/**
 * Finds nginx, wrk and openssl (and nginx's stream module, optional). When some are missing and we
 * are root on a Debian-like system, installs them with apt-get (as CI does); otherwise explains how
 * to get them and throws (a missing stream module only skips the L4 nginx setups).
 * BENCH_NGINX / BENCH_WRK point at non-packaged builds.
 */
export function ensureTools(): BenchTools {
  const find = (): Record<'nginx' | 'wrk' | 'openssl', string | undefined> => ({
    nginx: findExecutable('nginx', process.env.BENCH_NGINX),
    wrk: findExecutable('wrk', process.env.BENCH_WRK),
    openssl: findExecutable('openssl'),
  });
  let found = find();
  let missing = Object.entries(found).filter(([, where]) => where === undefined).map(([tool]) => tool);
  if (missing.length > 0) {
    if (!canAptInstall()) {
      throw new Error(
        `bench needs ${missing.join(', ')} but cannot find ${missing.length === 1 ? 'it' : 'them'}.\n` +
          `  Debian/Ubuntu: sudo apt-get update && sudo apt-get install -y nginx wrk openssl\n` +
          `  macOS:         brew install nginx wrk openssl\n` +
          `  Or point BENCH_NGINX / BENCH_WRK at the executables.`,
      );
    }
    process.stderr.write(`bench: ${missing.join(', ')} not found; installing with apt-get (running as root)\n`);
    aptInstall(missing.map(aptPackageFor));
    process.stderr.write('bench: note: the Debian nginx package may start a system nginx on :80; the bench does not use it.\n');
    found = find();
    missing = Object.entries(found).filter(([, where]) => where === undefined).map(([tool]) => tool);
    if (missing.length > 0) throw new Error(`still missing after apt-get install: ${missing.join(', ')}`);
  }
  const nginx = found.nginx as string;
  const build = spawnSync(nginx, ['-V'], { encoding: 'utf8' }).stderr ?? '';
  if (!build.includes('--with-http_ssl_module')) throw new Error(`${nginx} was built without http_ssl_module; the nginx pair needs it`);
  const wrk = found.wrk as string;
  const openssl = found.openssl as string;
  return {
    nginx,
    wrk,
    openssl,
    nginxStream: findNginxStream(nginx, build),
    versions: {
      nginx: versionOf(nginx, ['-v']).replace(/^nginx version:\s*/, '').replace(/^nginx\//, ''),
      wrk: versionOf(wrk, ['-v']).replace(/\s*Copyright.*$/, ''),
      openssl: versionOf(openssl, ['version']),
    },
  };
}
