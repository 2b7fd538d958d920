/**
 * `mtls-sidecar demo` runs the whole mission against the real built CLI: two sidecar processes,
 * a verified call, a rejected impostor, a rotation under traffic. Its exit code is the verdict.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import assert from 'node:assert/strict';

const repoRoot = fileURLToPath(new URL('..', import.meta.url));
const cliPath = join(repoRoot, 'dist', 'cli.js');

interface Outcome {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runDemoCli(): Promise<Outcome> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cliPath, 'demo'], { cwd: repoRoot, timeout: 150_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

test('demo exits 0 after a verified call, a rejected impostor and a rotation with no failed request', { timeout: 180_000 }, async () => {
  const { code, stdout, stderr } = await runDemoCli();
  const transcript = `--- stdout\n${stdout}--- stderr\n${stderr}`;
  assert.equal(code, 0, transcript);

  assert.match(stdout, /^✔ A -> B over mTLS: .*URI=spiffe:\/\/demo\.local\/ns\/demo\/sa\/a/m, transcript);
  assert.match(stdout, /^✔ impostor rejected: .*refused at the TLS handshake/m, transcript);

  const rotation = stdout.match(/^✔ rotation mid-traffic: B serial (\S+) -> (\S+), .*; (\d+) requests during rotation, (\d+) failed/m);
  assert.ok(rotation, transcript);
  const [, oldSerial, newSerial, sent, failed] = rotation;
  assert.notEqual(oldSerial, newSerial);
  assert.ok(Number(sent) > 0, transcript);
  assert.equal(Number(failed), 0, transcript);

  assert.match(stdout, /^✔ shutdown: sidecar B exit 0, sidecar A exit 0/m, transcript);
  assert.doesNotMatch(stdout, /^✘/m, transcript);
  assert.match(stdout, /all \d+ steps passed/, transcript);
});
