import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { runOptions } from '../src/config.js';
import { appErrors, tlsFailures } from '../src/errors.js';

const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');

test('the README documents every flag of `run`', () => {
  const missing = Object.keys(runOptions).filter((flag) => !readme.includes(`\`--${flag}\``));
  assert.deepEqual(missing, [], `flags missing from the README: ${missing.join(', ')}`);
});

test('the README error table lists every code the app can receive', () => {
  const missing = Object.keys(appErrors).filter((code) => !readme.includes(`| \`${code}\` |`));
  assert.deepEqual(missing, [], `error codes missing from the README table: ${missing.join(', ')}`);
});

test('the README names every TLS failure reason', () => {
  const missing = Object.keys(tlsFailures).filter((reason) => !readme.includes(`\`${reason}\``));
  assert.deepEqual(missing, [], `TLS failure reasons missing from the README: ${missing.join(', ')}`);
});

test('the README shows the two set-up commands', () => {
  assert.match(readme, /npm ci && npm run demo/);
  assert.match(readme, /npm ci && npm test/);
});
