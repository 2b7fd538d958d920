/**
 * Header hygiene shared by both directions: hop-by-hop headers (RFC 9110 §7.6.1) and every header
 * a `Connection` header names are removed before a request or response crosses the sidecar.
 */
import type { IncomingHttpHeaders } from 'node:http';

/**
 * `transfer-encoding` is deliberately absent: Node's server has already validated the framing, and
 * Node's client re-frames the body only while the header is present. Dropping it would send a
 * chunked body unframed (e.g. on a GET), and the app would parse the body as a second request.
 */
const hopByHop = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-authenticate'];

/** Identity headers only the sidecar may set on inbound requests. */
export const identityHeaders = ['x-forwarded-client-cert', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'forwarded'];

/**
 * Removes hop-by-hop headers in place. `keepUpgrade` keeps `connection`/`upgrade` for a WebSocket
 * handshake, which must reach the next hop.
 */
export function stripHopByHop(headers: IncomingHttpHeaders, keepUpgrade = false): void {
  const connection = headers.connection;
  if (connection) {
    for (const token of String(connection).split(',')) {
      const name = token.trim().toLowerCase();
      if (name && !(keepUpgrade && name === 'upgrade')) delete headers[name];
    }
  }
  for (const name of hopByHop) {
    if (keepUpgrade && (name === 'connection' || name === 'upgrade')) continue;
    delete headers[name];
  }
}

export function stripIdentityHeaders(headers: IncomingHttpHeaders): void {
  for (const name of identityHeaders) delete headers[name];
}
