import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

/** Absolute paths of the external programs the bench drives. */
export interface BenchTools {
  nginx: string;
  wrk: string;
  openssl: string;
  versions: { nginx: string; wrk: string; openssl: string };
}

// nginx lives in /usr/sbin on Debian, which is not on a normal user's PATH.
const EXTRA_DIRS = ['/usr/sbin', '/usr/local/sbin', '/sbin', '/usr/local/nginx/sbin'];

function findExecutable(name: string, override?: string): string | undefined {
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

function aptInstall(missing: string[]): void {
  const run = (args: string[]): void => {
    process.stderr.write(`bench: ${args.join(' ')}\n`);
    const result = spawnSync(args[0], args.slice(1), { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    if (result.status !== 0) throw new Error(`\`${args.join(' ')}\` failed (exit ${result.status})`);
  };
  run(['apt-get', 'update']);
  const packages = missing.map((tool) => {
    // Debian 12 ships the full nginx as "nginx" (nginx-light is a metapackage on top of it); older releases had nginx-light alone.
    if (tool === 'nginx') return aptCandidate('nginx') ? 'nginx' : 'nginx-light';
    return tool;
  });
  run(['apt-get', 'install', '-y', '--no-install-recommends', ...packages]);
}

/**
 * Finds nginx, wrk and openssl. When some are missing and we are root on a Debian-like system,
 * installs them with apt-get (as CI does); otherwise explains how to get them and throws.
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
    const isRoot = process.getuid?.() === 0;
    const hasApt = findExecutable('apt-get') !== undefined;
    if (!isRoot || !hasApt) {
      throw new Error(
        `bench needs ${missing.join(', ')} but cannot find ${missing.length === 1 ? 'it' : 'them'}.\n` +
          `  Debian/Ubuntu: sudo apt-get update && sudo apt-get install -y nginx wrk openssl\n` +
          `  macOS:         brew install nginx wrk openssl\n` +
          `  Or point BENCH_NGINX / BENCH_WRK at the executables.`,
      );
    }
    process.stderr.write(`bench: ${missing.join(', ')} not found; installing with apt-get (running as root)\n`);
    aptInstall(missing);
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
    versions: {
      nginx: versionOf(nginx, ['-v']).replace(/^nginx version:\s*/, '').replace(/^nginx\//, ''),
      wrk: versionOf(wrk, ['-v']).replace(/\s*Copyright.*$/, ''),
      openssl: versionOf(openssl, ['version']),
    },
  };
}
