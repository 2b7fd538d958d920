/**
 * --log-format: JSON lines by default (one object per line, for log shippers), a compact human
 * format with `pretty`. Checked on the real process's stdout.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { makeService, sharedRootCA, type ServiceIdentity } from './helpers/pki.js';
import { CLI_PATH, REPO_ROOT } from './helpers/sidecar.js';

/** Runs the sidecar until `ready` matches a stdout line, then SIGTERM; returns every line and the exit code. */
async function runUntil(args: string[], ready: RegExp): Promise<{ lines: string[]; code: number | null }> {
  const child = spawn(process.execPath, [CLI_PATH, 'run', ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let partial = '';
  let signalled = false;
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    partial += chunk;
    const complete = partial.split('\n');
    partial = complete.pop() ?? '';
    lines.push(...complete.filter((line) => line.trim()));
    if (!signalled && lines.some((line) => ready.test(line))) {
      signalled = true;
      child.kill('SIGTERM');
    }
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  return { lines, code };
}

describe('--log-format', () => {
  let service: ServiceIdentity;
  const listeners = ['--inbound', '127.0.0.1:0', '--outbound', 'off', '--admin', 'off'];

  before(async () => {
    service = await makeService(await sharedRootCA(), 'logs');
  });

  test('json (default): every stdout line is one JSON object with an ISO time and a level label', async () => {
    const { lines, code } = await runUntil(['--cert-dir', service.certDir, ...listeners], /"msg":"sidecar ready"/);
    assert.equal(code, 0);
    assert.ok(lines.length >= 3, lines.join('\n'));
    for (const line of lines) {
      const record = JSON.parse(line) as { time: string; level: string; msg: string };
      assert.match(record.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d/);
      assert.match(record.level, /^(info|warn|error)$/);
    }
  });

  test('pretty: "HH:MM:SS LEVEL message key=value" lines, no JSON', async () => {
    const { lines, code } = await runUntil(['--cert-dir', service.certDir, ...listeners, '--log-format', 'pretty'], /INFO +sidecar ready/);
    assert.equal(code, 0);
    assert.ok(!lines.some((line) => line.startsWith('{')), `JSON on stdout:\n${lines.join('\n')}`);
    const ready = lines.find((line) => /sidecar ready/.test(line));
    assert.match(ready ?? '', /^\d\d:\d\d:\d\d INFO +sidecar ready listeners=\{"inbound":"127\.0\.0\.1:\d+"\}/);
    assert.ok(lines.some((line) => /^\d\d:\d\d:\d\d INFO +draining: no new connections/.test(line)), lines.join('\n'));
  });

  for (const format of ['json', 'pretty']) {
    test(`${format}: a log reader that goes away (stdout EPIPE) does not keep SIGTERM from exiting 0`, async () => {
      // `mtls-sidecar run … | head -2`: head reads two lines and exits, as a dead log shipper would.
      const head = spawn('head', ['-2'], { stdio: ['pipe', 'ignore', 'inherit'] });
      const child = spawn(process.execPath, [CLI_PATH, 'run', '--cert-dir', service.certDir, ...listeners, '--log-format', format], {
        cwd: REPO_ROOT,
        stdio: ['ignore', head.stdin!, 'pipe'],
      });
      head.stdin!.destroy(); // the sidecar holds the only write end now
      let stderr = '';
      child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const exited = once(child, 'exit') as Promise<[number | null, string | null]>;
      await once(head, 'exit');
      // Start-up lines after the first two have nowhere to go; give it time to write (and fail) them.
      await new Promise((resolve) => setTimeout(resolve, 1000));
      assert.equal(child.exitCode, null, `still serving with a broken stdout; stderr: ${stderr}`);
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const [code, signal] = await exited;
      clearTimeout(timer);
      assert.deepEqual({ code, signal }, { code: 0, signal: null }, `exit after SIGTERM; stderr: ${stderr}`);
    });
  }
});
