/**
 * Header hygiene shared by both directions: hop-by-hop headers (RFC 9110 §7.6.1) and every header
 * a `Connection` header names are removed before a request or response crosses the sidecar.
 */
import type { IncomingHttpHeaders } from 'node:http';

/**
 * `transfer-encoding` is not in this list: the forwarder decides a request body's framing from it
 * (a chunked body without it would reach the app unframed, e.g. on a GET, and be parsed as a
 * second request) before removing it; responses drop it in `responseHeaders`.
 */
const hopByHop = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-authenticate'];
const responseHopByHop = new Set([...hopByHop, 'transfer-encoding']);

/**
 * Identity headers only the sidecar may set on inbound requests: `forwarded` and every
 * `x-forwarded-*` (client-cert, for, proto, host, port, prefix, uri, …), whatever an app might
 * trust. Spelled with underscores too: CGI, WSGI, Rack and PHP map `x_forwarded_client_cert` and
 * `x-forwarded-client-cert` to the same variable, so a client could forge one as the other.
 */
function isIdentityHeader(name: string): boolean {
  const dashed = name.includes('_') ? name.replaceAll('_', '-') : name;
  return dashed.startsWith('x-forwarded-') || dashed === 'forwarded';
}

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
  for (const name in headers) if (isIdentityHeader(name)) delete headers[name];
}

/** Headers as the flat `[name, value, …]` list `writeHead` takes, optionally filtered by name. */
export function flatHeaders(headers: IncomingHttpHeaders, keep: (name: string) => boolean = () => true): string[] {
  const flat: string[] = [];
  for (const name in headers) {
    if (!keep(name)) continue;
    const value = headers[name];
    if (Array.isArray(value)) for (const item of value) flat.push(name, item);
    else if (value !== undefined) flat.push(name, value);
  }
  return flat;
}

/**
 * A response's headers without hop-by-hop headers or any header its `Connection` names. The client
 * hop gets its own framing and `Connection` from Node's server (which knows about drains and
 * --max-connection-age).
 */
export function responseHeaders(headers: IncomingHttpHeaders): string[] {
  const connection = headers.connection;
  const named = connection ? new Set(String(connection).split(',').map((token) => token.trim().toLowerCase())) : undefined;
  return flatHeaders(headers, (name) => !responseHopByHop.has(name) && !named?.has(name));
}
