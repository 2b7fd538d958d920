// Clients that talk to a sidecar the way real peers and apps do: an mTLS peer (node https),
// an app using the sidecar as its HTTP_PROXY (absolute-form requests), curl and openssl s_client.
import { execFile } from 'node:child_process';
import { request as httpRequest, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { describeCertificate, splitPem } from './pki.js';

export interface HttpResult {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  text: string;
  /** The body parsed as JSON (throws with the text when it is not JSON). */
  json<T = unknown>(): T;
}

export interface RequestOptions {
  host: string;
  port: number;
  /** Origin-form `/x`, or absolute-form `http://host:port/x` when talking to a forward proxy. */
  path: string;
  method?: string;
  headers?: OutgoingHttpHeaders;
  body?: Buffer | string;
  /** Whole-exchange limit; the promise rejects when it passes (default 15 s). */
  timeoutMs?: number;
  /** Source address of the connection, e.g. 127.0.0.2, so the server sees distinct callers. */
  localAddress?: string;
}

export interface TlsClientOptions {
  /** Client chain (leaf first) and key; omit to connect without a client certificate. */
  cert?: string;
  key?: string;
  /** Trust bundle for the server certificate. */
  ca: string;
  /** SNI and the name checked against the server certificate (default `localhost`). */
  servername?: string;
}

function toResult(status: number, headers: IncomingHttpHeaders, body: Buffer): HttpResult {
  const text = body.toString('utf8');
  return {
    status,
    headers,
    body,
    text,
    json<T>() {
      try {
        return JSON.parse(text) as T;
      } catch {
        throw new Error(`expected a JSON body, got status ${status}: ${text.slice(0, 500)}`);
      }
    },
  };
}

function send(options: RequestOptions, tls?: TlsClientOptions): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const common = {
      host: options.host,
      port: options.port,
      path: options.path,
      method: options.method ?? 'GET',
      headers: options.headers,
      localAddress: options.localAddress,
      // A fresh connection per request: tests about handshakes must not reuse a pooled socket.
      agent: false as const,
    };
    const request = tls
      ? httpsRequest({ ...common, cert: tls.cert, key: tls.key, ca: tls.ca, servername: tls.servername ?? 'localhost', rejectUnauthorized: true })
      : httpRequest(common);
    const timer = setTimeout(() => request.destroy(new Error(`request ${options.method ?? 'GET'} ${options.path} timed out after ${options.timeoutMs ?? 15000} ms`)), options.timeoutMs ?? 15000);
    request.on('response', (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        clearTimeout(timer);
        resolve(toResult(response.statusCode ?? 0, response.headers, Buffer.concat(chunks)));
      });
      response.on('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
    request.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    request.end(options.body);
  });
}

/** An HTTPS request presenting `cert`/`key` (a peer calling a sidecar's inbound listener). */
export function mtlsRequest(options: RequestOptions & TlsClientOptions): Promise<HttpResult> {
  return send(options, options);
}

/** A plaintext HTTP request (an app calling a sidecar's fixed upstream listener, or any local server). */
export function plainRequest(options: RequestOptions): Promise<HttpResult> {
  return send(options);
}

/**
 * What an HTTP_PROXY client sends: an absolute-form request line (`GET http://target/x HTTP/1.1`)
 * to the proxy, with the target's Host header.
 */
export function proxyRequest(options: Omit<RequestOptions, 'path' | 'host' | 'port'> & { proxy: { host: string; port: number }; target: string }): Promise<HttpResult> {
  const target = new URL(options.target);
  return send({
    ...options,
    host: options.proxy.host,
    port: options.proxy.port,
    path: target.href,
    headers: { host: target.host, ...options.headers },
  });
}

export interface CommandResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (bounded by `timeoutMs`) and never rejects on a non-zero exit. */
export function runCommand(file: string, args: string[], options: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = execFile(
      file,
      args,
      { timeout: options.timeoutMs ?? 15000, killSignal: 'SIGKILL', maxBuffer: 32 * 1024 * 1024, env: options.env, cwd: options.cwd },
      (error, stdout, stderr) => {
        const failure = error as (NodeJS.ErrnoException & { code?: number | string; signal?: NodeJS.Signals }) | null;
        resolve({
          code: failure ? (typeof failure.code === 'number' ? failure.code : null) : 0,
          signal: failure?.signal ?? null,
          stdout,
          stderr,
        });
      },
    );
    // A command that exits at once (ip, curl on a refused port) can close stdin before the write.
    child.stdin?.on('error', () => {});
    child.stdin?.end(options.input ?? '');
  });
}

/** `curl -sS` with the given arguments. */
export function curl(args: string[], options: { timeoutMs?: number } = {}): Promise<CommandResult> {
  return runCommand('curl', ['-sS', '--max-time', String(Math.ceil((options.timeoutMs ?? 15000) / 1000)), ...args], options);
}

export interface ServedCertificates {
  /** Every certificate the server sent, leaf first, as PEM. */
  pems: string[];
  /** Serial of each, as `openssl x509 -serial` prints it. */
  serials: string[];
  /** The s_client output, for failure messages. */
  output: string;
}

/**
 * The certificates a TLS server sends, read with `openssl s_client -showcerts` and parsed with
 * `openssl x509 -serial`: independent of node's TLS stack and of the product.
 */
export async function servedCertificates(options: { host: string; port: number; servername?: string; certPath?: string; keyPath?: string }): Promise<ServedCertificates> {
  const args = ['s_client', '-connect', `${options.host}:${options.port}`, '-showcerts', '-servername', options.servername ?? 'localhost'];
  if (options.certPath && options.keyPath) args.push('-cert', options.certPath, '-key', options.keyPath);
  const result = await runCommand('openssl', args, { timeoutMs: 10000 });
  const output = `${result.stdout}\n${result.stderr}`;
  const pems = splitPem(result.stdout);
  if (pems.length === 0) throw new Error(`openssl s_client showed no certificate (exit ${result.code}):\n${output}`);
  const serials = [];
  for (const pem of pems) serials.push((await describeCertificate(pem)).serial);
  return { pems, serials, output };
}
