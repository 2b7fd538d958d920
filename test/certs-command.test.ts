/**
 * `certs init` / `certs issue`: the certificates they write are checked with the openssl CLI, so
 * our issuing code is judged by an independent implementation, and with a real mutual TLS handshake.
 * Every case runs twice: through the command handlers directly and through the built CLI. CAs
 * that must be out of the ordinary (short-lived, expired) are made by the openssl CLI.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import tls from 'node:tls';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { freshDir, makeRootCA, type CertificateAuthority } from './helpers/pki.js';

const repoRoot = fileURLToPath(new URL('..', import.meta.url));
const cliPath = join(repoRoot, 'dist', 'cli.js');
const DAY_MS = 24 * 60 * 60 * 1000;

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

function run(file: string, args: string[]): Promise<Outcome> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd: repoRoot, timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

async function openssl(...args: string[]): Promise<string> {
  const outcome = await run('openssl', args);
  assert.equal(outcome.code, 0, `openssl ${args.join(' ')} failed: ${outcome.stderr}`);
  return outcome.stdout;
}

interface CertsRunner {
  init(args: { out: string; days?: number; name?: string; ifMissing?: boolean }): Promise<Outcome>;
  issue(args: { ca: string; name: string; dns?: string[]; spiffe?: string[]; ip?: string[]; days?: number; out: string }): Promise<Outcome>;
}

/** Calls src/commands/certs.ts in a child process (its handlers write to stdout/stderr and return the exit code). */
const handlerRunner: CertsRunner = {
  init: (args) => callHandler('certsInit', args),
  issue: (args) => callHandler('certsIssue', args),
};

function callHandler(handler: string, args: object): Promise<Outcome> {
  const script = `
    import { ${handler} } from './src/commands/certs.ts';
    process.exitCode = await ${handler}(JSON.parse(process.argv[1]));
  `;
  return run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, JSON.stringify(args)]);
}

/** `node dist/cli.js certs …`, as a user types it. */
const cliRunner: CertsRunner = {
  init: (args) => {
    const argv = ['certs', 'init', '--out', args.out];
    if (args.days !== undefined) argv.push('--days', String(args.days));
    if (args.name !== undefined) argv.push('--name', args.name);
    if (args.ifMissing) argv.push('--if-missing');
    return run(process.execPath, [cliPath, ...argv]);
  },
  issue: (args) => {
    const argv = ['certs', 'issue', '--ca', args.ca, '--name', args.name, '--out', args.out];
    if (args.dns?.length) argv.push('--dns', args.dns.join(','));
    for (const id of args.spiffe ?? []) argv.push('--spiffe', id);
    for (const ip of args.ip ?? []) argv.push('--ip', ip);
    if (args.days !== undefined) argv.push('--days', String(args.days));
    return run(process.execPath, [cliPath, ...argv]);
  },
};

/** A `certs init`-style directory (ca.crt, ca.key) holding a CA made by the openssl CLI. */
async function caDirFrom(ca: CertificateAuthority): Promise<string> {
  const caDir = await freshDir('openssl-ca');
  await writeFile(join(caDir, 'ca.crt'), ca.certPem);
  await writeFile(join(caDir, 'ca.key'), ca.keyPem, { mode: 0o600 });
  return caDir;
}

const runners: Array<[string, CertsRunner]> = [
  ['handlers', handlerRunner],
  ['CLI', cliRunner],
];

for (const [via, certs] of runners) {
  describe(`certs commands (${via})`, { skip: via === 'CLI' && !existsSync(cliPath) ? 'dist/cli.js not built' : false }, () => {
    let dir: string;
    let caDir: string;
    let serviceDir: string;
    let issueStartedAt: number;
    let issueEndedAt: number;

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'certs-command-'));
      caDir = join(dir, 'ca');
      serviceDir = join(dir, 'svc');
      const init = await certs.init({ out: caDir });
      assert.equal(init.code, 0, init.stderr);
      issueStartedAt = Date.now();
      const issue = await certs.issue({
        ca: caDir,
        name: 'payments',
        dns: ['payments.svc', 'localhost'],
        spiffe: ['spiffe://example.org/ns/default/sa/payments'],
        ip: ['127.0.0.1', '::1'],
        days: 7,
        out: serviceDir,
      });
      issueEndedAt = Date.now();
      assert.equal(issue.code, 0, issue.stderr);
    });

    after(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    test('issued certificate verifies against the CA with openssl', async () => {
      const output = await openssl('verify', '-CAfile', join(serviceDir, 'ca.crt'), join(serviceDir, 'tls.crt'));
      assert.match(output, /tls\.crt: OK/);
    });

    test('service dir uses the Kubernetes layout and its ca.crt is the CA certificate', async () => {
      assert.equal(await readFile(join(serviceDir, 'ca.crt'), 'utf8'), await readFile(join(caDir, 'ca.crt'), 'utf8'));
      assert.match(await readFile(join(serviceDir, 'tls.crt'), 'utf8'), /^-----BEGIN CERTIFICATE-----/);
    });

    test('certificate carries the DNS, URI and IP SANs asked for', async () => {
      const output = await openssl('x509', '-in', join(serviceDir, 'tls.crt'), '-noout', '-ext', 'subjectAltName');
      assert.match(output, /DNS:payments\.svc/);
      assert.match(output, /DNS:localhost/);
      assert.match(output, /URI:spiffe:\/\/example\.org\/ns\/default\/sa\/payments/);
      assert.match(output, /IP Address:127\.0\.0\.1/);
      assert.match(output, /IP Address:0:0:0:0:0:0:0:1/);
    });

    test('subject CN is the name and the leaf is for client and server use, not a CA', async () => {
      const subject = await openssl('x509', '-in', join(serviceDir, 'tls.crt'), '-noout', '-subject');
      assert.match(subject, /CN ?= ?payments/);
      const text = await openssl('x509', '-in', join(serviceDir, 'tls.crt'), '-noout', '-text');
      assert.match(text, /CA:FALSE/);
      assert.match(text, /TLS Web Server Authentication, TLS Web Client Authentication/);
      assert.match(text, /Authority Key Identifier/);
      assert.match(text, /Public-Key: \(2048 bit\)/);
      assert.match(text, /sha256WithRSAEncryption/);
    });

    test('CA certificate is a CA that may sign certificates', async () => {
      const text = await openssl('x509', '-in', join(caDir, 'ca.crt'), '-noout', '-text');
      assert.match(text, /Basic Constraints: critical\s+CA:TRUE/);
      assert.match(text, /Key Usage: critical\s+Certificate Sign, CRL Sign/);
      assert.match(text, /Subject Key Identifier/);
      assert.match(await openssl('x509', '-in', join(caDir, 'ca.crt'), '-noout', '-subject'), /mtls-sidecar dev CA [0-9a-f]{6}/);
    });

    test('two dev CAs get different names, so "signed by an unknown authority" messages can tell them apart', async () => {
      const otherDir = join(dir, 'second-dev-ca');
      const init = await certs.init({ out: otherDir });
      assert.equal(init.code, 0, init.stderr);
      const first = await openssl('x509', '-in', join(caDir, 'ca.crt'), '-noout', '-subject');
      const second = await openssl('x509', '-in', join(otherDir, 'ca.crt'), '-noout', '-subject');
      assert.notEqual(first, second);
      const named = join(dir, 'named-ca');
      assert.equal((await certs.init({ out: named, name: 'Acme mesh CA' })).code, 0);
      assert.match(await openssl('x509', '-in', join(named, 'ca.crt'), '-noout', '-subject'), /CN ?= ?Acme mesh CA\n?$/);
    });

    test('private key matches the certificate and is PKCS#8 readable only by the owner', async () => {
      const fromCert = await openssl('x509', '-in', join(serviceDir, 'tls.crt'), '-noout', '-pubkey');
      const fromKey = await openssl('pkey', '-in', join(serviceDir, 'tls.key'), '-pubout');
      assert.equal(fromCert, fromKey);
      assert.match(await readFile(join(serviceDir, 'tls.key'), 'utf8'), /^-----BEGIN PRIVATE KEY-----/);
      assert.equal((await stat(join(serviceDir, 'tls.key'))).mode & 0o777, 0o600);
      assert.equal((await stat(join(caDir, 'ca.key'))).mode & 0o777, 0o600);
    });

    test('certificate expires within --days and is already valid', async () => {
      const endDate = (await openssl('x509', '-in', join(serviceDir, 'tls.crt'), '-noout', '-enddate')).replace('notAfter=', '').trim();
      const startDate = (await openssl('x509', '-in', join(serviceDir, 'tls.crt'), '-noout', '-startdate')).replace('notBefore=', '').trim();
      const notAfter = Date.parse(endDate);
      // Whole seconds in the certificate: allow one second either side of the issuing window.
      assert.ok(notAfter <= issueEndedAt + 7 * DAY_MS + 1000, `notAfter ${endDate} is more than 7 days after issuing`);
      assert.ok(notAfter >= issueStartedAt + 7 * DAY_MS - 1000, `notAfter ${endDate} is less than 7 days after issuing`);
      assert.ok(Date.parse(startDate) < Date.now(), `notBefore ${startDate} is in the future`);
      await openssl('x509', '-in', join(serviceDir, 'tls.crt'), '-noout', '-checkend', String(6 * 24 * 60 * 60));
    });

    test('leaf defaults to 30 days', async () => {
      const out = join(dir, 'default-days');
      const issue = await certs.issue({ ca: caDir, name: 'short', dns: ['short.svc'], out });
      assert.equal(issue.code, 0, issue.stderr);
      const endDate = (await openssl('x509', '-in', join(out, 'tls.crt'), '-noout', '-enddate')).replace('notAfter=', '').trim();
      const daysLeft = (Date.parse(endDate) - Date.now()) / DAY_MS;
      assert.ok(daysLeft > 29.9 && daysLeft <= 30, `expected 30 days, got ${daysLeft.toFixed(2)}`);
    });

    test('summary names the files written, the subject, the SANs and the expiry', async () => {
      const out = join(dir, 'summary');
      const issue = await certs.issue({ ca: caDir, name: 'web', spiffe: ['spiffe://example.org/web'], days: 2, out });
      assert.equal(issue.code, 0, issue.stderr);
      assert.match(issue.stdout, /tls\.crt/);
      assert.match(issue.stdout, /tls\.key/);
      assert.match(issue.stdout, /CN=web/);
      assert.match(issue.stdout, /URI:spiffe:\/\/example\.org\/web/);
      const expiry = issue.stdout.match(/expires\s+(\S+)/);
      assert.ok(expiry, issue.stdout);
      const daysLeft = (Date.parse(expiry[1]!) - Date.now()) / DAY_MS;
      assert.ok(daysLeft > 1.9 && daysLeft <= 2, issue.stdout);
    });

    test('certificates from the dev CA complete a mutual TLS handshake', async () => {
      const clientDir = join(dir, 'client');
      const issue = await certs.issue({ ca: caDir, name: 'client', spiffe: ['spiffe://example.org/client'], out: clientDir });
      assert.equal(issue.code, 0, issue.stderr);
      const server = tls.createServer({
        cert: await readFile(join(serviceDir, 'tls.crt')),
        key: await readFile(join(serviceDir, 'tls.key')),
        ca: await readFile(join(serviceDir, 'ca.crt')),
        requestCert: true,
        rejectUnauthorized: true,
      }, (socket) => {
        socket.end(socket.getPeerCertificate().subjectaltname ?? 'none');
      });
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      try {
        const address = server.address();
        assert.ok(address && typeof address === 'object');
        const socket = tls.connect({
          host: '127.0.0.1',
          port: address.port,
          servername: 'payments.svc',
          cert: await readFile(join(clientDir, 'tls.crt')),
          key: await readFile(join(clientDir, 'tls.key')),
          ca: await readFile(join(clientDir, 'ca.crt')),
        });
        await once(socket, 'secureConnect');
        assert.equal(socket.authorized, true, String(socket.authorizationError));
        let reply = '';
        socket.setEncoding('utf8');
        socket.on('data', (chunk: string) => { reply += chunk; });
        await once(socket, 'end');
        assert.equal(reply, 'URI:spiffe://example.org/client');
      } finally {
        server.close();
      }
    });

    test('certificate from another CA does not verify against this CA', async () => {
      const otherCa = join(dir, 'other-ca');
      const otherLeaf = join(dir, 'other-leaf');
      assert.equal((await certs.init({ out: otherCa, name: 'other CA' })).code, 0);
      assert.equal((await certs.issue({ ca: otherCa, name: 'impostor', dns: ['payments.svc'], out: otherLeaf })).code, 0);
      const outcome = await run('openssl', ['verify', '-CAfile', join(caDir, 'ca.crt'), join(otherLeaf, 'tls.crt')]);
      assert.notEqual(outcome.code, 0);
      assert.match(outcome.stdout + outcome.stderr, /unable to get local issuer certificate/);
    });

    test('each certificate gets a distinct positive serial', async () => {
      const serials = new Set<string>();
      for (const name of ['one', 'two']) {
        const out = join(dir, `serial-${name}`);
        assert.equal((await certs.issue({ ca: caDir, name, dns: [`${name}.svc`], out })).code, 0);
        serials.add((await openssl('x509', '-in', join(out, 'tls.crt'), '-noout', '-serial')).trim());
      }
      assert.equal(serials.size, 2);
      for (const serial of serials) assert.match(serial, /^serial=[0-7][0-9A-F]{31}$/);
    });

    test('SPIFFE ID without the spiffe:// scheme is refused with exit 2 naming --spiffe', async () => {
      const outcome = await certs.issue({ ca: caDir, name: 'bad', spiffe: ['example.org/ns/default/sa/bad'], out: join(dir, 'bad-spiffe') });
      assert.equal(outcome.code, 2);
      assert.match(outcome.stderr, /--spiffe/);
      assert.match(outcome.stderr, /spiffe:\/\//);
      assert.equal(existsSync(join(dir, 'bad-spiffe', 'tls.crt')), false);
    });

    test('address that is not an IP is refused with exit 2 naming --ip', async () => {
      const outcome = await certs.issue({ ca: caDir, name: 'bad', ip: ['127.0.0.300'], out: join(dir, 'bad-ip') });
      assert.equal(outcome.code, 2);
      assert.match(outcome.stderr, /--ip/);
      assert.match(outcome.stderr, /127\.0\.0\.300/);
    });

    test('malformed DNS name is refused with exit 2 naming --dns', async () => {
      const outcome = await certs.issue({ ca: caDir, name: 'bad', dns: ['bad name!'], out: join(dir, 'bad-dns') });
      assert.equal(outcome.code, 2);
      assert.match(outcome.stderr, /--dns/);
    });

    test('empty name is refused with exit 2 naming --name', async () => {
      const outcome = await certs.issue({ ca: caDir, name: '', dns: ['x.svc'], out: join(dir, 'bad-name') });
      assert.equal(outcome.code, 2);
      assert.match(outcome.stderr, /--name/);
    });

    test('non-positive --days is refused with exit 2 naming --days', async () => {
      const outcome = await certs.issue({ ca: caDir, name: 'bad', days: 0, out: join(dir, 'bad-days') });
      assert.equal(outcome.code, 2);
      assert.match(outcome.stderr, /--days/);
    });

    test('--days past the CA\'s expiry: the certificate ends with the CA (openssl sees equal notAfter), with a warning on stderr', async () => {
      const shortCa = await caDirFrom(await makeRootCA({ cn: 'certs 365-day CA', keyType: 'rsa', days: 365 }));
      const out = join(dir, 'outlives-ca');
      const outcome = await certs.issue({ ca: shortCa, name: 'long', dns: ['long.svc'], days: 400, out });
      assert.equal(outcome.code, 0, outcome.stderr);
      const caEnd = await openssl('x509', '-noout', '-enddate', '-in', join(shortCa, 'ca.crt'));
      assert.equal(await openssl('x509', '-noout', '-enddate', '-in', join(out, 'tls.crt')), caEnd);
      const caExpiry = new Date(caEnd.trim().replace(/^notAfter=/, '')).toISOString().slice(0, 16);
      assert.match(outcome.stderr, /^certs issue: warning: 400 days would outlive the CA, which expires \S+; the certificate expires with it\n$/);
      assert.ok(outcome.stderr.includes(caExpiry), `the warning names the CA's expiry ${caExpiry}: ${outcome.stderr}`);
      assert.match(await openssl('verify', '-CAfile', join(shortCa, 'ca.crt'), join(out, 'tls.crt')), /OK/);

      const within = await certs.issue({ ca: shortCa, name: 'short', dns: ['short.svc'], days: 30, out: join(dir, 'within-ca') });
      assert.equal(within.code, 0, within.stderr);
      assert.equal(within.stderr, '', 'no warning for a certificate inside the CA\'s validity');
    });

    test('an expired CA -> exit 1 saying so and how to make a new one, nothing written', async () => {
      const expiredCa = await caDirFrom(await makeRootCA({ cn: 'certs expired CA', keyType: 'rsa', days: -1 }));
      const out = join(dir, 'from-expired-ca');
      const outcome = await certs.issue({ ca: expiredCa, name: 'late', out });
      assert.equal(outcome.code, 1, outcome.stderr);
      assert.match(outcome.stderr, /^certs issue: the CA certificate expired at \S+; create a new CA with "mtls-sidecar certs init"\n$/);
      assert.equal(existsSync(join(out, 'tls.crt')), false);
    });

    test('missing CA directory fails with exit 1 naming ca.crt and how to create one', async () => {
      const outcome = await certs.issue({ ca: join(dir, 'no-such-ca'), name: 'x', out: join(dir, 'no-ca-out') });
      assert.equal(outcome.code, 1);
      assert.match(outcome.stderr, /no-such-ca\/ca\.crt not found/);
      assert.match(outcome.stderr, /certs init/);
      assert.equal(outcome.stderr.trim().split('\n').length, 1);
    });

    test('certs init refuses to overwrite an existing CA key', async () => {
      const before = await readFile(join(caDir, 'ca.key'), 'utf8');
      const outcome = await certs.init({ out: caDir });
      assert.equal(outcome.code, 1);
      assert.match(outcome.stderr, /already exists/);
      assert.equal(await readFile(join(caDir, 'ca.key'), 'utf8'), before);
    });

    test('certs init --if-missing keeps an existing CA and exits 0', async () => {
      const before = await readFile(join(caDir, 'ca.key'), 'utf8');
      const outcome = await certs.init({ out: caDir, ifMissing: true });
      assert.equal(outcome.code, 0, outcome.stderr);
      assert.match(outcome.stdout, /keeping it/);
      assert.equal(await readFile(join(caDir, 'ca.key'), 'utf8'), before);
    });
  });
}
