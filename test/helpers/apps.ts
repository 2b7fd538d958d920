// Stand-ins for the local app behind a sidecar and for a TLS upstream in front of one.
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { rm } from 'node:fs/promises';
import { createServer as createHttpServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo, Server as NetServer } from 'node:net';
import type { SecureVersion, TLSSocket } from 'node:tls';

/** What the echo app answers for any route other than /bytes and /slow. */
export interface EchoReply {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  /** Raw header pairs, so repeated headers are visible. */
  rawHeaders: string[];
  bodySha256: string;
  bodyLength: number;
}

export interface RecordedRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
}

export interface EchoApp {
  /** `http://127.0.0.1:PORT` — the value for `--app`. */
  readonly url: string;
  readonly port: number;
  /** `unix:/path.sock` when started with a socket path. */
  readonly unixUrl?: string;
  /** Every request the app received, in order. */
  readonly requests: RecordedRequest[];
  close(): Promise<void>;
}

/** Deterministic content of `/bytes?n=N`: byte i is (i * 31 + 7) mod 251, so offsets are visible. */
export function deterministicBytes(length: number): Buffer {
  const buffer = Buffer.allocUnsafe(length);
  for (let index = 0; index < length; index += 1) buffer[index] = (index * 31 + 7) % 251;
  return buffer;
}

export function sha256Hex(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

async function bodyDigest(request: IncomingMessage): Promise<{ sha256: string; length: number }> {
  const hash = createHash('sha256');
  let length = 0;
  for await (const chunk of request) {
    hash.update(chunk as Buffer);
    length += (chunk as Buffer).length;
  }
  return { sha256: hash.digest('hex'), length };
}

function handleEcho(requests: RecordedRequest[]) {
  return async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    requests.push({ method: request.method ?? '', url: request.url ?? '', headers: request.headers, rawHeaders: request.rawHeaders });
    const url = new URL(request.url ?? '/', 'http://app.local');
    const { sha256, length } = await bodyDigest(request);
    if (url.pathname === '/bytes') {
      const size = Number(url.searchParams.get('n') ?? '1048576');
      const body = deterministicBytes(size);
      response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(body.length), 'x-body-sha256': sha256Hex(body) });
      // Written in slices so the response really streams rather than arriving as one chunk.
      const slice = 64 * 1024;
      for (let offset = 0; offset < body.length; offset += slice) {
        if (!response.write(body.subarray(offset, offset + slice))) await once(response, 'drain');
      }
      response.end();
      return;
    }
    if (url.pathname === '/split') {
      // A streamed answer in two writes 2 ms apart (chunked): what an SSE or streaming API does.
      response.writeHead(200, { 'content-type': 'text/plain' });
      response.write('a');
      setTimeout(() => response.end('b'), 2);
      return;
    }
    if (url.pathname === '/slow') {
      const delay = Number(url.searchParams.get('ms') ?? '2000');
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
    const reply: EchoReply = {
      method: request.method ?? '',
      url: request.url ?? '',
      headers: request.headers,
      rawHeaders: request.rawHeaders,
      bodySha256: sha256,
      bodyLength: length,
    };
    const text = JSON.stringify(reply);
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)), 'x-echo-app': 'yes' });
    response.end(text);
  };
}

async function listen(server: NetServer, target: { port: number; host: string } | { path: string }): Promise<void> {
  server.listen(target);
  await once(server, 'listening');
}

/** Values of header `name` as the app received them (every copy, from the raw header list). */
export function headerCopies(reply: Pick<EchoReply, 'rawHeaders'>, name: string): string[] {
  const copies: string[] = [];
  for (let index = 0; index < reply.rawHeaders.length; index += 2) {
    if (reply.rawHeaders[index]?.toLowerCase() === name.toLowerCase()) copies.push(reply.rawHeaders[index + 1] ?? '');
  }
  return copies;
}

/** Listens on 127.0.0.1 on a free port; resolves with the port. */
export async function listenLoopback(server: NetServer): Promise<number> {
  await listen(server, { port: 0, host: '127.0.0.1' });
  return (server.address() as AddressInfo).port;
}

/** Closes an HTTP(S) server, cutting the connections it still holds (keep-alive, hanging requests). */
export function closeServer(server: Server | HttpsServer): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/**
 * Plain HTTP echo app on 127.0.0.1:0 (and on `unixSocketPath` when given). Routes:
 * `/bytes?n=N` N deterministic bytes; `/slow?ms=N` answers after N ms; anything else echoes.
 */
export async function startEchoApp(options: { unixSocketPath?: string } = {}): Promise<EchoApp> {
  const requests: RecordedRequest[] = [];
  const handler = handleEcho(requests);
  const tcpServer = createHttpServer((request, response) => void handler(request, response));
  const port = await listenLoopback(tcpServer);
  let unixServer: Server | undefined;
  if (options.unixSocketPath) {
    await rm(options.unixSocketPath, { force: true });
    unixServer = createHttpServer((request, response) => void handler(request, response));
    await listen(unixServer, { path: options.unixSocketPath });
  }
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    unixUrl: options.unixSocketPath ? `unix:${options.unixSocketPath}` : undefined,
    requests,
    async close() {
      await closeServer(tcpServer);
      if (unixServer) await closeServer(unixServer);
    },
  };
}

/** What the TLS test server answers. */
export interface TlsServerReply {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  /** Serial of the client certificate the server saw (uppercase hex as node reports it), or null. */
  clientSerial: string | null;
  clientSubjectCN: string | null;
  /** Whether the client certificate verified against the server's `ca`. */
  clientAuthorized: boolean;
  bodySha256: string;
  bodyLength: number;
  servername: string | null;
}

export interface TlsTestServer {
  readonly port: number;
  readonly host: string;
  /** Every request the server answered, in order. */
  readonly requests: TlsServerReply[];
  /** TLS handshakes that failed, with the error message. */
  readonly handshakeErrors: string[];
  /** Every completed handshake: the protocol and suite (OpenSSL name) that were negotiated. */
  readonly handshakes: Array<{ protocol: string | null; cipher: string }>;
  close(): Promise<void>;
}

/** TLS settings of the test upstream beyond Node's defaults, e.g. to offer only one suite. */
export interface TlsServerSettings {
  /** OpenSSL cipher list for TLS 1.2 and below. */
  ciphers?: string;
  maxVersion?: SecureVersion;
  /** Choose the suite by the server's `ciphers` order rather than the client's. */
  honorCipherOrder?: boolean;
}

/**
 * An HTTPS upstream (node https) with the given chain and key. With `requireClientCert`, a client
 * certificate that does not verify against `ca` fails the handshake; `tls` narrows what it offers.
 * `/bytes?n=N` serves N deterministic bytes; anything else answers JSON describing the request and
 * the client cert.
 */
export async function startTlsServer(options: {
  certPem: string;
  keyPem: string;
  ca?: string;
  requireClientCert?: boolean;
  tls?: TlsServerSettings;
}): Promise<TlsTestServer> {
  const requests: TlsServerReply[] = [];
  const handshakeErrors: string[] = [];
  const handshakes: TlsTestServer['handshakes'] = [];
  const server = createHttpsServer(
    {
      ...options.tls,
      cert: options.certPem,
      key: options.keyPem,
      ca: options.ca,
      requestCert: options.ca !== undefined,
      rejectUnauthorized: options.requireClientCert ?? false,
    },
    (request, response) => {
      void (async () => {
        const socket = request.socket as TLSSocket;
        const url = new URL(request.url ?? '/', 'https://upstream.local');
        const { sha256, length } = await bodyDigest(request);
        if (url.pathname === '/bytes') {
          const body = deterministicBytes(Number(url.searchParams.get('n') ?? '1048576'));
          response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(body.length) });
          response.end(body);
          return;
        }
        const peer = socket.getPeerCertificate();
        const hasPeer = peer !== null && typeof peer === 'object' && 'serialNumber' in peer && Boolean(peer.serialNumber);
        const reply: TlsServerReply = {
          method: request.method ?? '',
          url: request.url ?? '',
          headers: request.headers,
          clientSerial: hasPeer ? peer.serialNumber.toUpperCase() : null,
          clientSubjectCN: hasPeer ? (peer.subject?.CN ?? null) as string | null : null,
          clientAuthorized: socket.authorized,
          bodySha256: sha256,
          bodyLength: length,
          servername: (socket as TLSSocket & { servername?: string | false }).servername || null,
        };
        requests.push(reply);
        const text = JSON.stringify(reply);
        response.writeHead(200, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) });
        response.end(text);
      })();
    },
  );
  server.on('tlsClientError', (error) => handshakeErrors.push(error.message));
  server.on('secureConnection', (socket: TLSSocket) => handshakes.push({ protocol: socket.getProtocol(), cipher: socket.getCipher().name }));
  const port = await listenLoopback(server);
  return {
    port,
    host: '127.0.0.1',
    requests,
    handshakeErrors,
    handshakes,
    close: () => closeServer(server),
  };
}
