// --proxy-protocol v2 (TCP mode): the inbound listener sends the app a PROXY protocol v2 header
// (HAProxy doc/proxy-protocol.txt) before the peer's bytes, naming the peer's address and its
// verified identity. Checked with a parser written here from the spec, against the client socket's
// own view and openssl's reading of the client certificate, and with nginx as an independent
// PROXY v2 receiver.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { sleep } from './helpers/hardening.js';
import { opensslSans } from './helpers/identity.js';
import { forwardingFailedLine } from './helpers/operability.js';
import { freshDir, makeService, sharedRootCA, type ServiceIdentity } from './helpers/pki.js';
import { freePort, runCli, startSidecar, stopAllSidecars, type Address, type Sidecar } from './helpers/sidecar.js';
import { collect, connectMtls, connectPlain, listenTcpApp } from './helpers/tcp.js';

// ---- PROXY protocol v2, read straight from the spec (not from src/) ----

const SIGNATURE = Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1');
const TYPE_SSL = 0x20;
const SUBTYPE_SSL_VERSION = 0x21;
const SUBTYPE_SSL_CN = 0x22;
const SUBTYPE_SSL_CIPHER = 0x23;
/** The custom TLV the README documents for the peer's SPIFFE URI SAN. */
const TYPE_SPIFFE_ID = 0xe1;
const CLIENT_SSL = 0x01;
const CLIENT_CERT_CONN = 0x02;
const CLIENT_CERT_SESS = 0x04;

interface Tlv {
  type: number;
  value: Buffer;
}

interface ParsedHeader {
  version: number;
  command: number;
  /** 1 = AF_INET, 2 = AF_INET6. */
  family: number;
  /** 1 = STREAM. */
  transport: number;
  source: Address;
  destination: Address;
  tlvs: Tlv[];
  /** Bytes the header took, signature included. */
  length: number;
}

interface SslTlv {
  client: number;
  verify: number;
  subTlvs: Tlv[];
}

function parseTlvs(data: Buffer): Tlv[] {
  const tlvs: Tlv[] = [];
  let offset = 0;
  while (offset < data.length) {
    assert.ok(offset + 3 <= data.length, `a TLV header is cut off at offset ${offset}`);
    const length = data.readUInt16BE(offset + 1);
    assert.ok(offset + 3 + length <= data.length, `TLV 0x${data[offset]!.toString(16)} claims ${length} bytes past the end`);
    tlvs.push({ type: data[offset]!, value: data.subarray(offset + 3, offset + 3 + length) });
    offset += 3 + length;
  }
  return tlvs;
}

function formatIPv6(bytes: Buffer): string {
  const groups: string[] = [];
  for (let index = 0; index < 16; index += 2) groups.push(bytes.readUInt16BE(index).toString(16));
  return canonicalIPv6(groups.join(':'));
}

/** The WHATWG URL parser's canonical (compressed, lowercase) form of an IPv6 address. */
function canonicalIPv6(address: string): string {
  return new URL(`http://[${address}]/`).hostname.slice(1, -1);
}

/** undefined while `data` may still be an incomplete header; throws if it is not one. */
function parseProxyV2(data: Buffer): ParsedHeader | undefined {
  if (data.length < 16) return undefined;
  assert.deepEqual(data.subarray(0, 12), SIGNATURE, 'the 12-byte PROXY v2 signature');
  const length = 16 + data.readUInt16BE(14);
  if (data.length < length) return undefined;
  const family = data[13]! >> 4;
  const body = data.subarray(16, length);
  let addresses: { source: Address; destination: Address; size: number };
  if (family === 1) {
    const ip = (at: number) => [...body.subarray(at, at + 4)].join('.');
    addresses = { source: { host: ip(0), port: body.readUInt16BE(8) }, destination: { host: ip(4), port: body.readUInt16BE(10) }, size: 12 };
  } else if (family === 2) {
    addresses = {
      source: { host: formatIPv6(body.subarray(0, 16)), port: body.readUInt16BE(32) },
      destination: { host: formatIPv6(body.subarray(16, 32)), port: body.readUInt16BE(34) },
      size: 36,
    };
  } else {
    throw new Error(`unexpected address family ${family}`);
  }
  return {
    version: data[12]! >> 4,
    command: data[12]! & 0x0f,
    family,
    transport: data[13]! & 0x0f,
    source: addresses.source,
    destination: addresses.destination,
    tlvs: parseTlvs(body.subarray(addresses.size)),
    length,
  };
}

function sslTlvOf(header: ParsedHeader): SslTlv | undefined {
  const ssl = header.tlvs.filter((tlv) => tlv.type === TYPE_SSL);
  assert.ok(ssl.length <= 1, 'at most one PP2_TYPE_SSL');
  const value = ssl[0]?.value;
  return value ? { client: value[0]!, verify: value.readUInt32BE(1), subTlvs: parseTlvs(value.subarray(5)) } : undefined;
}

const textOf = (tlvs: Tlv[], type: number): string[] => tlvs.filter((tlv) => tlv.type === type).map((tlv) => tlv.value.toString('utf8'));

// ---- an app that reads an optional PROXY v2 header, then echoes ----

interface AppConnection {
  /** Every byte received, header included. */
  raw: Buffer;
  header: ParsedHeader | undefined;
  /** The bytes after the header (all of them without one). */
  payload: Buffer;
  ended: boolean;
}

interface ProxyAwareApp {
  port: number;
  url: string;
  connections: AppConnection[];
  close(): Promise<void>;
}

/** Echoes every byte after a PROXY v2 header (or every byte, if the connection starts without one). */
async function startProxyAwareApp(): Promise<ProxyAwareApp> {
  const connections: AppConnection[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    const record: AppConnection = { raw: Buffer.alloc(0), header: undefined, payload: Buffer.alloc(0), ended: false };
    connections.push(record);
    let decided = false;
    const deliver = (bytes: Buffer) => {
      record.payload = Buffer.concat([record.payload, bytes]);
      socket.write(bytes);
    };
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
    socket.on('end', () => {
      record.ended = true;
      socket.end();
    });
    socket.on('data', (chunk: Buffer) => {
      record.raw = Buffer.concat([record.raw, chunk]);
      if (decided) return deliver(chunk);
      const head = record.raw.subarray(0, SIGNATURE.length);
      if (!SIGNATURE.subarray(0, head.length).equals(head)) {
        decided = true;
        return deliver(record.raw);
      }
      const header = parseProxyV2(record.raw);
      if (!header) return;
      decided = true;
      record.header = header;
      if (record.raw.length > header.length) deliver(record.raw.subarray(header.length));
    });
  });
  return listenTcpApp(server, sockets, connections);
}

/** Sends `payload`, half-closes, and returns what came back before the connection closed. */
async function echoRoundTrip(socket: Socket, payload: Buffer): Promise<Buffer> {
  const reading = collect(socket);
  socket.end(payload);
  const result = await reading;
  assert.equal(result.closed, true, `the echo completes (error ${result.error})`);
  return result.data;
}

/** A client socket's own address; read while it is open (a closed socket forgets it). */
function ownAddress(socket: Socket): Address {
  assert.ok(socket.localAddress && socket.localPort, 'the client socket is connected');
  return { host: socket.localAddress, port: socket.localPort };
}

/** The app connection whose header names `source` (the client's own address) as its source. */
function connectionFrom(app: ProxyAwareApp, source: Address): AppConnection {
  const found = app.connections.find((connection) => connection.header?.source.port === source.port);
  assert.ok(found, `the app got a header naming source port ${source.port}; headers seen: ${JSON.stringify(app.connections.map((c) => c.header?.source))}`);
  return found;
}

function ipv6LoopbackAvailable(): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(0, '::1', () => probe.close(() => resolve(true)));
  });
}

const ipv6 = await ipv6LoopbackAvailable();

describe('--proxy-protocol v2', () => {
  let server: ServiceIdentity;
  let client: ServiceIdentity;
  let allowed: ServiceIdentity;
  let ca: string;
  let app: ProxyAwareApp;
  /** Strict inbound, --proxy-protocol v2. */
  let sidecarV2: Sidecar;
  /** The same without --proxy-protocol. */
  let sidecarOff: Sidecar;
  /** Permissive inbound, SIDECAR_PROXY_PROTOCOL=v2, --allow-spiffe for `allowed` only. */
  let sidecarPermissive: Sidecar;

  before(async () => {
    const root = await sharedRootCA();
    ca = root.certPem;
    [server, client, allowed, app] = await Promise.all([makeService(root, 'pp-server'), makeService(root, 'pp-client'), makeService(root, 'pp-allowed'), startProxyAwareApp()]);
    const inboundTcp = ['--cert-dir', server.certDir, '--protocol', 'tcp', '--app', app.url, '--outbound', 'off'];
    [sidecarV2, sidecarOff, sidecarPermissive] = await Promise.all([
      startSidecar([...inboundTcp, '--proxy-protocol', 'v2']),
      startSidecar(inboundTcp),
      startSidecar([...inboundTcp, '--mode', 'permissive', '--allow-spiffe', allowed.spiffeId], { env: { SIDECAR_PROXY_PROTOCOL: 'v2' } }),
    ]);
  });

  after(async () => {
    await stopAllSidecars();
    await app?.close();
  });

  test('the app reads a v2 header naming the mTLS peer (address, TLS version, CN, SPIFFE ID), then exactly the client bytes', async () => {
    const socket = await connectMtls(sidecarV2.inbound, client.leaf, ca);
    const view = { source: ownAddress(socket), version: socket.getProtocol(), cipher: socket.getCipher().name };
    const payload = randomBytes(64 * 1024);
    const echoed = await echoRoundTrip(socket, payload);
    assert.ok(echoed.equals(payload), `the echo is the payload (${echoed.length} of ${payload.length} bytes)`);

    const connection = connectionFrom(app, view.source);
    const header = connection.header!;
    assert.ok(connection.payload.equals(payload), 'the app got exactly the client bytes after the header');
    assert.deepEqual([header.version, header.command, header.family, header.transport], [2, 1, 1, 1], 'v2, PROXY, AF_INET, STREAM');
    assert.deepEqual(header.source, view.source, 'source = the client socket address');
    assert.deepEqual(header.destination, { host: '127.0.0.1', port: sidecarV2.inbound.port }, 'destination = the sidecar inbound address');

    const ssl = sslTlvOf(header);
    assert.ok(ssl, `a PP2_TYPE_SSL TLV; TLVs: ${header.tlvs.map((tlv) => tlv.type.toString(16)).join(',')}`);
    assert.equal(ssl.client, CLIENT_SSL | CLIENT_CERT_CONN | CLIENT_CERT_SESS, 'TLS, certificate on this connection and session');
    assert.equal(ssl.verify, 0, 'verify 0: the certificate was verified');
    assert.deepEqual(textOf(ssl.subTlvs, SUBTYPE_SSL_VERSION), [view.version]);
    assert.deepEqual(textOf(ssl.subTlvs, SUBTYPE_SSL_CIPHER), [view.cipher]);
    const cn = /(?:^|,)CN=([^,]+)/.exec(client.leaf.subject)?.[1];
    assert.equal(cn, 'pp-client', `openssl's subject: ${client.leaf.subject}`);
    assert.deepEqual(textOf(ssl.subTlvs, SUBTYPE_SSL_CN), [cn]);
    const uriSans = (await opensslSans(client.leaf.certPem)).filter((san) => san.type === 'URI').map((san) => san.value);
    assert.deepEqual(uriSans, [client.spiffeId], 'openssl reads one URI SAN');
    assert.deepEqual(textOf(header.tlvs, TYPE_SPIFFE_ID), uriSans, 'the SPIFFE TLV carries the URI SAN');
  });

  test('a resumed TLS session is reported as a certificate of the session, not of the connection', async () => {
    const first = await connectMtls(sidecarV2.inbound, client.leaf, ca);
    const ticket = once(first, 'session') as Promise<[Buffer]>;
    await echoRoundTrip(first, Buffer.from('first'));
    const [session] = await ticket;
    const second = await connectMtls(sidecarV2.inbound, client.leaf, ca, { session });
    assert.equal(second.isSessionReused(), true, 'the client resumed');
    const source = ownAddress(second);
    assert.equal((await echoRoundTrip(second, Buffer.from('second'))).toString(), 'second');
    const header = connectionFrom(app, source).header!;
    const ssl = sslTlvOf(header)!;
    assert.equal(ssl.client, CLIENT_SSL | CLIENT_CERT_SESS);
    assert.equal(ssl.verify, 0);
    assert.deepEqual(textOf(ssl.subTlvs, SUBTYPE_SSL_CN), ['pp-client']);
    assert.deepEqual(textOf(header.tlvs, TYPE_SPIFFE_ID), [client.spiffeId]);
  });

  test('by default (off) the app\'s first bytes are the client\'s bytes', async () => {
    const index = app.connections.length;
    const socket = await connectMtls(sidecarOff.inbound, client.leaf, ca);
    const payload = Buffer.from('hello without a header\n');
    assert.equal((await echoRoundTrip(socket, payload)).toString(), payload.toString());
    const connection = app.connections[index];
    assert.ok(connection, 'the app got the connection');
    assert.equal(connection.header, undefined);
    assert.equal(connection.raw.toString('latin1'), payload.toString('latin1'), 'the raw bytes are the payload, nothing before it');
  });

  describe('permissive mode (SIDECAR_PROXY_PROTOCOL=v2)', () => {
    test('a plaintext connection gets the addresses and no TLV', async () => {
      const socket = await connectPlain(sidecarPermissive.inbound);
      const source = ownAddress(socket);
      const payload = Buffer.from('plaintext bytes');
      assert.equal((await echoRoundTrip(socket, payload)).toString(), 'plaintext bytes');
      const connection = connectionFrom(app, source);
      const header = connection.header!;
      assert.deepEqual(header.source, source);
      assert.deepEqual(header.destination, { host: '127.0.0.1', port: sidecarPermissive.inbound.port });
      assert.deepEqual(header.tlvs, [], 'no SSL or SPIFFE TLV for plaintext');
      assert.ok(connection.payload.equals(payload));
    });

    test('TLS without a client certificate: PP2_TYPE_SSL with the TLS bit only, verify non-zero, no CN or SPIFFE ID', async () => {
      const options: ConnectionOptions & { allowHalfOpen: boolean } = { ...sidecarPermissive.inbound, ca, servername: 'localhost', allowHalfOpen: true };
      const socket = tlsConnect(options);
      await once(socket, 'secureConnect');
      const version = socket.getProtocol();
      const source = ownAddress(socket);
      assert.equal((await echoRoundTrip(socket, Buffer.from('tls, no cert'))).toString(), 'tls, no cert');
      const header = connectionFrom(app, source).header!;
      const ssl = sslTlvOf(header)!;
      assert.equal(ssl.client, CLIENT_SSL);
      assert.notEqual(ssl.verify, 0);
      assert.deepEqual(textOf(ssl.subTlvs, SUBTYPE_SSL_VERSION), [version]);
      assert.deepEqual(textOf(ssl.subTlvs, SUBTYPE_SSL_CN), []);
      assert.deepEqual(textOf(header.tlvs, TYPE_SPIFFE_ID), []);
    });

    test('an mTLS peer outside --allow-spiffe is closed and the app never gets a connection, let alone a header', async () => {
      const before = app.connections.length;
      const denied = await connectMtls(sidecarPermissive.inbound, client.leaf, ca);
      const reading = collect(denied, 5000);
      denied.write('must not arrive');
      const result = await reading;
      assert.equal(result.closed, true);
      assert.equal(result.data.length, 0);
      await sidecarPermissive.waitForLog((line) => line.msg === 'peer not allowed' && line.peer === client.spiffeId, 5000);
      await sleep(200);
      assert.equal(app.connections.length, before, 'no app connection for a denied peer');

      const admitted = await connectMtls(sidecarPermissive.inbound, allowed.leaf, ca);
      const source = ownAddress(admitted);
      assert.equal((await echoRoundTrip(admitted, Buffer.from('allowed'))).toString(), 'allowed');
      assert.deepEqual(textOf(connectionFrom(app, source).header!.tlvs, TYPE_SPIFFE_ID), [allowed.spiffeId]);
    });
  });

  describe('a dual-stack listener (--inbound [::]:0)', () => {
    let dualStack: Sidecar;

    before(async () => {
      if (ipv6) dualStack = await startSidecar(['--cert-dir', server.certDir, '--protocol', 'tcp', '--app', app.url, '--outbound', 'off', '--inbound', '[::]:0', '--proxy-protocol', 'v2']);
    });

    test('an IPv4 client, seen by the sidecar as ::ffff:127.0.0.1, is sent as TCP over IPv4', { skip: ipv6 ? false : 'no IPv6 loopback (::1) on this host' }, async () => {
      const socket = await connectMtls({ host: '127.0.0.1', port: dualStack.inbound.port }, client.leaf, ca);
      const source = ownAddress(socket);
      await echoRoundTrip(socket, Buffer.from('v4'));
      const header = connectionFrom(app, source).header!;
      assert.equal(header.family, 1, 'AF_INET');
      assert.deepEqual(header.source, { host: '127.0.0.1', port: source.port });
      assert.deepEqual(header.destination, { host: '127.0.0.1', port: dualStack.inbound.port });
    });

    test('an IPv6 client is sent as TCP over IPv6', { skip: ipv6 ? false : 'no IPv6 loopback (::1) on this host' }, async () => {
      const socket = await connectMtls({ host: '::1', port: dualStack.inbound.port }, client.leaf, ca);
      const source = ownAddress(socket);
      await echoRoundTrip(socket, Buffer.from('v6'));
      const header = connectionFrom(app, source).header!;
      assert.deepEqual([header.family, header.transport], [2, 1], 'AF_INET6, STREAM');
      assert.deepEqual(header.source, { host: canonicalIPv6(source.host), port: source.port });
      assert.deepEqual(header.destination, { host: '::1', port: dualStack.inbound.port });
      assert.deepEqual(textOf(header.tlvs, TYPE_SPIFFE_ID), [client.spiffeId]);
    });
  });

  test('an app that refuses the connection is still reported as app_refused (the queued header is not traffic)', async () => {
    const refusedPort = await freePort();
    const refusing = await startSidecar(['--cert-dir', server.certDir, '--protocol', 'tcp', '--app', `tcp://127.0.0.1:${refusedPort}`, '--outbound', 'off', '--proxy-protocol', 'v2']);
    const socket = await connectMtls(refusing.inbound, client.leaf, ca);
    const reading = collect(socket, 5000);
    socket.write('anyone there?');
    const result = await reading;
    assert.equal(result.closed, true, 'the peer connection is closed');
    assert.equal(result.data.length, 0);
    const line = await refusing.waitForLog(forwardingFailedLine('app_refused', 'inbound'), 5000);
    assert.equal(line.peer, client.spiffeId);
  });

  describe('usage errors', () => {
    /** Exit 2 and exactly one stderr line containing every one of `expected`. */
    const assertUsageError = async (args: string[], expected: string[], env?: Record<string, string>): Promise<void> => {
      const result = await runCli(['run', '--cert-dir', server.certDir, '--inbound', '127.0.0.1:0', '--outbound', 'off', '--admin', 'off', ...args], { env });
      assert.equal(result.code, 2, `exit code; stderr: ${result.stderr}\nstdout: ${result.stdout}`);
      const lines = result.stderr.trim().split('\n').filter((line) => line.trim() !== '');
      assert.equal(lines.length, 1, `one stderr line expected, got:\n${result.stderr}`);
      for (const text of expected) assert.ok(lines[0]!.includes(text), `the line should contain ${text}: ${lines[0]}`);
    };

    test('--proxy-protocol v2 with --protocol http exits 2 saying it needs --protocol tcp', async () => {
      await assertUsageError(['--proxy-protocol', 'v2', '--protocol', 'http'], ['--proxy-protocol', '"v2"', '--protocol tcp']);
    });

    test('--proxy-protocol v3 exits 2 naming the flag, the value and the allowed values', async () => {
      await assertUsageError(['--protocol', 'tcp', '--proxy-protocol', 'v3'], ['--proxy-protocol', '"v3"', 'off or v2']);
    });

    test('SIDECAR_PROXY_PROTOCOL=v3 exits 2 naming --proxy-protocol', async () => {
      await assertUsageError(['--protocol', 'tcp'], ['--proxy-protocol', '"v3"', 'off or v2'], { SIDECAR_PROXY_PROTOCOL: 'v3' });
    });
  });

  describe('nginx as the receiving app (an independent PROXY v2 implementation)', () => {
    // Debian puts it in /usr/sbin, which a non-root PATH may lack.
    const nginxPath = spawnSync('sh', ['-c', 'command -v nginx'], { encoding: 'utf8' }).stdout.trim() || (existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : '');
    const skip = nginxPath === '' ? 'nginx is not installed (apt-get install nginx; .ci/run installs it)' : false;
    let nginx: ChildProcess | undefined;
    let accessLog: string;
    let nginxPort: number;
    let front: Sidecar;

    before(async () => {
      if (skip) return;
      const prefix = await freshDir('nginx-proxy-protocol');
      accessLog = join(prefix, 'access.log');
      nginxPort = await freePort();
      const config = `
daemon off;
master_process off;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log info;
events { worker_connections 64; }
http {
    client_body_temp_path ${prefix}/client_body;
    proxy_temp_path ${prefix}/proxy;
    fastcgi_temp_path ${prefix}/fastcgi;
    uwsgi_temp_path ${prefix}/uwsgi;
    scgi_temp_path ${prefix}/scgi;
    log_format pp '$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port $status';
    server {
        listen 127.0.0.1:${nginxPort} proxy_protocol;
        access_log ${accessLog} pp;
        location / { return 200 "nginx read the header\\n"; }
    }
}
`;
      await writeFile(join(prefix, 'nginx.conf'), config);
      nginx = spawn(nginxPath, ['-p', prefix, '-e', join(prefix, 'error.log'), '-c', join(prefix, 'nginx.conf')], { stdio: 'ignore' });
      for (let attempt = 0; ; attempt += 1) {
        const up = await new Promise<boolean>((resolve) => {
          const probe = netConnect(nginxPort, '127.0.0.1');
          probe.once('connect', () => resolve(true)).once('error', () => resolve(false));
          // Close without sending: nginx logs a timed-out/broken header, not an access line.
          probe.once('connect', () => probe.destroy());
        });
        if (up) break;
        if (attempt > 100 || nginx.exitCode !== null) throw new Error(`nginx did not listen on ${nginxPort}: ${await readFile(join(prefix, 'error.log'), 'utf8').catch(() => '')}`);
        await sleep(50);
      }
      front = await startSidecar(['--cert-dir', server.certDir, '--protocol', 'tcp', '--app', `tcp://127.0.0.1:${nginxPort}`, '--outbound', 'off', '--proxy-protocol', 'v2']);
    });

    after(async () => {
      if (nginx && nginx.exitCode === null) {
        nginx.kill('SIGTERM');
        await once(nginx, 'exit');
      }
    });

    test('nginx accepts the header and logs the client address and port as $proxy_protocol_addr/_port', { skip }, async () => {
      const socket: TLSSocket = await connectMtls(front.inbound, client.leaf, ca);
      const source = ownAddress(socket);
      const reading = collect(socket);
      socket.write('GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
      const response = (await reading).data.toString('utf8');
      assert.match(response, /^HTTP\/1\.1 200 /, `nginx answered: ${response}`);
      assert.match(response, /nginx read the header\n$/);
      const expected = `${source.host} ${source.port} 127.0.0.1 ${front.inbound.port} 200`;
      let logged = '';
      for (let attempt = 0; attempt < 50 && !logged.includes(expected); attempt += 1) {
        logged = await readFile(accessLog, 'utf8').catch(() => '');
        if (!logged.includes(expected)) await sleep(50);
      }
      assert.ok(logged.split('\n').includes(expected), `nginx access log should hold "${expected}":\n${logged}`);
    });
  });
});
