/**
 * TLS settings shared by both directions, and the mapping from Node/OpenSSL errors to the
 * failure catalog of errors.ts.
 */
import { createSecureContext, type SecureContext, type SecureContextOptions } from 'node:tls';
import type { CertSet } from './certs/load.js';
import type { TlsFailureReason } from './errors.js';

/**
 * TLS 1.2 suites: ECDHE with AES-GCM or ChaCha20-Poly1305 only. Node's default list still offers
 * CBC suites for TLS 1.2 (LUCKY13 territory); ghostunnel and Istio restrict it the same way.
 * TLS 1.3 suites are named explicitly so they stay enabled.
 */
export const cipherList = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

export type MinTls = 'TLSv1.2' | 'TLSv1.3';

/** Our certificate, key and trust bundle as Node TLS options (both directions). */
export function tlsOptionsFor(set: CertSet, minVersion: MinTls): SecureContextOptions {
  return {
    cert: set.chainPem,
    key: set.keyPem,
    ca: set.bundlePem,
    minVersion,
    ciphers: cipherList,
    honorCipherOrder: true,
  };
}

const clientContexts = new WeakMap<CertSet, SecureContext>();

/**
 * The outbound TLS context of one certificate generation, built once: given to tls.connect as
 * `secureContext`, because cert/key/ca options would make Node parse the key and the bundle again
 * for every connection (about 1 ms of CPU each with RSA 2048).
 */
export function clientSecureContext(set: CertSet, minVersion: MinTls): SecureContext {
  let context = clientContexts.get(set);
  if (!context) {
    context = createSecureContext(tlsOptionsFor(set, minVersion));
    clientContexts.set(set, context);
  }
  return context;
}

const untrustedCodes = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'INVALID_CA',
]);

/** Which end of the handshake we were: `server` for an inbound listener, `client` when we dialled (outbound, probe). */
export type TlsSide = 'server' | 'client';

/**
 * Classifies a TLS failure. `side` tells the two meanings of OpenSSL's "wrong version number" apart
 * (the error is the same on both ends): to a client, the server answered with something that is
 * not TLS (a plaintext port); to a server, the client sent something that is not TLS (plain HTTP is
 * recognised separately, as "http request"). Without a side the error is read as a client's, which
 * is what the outbound path and `probe` are.
 */
export function classifyTlsError(error: unknown, side: TlsSide = 'client'): TlsFailureReason | undefined {
  const code = String((error as NodeJS.ErrnoException | undefined)?.code ?? '');
  const message = String((error as Error | undefined)?.message ?? '').toLowerCase();
  if (code === 'SIDECAR_IDENTITY_MISMATCH') return 'identity_mismatch';
  if (untrustedCodes.has(code)) return 'cert_untrusted';
  if (code === 'CERT_HAS_EXPIRED') return 'cert_expired';
  if (code === 'CERT_NOT_YET_VALID') return 'cert_not_yet_valid';
  // We verified the peer's certificate and its (extended) key usage does not allow its role
  // (OpenSSL 3 says "unsuitable certificate purpose", 1.1 "unsupported certificate purpose").
  if (code === 'INVALID_PURPOSE' || /(unsuitable|unsupported) certificate purpose/.test(message)) return 'cert_wrong_purpose';
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return 'name_mismatch';
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT' || message.includes('handshake timeout')) return 'handshake_timeout';
  // OpenSSL (nginx, Envoy, openssl s_server) answers a certificate of the wrong purpose with this alert.
  if (code.includes('ALERT_UNSUPPORTED_CERTIFICATE') || message.includes('alert unsupported certificate')) return 'our_cert_wrong_purpose';
  // Alerts the peer sent about our certificate: in the code, or (EPROTO on a write) only in the message.
  if (/ALERT_(CERTIFICATE_REQUIRED|BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_EXPIRED|CERTIFICATE_UNKNOWN|CERTIFICATE_REVOKED|DECRYPT_ERROR|ACCESS_DENIED)/.test(code)) {
    return 'our_cert_rejected';
  }
  if (/alert (certificate required|bad certificate|unknown ca|certificate expired|certificate unknown|certificate revoked|decrypt error|access denied)/.test(message)) {
    return 'our_cert_rejected';
  }
  if (/alert protocol version/.test(message)) return 'protocol_version';
  if (/alert handshake failure/.test(message)) return 'no_shared_cipher';
  if (code.includes('WRONG_VERSION_NUMBER')) return side === 'server' ? 'not_tls' : 'tls_on_plaintext_port';
  if (/ALERT_PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|VERSION_TOO_LOW/.test(code)) return 'protocol_version';
  if (/NO_SHARED_CIPHER|ALERT_HANDSHAKE_FAILURE|NO_CIPHERS|NO_SUITABLE/.test(code)) return 'no_shared_cipher';
  // A plaintext HTTP request, or a proxy's CONNECT, sent to a TLS port.
  if (code === 'ERR_SSL_HTTP_REQUEST' || code === 'ERR_SSL_HTTPS_PROXY_REQUEST' || message.includes('http request') || message.includes('https proxy request')) return 'plaintext_on_tls_port';
  if (code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE' || message.includes('peer did not return a certificate')) return 'peer_cert_missing';
  if (message.includes('certificate verify failed') || code === 'ERR_SSL_CERTIFICATE_VERIFY_FAILED') return 'cert_untrusted';
  if (code === 'ECONNRESET' || code === 'EPIPE' || message.includes('socket hang up') || message.includes('disconnected before secure')) return 'connection_reset';
  if (code.startsWith('ERR_SSL') || code.startsWith('ERR_TLS')) return 'tls_error';
  return undefined;
}

/**
 * Inbound: the server side only learns "certificate verify failed"; the peer certificate's own
 * verify error (expired, unknown CA) is only visible when the handshake got far enough. This maps
 * OpenSSL's verify result string for a peer certificate.
 */
export function classifyPeerVerifyError(verifyError: string | null | undefined): TlsFailureReason {
  if (!verifyError) return 'tls_error';
  const code = verifyError.toUpperCase();
  if (code === 'CERT_HAS_EXPIRED') return 'cert_expired';
  if (code === 'CERT_NOT_YET_VALID') return 'cert_not_yet_valid';
  if (untrustedCodes.has(code)) return 'cert_untrusted';
  if (code === 'INVALID_PURPOSE') return 'cert_wrong_purpose';
  return 'tls_error';
}
