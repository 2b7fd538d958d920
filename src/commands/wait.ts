/**
 * `mtls-sidecar wait`: exits 0 once the sidecar's /readyz answers 200, for an app entrypoint or a
 * Kubernetes lifecycle hook (the fix for apps that start before their sidecar).
 */
import { request } from 'node:http';

/** `HOST:PORT` (the port is required: there is no default admin port to guess) or an http(s) URL. */
function readyzUrl(admin: string): URL {
  const isUrl = /^https?:\/\//.test(admin);
  if (!isUrl && !/:\d+$/.test(admin)) throw new Error('no port');
  return new URL('/readyz', isUrl ? admin : `http://${admin}`);
}

function probe(url: URL): Promise<{ status: number; body: string } | undefined> {
  return new Promise((resolve) => {
    const req = request(url, { timeout: 2000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
    req.end();
  });
}

export async function waitReady(options: { admin: string; timeoutMs: number }): Promise<number> {
  let url: URL;
  try {
    url = readyzUrl(options.admin);
  } catch {
    process.stderr.write(`mtls-sidecar: --admin: ${JSON.stringify(options.admin)} is not HOST:PORT or a URL\n`);
    return 2;
  }
  const deadline = Date.now() + options.timeoutMs;
  let last = 'no answer yet';
  for (;;) {
    const answer = await probe(url);
    if (answer?.status === 200) {
      process.stdout.write(`sidecar ready (${url.href})\n`);
      return 0;
    }
    if (answer) last = `${answer.status} ${answer.body.replace(/\s+/g, ' ').slice(0, 300)}`;
    if (Date.now() >= deadline) {
      process.stderr.write(`mtls-sidecar: not ready after ${options.timeoutMs} ms at ${url.href}: ${last}\n`);
      return 1;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}
