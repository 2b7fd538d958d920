// Request targets on the outbound forward proxy (SPEC §5, §6): a CONNECT or absolute-form target
// naming a port no connection can go to is a 400 bad_request (never a crash of the sidecar), and
// the path and query of an absolute-form target reach the upstream exactly as the app wrote them.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startTlsServer, type TlsServerReply, type TlsTestServer } from './helpers/apps.js';
import { curl, proxyRequest } from './helpers/clients.js';
import { metricValue } from './helpers/hardening.js';
import { issueLeaf, makeService, sharedRootCA } from './helpers/pki.js';
import { holdsWholeResponse, rawTcpExchange, wholeResponse, type RawResponse } from './helpers/raw.js';
import { startSidecar, stopAllSidecars, type Sidecar } from './helpers/sidecar.js';

describe('forward proxy request targets', () => {
  let sidecar: Sidecar;
  let upstream: TlsTestServer;

  before(async () => {
    const root = await sharedRootCA();
    const [service, upstreamLeaf] = await Promise.all([
      makeService(root, 'targets-client'),
      issueLeaf(root, { cn: 'targets-upstream', dns: ['localhost'] }),
    ]);
    upstream = await startTlsServer({ certPem: upstreamLeaf.chainPem, keyPem: upstreamLeaf.keyPem, ca: root.certPem });
    sidecar = await startSidecar(['--cert-dir', service.certDir, '--inbound', 'off']);
  });

  after(async () => {
    await stopAllSidecars();
    await upstream?.close();
  });

  /** One raw request on a new connection to the forward proxy: exact bytes, no client normalising the target. */
  const sendRaw = async (bytes: string): Promise<RawResponse> => {
    const exchange = await rawTcpExchange({ address: sidecar.outbound, bytes, until: holdsWholeResponse });
    return wholeResponse(exchange);
  };

  /** The sidecar is still running and still proxies: a valid request after the refused one succeeds. */
  const assertStillServing = async (): Promise<void> => {
    assert.equal(sidecar.child.exitCode, null, `the sidecar exited; output:\n${sidecar.output()}`);
    const response = await proxyRequest({ proxy: sidecar.outbound, target: `http://localhost:${upstream.port}/after-refusal` });
    assert.equal(response.status, 200, response.text);
    assert.equal(response.json<TlsServerReply>().url, '/after-refusal');
  };

  const refusedCounts = () =>
    Promise.all([
      metricValue(sidecar, 'sidecar_requests_total', { direction: 'outbound', code: '400' }),
      metricValue(sidecar, 'sidecar_errors_total', { direction: 'outbound', error: 'bad_request' }),
    ]);

  /** 400 bad_request with the SPEC §6 shape, a message naming the port, logged with the code and counted once. */
  const assertRefusedForPort = async (response: RawResponse, target: string, port: string, countsBefore: number[]): Promise<void> => {
    assert.equal(response.status, 400, JSON.stringify(response));
    assert.equal(response.headers['x-sidecar-error'], 'bad_request');
    assert.match(response.headers['content-type'] ?? '', /application\/json/);
    const body = JSON.parse(response.body) as { error: string; message: string; hint: string };
    assert.equal(body.error, 'bad_request');
    assert.match(body.message, new RegExp(`port ${port}: a TCP port is 1 to 65535`));
    assert.ok(body.hint.length > 0, 'the answer carries a hint');
    const line = await sidecar.waitForLog((entry) => entry.error === 'bad_request' && (entry.target === target || entry.path === target), 5000);
    assert.equal(line.direction, 'outbound', JSON.stringify(line));
    assert.deepEqual(await refusedCounts(), [countsBefore[0]! + 1, countsBefore[1]! + 1]);
  };

  for (const port of ['99999', '0', '65536']) {
    test(`CONNECT 127.0.0.1:${port} -> 400 bad_request, logged and counted; the sidecar keeps serving`, async () => {
      const countsBefore = await refusedCounts();
      const target = `127.0.0.1:${port}`;
      const response = await sendRaw(`CONNECT ${target} HTTP/1.1\r\nHost: x\r\n\r\n`);
      await assertRefusedForPort(response, target, port, countsBefore);
      await assertStillServing();
    });
  }

  for (const port of ['0', '65536']) {
    test(`absolute-form target naming port ${port} -> 400 bad_request, logged and counted; the sidecar keeps serving`, async () => {
      const countsBefore = await refusedCounts();
      const target = `http://localhost:${port}/x`;
      const response = await sendRaw(`GET ${target} HTTP/1.1\r\nHost: localhost:${port}\r\nConnection: close\r\n\r\n`);
      await assertRefusedForPort(response, target, port, countsBefore);
      await assertStillServing();
    });
  }

  for (const { name, written, received } of [
    { name: 'the reported target (dot segments, %2e%2e, a query holding /../)', written: '/a/../b/%2e%2e/c?q=/../x', received: '/a/../b/%2e%2e/c?q=/../x' },
    { name: 'dot segments', written: '/a/./b/../c/.', received: '/a/./b/../c/.' },
    { name: 'percent-encoded dot segments in either case', written: '/a/%2e%2e/%2E%2E/.%2e/b', received: '/a/%2e%2e/%2E%2E/.%2e/b' },
    { name: 'an encoded slash', written: '/a%2Fb/c%2f', received: '/a%2Fb/c%2f' },
    { name: 'double slashes', written: '//x//y/', received: '//x//y/' },
    { name: 'an empty path', written: '', received: '/' },
    { name: 'a query without a path', written: '?x=1', received: '/?x=1' },
    { name: 'a query holding escapes and dot segments', written: '/p?a=%2e%2e&b=/../c&c=%2F&d=%41', received: '/p?a=%2e%2e&b=/../c&c=%2F&d=%41' },
    { name: 'characters WHATWG URL would rewrite or escape', written: '/a\\b/{x}|^', received: '/a\\b/{x}|^' },
    { name: 'a fragment (not part of a request target: not sent)', written: '/f?q=1#frag', received: '/f?q=1' },
  ]) {
    test(`absolute-form target with ${name}: the upstream receives ${JSON.stringify(received)}`, async () => {
      const authority = `localhost:${upstream.port}`;
      const response = await sendRaw(`GET http://${authority}${written} HTTP/1.1\r\nHost: ${authority}\r\nConnection: close\r\n\r\n`);
      assert.equal(response.status, 200, JSON.stringify(response));
      const reply = JSON.parse(response.body) as TlsServerReply;
      assert.equal(reply.url, received);
      assert.equal(reply.headers.host, authority, 'the upstream gets its own authority as Host');
    });
  }

  test('curl --path-as-is through the proxy: the upstream receives the path and query unchanged', async () => {
    const result = await curl(['--path-as-is', '-x', `http://${sidecar.outbound.host}:${sidecar.outbound.port}`, `http://localhost:${upstream.port}/a/../b/%2e%2e/c?q=/../x`]);
    assert.equal(result.code, 0, `curl failed: ${result.stderr}`);
    assert.equal((JSON.parse(result.stdout) as TlsServerReply).url, '/a/../b/%2e%2e/c?q=/../x');
  });

  test('a target with a scheme other than http(s) is still 400 bad_request', async () => {
    const response = await sendRaw('GET ftp://localhost/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
    assert.equal(response.status, 400, JSON.stringify(response));
    assert.equal(response.headers['x-sidecar-error'], 'bad_request');
    assert.match(response.body, /HTTP_PROXY/, 'the message says how to call the proxy');
  });
});
