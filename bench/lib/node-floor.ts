/**
 * The least a Node.js proxy can do for one side of a mesh hop, as a reference for what the runtime
 * itself costs (run as its own process by `nodeFloorPair` in mesh.ts):
 *
 *   node --import tsx bench/lib/node-floor.ts http|tcp outbound|inbound LISTEN_PORT TARGET_PORT CERT_DIR
 *
 * - http outbound: node:http server -> undici Pool with our client certificate, verified TLS to
 *   localhost:TARGET_PORT (the same libraries the sidecar forwards with);
 * - http inbound: node:https server requiring a client certificate -> undici Pool to the app;
 * - tcp: the same TLS legs, bytes joined with stream.pipe.
 *
 * No allow-list, no identity header, no header filtering, no error catalogue, no logs, no
 * metrics, no timeouts: nothing a sidecar must do beyond moving the bytes. Not a product.
 */
import { readFileSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { Pool } from 'undici';

const [protocol, side, listenPort, targetPort, certDir] = process.argv.slice(2);
const credentials = {
  cert: readFileSync(path.join(certDir, 'tls.crt')),
  key: readFileSync(path.join(certDir, 'tls.key')),
  ca: readFileSync(path.join(certDir, 'ca.crt')),
};
const target = Number(targetPort);

function httpFloor(): void {
  const pool =
    side === 'outbound'
      ? new Pool(`https://localhost:${target}`, { connections: 64, connect: { ...credentials, servername: 'localhost' } })
      : new Pool(`http://127.0.0.1:${target}`, { connections: 64 });
  const forward = (req: IncomingMessage, res: ServerResponse) => {
    const body = req.method === 'GET' || req.method === 'HEAD' ? null : req;
    pool.request({ path: req.url ?? '/', method: req.method as 'GET', headers: req.headers, body }).then(
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers as http.OutgoingHttpHeaders);
        answer.body.pipe(res);
      },
      () => {
        res.statusCode = 502;
        res.end();
      },
    );
  };
  const server = side === 'outbound' ? http.createServer(forward) : https.createServer({ ...credentials, requestCert: true, rejectUnauthorized: true }, forward);
  server.listen(Number(listenPort), '127.0.0.1');
}

function join(client: net.Socket, upstream: net.Socket): void {
  const closeBoth = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', closeBoth).on('close', closeBoth);
  upstream.on('error', closeBoth).on('close', closeBoth);
  client.pipe(upstream);
  upstream.pipe(client);
}

function tcpFloor(): void {
  if (side === 'outbound') {
    net
      .createServer({ noDelay: true }, (client) => {
        client.pause();
        const upstream = tls.connect({ ...credentials, host: '127.0.0.1', port: target, servername: 'localhost' }, () => join(client, upstream));
        upstream.setNoDelay(true);
        upstream.on('error', () => client.destroy());
      })
      .listen(Number(listenPort), '127.0.0.1');
  } else {
    tls
      .createServer({ ...credentials, requestCert: true, rejectUnauthorized: true }, (client) => {
        client.setNoDelay(true);
        join(client, net.connect({ host: '127.0.0.1', port: target, noDelay: true }));
      })
      .listen(Number(listenPort), '127.0.0.1');
  }
}

if (protocol === 'tcp') tcpFloor();
else httpFloor();
process.on('SIGTERM', () => process.exit(0));
