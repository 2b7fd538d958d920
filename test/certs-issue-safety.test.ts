// `certs issue` never replaces what is in --out without --force (it replaced the key of a running
// sidecar that way), and never writes a certificate no caller can verify (one without any SAN).
// Each case runs through the command handler and through the built CLI; files are compared byte
// for byte and certificates read with the openssl CLI.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startEchoApp, type EchoApp } from './helpers/apps.js';
import { opensslSans } from './helpers/identity.js';
import { runCommand, servedCertificates, type CommandResult } from './helpers/clients.js';
import { freshDir, normalizeSerial, openssl } from './helpers/pki.js';
import { REPO_ROOT, runCli, startSidecar, stopAllSidecars } from './helpers/sidecar.js';

interface IssueArgs {
  ca: string;
  name: string;
  dns?: string[];
  spiffe?: string[];
  ip?: string[];
  out: string;
  force?: boolean;
}

/** `certs issue` one way or another: exit code, stdout, stderr. */
type Issue = (args: IssueArgs) => Promise<CommandResult>;

/** `node dist/cli.js certs issue …`, as a user types it. */
const issueViaCli: Issue = (args) => {
  const argv = ['certs', 'issue', '--ca', args.ca, '--name', args.name, '--out', args.out];
  for (const [flag, values] of [['--dns', args.dns], ['--spiffe', args.spiffe], ['--ip', args.ip]] as const) {
    for (const value of values ?? []) argv.push(flag, value);
  }
  if (args.force) argv.push('--force');
  return runCli(argv);
};

/** src/commands/certs.ts's handler in a child process (it writes to stdout/stderr and returns the exit code). */
const issueViaHandler: Issue = (args) => {
  const script = `
    import { certsIssue } from './src/commands/certs.ts';
    process.exitCode = await certsIssue(JSON.parse(process.argv[1]));
  `;
  return runCommand(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, JSON.stringify(args)], { cwd: REPO_ROOT, timeoutMs: 30_000 });
};

/** The three files of a service directory, as bytes, for "nothing changed" checks. */
async function serviceFiles(dir: string): Promise<Record<string, string>> {
  const names = ['tls.crt', 'tls.key', 'ca.crt'];
  return Object.fromEntries(await Promise.all(names.map(async (name) => [name, await readFile(join(dir, name), 'utf8').catch(() => '(missing)')] as const)));
}

let caDir: string;

before(async () => {
  caDir = await freshDir('issue-safety-ca');
  const init = await runCli(['certs', 'init', '--out', caDir]);
  assert.equal(init.code, 0, init.stderr);
});

for (const [via, issue] of [['CLI', issueViaCli], ['handler', issueViaHandler]] as const) {
  describe(`certs issue (${via})`, () => {
    /** A service directory already issued once, as a sidecar would be serving it. */
    const issuedDir = async (label: string): Promise<string> => {
      const out = await freshDir(label);
      const first = await issue({ ca: caDir, name: 'orders', dns: ['orders.svc'], out });
      assert.equal(first.code, 0, first.stderr);
      return out;
    };

    test('into a directory that holds tls.crt and tls.key -> exit 1 naming both files and --force; nothing is replaced', async () => {
      const out = await issuedDir('issue-again');
      const before = await serviceFiles(out);
      const again = await issue({ ca: caDir, name: 'orders', dns: ['orders.svc'], out });
      assert.equal(again.code, 1, again.stderr);
      assert.equal(
        again.stderr,
        `certs issue: ${join(out, 'tls.crt')} and ${join(out, 'tls.key')} already exist (a sidecar may be serving them); choose another --out, remove them, or pass --force to replace them\n`,
      );
      assert.equal(again.stdout, '');
      assert.deepEqual(await serviceFiles(out), before, 'tls.crt, tls.key and ca.crt are unchanged');
    });

    test('with --force -> replaced: a new key, a certificate openssl verifies against the CA, and stdout says what it replaced', async () => {
      const out = await issuedDir('issue-force');
      const before = await serviceFiles(out);
      const forced = await issue({ ca: caDir, name: 'orders', dns: ['orders.svc'], spiffe: ['spiffe://mesh.local/ns/shop/sa/orders'], out, force: true });
      assert.equal(forced.code, 0, forced.stderr);
      assert.match(forced.stdout, /\(replacing the previous tls\.crt and tls\.key: --force\)/);
      const after = await serviceFiles(out);
      assert.notEqual(after['tls.key'], before['tls.key'], 'a new key');
      assert.notEqual(after['tls.crt'], before['tls.crt'], 'a new certificate');
      assert.equal(after['ca.crt'], before['ca.crt'], 'the same CA');
      assert.match(await openssl(['verify', '-CAfile', join(out, 'ca.crt'), join(out, 'tls.crt')]), /OK/);
      assert.deepEqual(await opensslSans(after['tls.crt']!), [{ type: 'DNS', value: 'orders.svc' }, { type: 'URI', value: 'spiffe://mesh.local/ns/shop/sa/orders' }]);
    });

    test('a ca.crt in --out that is not this CA (another trust bundle) -> exit 1 naming it; nothing written', async () => {
      const out = await freshDir('issue-foreign-bundle');
      const otherCa = await freshDir('issue-other-ca');
      assert.equal((await runCli(['certs', 'init', '--out', otherCa])).code, 0);
      const bundle = await readFile(join(otherCa, 'ca.crt'), 'utf8');
      await writeFile(join(out, 'ca.crt'), bundle);
      const result = await issue({ ca: caDir, name: 'orders', dns: ['orders.svc'], out });
      assert.equal(result.code, 1, result.stderr);
      assert.equal(result.stderr, `certs issue: ${join(out, 'ca.crt')} already exists (a sidecar may be serving it); choose another --out, remove it, or pass --force to replace it\n`);
      assert.equal(await readFile(join(out, 'ca.crt'), 'utf8'), bundle);
      assert.equal(existsSync(join(out, 'tls.key')), false);
    });

    test('into the CA\'s own directory (its ca.crt is this CA) -> issued: nothing of value is replaced', async () => {
      const sharedDir = await freshDir('issue-into-ca-dir');
      assert.equal((await runCli(['certs', 'init', '--out', sharedDir])).code, 0);
      const result = await issue({ ca: sharedDir, name: 'orders', dns: ['orders.svc'], out: sharedDir });
      assert.equal(result.code, 0, result.stderr);
      assert.doesNotMatch(result.stdout, /replacing/);
      assert.match(await openssl(['verify', '-CAfile', join(sharedDir, 'ca.crt'), join(sharedDir, 'tls.crt')]), /OK/);
    });

    test('no --dns, --ip or --spiffe -> exit 2 naming the three flags, with an example; nothing written', async () => {
      const out = join(await freshDir('issue-no-san'), 'svc');
      const result = await issue({ ca: caDir, name: 'orders', out });
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, /^certs issue: --dns\/--ip\/--spiffe: none given; give at least one, e\.g\. --dns orders --spiffe spiffe:\/\/TRUST-DOMAIN\/PATH: /);
      assert.match(result.stderr, /upstream_name_mismatch/);
      assert.equal(result.stderr.trim().split('\n').length, 1, 'one line');
      assert.equal(existsSync(join(out, 'tls.crt')), false);
      assert.equal(existsSync(join(out, 'tls.key')), false);
    });

    test('--spiffe alone is enough: the certificate carries that URI SAN (openssl)', async () => {
      const out = join(await freshDir('issue-spiffe-only'), 'svc');
      const result = await issue({ ca: caDir, name: 'orders', spiffe: ['spiffe://mesh.local/ns/shop/sa/orders'], out });
      assert.equal(result.code, 0, result.stderr);
      assert.deepEqual(await opensslSans(await readFile(join(out, 'tls.crt'), 'utf8')), [{ type: 'URI', value: 'spiffe://mesh.local/ns/shop/sa/orders' }]);
    });
  });
}

describe('certs issue beside a running sidecar', () => {
  let app: EchoApp;

  before(async () => {
    app = await startEchoApp();
  });

  after(async () => {
    await stopAllSidecars();
    await app.close();
  });

  test('issuing into the cert dir of a running sidecar is refused and it keeps serving its certificate; with --force it rotates to the new one', async () => {
    const certDir = await freshDir('issue-running');
    assert.equal((await issueViaCli({ ca: caDir, name: 'orders', dns: ['localhost'], ip: ['127.0.0.1'], out: certDir })).code, 0);
    const serving = (await openssl(['x509', '-noout', '-serial', '-in', join(certDir, 'tls.crt')])).trim().replace(/^serial=/, '');
    const sidecar = await startSidecar(['--cert-dir', certDir, '--app', app.url, '--outbound', 'off']);
    const refused = await issueViaCli({ ca: caDir, name: 'orders', dns: ['localhost'], ip: ['127.0.0.1'], out: certDir });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /--force/);
    assert.equal(normalizeSerial((await servedCertificates(sidecar.inbound)).serials[0]!), normalizeSerial(serving), 'the same certificate is served');

    const forced = await issueViaCli({ ca: caDir, name: 'orders', dns: ['localhost'], ip: ['127.0.0.1'], out: certDir, force: true });
    assert.equal(forced.code, 0, forced.stderr);
    const renewed = (await openssl(['x509', '-noout', '-serial', '-in', join(certDir, 'tls.crt')])).trim().replace(/^serial=/, '');
    sidecar.signal('SIGHUP');
    await sidecar.waitForLog((line) => line.msg === 'certificates loaded' && line.generation === 2, 5000);
    assert.equal(normalizeSerial((await servedCertificates(sidecar.inbound)).serials[0]!), normalizeSerial(renewed));
    await sidecar.stop();
  });

  test('`certs issue --help` documents --force', async () => {
    const help = await runCli(['certs', 'issue', '--help']);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /--force\s+replace/);
  });
});
