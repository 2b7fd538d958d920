// gRPC through a TCP-mode pair (SPEC §2 --protocol tcp): a real @grpc/grpc-js client speaks
// plaintext h2 to sidecar A's --upstream listener, A originates mTLS (ALPN h2) to sidecar B, and B
// pipes the bytes to a real plaintext @grpc/grpc-js server. Unary, server-streaming and bidi calls,
// metadata both ways, and what B logs about the connection (ALPN, caller identity).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { fetchMetrics, metricValue } from './helpers/identity.js';
import { makeService, sharedRootCA, type ServiceIdentity } from './helpers/pki.js';
import { freePort, startSidecar, stopAllSidecars, type LogLine, type Sidecar } from './helpers/sidecar.js';

interface EchoRequest {
  text: string;
  /** Server-streaming: how many messages to answer with. */
  count?: number;
}

interface EchoResponse {
  text: string;
  index?: number;
  /** The `x-request-id` metadata the server received. */
  requestId?: string;
}

const toJson = (value: unknown): Buffer => Buffer.from(JSON.stringify(value));
const fromJson = <T>(buffer: Buffer): T => JSON.parse(buffer.toString('utf8')) as T;

function method(name: string, requestStream: boolean, responseStream: boolean): grpc.MethodDefinition<EchoRequest, EchoResponse> {
  return {
    path: `/sidecar.test.Echo/${name}`,
    requestStream,
    responseStream,
    requestSerialize: toJson,
    requestDeserialize: (buffer: Buffer) => fromJson<EchoRequest>(buffer),
    responseSerialize: toJson,
    responseDeserialize: (buffer: Buffer) => fromJson<EchoResponse>(buffer),
  };
}

/** A service defined without .proto files: JSON messages in gRPC framing. */
const echoService = {
  unary: method('Unary', false, false),
  count: method('Count', false, true),
  chat: method('Chat', true, true),
} satisfies grpc.ServiceDefinition;

const echoImplementation: grpc.UntypedServiceImplementation = {
  unary: (call: grpc.ServerUnaryCall<EchoRequest, EchoResponse>, callback: grpc.sendUnaryData<EchoResponse>) => {
    const requestId = String(call.metadata.get('x-request-id')[0] ?? '');
    const header = new grpc.Metadata();
    header.set('x-served-by', 'grpc-app');
    call.sendMetadata(header);
    const trailer = new grpc.Metadata();
    trailer.set('x-request-id-echo', requestId);
    callback(null, { text: call.request.text, requestId }, trailer);
  },
  count: (call: grpc.ServerWritableStream<EchoRequest, EchoResponse>) => {
    for (let index = 0; index < (call.request.count ?? 0); index += 1) call.write({ text: call.request.text, index });
    call.end();
  },
  chat: (call: grpc.ServerDuplexStream<EchoRequest, EchoResponse>) => {
    call.on('data', (message: EchoRequest) => call.write({ text: message.text.toUpperCase() }));
    call.on('end', () => call.end());
  },
};

/** The methods of the generic client, typed. */
interface EchoClient extends grpc.Client {
  unary(request: EchoRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<EchoResponse>): grpc.ClientUnaryCall;
  count(request: EchoRequest): grpc.ClientReadableStream<EchoResponse>;
  chat(): grpc.ClientDuplexStream<EchoRequest, EchoResponse>;
}
const EchoClientConstructor = grpc.makeGenericClientConstructor(echoService, 'Echo');

function unaryCall(client: EchoClient, request: EchoRequest, metadata: grpc.Metadata): Promise<{ response: EchoResponse; header: grpc.Metadata; trailer: grpc.Metadata }> {
  return new Promise((resolve, reject) => {
    let header = new grpc.Metadata();
    let trailer = new grpc.Metadata();
    let response: EchoResponse | undefined;
    let failure: Error | undefined;
    let settled = 0;
    const settle = () => {
      settled += 1;
      if (settled < 2) return;
      if (failure || !response) reject(failure ?? new Error('no response'));
      else resolve({ response, header, trailer });
    };
    const call = client.unary(request, metadata, (error, value) => {
      failure = error ?? undefined;
      response = value;
      settle();
    });
    call.on('metadata', (received: grpc.Metadata) => (header = received));
    call.on('status', (status: grpc.StatusObject) => {
      trailer = status.metadata;
      settle();
    });
  });
}

function readAll<T>(stream: NodeJS.ReadableStream): Promise<T[]> {
  return new Promise((resolve, reject) => {
    const items: T[] = [];
    stream.on('data', (item: T) => items.push(item));
    stream.on('end', () => resolve(items));
    stream.on('error', reject);
  });
}

describe('gRPC through a TCP-mode pair', () => {
  let callerA: ServiceIdentity;
  let serverB: ServiceIdentity;
  let grpcServer: grpc.Server;
  let sidecarA: Sidecar;
  let sidecarB: Sidecar;
  let localPort: number;
  let client: EchoClient;

  before(async () => {
    const root = await sharedRootCA();
    [callerA, serverB, localPort] = await Promise.all([makeService(root, 'grpc-caller'), makeService(root, 'grpc-server'), freePort()]);
    grpcServer = new grpc.Server();
    grpcServer.addService(echoService, echoImplementation);
    const appPort = await new Promise<number>((resolve, reject) =>
      grpcServer.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, port) => (error ? reject(error) : resolve(port))),
    );
    sidecarB = await startSidecar(['--cert-dir', serverB.certDir, '--protocol', 'tcp', '--app', `tcp://127.0.0.1:${appPort}`, '--outbound', 'off']);
    sidecarA = await startSidecar([
      '--cert-dir', callerA.certDir, '--protocol', 'tcp', '--inbound', 'off',
      '--upstream', `${localPort}=localhost:${sidecarB.inbound.port}@${serverB.spiffeId}`,
    ]);
    const upstream = sidecarA.upstream(localPort);
    client = new EchoClientConstructor(`${upstream.host}:${upstream.port}`, grpc.credentials.createInsecure()) as unknown as EchoClient;
  });

  after(async () => {
    client?.close();
    await stopAllSidecars();
    await new Promise<void>((resolve) => (grpcServer ? grpcServer.tryShutdown(() => resolve()) : resolve()));
  });

  test('a unary call round-trips, with metadata both ways', async () => {
    const metadata = new grpc.Metadata();
    metadata.set('x-request-id', 'req-42');
    const { response, header, trailer } = await unaryCall(client, { text: 'hello through the mesh' }, metadata);
    assert.deepEqual(response, { text: 'hello through the mesh', requestId: 'req-42' }, sidecarA.output().slice(-2000));
    assert.deepEqual(header.get('x-served-by'), ['grpc-app'], 'response header metadata');
    assert.deepEqual(trailer.get('x-request-id-echo'), ['req-42'], 'trailer metadata');
  });

  test('a 1 MB unary message passes unchanged', async () => {
    const text = 'x'.repeat(1024 * 1024);
    const { response } = await unaryCall(client, { text }, new grpc.Metadata());
    assert.equal(response.text.length, text.length);
    assert.equal(response.text, text);
  });

  test('a server-streaming call delivers every message in order', async () => {
    const messages = await readAll<EchoResponse>(client.count({ text: 'tick', count: 50 }));
    assert.deepEqual(messages.map((message) => message.index), Array.from({ length: 50 }, (_unused, index) => index));
    assert.ok(messages.every((message) => message.text === 'tick'));
  });

  test('a bidi-streaming call answers each message', async () => {
    const call = client.chat();
    const replies = readAll<EchoResponse>(call);
    for (const word of ['alpha', 'beta', 'gamma']) call.write({ text: word });
    call.end();
    assert.deepEqual((await replies).map((reply) => reply.text), ['ALPHA', 'BETA', 'GAMMA']);
  });

  test("B's connection line shows ALPN h2 and A's SPIFFE ID as the peer", async () => {
    // The per-connection line is written when the piped connection closes: close the channel.
    client.close();
    const isConnection = (line: LogLine) => line.msg === 'connection' && line.direction === 'inbound';
    const inbound = await sidecarB.waitForLog(isConnection, 10000);
    assert.equal(inbound.alpn, 'h2', JSON.stringify(inbound));
    assert.equal(inbound.peer, callerA.spiffeId);
    assert.equal(inbound.tls, 'mtls');
    const outbound = await sidecarA.waitForLog((line) => line.msg === 'connection' && line.direction === 'outbound', 10000);
    assert.equal(outbound.alpn, 'h2', JSON.stringify(outbound));
    assert.equal(outbound.upstream, `localhost:${sidecarB.inbound.port}`);
    const connections = sidecarB.logs().filter(isConnection);
    assert.equal(connections.length, 1, 'every call shared one piped h2 connection');
    assert.equal(metricValue(await fetchMetrics(sidecarB), 'sidecar_tcp_connections_total', { direction: 'inbound', result: 'ok' }), 1);
  });
});
