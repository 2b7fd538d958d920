// Assertions shared by the test files: the observable shape of a sidecar-generated error.
import assert from 'node:assert/strict';
import type { HttpResult } from './clients.js';

/** The JSON body of a sidecar-generated error (SPEC §6). */
export interface SidecarErrorBody {
  error: string;
  message: string;
  hint: string;
}

/**
 * The SPEC §6 shape: status, x-sidecar-error header, JSON {error,message,hint} naming the same
 * code, with a non-empty message and hint. Returns the body for further checks.
 */
export function assertSidecarError(response: HttpResult, status: number, code: string): SidecarErrorBody {
  assert.equal(response.status, status, `expected ${status} ${code}, got ${response.status}: ${response.text}`);
  assert.equal(response.headers['x-sidecar-error'], code, `x-sidecar-error header; body: ${response.text}`);
  assert.match(String(response.headers['content-type']), /application\/json/);
  const body = response.json<SidecarErrorBody>();
  assert.equal(body.error, code, response.text);
  assert.equal(typeof body.message, 'string', `message must be a string: ${response.text}`);
  assert.ok(body.message.length > 0, 'message must not be empty');
  assert.equal(typeof body.hint, 'string', `hint must be a string: ${response.text}`);
  assert.ok(body.hint.length > 0, 'hint must not be empty');
  return body;
}
