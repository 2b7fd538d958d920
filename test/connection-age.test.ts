/**
 * --max-connection-age: keep-alive connections are retired once they are older than the age and
 * idle (a removed root or a revoked peer is not trusted forever on a long-lived connection), never
 * in the middle of a request. Inbound on the real listener with raw mTLS connections; outbound
 * through an --upstream listener to a TLS upstream that counts the connections it accepts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { startEchoApp, startTlsServer, type EchoApp, type TlsTestServer } from './helpers/apps.js';
import { plainRequest } from './helpers/clients.js';
import { makeService, sharedRootCA, type CertificateAuthority, type ServiceIdentity } from './helpers/pki.js';
import { openTls, parseResponses } from './helpers/raw.js';
import { freePort, startSidecar, stopAllSidecars } from './helpers/sidecar.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A keep-alive mTLS connection that sends requests one at a time and notes when the server ends it. */
class KeepAliveClient {
  #text = '';
  #closedAt: number | undefined;
  readonly #socket: TLSSocket;

  constructor(socket: TLSSocket) {
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => (this.#text += chunk.toString('latin1')));
    socket.on('error', () => undefined);
    socket.once('close', () => (this.#closedAt ??= Date.now()));
    socket.once('end', () => (this.#closedAt ??= Date.now()));
  }

  get closedAt(): number | undefined {
    return this.#closedAt;
  }

  /** Sends one GET and waits for its whole response (or the connection's end). */
  async get(path: string, timeoutMs = 10_000): Promise<{ status: number; connection: string | undefined; body: string }> {
    const already = parseResponses(this.#text).length;
    this.#socket.write(`GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const responses = parseResponses(this.#text);
      const response = responses[already];
      if (response && (response.headers['content-length'] === undefined || response.body.length >= Number(response.headers['content-length']))) {
        return { status: response.status, connection: response.headers.connection, body: response.body };
      }
      if (this.#closedAt !== undefined) throw new Error(`the connection closed before the response to ${path}: ${this.#text}`);
      await sleep(20);
    }
    throw new Error(`no response to ${path} within ${timeoutMs} ms`);
  }

  async waitForClose(timeoutMs: number): Promise<number | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.#closedAt === undefined && Date.now() < deadline) await sleep(20);
    return this.#closedAt;
  }

  destroy(): void {
    this.#socket.destroy();
  }
}

describe('--max-connection-age', () => {
  let root: CertificateAuthority;
  let serviceA: ServiceIdentity;
  let serviceB: ServiceIdentity;
  let app: EchoApp;

  before(async () => {
    root = await sharedRootCA();
    [serviceA, serviceB, app] = await Promise.all([makeService(root, 'age-a'), makeService(root, 'age-b'), startEchoApp()]);
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
  });

  const connect = async (address: { host: string; port: number }) =>
    new KeepAliveClient(await openTls({ address, leaf: serviceA.leaf, ca: root.certPem }));

  test('inbound: an idle keep-alive connection is closed by the sidecar once it is older than the age', async () => {
    const sidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off', '--admin', 'off', '--max-connection-age', '1s']);
    const client = await connect(sidecar.inbound);
    const opened = Date.now();
    const first = await client.get('/age-idle-1');
    assert.equal(first.status, 200);
    assert.notEqual(first.connection, 'close', 'young connections stay keep-alive');
    const closedAt = await client.waitForClose(5000);
    assert.ok(closedAt !== undefined, 'the sidecar closes the idle connection');
    const age = closedAt - opened;
    assert.ok(age >= 900 && age < 3000, `closed ${age} ms after opening (age 1 s)`);
    await sidecar.stop();
  });

  test('inbound: a request in flight when the age passes completes (200, Connection: close), then the connection closes', async () => {
    const sidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off', '--admin', 'off', '--max-connection-age', '1s']);
    const client = await connect(sidecar.inbound);
    const slow = await client.get('/slow?ms=1800');
    assert.equal(slow.status, 200, 'the request that outlived the age is answered');
    assert.equal(slow.connection, 'close', 'and tells the client not to reuse the connection');
    const closedAt = await client.waitForClose(3000);
    assert.ok(closedAt !== undefined, 'the connection closes once its request is done');
    await sidecar.stop();
  });

  test('inbound without the flag: an idle keep-alive connection stays open past that time and serves the next request', async () => {
    const sidecar = await startSidecar(['--cert-dir', serviceB.certDir, '--app', app.url, '--outbound', 'off', '--admin', 'off']);
    const client = await connect(sidecar.inbound);
    assert.equal((await client.get('/no-age-1')).status, 200);
    await sleep(1500);
    assert.equal(client.closedAt, undefined, 'still open');
    assert.equal((await client.get('/no-age-2')).status, 200);
    client.destroy();
    await sidecar.stop();
  });

  describe('outbound', () => {
    let upstream: TlsTestServer;

    before(async () => {
      upstream = await startTlsServer({ certPem: serviceB.leaf.chainPem, keyPem: serviceB.leaf.keyPem, ca: root.certPem });
    });

    after(async () => {
      await upstream?.close();
    });

    for (const { age, reused } of [
      { age: '1s', reused: false },
      { age: undefined, reused: true },
    ]) {
      test(`${age ? `--max-connection-age ${age}` : 'without the flag'}: a pooled upstream connection idle past 1 s is ${reused ? 'reused' : 'replaced by a new one'}`, async () => {
        const port = await freePort();
        const sidecar = await startSidecar([
          '--cert-dir', serviceA.certDir, '--app', 'http://127.0.0.1:9', '--inbound', 'off', '--admin', 'off',
          '--upstream', `${port}=localhost:${upstream.port}`,
          ...(age ? ['--max-connection-age', age] : []),
        ]);
        const before = upstream.handshakes.length;
        assert.equal((await plainRequest({ ...sidecar.upstream(port), path: '/pooled-1' })).status, 200);
        assert.equal(upstream.handshakes.length, before + 1);
        await sleep(1300);
        assert.equal((await plainRequest({ ...sidecar.upstream(port), path: '/pooled-2' })).status, 200);
        assert.equal(upstream.handshakes.length - before, reused ? 1 : 2, `TLS connections the upstream accepted for two requests`);
        await sidecar.stop();
      });
    }
  });
});
