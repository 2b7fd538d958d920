import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { ServiceCertDir } from './pki.js';
import { sleep } from './processes.js';

export interface CheckResponse {
  status: number;
  /** The first bytes of the body, for messages and the "ok" check. */
  bodyStart: string;
  bodyBytes: number;
}

export interface CheckRequest {
  method?: 'GET' | 'POST';
  /** Sends a body of this many bytes. */
  bodyBytes?: number;
  /** Client certificate for an https:// URL. */
  clientIdentity?: ServiceCertDir;
}

/** What a setup must answer before it is measured. */
export interface ExpectedResponse {
  /** The exact body, or its exact size. */
  body?: string;
  bodyBytes?: number;
}

function send(url: string, request: CheckRequest): Promise<CheckResponse> {
  return new Promise((resolve, reject) => {
    const onResponse = (response: http.IncomingMessage): void => {
      let bodyStart = '';
      let bodyBytes = 0;
      response.on('data', (chunk: Buffer) => {
        if (bodyStart.length < 300) bodyStart += chunk.subarray(0, 300).toString('utf8');
        bodyBytes += chunk.length;
      });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, bodyStart: bodyStart.slice(0, 300), bodyBytes }));
    };
    const body = request.bodyBytes !== undefined ? Buffer.alloc(request.bodyBytes, 'x') : undefined;
    const common = { method: request.method ?? 'GET', agent: false as const, headers: body ? { 'content-length': String(body.length) } : {} };
    const identity = request.clientIdentity;
    const outgoing = identity
      ? https.request(url, {
          ...common,
          cert: readFileSync(identity.cert),
          key: readFileSync(identity.key),
          ca: readFileSync(identity.ca),
          servername: 'localhost',
        }, onResponse)
      : http.request(url, common, onResponse);
    outgoing.setTimeout(5000, () => outgoing.destroy(new Error('timed out after 5 s')));
    outgoing.once('error', reject);
    outgoing.end(body);
  });
}

function describeExpected(expected: ExpectedResponse): string {
  return expected.body !== undefined ? `200 ${JSON.stringify(expected.body)}` : `200 with a ${expected.bodyBytes}-byte body`;
}

/**
 * One real request through a setup before it is measured, so a misconfigured pair fails loudly
 * instead of producing a fast table of errors. Retries briefly while listeners finish starting.
 */
export async function expectResponse(url: string, what: string, request: CheckRequest, expected: ExpectedResponse): Promise<void> {
  const deadline = Date.now() + 10_000;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const response = await send(url, request);
      const bodyMatches = expected.body !== undefined ? response.bodyStart === expected.body && response.bodyBytes === Buffer.byteLength(expected.body) : response.bodyBytes === expected.bodyBytes;
      if (response.status === 200 && bodyMatches) return;
      last = `status ${response.status}, ${response.bodyBytes} bytes, body ${JSON.stringify(response.bodyStart.slice(0, 300))}`;
    } catch (error) {
      last = (error as Error).message;
    }
    await sleep(200);
  }
  throw new Error(`${what}: ${request.method ?? 'GET'} ${url} did not answer ${describeExpected(expected)} (last: ${last})`);
}

/** GET `url` answers 200 "ok" (the app's small response) through the setup. */
export function expectOk(url: string, what: string, clientIdentity?: ServiceCertDir): Promise<void> {
  return expectResponse(url, what, { clientIdentity }, { body: 'ok' });
}
