/**
 * PROXY protocol v2 (HAProxy, doc/proxy-protocol.txt): the binary header the TCP-mode inbound
 * listener writes to the app before any of the peer's bytes (`--proxy-protocol v2`), so an app
 * behind the sidecar learns who really connected — the peer's address and its verified certificate
 * identity — instead of seeing every connection come from 127.0.0.1.
 *
 * Layout: the 12-byte signature, 0x21 (version 2, command PROXY), 0x11 (TCP over IPv4) or 0x21
 * (TCP over IPv6), a 16-bit length, source then destination address and port, then TLVs:
 * - PP2_TYPE_SSL (0x20), for TLS connections only: `client` bits, `verify` (0 = a certificate was
 *   presented and verified), sub-TLVs SSL_VERSION, SSL_CN (when the subject has a CN), SSL_CIPHER;
 * - PP2_TYPE_SPIFFE_ID (0xE1, custom range): one TLV per `spiffe://` URI SAN of the verified peer
 *   certificate, in certificate order, the URI as UTF-8.
 * A plaintext connection (permissive mode) carries the addresses and no TLV.
 */
import { isIPv4, isIPv6, type Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { ConnectionSecurity } from './peer-tls.js';

const signature = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const versionCommandProxy = 0x21;
const familyTcp4 = 0x11;
const familyTcp6 = 0x21;

export const PP2_TYPE_SSL = 0x20;
export const PP2_SUBTYPE_SSL_VERSION = 0x21;
export const PP2_SUBTYPE_SSL_CN = 0x22;
export const PP2_SUBTYPE_SSL_CIPHER = 0x23;
/** Custom range 0xE0–0xEF; 0xE1 because 0xE0 (GCP), 0xEA (AWS) and 0xEE (Azure) are in use by clouds. */
export const PP2_TYPE_SPIFFE_ID = 0xe1;

export const PP2_CLIENT_SSL = 0x01;
export const PP2_CLIENT_CERT_CONN = 0x02;
export const PP2_CLIENT_CERT_SESS = 0x04;

/** `verify` when no client certificate was presented (the spec only says "non-zero"). */
const verifyNoCertificate = 1;

export interface Endpoint {
  address: string;
  port: number;
}

export interface ProxyHeaderTls {
  /** `TLSv1.3`, as OpenSSL names it. */
  version: string;
  /** OpenSSL cipher name, e.g. `TLS_AES_256_GCM_SHA384`. */
  cipher: string;
  /** The verified client certificate's identity; undefined when none was presented. */
  peer: { commonName: string | undefined; spiffeIds: string[]; sentOnThisConnection: boolean } | undefined;
}

export interface ProxyHeader {
  source: Endpoint;
  destination: Endpoint;
  tls: ProxyHeaderTls | undefined;
}

function tlv(type: number, value: Buffer): Buffer {
  if (value.length > 0xffff) throw new RangeError(`PROXY v2 TLV 0x${type.toString(16)} is ${value.length} bytes, more than 65535`);
  const head = Buffer.alloc(3);
  head.writeUInt8(type, 0);
  head.writeUInt16BE(value.length, 1);
  return Buffer.concat([head, value]);
}

/** `::ffff:a.b.c.d` -> `a.b.c.d`; other addresses unchanged. */
function unmapIPv4(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped ? mapped[1]! : address;
}

function ipv4Bytes(address: string): Buffer {
  return Buffer.from(address.split('.').map(Number));
}

function ipv6Bytes(address: string): Buffer {
  if (isIPv4(address)) return Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]), ipv4Bytes(address)]);
  let text = address.replace(/%.*$/, '');
  // A trailing dotted quad (::ffff:1.2.3.4 kept as IPv6 when the other side is IPv6) becomes two groups.
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const quad = ipv4Bytes(dotted[1]!);
    text = `${text.slice(0, dotted.index)}${quad.readUInt16BE(0).toString(16)}:${quad.readUInt16BE(2).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const headGroups = head === '' ? [] : head.split(':');
  const tailGroups = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? headGroups : [...headGroups, ...Array<string>(8 - headGroups.length - tailGroups.length).fill('0'), ...tailGroups];
  const bytes = Buffer.alloc(16);
  groups.forEach((group, index) => bytes.writeUInt16BE(parseInt(group, 16), index * 2));
  return bytes;
}

function addressBlock(source: Endpoint, destination: Endpoint): { family: number; block: Buffer } {
  const from = unmapIPv4(source.address);
  const to = unmapIPv4(destination.address);
  for (const address of [from, to]) {
    if (!isIPv4(address) && !isIPv6(address)) throw new TypeError(`PROXY v2 needs IP addresses, got ${JSON.stringify(address)}`);
  }
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(source.port, 0);
  ports.writeUInt16BE(destination.port, 2);
  // Both addresses share one family; if only one is IPv4 both are sent as IPv6 (IPv4-mapped).
  if (isIPv4(from) && isIPv4(to)) return { family: familyTcp4, block: Buffer.concat([ipv4Bytes(from), ipv4Bytes(to), ports]) };
  return { family: familyTcp6, block: Buffer.concat([ipv6Bytes(from), ipv6Bytes(to), ports]) };
}

function sslTlv(tls: ProxyHeaderTls): Buffer {
  const head = Buffer.alloc(5);
  let client = PP2_CLIENT_SSL;
  if (tls.peer) {
    client |= PP2_CLIENT_CERT_SESS;
    if (tls.peer.sentOnThisConnection) client |= PP2_CLIENT_CERT_CONN;
  }
  head.writeUInt8(client, 0);
  head.writeUInt32BE(tls.peer ? 0 : verifyNoCertificate, 1);
  const subTlvs = [tlv(PP2_SUBTYPE_SSL_VERSION, Buffer.from(tls.version, 'latin1'))];
  if (tls.peer?.commonName !== undefined) subTlvs.push(tlv(PP2_SUBTYPE_SSL_CN, Buffer.from(tls.peer.commonName, 'utf8')));
  subTlvs.push(tlv(PP2_SUBTYPE_SSL_CIPHER, Buffer.from(tls.cipher, 'latin1')));
  return tlv(PP2_TYPE_SSL, Buffer.concat([head, ...subTlvs]));
}

/** The complete header; throws a RangeError if it would exceed the format's 64 KiB. */
export function encodeProxyHeader(header: ProxyHeader): Buffer {
  const { family, block } = addressBlock(header.source, header.destination);
  const tlvs = header.tls ? [sslTlv(header.tls), ...(header.tls.peer?.spiffeIds ?? []).map((id) => tlv(PP2_TYPE_SPIFFE_ID, Buffer.from(id, 'utf8')))] : [];
  const body = Buffer.concat([block, ...tlvs]);
  if (body.length > 0xffff) throw new RangeError(`PROXY v2 header body is ${body.length} bytes, more than 65535`);
  const fixed = Buffer.alloc(4);
  fixed.writeUInt8(versionCommandProxy, 0);
  fixed.writeUInt8(family, 1);
  fixed.writeUInt16BE(body.length, 2);
  return Buffer.concat([signature, fixed, body]);
}

/** The header for an admitted inbound connection: peer -> our local address, with its TLS identity. */
export function proxyHeaderFor(socket: Socket, security: ConnectionSecurity): ProxyHeader {
  const source = { address: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 };
  const destination = { address: socket.localAddress ?? '', port: socket.localPort ?? 0 };
  if (security.tls === 'plaintext') return { source, destination, tls: undefined };
  const tlsSocket = socket as TLSSocket;
  const peer = security.peer
    ? {
        commonName: security.peer.identity.commonName,
        spiffeIds: security.peer.identity.uris.filter((uri) => uri.startsWith('spiffe://')),
        // A resumed session verified the certificate on an earlier connection.
        sentOnThisConnection: !tlsSocket.isSessionReused(),
      }
    : undefined;
  return { source, destination, tls: { version: tlsSocket.getProtocol() ?? 'unknown', cipher: tlsSocket.getCipher().name, peer } };
}
