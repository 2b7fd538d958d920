import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { ServiceCertDir } from './pki.js';
import { sleep } from './processes.js';

export interface CheckResponse {
  status: number;
  body: string;
}

function get(url: string, clientIdentity?: ServiceCertDir): Promise<CheckResponse> {
  return new Promise((resolve, reject) => {
    const onResponse = (response: http.IncomingMessage): void => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    };
    const request = clientIdentity
      ? https.get(url, {
          agent: false,
          cert: readFileSync(clientIdentity.cert),
          key: readFileSync(clientIdentity.key),
          ca: readFileSync(clientIdentity.ca),
          servername: 'localhost',
        }, onResponse)
      : http.get(url, { agent: false }, onResponse);
    request.setTimeout(5000, () => request.destroy(new Error('timed out after 5 s')));
    request.once('error', reject);
  });
}

/**
 * One real request through a setup before it is measured, so a misconfigured pair fails loudly
 * instead of producing a fast table of errors. Retries briefly while listeners finish starting.
 */
export async function expectOk(url: string, what: string, clientIdentity?: ServiceCertDir): Promise<void> {
  const deadline = Date.now() + 10_000;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const response = await get(url, clientIdentity);
      if (response.status === 200 && response.body === 'ok') return;
      last = `status ${response.status}, body ${JSON.stringify(response.body.slice(0, 300))}`;
    } catch (error) {
      last = (error as Error).message;
    }
    await sleep(200);
  }
  throw new Error(`${what}: GET ${url} did not answer 200 "ok" (last: ${last})`);
}
