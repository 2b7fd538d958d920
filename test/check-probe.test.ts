// `mtls-sidecar check` and `mtls-sidecar probe` (SPEC §2): every cert-dir problem a real directory
// can have, reported with its catalog code and a fix (exit 1), a healthy directory described in
// full (exit 0), JSON output, usage errors (exit 2); and probe against real upstreams: a sidecar
// inbound (exit 0 with TLS version, cipher and HTTP status), the failures users hit most (each
// reported at the step it belongs to, with a fix naming probe's own flags), a refused port and a
// URL it cannot parse or dial. Every code either command prints is in the README.
import assert from 'node:assert/strict';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createServer as createNetServer, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { listenLoopback, startEchoApp, startTlsServer, type EchoApp, type TlsTestServer } from './helpers/apps.js';
import { opensslSanEntries, startHangingTlsServer } from './helpers/operability.js';
import {
  freshDir, issueLeaf, makeIntermediate, makeRootCA, makeService, normalizeSerial, openssl as opensslCli, sharedRootCA, writeLayout,
  type CertificateAuthority, type Leaf, type ServiceIdentity,
} from './helpers/pki.js';
import { freePort, REPO_ROOT, runCli, startSidecar, stopAllSidecars } from './helpers/sidecar.js';
import { certProblems, diagnosticProblems } from '../src/errors.js';

interface CheckProblem {
  code: string;
  file?: string;
  message: string;
  fix: string;
}

interface CheckJson {
  healthy: boolean;
  layout?: string;
  problems: CheckProblem[];
  leaf?: { serial: string; subject: string };
  keyMatchesLeaf?: boolean;
  chainVerifies?: boolean;
}

interface ProbeStep {
  name: string;
  ok: boolean;
  detail: string;
  code?: string;
  fix?: string;
}

/** `check --cert-dir DIR` in text form. */
const check = (dir: string, extra: string[] = []) => runCli(['check', '--cert-dir', dir, ...extra]);

/**
 * Exit 1, the problem `[code]` listed, and a `fix:` line right after it matching `fix`; the
 * problem line names its file at most once, and the fix does not repeat the problem.
 */
async function assertCheckProblem(dir: string, code: string, fix: RegExp, extra: string[] = []): Promise<string> {
  const result = await check(dir, extra);
  assert.equal(result.code, 1, `check exit code for ${code}; stdout:\n${result.stdout}\nstderr:\n${result.stderr}`);
  const lines = result.stdout.split('\n');
  const index = lines.findIndex((line) => line.includes(`[${code}]`));
  assert.ok(index >= 0, `the report should name [${code}]:\n${result.stdout}`);
  const problemLine = lines[index]!;
  const fixLine = lines[index + 1] ?? '';
  assert.match(fixLine, /^\s*fix: /, `a fix line should follow [${code}]:\n${result.stdout}`);
  assert.match(fixLine, fix, `fix for ${code}`);
  const [, file, message] = /\] (?:(\/\S+): )?(.*)$/.exec(problemLine) ?? [];
  if (file) assert.equal(problemLine.split(file).length - 1, 1, `the file is named once: ${problemLine}`);
  assert.ok(message && !message.startsWith(dir), `the message follows the file, not the file again: ${problemLine}`);
  assert.ok(!fixLine.includes(message), `the fix does not repeat the message:\n${problemLine}\n${fixLine}`);
  assert.doesNotMatch(result.stdout, /healthy: `mtls-sidecar run` will accept/);
  return result.stdout;
}

describe('check', () => {
  let root: CertificateAuthority;
  let foreignRoot: CertificateAuthority;
  let healthy: ServiceIdentity;

  before(async () => {
    root = await sharedRootCA();
    [foreignRoot, healthy] = await Promise.all([makeRootCA({ cn: 'check foreign CA' }), makeService(root, 'checked')]);
  });

  /** A kubernetes-layout directory with the given files. */
  const dirWith = async (label: string, chainPem: string, keyPem: string, bundlePem: string): Promise<string> => {
    const dir = await freshDir(label);
    await writeLayout(dir, 'kubernetes', { chainPem, keyPem, bundlePem });
    return dir;
  };

  test('a healthy directory -> exit 0; the report shows layout, subject, SANs, issuer, expiry, chain, bundle and key match', async () => {
    const result = await check(healthy.certDir);
    assert.equal(result.code, 0, `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`);
    const out = result.stdout;
    assert.match(out, /layout: kubernetes/);
    assert.ok(out.includes('CN=checked'), `subject:\n${out}`);
    for (const san of await opensslSanEntries(healthy.leaf.certPem)) {
      const shown = san.replace(/^IP Address:/, 'IP:');
      assert.ok(out.includes(shown), `SAN ${shown} should be listed:\n${out}`);
    }
    assert.ok(out.includes('CN=mtls-sidecar test root'), `issuer:\n${out}`);
    assert.match(out, /expires in \d+d/);
    assert.match(out, /Chain as sent to peers: 1 certificate/);
    assert.match(out, /Trust bundle: 1 certificate/);
    assert.match(out, /matches the leaf/);
    assert.match(out, /verifies to a CA in the trust bundle/);
    assert.ok(out.toUpperCase().includes(normalizeSerial(healthy.leaf.serial)), `serial ${healthy.leaf.serial} (openssl):\n${out}`);
    assert.match(out, /healthy/);
  });

  test('key from another certificate -> key_mismatch', async () => {
    const other = await issueLeaf(root, { cn: 'someone-else' });
    const dir = await dirWith('key-mismatch', healthy.leaf.chainPem, other.keyPem, root.certPem);
    await assertCheckProblem(dir, 'key_mismatch', /key/);
  });

  test('expired leaf -> cert_expired', async () => {
    const expired = await issueLeaf(root, { cn: 'expired', expired: true });
    const dir = await dirWith('expired', expired.chainPem, expired.keyPem, root.certPem);
    const out = await assertCheckProblem(dir, 'cert_expired', /renew/);
    assert.match(out, /expired \d+d/);
  });

  test('a complete chain (leaf + its root) whose root is not in the bundle -> chain_untrusted naming that root', async () => {
    const stranger = await issueLeaf(foreignRoot, { cn: 'stranger' });
    const dir = await dirWith('untrusted', stranger.certPem + foreignRoot.certPem, stranger.keyPem, root.certPem);
    const out = await assertCheckProblem(dir, 'chain_untrusted', /add that CA to the bundle/);
    assert.ok(out.includes('self-signed "CN=check foreign CA,O=mtls-sidecar tests"'), `the problem names the root the chain ends at:\n${out}`);
  });

  test('chain file without the intermediate (bundle holds only the root) -> chain_incomplete naming the missing issuer; `run` refuses it the same way', async () => {
    const intermediate = await makeIntermediate(root, { cn: 'check intermediate' });
    const leaf: Leaf = await issueLeaf(intermediate, { cn: 'behind-intermediate', dns: ['behind-intermediate.svc'] });
    assert.notEqual(leaf.chainPem, leaf.certPem, 'the full chain holds the intermediate');
    const dir = await dirWith('no-intermediate', leaf.certPem, leaf.keyPem, root.certPem);
    const out = await assertCheckProblem(dir, 'chain_incomplete', /append the intermediate that issued it to the chain file \(or, if it is a root, add it to the bundle\)/);
    assert.ok(out.includes('"CN=behind-intermediate" was issued by "CN=check intermediate,O=mtls-sidecar tests"'), `the problem names the missing issuer's subject:\n${out}`);
    assert.doesNotMatch(out, /\[chain_untrusted\]/);
    const json = JSON.parse((await check(dir, ['--json'])).stdout) as CheckJson;
    assert.deepEqual(json.problems.map((problem) => problem.code), ['chain_incomplete']);
    assert.equal(json.chainVerifies, false);
    const run = await runCli(['run', '--cert-dir', dir, '--inbound', '127.0.0.1:0', '--outbound', '127.0.0.1:0', '--admin', '127.0.0.1:0']);
    assert.equal(run.code, 1, `run exit code; stderr: ${run.stderr}`);
    assert.match(run.stderr, /\[chain_incomplete\]/);
    assert.ok(run.stderr.includes('CN=check intermediate'), run.stderr);
    // The same directory with the intermediate appended is healthy.
    const fixed = await dirWith('with-intermediate', leaf.chainPem, leaf.keyPem, root.certPem);
    assert.equal((await check(fixed)).code, 0);
  });

  test('leaf-only chain from a CA the directory does not hold (the files cannot tell a foreign root from a missing intermediate) -> chain_incomplete with both fixes', async () => {
    const stranger = await issueLeaf(foreignRoot, { cn: 'stranger-leaf-only' });
    const dir = await dirWith('unknown-issuer', stranger.certPem, stranger.keyPem, root.certPem);
    const out = await assertCheckProblem(dir, 'chain_incomplete', /if it is a root, add it to the bundle/);
    assert.ok(out.includes('issued by "CN=check foreign CA,O=mtls-sidecar tests"'), out);
  });

  test('leaf whose notBefore is tomorrow -> cert_not_yet_valid, fix: check the clock', async () => {
    const early = await issueLeaf(root, { cn: 'not-yet-valid', notYetValid: true });
    const dir = await dirWith('not-yet-valid', early.chainPem, early.keyPem, root.certPem);
    const out = await assertCheckProblem(dir, 'cert_not_yet_valid', /clock/);
    assert.match(out, /valid from \d{4}-\d\d-\d\dT/);
  });

  test('missing key file -> file_missing naming the file once, the problem once, and a fix that says what to do', async () => {
    const dir = await dirWith('missing-key', healthy.leaf.chainPem, healthy.leaf.keyPem, root.certPem);
    await rm(join(dir, 'tls.key'));
    const out = await assertCheckProblem(dir, 'file_missing', /write it|--\*-file|key-file/);
    const lines = out.split('\n');
    const index = lines.findIndex((line) => line.includes('[file_missing]'));
    assert.equal(lines[index], `  [file_missing] ${join(dir, 'tls.key')}: the file is missing`);
    assert.equal(lines[index + 1], '    fix: write it, or point the matching --*-file flag at it');
  });

  test('key path that is a directory -> file_unreadable saying so in words, not a bare errno', async () => {
    const dir = await dirWith('key-is-dir', healthy.leaf.chainPem, healthy.leaf.keyPem, root.certPem);
    await rm(join(dir, 'tls.key'));
    await mkdir(join(dir, 'tls.key'));
    const out = await assertCheckProblem(dir, 'file_unreadable', /permissions/);
    assert.ok(out.includes(`[file_unreadable] ${join(dir, 'tls.key')}: it is a directory, not a file (EISDIR)`), out);
  });

  describe('a private key that does not load -> key_parse_error in plain words, with the fix for its case', () => {
    /** The healthy leaf's key, encrypted by openssl with `passphrase` (PKCS#8, or PKCS#1/SEC1 with a Proc-Type header). */
    const encryptedKey = (passphrase: string, traditional: boolean) =>
      opensslCli(['pkey', '-aes256', '-passout', `pass:${passphrase}`, ...(traditional ? ['-traditional'] : [])], { input: healthy.leaf.keyPem });
    const openSslWords = /interrupted or cancelled|bad decrypt|DECODER routines|unsupported|error:[0-9A-F]{8}/;

    for (const traditional of [false, true]) {
      const format = traditional ? 'traditional (Proc-Type: 4,ENCRYPTED)' : 'PKCS#8 (ENCRYPTED PRIVATE KEY)';

      test(`${format} encrypted key and no --key-passphrase-file -> "encrypted and no passphrase was given", fix: pass --key-passphrase-file`, async () => {
        const dir = await dirWith('encrypted-key', healthy.leaf.chainPem, await encryptedKey('s3cret', traditional), root.certPem);
        const out = await assertCheckProblem(dir, 'key_parse_error', /^\s*fix: pass --key-passphrase-file/);
        assert.ok(out.includes(`[key_parse_error] ${join(dir, 'tls.key')}: the key is encrypted and no passphrase was given`), out);
        assert.doesNotMatch(out, openSslWords);
      });

      test(`${format} encrypted key and a passphrase file that does not decrypt it -> says so, and the fix does not ask for the flag already given`, async () => {
        const dir = await dirWith('wrong-passphrase', healthy.leaf.chainPem, await encryptedKey('s3cret', traditional), root.certPem);
        await writeFile(join(dir, 'passphrase'), 'not-the-passphrase\n');
        const out = await assertCheckProblem(dir, 'key_parse_error', /^\s*fix: put this key's passphrase in that file, or deploy the key that passphrase belongs to$/, ['--key-passphrase-file', join(dir, 'passphrase')]);
        assert.ok(out.includes(`[key_parse_error] ${join(dir, 'tls.key')}: the key is encrypted and the passphrase file (--key-passphrase-file) does not decrypt this key`), out);
        assert.doesNotMatch(out, /pass --key-passphrase-file/);
        assert.doesNotMatch(out, openSslWords);
      });
    }

    test('the same encrypted key with its passphrase file -> healthy (exit 0)', async () => {
      const dir = await dirWith('right-passphrase', healthy.leaf.chainPem, await encryptedKey('s3cret', false), root.certPem);
      await writeFile(join(dir, 'passphrase'), 's3cret\n');
      const result = await check(dir, ['--key-passphrase-file', join(dir, 'passphrase')]);
      assert.equal(result.code, 0, result.stdout);
      assert.match(result.stdout, /matches the leaf/);
    });

    const notKeys: Array<[string, () => string]> = [
      ['a PRIVATE KEY block of junk', () => '-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n'],
      ['a certificate where the key belongs', () => healthy.leaf.certPem],
      ['text with no PEM block', () => 'hello\n'],
    ];
    for (const [what, keyPem] of notKeys) {
      test(`${what} -> "not a PEM private key of a supported type", fix names the PEM key formats`, async () => {
        const dir = await dirWith('junk-key', healthy.leaf.chainPem, keyPem(), root.certPem);
        const out = await assertCheckProblem(dir, 'key_parse_error', /PKCS#8 \(BEGIN PRIVATE KEY.*PKCS#1 RSA \(BEGIN RSA PRIVATE KEY\).*SEC1 EC \(BEGIN EC PRIVATE KEY\)/);
        assert.ok(out.includes(`[key_parse_error] ${join(dir, 'tls.key')}: it is not a PEM private key of a supported type`), out);
        assert.doesNotMatch(out, openSslWords);
        assert.doesNotMatch(out, /no passphrase|does not decrypt/);
      });
    }
  });

  test('a directory with no recognised file set -> no_layout', async () => {
    const dir = await freshDir('empty-dir');
    await writeFile(join(dir, 'README'), 'not a certificate\n');
    await assertCheckProblem(dir, 'no_layout', /tls\.crt/);
  });

  test('truncated PEM certificate -> cert_parse_error', async () => {
    const dir = await dirWith('truncated', healthy.leaf.chainPem, healthy.leaf.keyPem, root.certPem);
    const text = await readFile(join(dir, 'tls.crt'), 'utf8');
    await writeFile(join(dir, 'tls.crt'), text.slice(0, Math.floor(text.length / 2)));
    await assertCheckProblem(dir, 'cert_parse_error', /PEM/);
  });

  test('--json: healthy and problem reports parse, with healthy and problems', async () => {
    const good = await check(healthy.certDir, ['--json']);
    assert.equal(good.code, 0);
    const goodReport = JSON.parse(good.stdout) as CheckJson;
    assert.equal(goodReport.healthy, true);
    assert.deepEqual(goodReport.problems, []);
    assert.equal(goodReport.layout, 'kubernetes');
    assert.equal(goodReport.keyMatchesLeaf, true);
    assert.equal(normalizeSerial(goodReport.leaf?.serial ?? ''), normalizeSerial(healthy.leaf.serial));

    const expired = await issueLeaf(root, { cn: 'expired-json', expired: true });
    const other = await issueLeaf(root, { cn: 'other-json' });
    const dir = await dirWith('json-problems', expired.chainPem, other.keyPem, root.certPem);
    const bad = await check(dir, ['--json']);
    assert.equal(bad.code, 1);
    const badReport = JSON.parse(bad.stdout) as CheckJson;
    assert.equal(badReport.healthy, false);
    const codes = badReport.problems.map((problem) => problem.code);
    assert.ok(codes.includes('key_mismatch') && codes.includes('cert_expired'), `every problem is reported, not just the first: ${JSON.stringify(codes)}`);
    for (const problem of badReport.problems) assert.ok(problem.fix.length > 0, `a fix for ${problem.code}`);
  });

  test('unknown flag (a typo of --cert-dir) -> exit 2 naming it', async () => {
    const result = await runCli(['check', '--cert-drr', healthy.certDir]);
    assert.equal(result.code, 2, `stderr: ${result.stderr}`);
    assert.match(result.stderr, /--cert-drr\b/);
    assert.equal(result.stdout, '', 'no report for a usage error');
  });

  test('the README names every code `check` and `probe` print', async () => {
    const readme = await readFile(join(REPO_ROOT, 'README.md'), 'utf8');
    const missing = [...Object.keys(certProblems), ...Object.keys(diagnosticProblems)].filter((code) => !readme.includes(`\`${code}\``));
    assert.deepEqual(missing, [], `codes missing from the README: ${missing.join(', ')}`);
  });

  test('unknown flag that starts with --no- -> exit 2 naming the flag as typed', async () => {
    const result = await runCli(['check', '--cert-dir', healthy.certDir, '--no-such-flag']);
    assert.equal(result.code, 2, `stderr: ${result.stderr}`);
    assert.match(result.stderr, /--no-such-flag\b/);
  });
});

describe('probe', () => {
  let root: CertificateAuthority;
  let foreignRoot: CertificateAuthority;
  let caller: ServiceIdentity;
  let target: ServiceIdentity;
  let app: EchoApp;
  const servers: TlsTestServer[] = [];

  before(async () => {
    root = await sharedRootCA();
    [foreignRoot, caller, target, app] = await Promise.all([
      makeRootCA({ cn: 'probe foreign CA' }),
      makeService(root, 'probe-caller'),
      makeService(root, 'probe-target'),
      startEchoApp(),
    ]);
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
    await Promise.all(servers.map((server) => server.close()));
  });

  const probe = (url: string, extra: string[] = []) => runCli(['probe', url, '--cert-dir', caller.certDir, ...extra]);

  const upstream = async (leaf: Leaf): Promise<TlsTestServer> => {
    const server = await startTlsServer({ certPem: leaf.chainPem, keyPem: leaf.keyPem, ca: root.certPem });
    servers.push(server);
    return server;
  };

  /** Exit 1 and, in --json, the failing step with `code` and a fix matching `fix`. */
  const assertProbeFailure = async (url: string, code: string, fix: RegExp, extra: string[] = []): Promise<ProbeStep> => {
    const text = await probe(url, extra);
    assert.equal(text.code, 1, `probe exit code; stdout:\n${text.stdout}\nstderr:\n${text.stderr}`);
    assert.ok(text.stdout.includes(`[${code}]`), `text output names [${code}]:\n${text.stdout}`);
    const json = await probe(url, [...extra, '--json']);
    assert.equal(json.code, 1);
    const report = JSON.parse(json.stdout) as { ok: boolean; steps: ProbeStep[] };
    assert.equal(report.ok, false);
    const failed = report.steps.find((step) => !step.ok && step.code === code);
    assert.ok(failed, `a failing step with code ${code}: ${JSON.stringify(report.steps, null, 2)}`);
    assert.match(failed.fix ?? '', fix, `fix for ${code}`);
    return failed;
  };

  test('healthy upstream (a real sidecar inbound) -> exit 0 with TLS version, cipher and HTTP status', async () => {
    const sidecar = await startSidecar(['--cert-dir', target.certDir, '--app', app.url, '--outbound', 'off']);
    const result = await probe(`https://localhost:${sidecar.inbound.port}/health`);
    assert.equal(result.code, 0, `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`);
    assert.match(result.stdout, /TLSv1\.3 TLS_(AES_(128|256)_GCM_SHA(256|384)|CHACHA20_POLY1305_SHA256)/);
    assert.match(result.stdout, /GET \/health -> HTTP\/1\.1 200/);
    assert.match(result.stdout, /all checks passed/);
    assert.ok(app.requests.some((request) => request.url === '/health'), 'the probe request reached the app behind the sidecar');
    const json = await probe(`https://localhost:${sidecar.inbound.port}/health`, ['--json']);
    assert.equal(json.code, 0);
    const report = JSON.parse(json.stdout) as { ok: boolean; steps: ProbeStep[] };
    assert.equal(report.ok, true);
    assert.ok(report.steps.every((step) => step.ok), JSON.stringify(report.steps));
  });

  test('unknown authority -> cert_untrusted, fix names the issuing CA and our bundle', async () => {
    const stranger = await issueLeaf(foreignRoot, { cn: 'probe-stranger', dns: ['localhost'] });
    const server = await upstream(stranger);
    const step = await assertProbeFailure(`https://localhost:${server.port}/`, 'cert_untrusted', /add the CA/);
    assert.ok((step.fix ?? '').includes('probe foreign CA'), `the fix names the issuing CA: ${step.fix}`);
    assert.ok((step.fix ?? '').includes(join(caller.certDir, 'ca.crt')), `the fix names our bundle file: ${step.fix}`);
    // It sent only its leaf, and we do not hold its issuer: that issuer may also be an intermediate it forgot.
    assert.match(step.fix ?? '', /if ".*probe foreign CA.*" is an intermediate, the upstream should append it to its chain file/);
  });

  test('expired upstream certificate -> cert_expired, fix: renew', async () => {
    const expired = await issueLeaf(root, { cn: 'probe-expired', dns: ['localhost'], expired: true });
    const server = await upstream(expired);
    await assertProbeFailure(`https://localhost:${server.port}/`, 'cert_expired', /renew/);
  });

  test('SAN mismatch -> name_mismatch, fix names the SANs the certificate has and the dialled host', async () => {
    const misnamed = await issueLeaf(root, { cn: 'probe-misnamed', dns: ['payments.internal'] });
    const server = await upstream(misnamed);
    const step = await assertProbeFailure(`https://localhost:${server.port}/`, 'name_mismatch', /payments\.internal/);
    assert.match(step.fix ?? '', /localhost/);
  });

  test('a certificate that verifies but lacks the dialled IP (https://127.0.0.1) -> Trust ok, only the name step fails (name_mismatch)', async () => {
    const dnsOnly = await issueLeaf(root, { cn: 'probe-dns-only', dns: ['localhost'] });
    const server = await upstream(dnsOnly);
    const url = `https://127.0.0.1:${server.port}/`;
    const step = await assertProbeFailure(url, 'name_mismatch', /localhost/);
    assert.match(step.fix ?? '', /127\.0\.0\.1/);
    const report = JSON.parse((await probe(url, ['--json'])).stdout) as { steps: ProbeStep[] };
    const trust = report.steps.find((candidate) => candidate.name === 'Trust');
    assert.equal(trust?.ok, true, `the chain verifies: ${JSON.stringify(trust)}`);
    assert.deepEqual(report.steps.filter((candidate) => !candidate.ok).map((candidate) => candidate.code), ['name_mismatch']);
    const text = await probe(url);
    assert.match(text.stdout, /^✔ Trust: the chain verifies to our bundle/m);
    assert.doesNotMatch(text.stdout, /ERR_TLS_CERT_ALTNAME_INVALID|\[tls_error\]/);
  });

  test('an upstream port that accepts TCP and never answers the handshake -> handshake_timeout, fix names probe\'s --timeout', async () => {
    const sockets = new Set<Socket>();
    const silent = createNetServer((socket) => sockets.add(socket));
    const port = await listenLoopback(silent);
    try {
      const step = await assertProbeFailure(`https://localhost:${port}/`, 'handshake_timeout', /--timeout\b/, ['--timeout', '500ms']);
      assert.equal(step.name, 'TLS');
      assert.doesNotMatch(step.fix ?? '', /--handshake-timeout|--connect-timeout|--request-timeout/);
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  test('an upstream that completes the handshake and never answers the request -> upstream_timeout, fix names probe\'s --timeout', async () => {
    const hanging = await startHangingTlsServer({ certPem: target.leaf.chainPem, keyPem: target.leaf.keyPem });
    try {
      const step = await assertProbeFailure(`https://localhost:${hanging.port}/`, 'upstream_timeout', /--timeout\b/, ['--timeout', '500ms']);
      assert.equal(step.name, 'HTTP');
      assert.doesNotMatch(step.fix ?? '', /--handshake-timeout|--connect-timeout|--request-timeout/);
    } finally {
      await hanging.close();
    }
  });

  test('our own key file missing -> "Our certificate" names the file once, the problem once, and the fix', async () => {
    const dir = await freshDir('probe-no-key');
    await writeLayout(dir, 'kubernetes', { chainPem: caller.leaf.chainPem, keyPem: caller.leaf.keyPem, bundlePem: root.certPem });
    await rm(join(dir, 'tls.key'));
    const result = await runCli(['probe', 'https://localhost:1/', '--cert-dir', dir]);
    assert.equal(result.code, 1, result.stdout);
    const lines = result.stdout.split('\n');
    const index = lines.findIndex((line) => line.startsWith('✘ Our certificate:'));
    assert.equal(lines[index], `✘ Our certificate: ${join(dir, 'tls.key')}: the file is missing [file_missing]`);
    assert.match(lines[index + 1] ?? '', /^ {4}fix: write it, or point the matching --\*-file flag at it \(`mtls-sidecar check`/);
  });

  test('refused port -> exit 1, upstream_refused', async () => {
    const port = await freePort();
    const result = await probe(`https://localhost:${port}/`);
    assert.equal(result.code, 1, result.stdout);
    assert.match(result.stdout, /\[upstream_refused\]/);
    assert.match(result.stdout, /fix: nothing listens on that host and port/);
  });

  for (const badUrl of ['ftp://localhost/', 'tcp://payments.svc:8443', 'https://pay ments.svc:8443/', 'https://[::1:8443/', 'https://payments.svc:99999/']) {
    test(`a URL it cannot parse or dial (${badUrl}) -> exit 2 naming it in one line, no report`, async () => {
      const result = await probe(badUrl);
      assert.equal(result.code, 2, `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`);
      assert.ok(result.stderr.includes(JSON.stringify(badUrl)), `the message names the URL: ${result.stderr}`);
      assert.match(result.stderr, /not a URL such as https:\/\/payments\.svc:8443\/health/);
      assert.equal(result.stderr.trim().split('\n').length, 1, `one line: ${result.stderr}`);
      assert.equal(result.stdout, '', 'no report for a usage error');
    });
  }
});
