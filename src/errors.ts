/**
 * The error catalog: every error the sidecar reports, with its code, HTTP status (for errors the
 * app sees, SPEC §6), message and hint. Nothing else in the code invents error strings: it names a
 * code and adds detail.
 */

/** Errors the local app receives as a 502/503/504 from the sidecar (SPEC §6). */
export const appErrors = {
  upstream_cert_untrusted: {
    status: 502,
    message: 'the upstream presented a certificate signed by an authority that is not in our trust bundle',
    hint: 'add the CA that issued the upstream certificate to the trust bundle, or issue the upstream certificate from the mesh CA',
  },
  upstream_cert_expired: {
    status: 502,
    message: 'the upstream certificate has expired (or is not yet valid)',
    hint: 'renew the upstream certificate; if it looks valid, check the clocks of both hosts',
  },
  upstream_name_mismatch: {
    status: 502,
    message: 'the upstream certificate does not name the host that was dialled',
    hint: 'call the upstream by a name in its certificate SANs, or re-issue it with this name as a DNS/IP SAN',
  },
  upstream_identity_mismatch: {
    status: 502,
    message: 'the upstream presented a different SPIFFE identity than the one required',
    hint: 'check --upstream …@spiffe://… / --expect-spiffe and the upstream certificate URI SAN',
  },
  upstream_rejected_our_cert: {
    status: 502,
    message: 'the upstream refused our client certificate (it sent a TLS alert, or closed a new connection before answering, as Node-based servers do)',
    hint: 'make sure the CA that issued our certificate is in the upstream trust bundle and our certificate is valid (mtls-sidecar check)',
  },
  upstream_cert_wrong_purpose: {
    status: 502,
    message: 'the upstream presented a certificate that is not allowed for a TLS server (its extendedKeyUsage lacks serverAuth, or its keyUsage lacks digitalSignature)',
    hint: 'reissue the upstream certificate for both uses: openssl extension lines `extendedKeyUsage = serverAuth, clientAuth` and `keyUsage = critical, digitalSignature`, or `mtls-sidecar certs issue`, which sets both (`mtls-sidecar check` on its cert dir shows what it has)',
  },
  upstream_chain_incomplete: {
    status: 502,
    message: 'the upstream sent a certificate chain that is missing an intermediate',
    hint: 'the upstream should append its intermediate CA certificate(s) to its chain file',
  },
  upstream_tls_error: {
    status: 502,
    message: 'TLS with the upstream failed',
    hint: 'run `mtls-sidecar probe URL` to see the handshake in detail; "wrong version number" means the upstream port does not speak TLS (plain HTTP?): call its TLS port',
  },
  upstream_refused: {
    status: 502,
    message: 'the upstream refused the connection',
    hint: 'nothing listens on that host and port: check the port, and that the upstream (or its sidecar) is running',
  },
  upstream_unresolvable: {
    status: 502,
    message: 'the upstream host name could not be resolved',
    hint: 'check the host name in the URL (and DNS)',
  },
  upstream_timeout: {
    status: 504,
    message: 'the upstream did not answer in time',
    hint: 'check that the upstream is up, reachable (firewalls, NetworkPolicies) and not overloaded, or raise --connect-timeout / --handshake-timeout / --request-timeout',
  },
  upstream_reset: {
    status: 502,
    message: 'the upstream closed the connection before answering',
    hint: 'look at the upstream logs; the upstream may have crashed or refused the request',
  },
  app_refused: {
    status: 502,
    message: 'the local app refused the connection',
    hint: 'check that the app is running and listening on the address given by --app',
  },
  app_timeout: {
    status: 504,
    message: 'the local app did not answer in time',
    hint: 'check the app health and load, or raise --request-timeout',
  },
  app_reset: {
    status: 502,
    message: 'the local app closed the connection before answering',
    hint: 'look at the app logs; it may have crashed while handling the request',
  },
  app_response_invalid: {
    status: 502,
    message: 'the local app sent a response the sidecar cannot pass on (malformed HTTP, or a header block over --max-header-size)',
    hint: 'fix the response headers the app sends, or raise --max-header-size',
  },
  upstream_response_invalid: {
    status: 502,
    message: 'the upstream sent a response the sidecar cannot pass on (malformed HTTP, or a header block over --max-header-size)',
    hint: 'fix the response headers the upstream sends, or raise --max-header-size',
  },
  peer_not_allowed: {
    status: 403,
    message: 'the calling peer is not allowed by the allow-list',
    hint: 'if this caller should be allowed, add its identity with --allow-spiffe / --allow-dns / --allow-cn / --allow-ou',
  },
  bad_request: {
    status: 400,
    message: 'the request could not be proxied',
    hint: 'send absolute-form requests (http://host:port/path), as HTTP_PROXY clients do',
  },
  request_headers_too_large: {
    status: 431,
    message: 'the request header block is larger than --max-header-size',
    hint: 'send smaller headers (large cookies or tokens?), or raise --max-header-size on the sidecar',
  },
  malformed_request: {
    status: 400,
    message: 'the request is not valid HTTP/1.1 (for example conflicting Content-Length / Transfer-Encoding headers)',
    hint: 'fix the client; ambiguous message framing is refused because it enables request smuggling',
  },
  request_headers_timeout: {
    status: 408,
    message: 'the client did not send the whole request header block within --headers-timeout',
    hint: 'the client is too slow or stalled; raise --headers-timeout if this is a legitimate slow network',
  },
} as const satisfies Record<string, { status: number; message: string; hint: string }>;

export type AppErrorCode = keyof typeof appErrors;

/** Why a TLS handshake (either direction) failed: used in logs, metric labels and diagnoses. */
export const tlsFailures = {
  cert_untrusted: 'signed by an unknown authority: add the issuing CA to the trust bundle, or issue the certificate from the mesh CA',
  cert_expired: 'the certificate has expired: renew it',
  cert_not_yet_valid: 'the certificate is not valid yet: check the clocks, or wait for its notBefore',
  name_mismatch: 'the dialled name is not among the certificate SANs: use a name it has, or re-issue it with this name',
  identity_mismatch: 'the SPIFFE ID differs from the expected one: fix the expected ID or the certificate URI SAN',
  peer_cert_missing: 'the client sent no certificate: configure the client certificate and key on the caller',
  our_cert_rejected: 'the peer refused our certificate: is our CA in the peer trust bundle?',
  chain_incomplete: 'an intermediate CA certificate is missing from the chain: append it to the chain file',
  cert_wrong_purpose:
    "the certificate is not allowed for this use: a caller's certificate needs extendedKeyUsage clientAuth, a server's serverAuth (a sidecar's both), and a keyUsage, if present, digitalSignature; reissue it with the openssl extension line `extendedKeyUsage = serverAuth, clientAuth`, or with `mtls-sidecar certs issue`",
  our_cert_wrong_purpose:
    'the peer refused the purpose of our certificate (alert "unsupported certificate"): its extendedKeyUsage lacks clientAuth (when we call) or serverAuth (when we are called); reissue ours with `extendedKeyUsage = serverAuth, clientAuth` (`mtls-sidecar check` shows what it has)',
  plaintext_on_tls_port: 'plain HTTP was sent to a TLS port: use https, or the plaintext port',
  not_tls: 'the client sent bytes that are not TLS (another protocol, or garbage): point it at the plaintext port, or make it use TLS',
  tls_on_plaintext_port: 'TLS was sent to a plaintext port: use http, or the TLS port',
  protocol_version: 'the peer speaks an old TLS version: use TLS 1.2 or newer',
  no_shared_cipher: 'no cipher in common: the peer must support ECDHE with AES-GCM or ChaCha20-Poly1305',
  handshake_timeout: 'the peer did not complete the handshake in time (--handshake-timeout)',
  connection_reset: 'the peer closed the connection during the handshake',
  tls_error: 'the TLS handshake failed',
} as const;

export type TlsFailureReason = keyof typeof tlsFailures;

/**
 * Problems with a certificate directory (start-up, reload, `check`): what is wrong and what to do
 * about it, kept apart so a report can print each once.
 */
export const certProblems = {
  cert_dir_missing: { message: 'the certificate directory does not exist', fix: 'mount the secret there or pass --cert-dir' },
  no_layout: {
    message: 'no recognised file set',
    fix: 'expected tls.crt/tls.key/ca.crt, cert.pem/key.pem/ca.pem, svid.pem/svid_key.pem/svid_bundle.pem or cert-chain.pem/key.pem/root-cert.pem (or set --cert-file/--key-file/--ca-file)',
  },
  file_missing: { message: 'the file is missing', fix: 'write it, or point the matching --*-file flag at it' },
  file_unreadable: { message: 'the file cannot be read', fix: 'check its permissions' },
  file_empty: { message: 'the file is empty', fix: 'it may be half-written; write the whole PEM' },
  cert_parse_error: { message: 'the file does not hold valid PEM certificates', fix: 'write the PEM (-----BEGIN CERTIFICATE-----) blocks whole' },
  key_parse_error: { message: 'the private key cannot be read', fix: 'write a PEM key (PKCS#8, PKCS#1 RSA or SEC1 EC); for an encrypted key pass --key-passphrase-file' },
  key_mismatch: { message: 'the private key does not belong to the leaf certificate', fix: 'deploy the key that was issued with this certificate' },
  chain_out_of_order: { message: 'the chain file does not start with the leaf certificate', fix: 'write the leaf first, then its intermediates (the order cert-manager and openssl write)' },
  bundle_empty: { message: 'the trust bundle holds no certificate', fix: 'write the CA certificate(s) into it' },
  chain_incomplete: {
    message: 'the certificate that issued it is missing',
    fix: 'append the intermediate that issued it to the chain file (or, if it is a root, add it to the bundle)',
  },
  chain_untrusted: {
    message: 'the chain ends at a CA that is not in the trust bundle',
    fix: 'add that CA to the bundle, or issue the certificate from a CA the bundle holds',
  },
  cert_expired: { message: 'the certificate has expired', fix: 'renew it' },
  cert_not_yet_valid: { message: 'the certificate is not valid yet', fix: 'check the clock, or wait for its notBefore' },
  // The two below do not stop `run` (it loads such a set and warns): peers refuse the certificate.
  cert_usage_missing: {
    message: 'the certificate is not allowed for both TLS server use (inbound) and TLS client use (outbound)',
    fix: 'reissue it with the openssl extension lines `extendedKeyUsage = serverAuth, clientAuth` and `keyUsage = critical, digitalSignature` (cert-manager: usages digital signature, server auth, client auth), or with `mtls-sidecar certs issue --dns NAME --spiffe spiffe://TRUST-DOMAIN/PATH`, which sets both',
  },
  cert_no_san: {
    message: 'the certificate has no subjectAltName (no DNS, IP or URI SAN): callers cannot verify its name (upstream_name_mismatch) and it carries no SPIFFE identity',
    fix: 'reissue it with the names callers dial and its SPIFFE ID: openssl `subjectAltName = DNS:NAME, URI:spiffe://TRUST-DOMAIN/PATH`, or `mtls-sidecar certs issue --dns NAME --spiffe spiffe://TRUST-DOMAIN/PATH`',
  },
} as const satisfies Record<string, { message: string; fix: string }>;

/**
 * The ways a private key fails to load (all `key_parse_error`), each with what happened and its
 * own fix: OpenSSL's words for them ("interrupted or cancelled", "bad decrypt", "DECODER
 * routines::unsupported") tell an operator nothing.
 */
export const keyParseProblems = {
  passphrase_missing: {
    detail: 'the key is encrypted and no passphrase was given',
    fix: 'pass --key-passphrase-file naming a file that holds the passphrase the key was encrypted with',
  },
  passphrase_wrong: {
    detail: 'the key is encrypted and the passphrase file (--key-passphrase-file) does not decrypt this key',
    fix: 'put this key\'s passphrase in that file, or deploy the key that passphrase belongs to',
  },
  not_a_key: {
    detail: 'it is not a PEM private key of a supported type',
    fix: 'write an RSA, EC or Ed25519 private key as PEM: PKCS#8 (BEGIN PRIVATE KEY, or BEGIN ENCRYPTED PRIVATE KEY with --key-passphrase-file), PKCS#1 RSA (BEGIN RSA PRIVATE KEY) or SEC1 EC (BEGIN EC PRIVATE KEY)',
  },
} as const satisfies Record<string, { detail: string; fix: string }>;

export type KeyParseProblem = keyof typeof keyParseProblems;

export type CertProblemCode = keyof typeof certProblems;

/**
 * What `check` and `probe` report besides TLS failures, cert-dir problems and the app errors of
 * the TCP step (`upstream_refused`, `upstream_unresolvable`, `upstream_timeout`, with their hints).
 */
export const diagnosticProblems = {
  upstream_unreachable: 'there is no network path to the upstream (host or network unreachable): check the address, routes, firewalls and NetworkPolicies',
  cert_expiring: 'renewal should have happened by now: check the issuer (cert-manager, SPIRE) and that the new files reach this directory',
  unexpected: 'an error the sidecar does not classify: report it as a bug, with this output',
} as const;

export type DiagnosticCode = keyof typeof diagnosticProblems;

/** Every code `check` and `probe` print. */
export type ReportCode = CertProblemCode | TlsFailureReason | AppErrorCode | DiagnosticCode;

/** `probe`'s fixes for the failures where it can name what it found (the issuer, the SANs, our identity). */
export const probeFixes = {
  cert_untrusted: (issuer: string, bundleFile: string, bundleSubjects: string[], onlyLeafSent: boolean): string =>
    `add the CA "${issuer}" to our trust bundle ${bundleFile}, or have the upstream use a certificate from our mesh CA (our bundle holds: ${bundleSubjects.join('; ')})` +
    (onlyLeafSent ? `; if "${issuer}" is an intermediate, the upstream should append it to its chain file instead` : ''),
  chain_incomplete: (issuer: string): string =>
    `the upstream sent only its leaf: it should append the intermediate "${issuer}" that issued it to its chain file (we hold that intermediate, and it is not a root)`,
  name_mismatch: (sans: string, host: string): string => `the certificate names ${sans}; dial one of those, or re-issue it with ${host}`,
  our_cert_rejected: (ours: string): string =>
    `the upstream refused our certificate (${ours}): is our CA in the upstream's trust bundle, and is our certificate valid (mtls-sidecar check)?`,
  our_cert_invalid: (fix: string): string => `${fix} (\`mtls-sidecar check\` on the cert dir lists every problem)`,
  // probe has one --timeout for every step; run's --connect-timeout / --handshake-timeout are not its flags.
  handshake_timeout: 'the upstream did not complete the TLS handshake within --timeout: is that port a TLS port, and is the upstream overloaded? Or raise --timeout',
  upstream_timeout: 'check that the upstream is up, reachable (firewalls, NetworkPolicies) and not overloaded, or raise --timeout',
} as const;

/** A certificate-directory problem, naming the file it is about. */
export class CertError extends Error {
  readonly code: CertProblemCode;
  readonly file: string | undefined;
  readonly detail: string | undefined;
  /** What to do: the catalog fix of `code`, or the fix of the particular case `detail` names. */
  readonly fix: string;

  constructor(code: CertProblemCode, file?: string, detail?: string, fix: string = certProblems[code].fix) {
    const where = file ? `${file}: ` : '';
    super(`${where}${detail ? `${detail}; ` : ''}${certProblems[code].message}: ${fix}`);
    this.name = 'CertError';
    this.code = code;
    this.file = file;
    this.detail = detail;
    this.fix = fix;
  }

  /** What is wrong, said once and without the file: the detail when there is one, else the catalog message. */
  get problem(): string {
    return this.detail ?? certProblems[this.code].message;
  }
}

/** A private key that does not load, in the words of `keyParseProblems`. */
export function keyParseError(file: string, problem: KeyParseProblem): CertError {
  return new CertError('key_parse_error', file, keyParseProblems[problem].detail, keyParseProblems[problem].fix);
}

/** A bad flag or environment value: exit 2, one line naming the flag, the value and what is allowed. */
export class ConfigError extends Error {
  readonly flag: string;

  constructor(flag: string, value: unknown, allowed: string) {
    super(`--${flag}: ${JSON.stringify(value)} is not valid: ${allowed}`);
    this.name = 'ConfigError';
    this.flag = flag;
  }
}

/** The JSON body (and status) the app sees for an error (SPEC §6); `extra` adds fields (e.g. the denied peer). */
export function appErrorResponse(code: AppErrorCode, detail?: string, extra?: Record<string, unknown>): { status: number; body: string } {
  const entry = appErrors[code];
  const message = detail ? `${entry.message}: ${detail}` : entry.message;
  return { status: entry.status, body: JSON.stringify({ error: code, message, hint: entry.hint, ...extra }) };
}
