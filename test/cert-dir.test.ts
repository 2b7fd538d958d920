// The cert directory (SPEC §3), start-up failures, configuration errors (SPEC §2) and certificate
// replacement while running. What the sidecar serves is read with `openssl s_client -showcerts`
// and `openssl x509 -serial`, never with the product's own parser.
import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startEchoApp, type EchoApp } from './helpers/apps.js';
import { mtlsRequest, servedCertificates } from './helpers/clients.js';
import {
  certDirContent,
  freshDir,
  issueLeaf,
  kubernetesAtomicWrite,
  layoutFiles,
  makeIntermediate,
  makeRootCA,
  makeService,
  normalizeSerial,
  openssl,
  sharedRootCA,
  writeLayout,
  type CertificateAuthority,
  type KeyFormat,
  type KeyType,
  type Layout,
  type Leaf,
  type ServiceIdentity,
} from './helpers/pki.js';
import { runOptions } from '../src/config.js';
import { freePort, runCli, startSidecar, stopAllSidecars, type LogLine, type Sidecar } from './helpers/sidecar.js';

const QUIET_LISTENERS = ['--outbound', 'off', '--admin', 'off'];

describe('cert directory', () => {
  let root: CertificateAuthority;
  let peer: ServiceIdentity;
  let app: EchoApp;

  before(async () => {
    root = await sharedRootCA();
    [peer, app] = await Promise.all([makeService(root, 'peer'), startEchoApp()]);
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
  });

  /** Serials the sidecar's inbound listener sends, leaf first, as openssl sees them. */
  const servedSerials = async (sidecar: Sidecar): Promise<string[]> =>
    (await servedCertificates({ ...sidecar.inbound, certPath: peer.leaf.certPath, keyPath: peer.leaf.keyPath })).serials;

  const startOn = (certDir: string, extra: string[] = []): Promise<Sidecar> =>
    startSidecar(['--cert-dir', certDir, '--app', app.url, ...QUIET_LISTENERS, ...extra]);

  for (const layout of ['kubernetes', 'generic', 'spiffe', 'istio'] as Layout[]) {
    test(`${layout} layout loads and its certificate is served`, async () => {
      const service = await makeService(root, `svc-${layout}`, { layout });
      const sidecar = await startOn(service.certDir);
      try {
        const serials = await servedSerials(sidecar);
        assert.equal(serials[0], service.leaf.serial);
      } finally {
        await sidecar.stop();
      }
    });
  }

  for (const [layout, stray] of [['spiffe', 'tls.crt'], ['istio', 'cert.pem']] as const) {
    test(`a complete ${layout} set next to a stray empty ${stray} (the first file of another layout) loads the complete set`, async () => {
      const service = await makeService(root, `svc-stray-${layout}`, { layout });
      await writeFile(join(service.certDir, stray), '');
      const sidecar = await startOn(service.certDir);
      try {
        assert.equal((await servedSerials(sidecar))[0], service.leaf.serial);
      } finally {
        await sidecar.stop();
      }
    });
  }

  test('leaf + intermediate chain is sent whole', async () => {
    const intermediate = await makeIntermediate(root, { cn: 'issuing intermediate' });
    const service = await makeService(intermediate, 'svc-chain');
    const sidecar = await startOn(service.certDir);
    try {
      assert.deepEqual(await servedSerials(sidecar), [service.leaf.serial, intermediate.serial]);
      // A peer that trusts only the root can verify the served chain.
      const response = await mtlsRequest({ ...sidecar.inbound, path: '/chain', ca: root.certPem, cert: peer.leaf.chainPem, key: peer.leaf.keyPem });
      assert.equal(response.status, 200, response.text);
    } finally {
      await sidecar.stop();
    }
  });

  const keyCases: Array<[KeyType, KeyFormat]> = [
    ['rsa', 'pkcs1'],
    ['rsa', 'pkcs8'],
    ['ec', 'sec1'],
    ['ec', 'pkcs8'],
    ['ed25519', 'pkcs8'],
  ];
  for (const [keyType, keyFormat] of keyCases) {
    test(`${keyType} certificate with a ${keyFormat} key loads and serves`, async () => {
      const service = await makeService(root, `svc-${keyType}-${keyFormat}`, { keyType, keyFormat });
      const sidecar = await startOn(service.certDir);
      try {
        assert.equal((await servedSerials(sidecar))[0], service.leaf.serial);
        const response = await mtlsRequest({ ...sidecar.inbound, path: '/key', ca: root.certPem, cert: peer.leaf.chainPem, key: peer.leaf.keyPem });
        assert.equal(response.status, 200, response.text);
      } finally {
        await sidecar.stop();
      }
    });
  }

  test('a bundle with two roots accepts peers of both', async () => {
    const secondRoot = await makeRootCA({ cn: 'second root' });
    const service = await makeService(root, 'svc-two-roots', { bundlePem: root.certPem + secondRoot.certPem });
    const peerOfSecond = await makeService(secondRoot, 'peer-of-second');
    const sidecar = await startOn(service.certDir);
    try {
      for (const caller of [peer, peerOfSecond]) {
        const response = await mtlsRequest({ ...sidecar.inbound, path: `/from/${caller.leaf.subject}`, ca: root.certPem, cert: caller.leaf.chainPem, key: caller.leaf.keyPem });
        assert.equal(response.status, 200, `${caller.spiffeId}: ${response.text}`);
      }
    } finally {
      await sidecar.stop();
    }
  });
});

describe('start-up without a valid certificate set', () => {
  let root: CertificateAuthority;

  before(async () => {
    root = await sharedRootCA();
  });

  const run = (certDir: string) => runCli(['run', '--cert-dir', certDir, '--inbound', '127.0.0.1:0', '--outbound', 'off', '--admin', 'off', '--app', 'http://127.0.0.1:9']);

  test('a key that does not match the certificate -> exit 1 naming the file and the problem', async () => {
    const service = await makeService(root, 'mismatch');
    const stranger = await issueLeaf(root, { cn: 'stranger' });
    await writeFile(join(service.certDir, 'tls.key'), stranger.keyPem);
    const result = await run(service.certDir);
    const output = result.stdout + result.stderr;
    assert.equal(result.code, 1, output);
    assert.match(output, /tls\.(key|crt)/, output);
    assert.match(output, /match|belong/i, output);
  });

  test('a cert dir that does not exist -> exit 1 with cert_dir_missing (a start-up failure, not a usage error)', async () => {
    const result = await run('/nonexistent-cert-dir');
    assert.equal(result.code, 1, result.stderr);
    assert.match(result.stderr, /\/nonexistent-cert-dir: the certificate directory does not exist: mount the secret there or pass --cert-dir \[cert_dir_missing\]/);
  });

  test('a chain file in the wrong order (intermediate first) -> exit 1 with chain_out_of_order, not key_mismatch', async () => {
    const intermediate = await makeIntermediate(root, { cn: 'order intermediate' });
    const service = await makeService(intermediate, 'reversed-chain');
    const [leafPem, intermediatePem] = service.leaf.chainPem.split(/(?<=-----END CERTIFICATE-----\n?)/).filter((block) => block.trim() !== '');
    await writeFile(join(service.certDir, 'tls.crt'), `${intermediatePem!.trim()}\n${leafPem!.trim()}\n`);
    const result = await run(service.certDir);
    assert.equal(result.code, 1, result.stderr);
    assert.match(result.stderr, /tls\.crt: the key \(.*tls\.key\) belongs to certificate 2 \(.*CN=reversed-chain.*\), not to the first \(serial [0-9A-F]+\); the chain file does not start with the leaf certificate: write the leaf first, then its intermediates .* \[chain_out_of_order\]/);
  });

  test('an expired certificate -> exit 1 naming the file and the problem', async () => {
    const service = await makeService(root, 'expired', { expired: true });
    const result = await run(service.certDir);
    const output = result.stdout + result.stderr;
    assert.equal(result.code, 1, output);
    assert.match(output, /tls\.crt/, output);
    assert.match(output, /expired/i, output);
  });

  test('an encrypted key and no --key-passphrase-file -> exit 1 naming the key file, the problem and the flag, not OpenSSL\'s words', async () => {
    const service = await makeService(root, 'encrypted-key');
    await writeFile(join(service.certDir, 'tls.key'), await openssl(['pkey', '-aes256', '-passout', 'pass:s3cret'], { input: service.leaf.keyPem }));
    const result = await run(service.certDir);
    assert.equal(result.code, 1, result.stderr);
    assert.match(result.stderr, /tls\.key: the key is encrypted and no passphrase was given.*pass --key-passphrase-file.*\[key_parse_error\]/);
    assert.doesNotMatch(result.stderr, /interrupted or cancelled/);
  });

  test('a missing file -> exit 1 naming the file and the problem', async () => {
    const service = await makeService(root, 'missing');
    await rm(join(service.certDir, 'ca.crt'));
    const result = await run(service.certDir);
    const output = result.stdout + result.stderr;
    assert.equal(result.code, 1, output);
    assert.match(output, /ca\.crt/, output);
    assert.match(output, /missing|not exist|no such|not found/i, output);
  });
});

describe('configuration errors', () => {
  let service: ServiceIdentity;
  let app: EchoApp;

  before(async () => {
    [service, app] = await Promise.all([sharedRootCA().then((root) => makeService(root, 'config')), startEchoApp()]);
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
  });

  /** Runs the CLI, expects exit 2 with nothing on stdout and exactly one stderr line; returns it. */
  const usageErrorLine = async (argv: string[]): Promise<string> => {
    const result = await runCli(argv);
    assert.equal(result.code, 2, `exit code of ${argv.join(' ')}; stderr: ${result.stderr}\nstdout: ${result.stdout}`);
    assert.equal(result.stdout, '', `nothing on stdout for ${argv.join(' ')}`);
    const lines = result.stderr.trim().split('\n').filter((line) => line.trim() !== '');
    assert.equal(lines.length, 1, `one stderr line expected for ${argv.join(' ')}, got:\n${result.stderr}`);
    return lines[0]!;
  };

  /** Exit 2 and exactly one stderr line naming the flag (and the value). */
  const assertUsageError = async (args: string[], flag: string, value: string): Promise<void> => {
    const line = await usageErrorLine(['run', ...args]);
    assert.ok(line.includes(flag), `the line should name ${flag}: ${line}`);
    assert.ok(line.includes(value), `the line should name the value ${value}: ${line}`);
  };

  test('bad port in --inbound -> exit 2 with one line naming the flag', async () => {
    await assertUsageError(['--cert-dir', service.certDir, '--inbound', '127.0.0.1:99999', '--outbound', 'off', '--admin', 'off'], '--inbound', '99999');
  });

  test('unparsable --connect-timeout -> exit 2 with one line naming the flag', async () => {
    await assertUsageError(['--cert-dir', service.certDir, '--inbound', '127.0.0.1:0', '--outbound', 'off', '--admin', 'off', '--connect-timeout', 'soonish'], '--connect-timeout', 'soonish');
  });

  test('run with nothing to serve, or two listeners on one address -> exit 2 naming the flags', async () => {
    const certDir = ['--cert-dir', service.certDir];
    assert.equal(
      await usageErrorLine(['run', ...certDir, '--inbound', 'off', '--outbound', 'off']),
      'mtls-sidecar: --inbound: "off" is not valid: with --outbound off and no --upstream there is nothing to serve: turn on at least one of them',
    );
    const port = await freePort();
    assert.equal(
      await usageErrorLine(['run', ...certDir, '--inbound', `127.0.0.1:${port}`, '--admin', `127.0.0.1:${port}`]),
      `mtls-sidecar: --admin: "127.0.0.1:${port}" is not valid: --inbound already listens on 127.0.0.1:${port}: give each listener its own port`,
    );
    assert.equal(
      await usageErrorLine(['run', ...certDir, '--inbound', `0.0.0.0:${port}`, '--outbound', 'off', '--upstream', `${port}=localhost:1`]),
      `mtls-sidecar: --upstream: "127.0.0.1:${port}" is not valid: --inbound already listens on 0.0.0.0:${port}: give each listener its own port`,
    );
  });

  test('wait --admin without a port or URL -> exit 2', async () => {
    assert.equal(await usageErrorLine(['wait', '--admin', 'nonsense', '--timeout', '1s']), 'mtls-sidecar: --admin: "nonsense" is not HOST:PORT or a URL');
  });

  test('every single-value flag of run given twice -> exit 2, one line naming it and both values', async () => {
    const singleValue = Object.entries(runOptions).filter(([, spec]) => spec.type !== 'array');
    assert.ok(singleValue.length > 20, 'the option table should list run flags');
    for (const [flag, spec] of singleValue) {
      const [first, second] = spec.type === 'boolean' ? [`--${flag}`, `--${flag}=false`] : [`--${flag}=one`, `--${flag}=two`];
      const shown = spec.type === 'boolean' ? '(true, "false")' : '("one", "two")';
      const line = await usageErrorLine(['run', first, second]);
      assert.equal(line, `mtls-sidecar: --${flag} given twice ${shown}: give it once`);
    }
  });

  test('the reported cases: --inbound and --mode given twice are named as such, not as invalid values', async () => {
    assert.equal(
      await usageErrorLine(['run', '--cert-dir', service.certDir, '--inbound', '127.0.0.1:0', '--inbound', 'x']),
      'mtls-sidecar: --inbound given twice ("127.0.0.1:0", "x"): give it once',
    );
    // Also when yargs would otherwise report the second value as outside the choices.
    assert.equal(await usageErrorLine(['--mode', 'strict', '--mode', 'bogus']), 'mtls-sidecar: --mode given twice ("strict", "bogus"): give it once');
  });

  test('check and probe flags given twice -> exit 2, one line naming the flag', async () => {
    assert.equal(await usageErrorLine(['check', '--cert-dir', service.certDir, '--cert-dir', '/elsewhere']), `mtls-sidecar: --cert-dir given twice (${JSON.stringify(service.certDir)}, "/elsewhere"): give it once`);
    // probe's --expect-spiffe is one ID (run's is a repeatable HOST=ID list).
    const probeTwice = ['probe', 'https://127.0.0.1:1/', '--cert-dir', service.certDir, '--expect-spiffe', 'spiffe://a.test/x', '--expect-spiffe', 'spiffe://a.test/y'];
    assert.equal(await usageErrorLine(probeTwice), 'mtls-sidecar: --expect-spiffe given twice ("spiffe://a.test/x", "spiffe://a.test/y"): give it once');
    assert.match(await usageErrorLine(['probe', 'https://127.0.0.1:1/', '--timeout', '1s', '--timeout', '2s']), /^mtls-sidecar: --timeout given twice \("1s", "2s"\)/);
  });

  test('wait and certs flags given twice or with no value -> exit 2, one line naming the flag', async () => {
    assert.equal(await usageErrorLine(['wait', '--timeout', '1s', '--timeout', '2s']), 'mtls-sidecar: --timeout given twice ("1s", "2s"): give it once');
    assert.equal(await usageErrorLine(['wait', '--admin']), 'mtls-sidecar: --admin given with no value: give it one, or leave it out');
    const out = join(await freshDir('certs-twice'), 'ca');
    assert.equal(await usageErrorLine(['certs', 'init', '--out', out, '--days', '10', '--days', '20']), 'mtls-sidecar: --days given twice ("10", "20"): give it once');
    assert.equal(await usageErrorLine(['certs', 'issue', '--ca', out, '--name', 'a', '--name', 'b', '--out', out]), 'mtls-sidecar: --name given twice ("a", "b"): give it once');
  });

  test('repeatable flags still take several values', async () => {
    const [first, second] = await Promise.all([freePort(), freePort()]);
    const sidecar = await startSidecar([
      '--cert-dir', service.certDir, '--app', app.url, ...QUIET_LISTENERS,
      '--upstream', `${first}=127.0.0.1:1`, '--upstream', `${second}=127.0.0.1:2`,
      '--allow-cn', 'a', '--allow-cn', 'b', '--allow-ou', 'Acme, Inc', '--allow-ou', 'Other',
    ]);
    try {
      assert.equal(sidecar.upstream(first).port, first);
      assert.equal(sidecar.upstream(second).port, second);
    } finally {
      await sidecar.stop();
    }
  });

  test('a flag given with no value -> exit 2 naming it, never the default (check --cert-dir does not check /etc/sidecar/certs)', async () => {
    const cases: Array<[argv: string[], flag: string]> = [
      [['check', '--cert-dir'], 'cert-dir'],
      [['check', '--cert-dir='], 'cert-dir'],
      [['check', '--cert-dir', '--json'], 'cert-dir'],
      [['probe', 'https://127.0.0.1:1/', '--cert-dir', service.certDir, '--key-file'], 'key-file'],
      [['probe', 'https://127.0.0.1:1/', '--cert-dir', service.certDir, '--timeout'], 'timeout'],
      [['run', '--cert-dir', service.certDir, '--inbound', '--outbound', 'off'], 'inbound'],
      [['run', '--cert-dir', service.certDir, '--workers'], 'workers'],
      [['run', '--cert-dir', service.certDir, '--allow-cn'], 'allow-cn'],
    ];
    for (const [argv, flag] of cases) {
      assert.equal(await usageErrorLine(argv), `mtls-sidecar: --${flag} given with no value: give it one, or leave it out`, argv.join(' '));
    }
  });

  test('whole-number flags: a word and a too-small number get the same message', async () => {
    const run = (...args: string[]) => usageErrorLine(['run', '--cert-dir', service.certDir, ...args]);
    assert.equal(await run('--workers', 'two'), 'mtls-sidecar: --workers: "two" is not valid: a whole number, 1 or more');
    assert.equal(await run('--workers', '0'), 'mtls-sidecar: --workers: "0" is not valid: a whole number, 1 or more');
    assert.equal(await run('--max-header-size', 'big'), 'mtls-sidecar: --max-header-size: "big" is not valid: a whole number, 1 or more');
    assert.equal(await run('--max-header-size', '0'), 'mtls-sidecar: --max-header-size: "0" is not valid: a whole number, 1 or more');
    assert.equal(await run('--max-connections', '1.5'), 'mtls-sidecar: --max-connections: "1.5" is not valid: a whole number, 0 or more');
    // Listeners take port 0 (any free port); the app's port may not be 0.
    assert.match(await run('--inbound', '127.0.0.1:99999'), /a port must be a number from 0 to 65535$/);
    assert.match(await run('--app', 'http://127.0.0.1:0'), /a port must be a number from 1 to 65535$/);
  });

  test('a stray word is called an unexpected argument, not a flag (exit 2, one line)', async () => {
    for (const argv of [['run', '--cert-dir', service.certDir, 'extra'], ['bogus']]) {
      const result = await runCli(argv);
      assert.equal(result.code, 2, result.stderr);
      const lines = result.stderr.trim().split('\n');
      assert.equal(lines.length, 1, result.stderr);
      assert.match(lines[0]!, /unexpected argument "(extra|bogus)"/);
      assert.doesNotMatch(lines[0]!, /flag/);
    }
  });

  test('an invalid value from a SIDECAR_* variable -> exit 2 naming the flag and the variable; the same value as a flag names only the flag', async () => {
    const fromEnv = await runCli(['run', '--cert-dir', service.certDir], { env: { SIDECAR_MODE: 'bogus', SIDECAR_DRAIN_TIMEOUT: '15s' } });
    assert.equal(fromEnv.code, 2);
    assert.equal(fromEnv.stderr.trim(), 'mtls-sidecar: --mode: "bogus" is not valid: strict or permissive (set by SIDECAR_MODE)');
    const duration = await runCli(['run', '--cert-dir', service.certDir], { env: { SIDECAR_DRAIN_TIMEOUT: 'soon' } });
    assert.equal(duration.code, 2);
    assert.match(duration.stderr, /^mtls-sidecar: --drain-timeout: "soon" is not valid: .* \(set by SIDECAR_DRAIN_TIMEOUT\)$/m);
    const fromFlag = await runCli(['run', '--cert-dir', service.certDir, '--mode', 'bogus']);
    assert.equal(fromFlag.stderr.trim(), 'mtls-sidecar: --mode: "bogus" is not valid: strict or permissive');
  });

  test('unknown SIDECAR_FOO env var -> a warning, and the process still starts', async () => {
    const sidecar = await startSidecar(['--cert-dir', service.certDir, '--app', app.url, ...QUIET_LISTENERS], { env: { SIDECAR_FOO: 'bar' } });
    try {
      const warnedInLog = sidecar.logs().some((line: LogLine) => JSON.stringify(line).includes('SIDECAR_FOO'));
      assert.ok(warnedInLog || sidecar.stderr().includes('SIDECAR_FOO'), `a warning naming SIDECAR_FOO expected:\n${sidecar.output()}`);
    } finally {
      await sidecar.stop();
    }
  });

  test('SIDECAR_INBOUND env is used', async () => {
    const port = await freePort();
    const sidecar = await startSidecar(['--cert-dir', service.certDir, '--app', app.url, ...QUIET_LISTENERS], { env: { SIDECAR_INBOUND: `127.0.0.1:${port}` } });
    try {
      assert.deepEqual(sidecar.inbound, { host: '127.0.0.1', port });
    } finally {
      await sidecar.stop();
    }
  });

  test('--inbound flag overrides SIDECAR_INBOUND env', async () => {
    const [envPort, flagPort] = await Promise.all([freePort(), freePort()]);
    const sidecar = await startSidecar(['--cert-dir', service.certDir, '--app', app.url, '--inbound', `127.0.0.1:${flagPort}`, ...QUIET_LISTENERS], {
      env: { SIDECAR_INBOUND: `127.0.0.1:${envPort}` },
    });
    try {
      assert.deepEqual(sidecar.inbound, { host: '127.0.0.1', port: flagPort });
    } finally {
      await sidecar.stop();
    }
  });
});

describe('certificate replacement while running', () => {
  let root: CertificateAuthority;
  let peer: ServiceIdentity;
  let app: EchoApp;

  before(async () => {
    root = await sharedRootCA();
    [peer, app] = await Promise.all([makeService(root, 'rotation-peer'), startEchoApp()]);
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
  });

  /** A kubelet-style secret volume holding `leaf`, and a sidecar serving it. */
  const startWithSecretVolume = async (name: string, extra: string[]): Promise<{ dir: string; first: Leaf; sidecar: Sidecar }> => {
    const dir = await freshDir(`volume-${name}`);
    const first = await issueLeaf(root, { cn: name, dns: ['localhost'], ips: ['127.0.0.1'] });
    await kubernetesAtomicWrite(dir, layoutFiles('kubernetes', certDirContent(first)));
    const sidecar = await startSidecar(['--cert-dir', dir, '--app', app.url, ...QUIET_LISTENERS, ...extra]);
    return { dir, first, sidecar };
  };

  const servedLeafSerial = async (sidecar: Sidecar): Promise<string> =>
    (await servedCertificates({ ...sidecar.inbound, certPath: peer.leaf.certPath, keyPath: peer.leaf.keyPath })).serials[0] ?? '';

  const loadedLine = (serial: string) => (line: LogLine) => line.msg === 'certificates loaded' && normalizeSerial(String(line.serial ?? '')) === normalizeSerial(serial);

  test('a replaced directory is served to the next handshake after SIGHUP', async () => {
    const { dir, first, sidecar } = await startWithSecretVolume('hup', ['--reload-interval', '0']);
    assert.equal(await servedLeafSerial(sidecar), first.serial);
    const second = await issueLeaf(root, { cn: 'hup', dns: ['localhost'], ips: ['127.0.0.1'] });
    await kubernetesAtomicWrite(dir, layoutFiles('kubernetes', certDirContent(second)));
    sidecar.signal('SIGHUP');
    await sidecar.waitForLog(loadedLine(second.serial), 10000);
    assert.equal(await servedLeafSerial(sidecar), second.serial);
    await sidecar.stop();
  });

  test('a replaced directory is picked up by the directory watch without SIGHUP', async () => {
    // --reload-interval 0 turns polling off: only the watch can notice the change.
    const { dir, first, sidecar } = await startWithSecretVolume('watch', ['--reload-interval', '0']);
    assert.equal(await servedLeafSerial(sidecar), first.serial);
    const second = await issueLeaf(root, { cn: 'watch', dns: ['localhost'], ips: ['127.0.0.1'] });
    await kubernetesAtomicWrite(dir, layoutFiles('kubernetes', certDirContent(second)));
    await sidecar.waitForLog(loadedLine(second.serial), 10000);
    assert.equal(await servedLeafSerial(sidecar), second.serial);
    await sidecar.stop();
  });

  test('an invalid replacement (key mismatch) is rejected and the old certificate keeps being served', async () => {
    const { dir, first, sidecar } = await startWithSecretVolume('bad-swap', ['--reload-interval', '0']);
    const second = await issueLeaf(root, { cn: 'bad-swap', dns: ['localhost'], ips: ['127.0.0.1'] });
    await kubernetesAtomicWrite(dir, layoutFiles('kubernetes', { chainPem: second.chainPem, keyPem: first.keyPem, bundlePem: root.certPem }));
    sidecar.signal('SIGHUP');
    const rejected = await sidecar.waitForLog((line) => line.msg === 'certificate reload rejected', 10000);
    assert.equal(rejected.code, 'key_mismatch', JSON.stringify(rejected));
    assert.equal(await servedLeafSerial(sidecar), first.serial);
    // Still serving requests with the old set.
    const response = await mtlsRequest({ ...sidecar.inbound, path: '/still-up', ca: root.certPem, cert: peer.leaf.chainPem, key: peer.leaf.keyPem });
    assert.equal(response.status, 200, response.text);
    assert.ok(!sidecar.logs().some(loadedLine(second.serial)), 'the mismatched set must never be loaded');
    await sidecar.stop();
  });

  test('a plain file overwrite of the generic layout is picked up as well', async () => {
    const service = await makeService(root, 'generic-overwrite', { layout: 'generic' });
    const sidecar = await startSidecar(['--cert-dir', service.certDir, '--app', app.url, ...QUIET_LISTENERS, '--reload-interval', '1s']);
    const second = await issueLeaf(root, { cn: 'generic-overwrite', dns: ['localhost'], ips: ['127.0.0.1'] });
    await writeLayout(service.certDir, 'generic', certDirContent(second));
    await sidecar.waitForLog(loadedLine(second.serial), 10000);
    assert.equal(await servedLeafSerial(sidecar), second.serial);
    await sidecar.stop();
  });
});
