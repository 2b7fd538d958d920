// TLS session resumption and the trust bundle: a resumed session skips chain verification, so a
// caller whose CA has been removed from the bundle must not get back in by resuming a session it
// got before the removal. Rotations that keep every CA (a new leaf, an added CA) keep resumption.
// Real sidecar, openssl s_client saving and resuming sessions (-sess_out / -sess_in), TLS 1.2 and 1.3.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startEchoApp, type EchoApp } from './helpers/apps.js';
import { runCommand } from './helpers/clients.js';
import { freshDir, issueLeaf, kubernetesAtomicWrite, layoutFiles, makeRootCA, sharedRootCA, type CertificateAuthority, type Leaf } from './helpers/pki.js';
import { waitForNextLog } from './helpers/rotation.js';
import { startSidecar, stopAllSidecars, type LogLine, type Sidecar } from './helpers/sidecar.js';

const loaded = (line: LogLine) => line.msg === 'certificates loaded';
const ticketsRenewed = (line: LogLine) => /session tickets renewed/.test(String(line.msg));

describe('TLS session resumption follows the trust bundle', () => {
  let serverRoot: CertificateAuthority;
  let callerRoot: CertificateAuthority;
  let extraRoot: CertificateAuthority;
  let server: Leaf;
  let caller: Leaf;
  /** A caller whose CA stays in the bundle. */
  let trustedCaller: Leaf;
  let app: EchoApp;

  before(async () => {
    [serverRoot, callerRoot, extraRoot, app] = await Promise.all([
      sharedRootCA(),
      makeRootCA({ cn: 'resumption caller CA' }),
      makeRootCA({ cn: 'resumption extra CA' }),
      startEchoApp(),
    ]);
    [server, trustedCaller, caller] = await Promise.all([
      issueLeaf(serverRoot, { cn: 'resumption-server', dns: ['localhost'], ips: ['127.0.0.1'] }),
      issueLeaf(serverRoot, { cn: 'resumption-trusted-caller', dns: ['trusted.local'] }),
      issueLeaf(callerRoot, { cn: 'resumption-caller', dns: ['caller.local'], uris: ['spiffe://mesh.local/ns/shop/sa/caller'] }),
    ]);
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
  });

  const files = (...roots: CertificateAuthority[]) =>
    layoutFiles('kubernetes', { chainPem: server.chainPem, keyPem: server.keyPem, bundlePem: roots.map((root) => root.certPem).join('') });

  /** One s_client connection with the caller's certificate, a request, and the session saved or resumed. */
  const sClient = (sidecar: Sidecar, version: string, sessionArgs: string[], who: Leaf = caller) =>
    runCommand('openssl', [
      's_client', '-connect', `${sidecar.inbound.host}:${sidecar.inbound.port}`, '-servername', 'localhost', version,
      '-cert', who.certPath, '-key', who.keyPath, '-CAfile', serverRoot.certPath, '-ign_eof', ...sessionArgs,
    ], { input: 'GET /resumed HTTP/1.0\r\nHost: localhost\r\n\r\n', timeoutMs: 10000 });

  async function sessionThenRotate(label: string, version: string, rotateTo: CertificateAuthority[]) {
    const dir = await freshDir(`resumption-${label}`);
    await kubernetesAtomicWrite(dir, files(serverRoot, callerRoot));
    const sidecar = await startSidecar(['--cert-dir', dir, '--app', app.url, '--outbound', 'off']);
    const sessionFile = join(await freshDir(`sessions-${label}`), 'session.pem');
    const first = await sClient(sidecar, version, ['-sess_out', sessionFile]);
    assert.match(first.stdout, /^New,/m, `${version} first connection:\n${first.stdout}${first.stderr}`);
    assert.match(first.stdout, /HTTP\/1\.1 200/, `${version} first request is served`);
    const mark = sidecar.logs().length;
    await kubernetesAtomicWrite(dir, files(...rotateTo));
    await waitForNextLog(sidecar, loaded, mark, 5000);
    const again = await sClient(sidecar, version, ['-sess_in', sessionFile]);
    return { sidecar, mark, again };
  }

  for (const version of ['-tls1_3', '-tls1_2']) {
    test(`${version}: after the caller's CA is removed from the bundle, its saved session does not resume and the caller is refused`, async () => {
      const { sidecar, mark, again } = await sessionThenRotate(`removed${version}`, version, [serverRoot]);
      assert.doesNotMatch(again.stdout, /^Reused,/m, `the session must not resume:\n${again.stdout}`);
      assert.doesNotMatch(again.stdout, /HTTP\/1\.1 200/, `no request is served to the removed CA's caller:\n${again.stdout}`);
      const renewed = sidecar.logs().slice(mark).find(ticketsRenewed);
      assert.ok(renewed, 'the renewal is logged');
      assert.equal(renewed.removedCas, 1);
      const trusted = await sClient(sidecar, version, [], trustedCaller);
      assert.match(trusted.stdout, /HTTP\/1\.1 200/, 'a caller whose CA stayed is still served');
      await sidecar.stop();
    });

    test(`${version}: a rotation that only adds a CA keeps resumption (control)`, async () => {
      const { sidecar, mark, again } = await sessionThenRotate(`added${version}`, version, [serverRoot, callerRoot, extraRoot]);
      assert.match(again.stdout, /^Reused,/m, `the session resumes:\n${again.stdout}${again.stderr}`);
      assert.match(again.stdout, /HTTP\/1\.1 200/, 'and the request is served');
      assert.equal(sidecar.logs().slice(mark).filter(ticketsRenewed).length, 0, 'tickets are not renewed when no CA left');
      await sidecar.stop();
    });
  }
});
