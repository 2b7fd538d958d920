/**
 * `x-forwarded-client-cert` in Envoy's format: one element of `;`-separated `Key=Value` pairs.
 * Values holding `,` `;` `=` or `"` are quoted, with `"` and `\` escaped; Subject is always quoted.
 */
import type { CertIdentity } from '../certs/identity.js';

function quote(value: string): string {
  return `"${value.replace(/[\\"]/g, (char) => `\\${char}`)}"`;
}

function xfccValue(value: string): string {
  return /[,;="]/.test(value) ? quote(value) : value;
}

export function formatXfcc(ownUris: readonly string[], peer: CertIdentity): string {
  const parts: string[] = [];
  for (const uri of ownUris) parts.push(`By=${xfccValue(uri)}`);
  parts.push(`Hash=${peer.sha256}`);
  parts.push(`Subject=${quote(peer.subject)}`);
  for (const uri of peer.uris) parts.push(`URI=${xfccValue(uri)}`);
  for (const dns of peer.dns) parts.push(`DNS=${xfccValue(dns)}`);
  return parts.join(';');
}
