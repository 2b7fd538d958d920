// Hardening, HTTP semantics on the inbound mTLS port: bodies stream untouched, hop-by-hop headers
// stop at the sidecar in both directions, pipelining, HTTP/1.0 framing, request smuggling and
// oversized headers. Requests are written byte for byte over a raw TLS connection.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { sha256Hex, startEchoApp, type EchoApp, type EchoReply } from './helpers/apps.js';
import { mtlsRequest } from './helpers/clients.js';
import { sleep, startRawApp, startScriptedApp, type RawApp, type ScriptedApp } from './helpers/hardening.js';
import { makeService, sharedRootCA, type CertificateAuthority, type ServiceIdentity } from './helpers/pki.js';
import { openTls, parseResponses, rawTlsExchange, readRaw } from './helpers/raw.js';
import { startSidecar, stopAllSidecars, type Sidecar } from './helpers/sidecar.js';

/** Responses of the raw app, by request path; `/close` also closes the app's connection. */
const rawRoutes: Record<string, string> = {
  '/hop':
    'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Foo, X-Bar\r\nX-Foo: 1\r\nX-Bar: 2\r\nKeep-Alive: timeout=1\r\n' +
    'Proxy-Authenticate: Basic realm="x"\r\nUpgrade: h2c\r\nTrailer: X-Checksum\r\nX-End-To-End: kept\r\n\r\nok',
  '/close': 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nclose',
  '/chunked': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n',
  '/big-header': `HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Huge: ${'h'.repeat(20 * 1024)}\r\n\r\nok`,
};

describe('hardening: HTTP semantics through the inbound listener', () => {
  let root: CertificateAuthority;
  let serviceB: ServiceIdentity;
  let peerA: ServiceIdentity;
  let echoApp: EchoApp;
  let rawApp: RawApp;
  let streamApp: ScriptedApp;
  let echoSidecar: Sidecar;
  let rawSidecar: Sidecar;
  let streamSidecar: Sidecar;
  /** Resolves when the stream app has received its first body bytes. */
  let firstBodyBytes: (() => void) | undefined;

  const raw = (sidecar: Sidecar, bytes: string | Buffer, options: { timeoutMs?: number; until?: (text: string) => boolean } = {}) =>
    rawTlsExchange({ address: sidecar.inbound, leaf: peerA.leaf, ca: root.certPem, bytes, ...options });

  before(async () => {
    root = await sharedRootCA();
    [serviceB, peerA, echoApp] = await Promise.all([makeService(root, 'service-b'), makeService(root, 'service-a'), startEchoApp()]);
    const answered = new Map<object, number>();
    rawApp = await startRawApp((socket, received) => {
      const paths = [...received.matchAll(/^[A-Z]+ (\S+) HTTP\/1\.[01]\r\n/gm)].map((match) => match[1]!);
      // Only requests whose header block is complete are answered.
      const complete = received.split('\r\n\r\n').length - 1;
      for (let index = answered.get(socket) ?? 0; index < Math.min(paths.length, complete); index += 1) {
        const path = paths[index]!;
        socket.write(rawRoutes[path] ?? 'HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
        if (path === '/close') socket.end();
        answered.set(socket, index + 1);
      }
    });
    streamApp = await startScriptedApp((request, response) => {
      let length = 0;
      const chunks: Buffer[] = [];
      request.on('data', (chunk: Buffer) => {
        if (length === 0) firstBodyBytes?.();
        length += chunk.length;
        chunks.push(chunk);
      });
      request.on('end', () => {
        const text = JSON.stringify({ length, sha256: sha256Hex(Buffer.concat(chunks)) });
        response.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
        response.end(text);
      });
    });
    const common = ['--cert-dir', serviceB.certDir, '--outbound', 'off'];
    [echoSidecar, rawSidecar, streamSidecar] = await Promise.all([
      startSidecar([...common, '--app', echoApp.url]),
      startSidecar([...common, '--app', rawApp.url]),
      startSidecar([...common, '--app', streamApp.url]),
    ]);
  });

  after(async () => {
    await stopAllSidecars();
    await Promise.all([echoApp?.close(), rawApp?.close(), streamApp?.close()]);
  });

  describe('bodies', () => {
    test('a 5 MB body streams to the app untouched, with and without Content-Length', async () => {
      const body = randomBytes(5 * 1024 * 1024);
      const withLength = await mtlsRequest({ host: echoSidecar.inbound.host, port: echoSidecar.inbound.port, path: '/upload', method: 'POST', body, ca: root.certPem, cert: peerA.leaf.chainPem, key: peerA.leaf.keyPem, timeoutMs: 30000 });
      assert.equal(withLength.status, 200, withLength.text);
      assert.equal(withLength.json<EchoReply>().bodyLength, body.length);
      assert.equal(withLength.json<EchoReply>().bodySha256, sha256Hex(body));

      // Chunked upload written by hand: 80 chunks of 64 KiB.
      const socket = await openTls({ address: echoSidecar.inbound, leaf: peerA.leaf, ca: root.certPem });
      const reading = readRaw(socket, { timeoutMs: 30000, until: (text) => parseResponses(text).some((response) => response.status === 200 && response.body.length > 0) });
      socket.write('POST /chunked-upload HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n');
      for (let offset = 0; offset < body.length; offset += 65536) {
        const slice = body.subarray(offset, offset + 65536);
        socket.write(`${slice.length.toString(16)}\r\n`);
        socket.write(slice);
        socket.write('\r\n');
      }
      socket.write('0\r\n\r\n');
      const [response] = parseResponses((await reading).text);
      assert.equal(response?.status, 200, (await reading).text.slice(0, 300));
      const reply = JSON.parse(response!.body) as EchoReply;
      assert.equal(reply.bodyLength, body.length);
      assert.equal(reply.bodySha256, sha256Hex(body));
    });

    test('the app receives the first body bytes before the client has sent the rest (no buffering)', async () => {
      const first = randomBytes(64 * 1024);
      const rest = randomBytes(64 * 1024);
      const socket = await openTls({ address: streamSidecar.inbound, leaf: peerA.leaf, ca: root.certPem });
      const reading = readRaw(socket, { timeoutMs: 15000, until: (text) => parseResponses(text).some((response) => response.body.length > 0) });
      const arrived = new Promise<void>((resolve) => (firstBodyBytes = resolve));
      socket.write(`POST /stream HTTP/1.1\r\nHost: b\r\nContent-Length: ${first.length + rest.length}\r\n\r\n`);
      socket.write(first);
      // The rest is only sent once the app has seen the first part: a buffering proxy deadlocks here.
      await Promise.race([arrived, sleep(5000).then(() => assert.fail('the app saw no body bytes while the client held back the rest'))]);
      socket.write(rest);
      const [response] = parseResponses((await reading).text);
      assert.equal(response?.status, 200);
      assert.deepEqual(JSON.parse(response!.body), { length: first.length + rest.length, sha256: sha256Hex(Buffer.concat([first, rest])) });
    });
  });

  describe('hop-by-hop headers', () => {
    test('Connection, Keep-Alive, TE, Proxy-Authorization, Upgrade and headers named in Connection do not reach the app', async () => {
      const before = echoApp.requests.length;
      const exchange = await raw(
        echoSidecar,
        'GET /hop-request HTTP/1.1\r\nHost: b\r\nConnection: keep-alive, X-Secret, X-Other\r\nX-Secret: s\r\nX-Other: o\r\nKeep-Alive: timeout=5\r\n' +
          'TE: trailers\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\nX-End-To-End: kept\r\n\r\n',
        { until: (text) => parseResponses(text).length > 0 },
      );
      const [response] = parseResponses(exchange.text);
      assert.equal(response?.status, 200, exchange.text);
      const seen = echoApp.requests.slice(before);
      assert.equal(seen.length, 1);
      const headers = seen[0]!.headers;
      for (const name of ['connection', 'keep-alive', 'te', 'proxy-authorization', 'upgrade', 'proxy-connection', 'x-secret', 'x-other']) {
        // Node's client adds its own `connection: keep-alive` for the sidecar->app hop; that one is the sidecar's own.
        if (name === 'connection') assert.ok(headers.connection === undefined || headers.connection === 'keep-alive', `app saw connection: ${headers.connection}`);
        else assert.equal(headers[name], undefined, `${name} reached the app: ${JSON.stringify(headers)}`);
      }
      assert.equal(headers['x-end-to-end'], 'kept');
    });

    test('hop-by-hop headers in the app response (and those it names in Connection) do not reach the client', async () => {
      const exchange = await raw(rawSidecar, 'GET /hop HTTP/1.1\r\nHost: b\r\n\r\n', { until: (text) => parseResponses(text).length > 0 });
      const [response] = parseResponses(exchange.text);
      assert.equal(response?.status, 200, exchange.text);
      assert.equal(response!.body, 'ok');
      for (const name of ['x-foo', 'x-bar', 'keep-alive', 'proxy-authenticate', 'upgrade', 'trailer']) {
        assert.equal(response!.headers[name], undefined, `${name} reached the client:\n${exchange.text}`);
      }
      assert.ok(!/x-foo|x-bar/i.test(response!.headers.connection ?? ''), `Connection still names app headers: ${response!.headers.connection}`);
      assert.equal(response!.headers['x-end-to-end'], 'kept');
    });

    test('pipelined requests on one connection are all answered, in order', async () => {
      const paths = ['/p1', '/p2?x=1', '/p3', '/p4'];
      const bytes = paths.map((path) => `GET ${path} HTTP/1.1\r\nHost: b\r\n\r\n`).join('');
      const exchange = await raw(echoSidecar, bytes, { timeoutMs: 10000, until: (text) => parseResponses(text).length >= paths.length });
      const responses = parseResponses(exchange.text);
      assert.equal(responses.length, paths.length, exchange.text);
      assert.deepEqual(
        responses.map((response) => (JSON.parse(response.body) as EchoReply).url),
        paths,
      );
    });

    test('Connection: close from the app closes only the sidecar->app hop; the client connection stays usable', async () => {
      const socket = await openTls({ address: rawSidecar.inbound, leaf: peerA.leaf, ca: root.certPem });
      const reading = readRaw(socket, { timeoutMs: 10000, until: (text) => parseResponses(text).length >= 2 });
      socket.write('GET /close HTTP/1.1\r\nHost: b\r\n\r\n');
      await sleep(300);
      assert.ok(!socket.destroyed, 'the sidecar closed the client connection after the app closed its hop');
      socket.write('GET /hop HTTP/1.1\r\nHost: b\r\n\r\n');
      const exchange = await reading;
      const responses = parseResponses(exchange.text);
      assert.equal(responses.length, 2, exchange.text);
      assert.equal(responses[0]!.body, 'close');
      assert.notEqual(responses[0]!.headers.connection?.toLowerCase(), 'close', `the app's Connection: close was passed on:\n${exchange.text}`);
      assert.equal(responses[1]!.status, 200);
      assert.equal(responses[1]!.body, 'ok');
    });
  });

  describe('HTTP/1.0 clients', () => {
    for (const te of ['', 'TE: chunked\r\n']) {
      test(`never receive Transfer-Encoding: chunked (app answers chunked${te ? ', client sent TE: chunked' : ''})`, async () => {
        const exchange = await raw(rawSidecar, `GET /chunked HTTP/1.0\r\nHost: b\r\n${te}\r\n`, { timeoutMs: 5000 });
        assert.ok(exchange.closedByServer, `the response to an HTTP/1.0 client without Content-Length must end with the connection:\n${exchange.text}`);
        const head = exchange.text.slice(0, exchange.text.indexOf('\r\n\r\n'));
        assert.match(head, /^HTTP\/1\.[01] 200/);
        assert.doesNotMatch(head, /transfer-encoding/i, exchange.text);
        assert.equal(exchange.text.slice(head.length + 4), 'hello world');
      });
    }
  });

  describe('request smuggling (each on its own connection)', () => {
    const smuggled = 'GET /smuggled HTTP/1.1\r\nHost: b\r\n\r\n';
    const cases: Array<{ name: string; bytes: string }> = [
      {
        name: 'Content-Length and Transfer-Encoding: chunked together',
        bytes: `POST /cl-te HTTP/1.1\r\nHost: b\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
      },
      {
        name: 'two different Content-Length values with a request hidden in the body',
        bytes: `POST /cl-cl HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`,
      },
      {
        name: 'Content-Length: 0, 40 (list form)',
        bytes: `POST /cl-list HTTP/1.1\r\nHost: b\r\nContent-Length: 0, ${smuggled.length}\r\n\r\n${smuggled}`,
      },
      {
        name: '"Transfer-Encoding : chunked" (space before the colon)',
        bytes: `POST /te-space HTTP/1.1\r\nHost: b\r\nContent-Length: ${5 + smuggled.length}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n${smuggled}`,
      },
      {
        name: 'odd-case "Transfer-Encoding: cHuNkEd" with Content-Length',
        bytes: `POST /te-case HTTP/1.1\r\nHost: b\r\nContent-Length: ${5 + smuggled.length}\r\nTransfer-Encoding: cHuNkEd\r\n\r\n0\r\n\r\n${smuggled}`,
      },
      {
        name: '"Transfer-Encoding: chunked, identity" (chunked not last)',
        bytes: `POST /te-identity HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${smuggled}`,
      },
      {
        name: 'Transfer-Encoding: identity, chunked is not last in a second header line',
        bytes: `POST /te-two-lines HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n${smuggled}`,
      },
      {
        name: 'obs-fold continuation of Transfer-Encoding',
        bytes: `POST /te-fold HTTP/1.1\r\nHost: b\r\nContent-Length: ${5 + smuggled.length}\r\nTransfer-Encoding: identity\r\n chunked\r\n\r\n0\r\n\r\n${smuggled}`,
      },
      {
        name: 'bare LF line endings in the header block',
        bytes: `POST /bare-lf HTTP/1.1\nHost: b\nContent-Length: ${smuggled.length}\nTransfer-Encoding: chunked\n\n0\r\n\r\n${smuggled}`,
      },
    ];
    for (const { name, bytes } of cases) {
      test(`${name} -> 400 and close; the app sees nothing`, async () => {
        const before = echoApp.requests.length;
        const exchange = await raw(echoSidecar, bytes, { timeoutMs: 5000 });
        assert.match(exchange.text, /^HTTP\/1\.1 400 /, `expected 400, got:\n${exchange.text}`);
        assert.ok(exchange.closedByServer, 'the sidecar must close the connection after a 400');
        assert.equal(parseResponses(exchange.text).length, 1, `only one response expected:\n${exchange.text}`);
        await sleep(200);
        assert.deepEqual(echoApp.requests.slice(before).map((request) => request.url), []);
      });
    }

    test('odd-case "Transfer-Encoding: cHuNkEd" alone is chunked to both parsers: one request, decoded body, nothing smuggled', async () => {
      const before = echoApp.requests.length;
      const exchange = await raw(echoSidecar, `POST /te-case-only HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: cHuNkEd\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n`, { timeoutMs: 5000 });
      const responses = parseResponses(exchange.text);
      assert.equal(responses.length, 1, exchange.text);
      assert.equal(responses[0]!.status, 200);
      assert.equal((JSON.parse(responses[0]!.body) as EchoReply).bodyLength, 3);
      await sleep(200);
      assert.deepEqual(echoApp.requests.slice(before).map((request) => request.url), ['/te-case-only']);
    });

    test('the sidecar does not run with Node\'s insecure HTTP parser', async () => {
      const { readFile } = await import('node:fs/promises');
      const cmdline = (await readFile(`/proc/${echoSidecar.child.pid}/cmdline`, 'utf8')).split('\0');
      assert.ok(!cmdline.includes('--insecure-http-parser'), cmdline.join(' '));
      const environ = await readFile(`/proc/${echoSidecar.child.pid}/environ`, 'utf8');
      assert.doesNotMatch(environ, /insecure-http-parser/);
    });
  });

  describe('oversized headers (--max-header-size, default 16384)', () => {
    test('a 20 KB cookie gets 431 and a log line naming --max-header-size; the app sees nothing', async () => {
      const before = echoApp.requests.length;
      const exchange = await raw(echoSidecar, `GET /big-cookie HTTP/1.1\r\nHost: b\r\nCookie: session=${'c'.repeat(20 * 1024)}\r\n\r\n`, { timeoutMs: 5000 });
      assert.match(exchange.text, /^HTTP\/1\.1 431 /, exchange.text.slice(0, 300));
      assert.ok(exchange.closedByServer);
      const line = await echoSidecar.waitForLog((entry) => JSON.stringify(entry).includes('--max-header-size'), 5000);
      assert.equal(line.direction, 'inbound');
      assert.equal(echoApp.requests.length, before);
    });

    test('an app response header over the limit gives the client 502 and is logged', async () => {
      const exchange = await raw(rawSidecar, 'GET /big-header HTTP/1.1\r\nHost: b\r\n\r\n', { until: (text) => parseResponses(text).length > 0 });
      const [response] = parseResponses(exchange.text);
      assert.equal(response?.status, 502, exchange.text.slice(0, 500));
      const code = response!.headers['x-sidecar-error'];
      assert.ok(code, 'the 502 names its catalog code');
      assert.equal((JSON.parse(response!.body) as { error: string }).error, code);
      assert.doesNotMatch(exchange.text, /hhhhhhhh/, 'the oversized header must not reach the client');
      const line = await rawSidecar.waitForLog((entry) => entry.msg === 'forwarding failed' && entry.path === '/big-header', 5000);
      assert.equal(line.error, code);
      assert.match(JSON.stringify(line), /max-header-size/);
    });
  });
});
