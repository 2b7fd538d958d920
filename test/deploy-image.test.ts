// The container image (Dockerfile). No Docker engine runs on these machines, so the Dockerfile is
// checked statically against the project (package.json, the build output, the CLI's defaults), and
// deploy/image-layout.sh rebuilds the image's runtime layout in a temp folder and runs the sidecar
// from it: production dependencies only, read-only files, the image's user.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import { describe, test } from 'node:test';
import { parseListen, runOptions } from '../src/config.js';
import { runCommand } from './helpers/clients.js';
import { REPO_ROOT } from './helpers/sidecar.js';

interface Instruction {
  keyword: string;
  /** The rest of the instruction, continuation lines joined. */
  value: string;
  line: number;
}

interface Stage {
  name: string | undefined;
  image: string;
  instructions: Instruction[];
}

/** Instructions of a Dockerfile, grouped by stage (comments dropped, `\` continuations joined). */
function parseDockerfile(text: string): Stage[] {
  const stages: Stage[] = [];
  let pending = '';
  let startLine = 0;
  text.split('\n').forEach((raw, index) => {
    const line = raw.trim();
    if (pending === '' && (line === '' || line.startsWith('#'))) return;
    if (pending !== '' && line.startsWith('#')) return;
    if (pending === '') startLine = index + 1;
    pending += `${line.replace(/\\$/, '').trim()} `;
    if (line.endsWith('\\')) return;
    const [keyword = '', ...rest] = pending.trim().split(/\s+/);
    const instruction = { keyword: keyword.toUpperCase(), value: rest.join(' '), line: startLine };
    pending = '';
    if (instruction.keyword === 'FROM') {
      const match = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(instruction.value);
      assert.ok(match, `FROM on line ${instruction.line} is not "FROM image [AS name]"`);
      stages.push({ image: match[1]!, name: match[2], instructions: [] });
    } else {
      assert.ok(stages.length > 0, `${instruction.keyword} on line ${instruction.line} comes before any FROM`);
      stages.at(-1)!.instructions.push(instruction);
    }
  });
  return stages;
}

const dockerfile = parseDockerfile(readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8'));
const runtime = dockerfile.at(-1)!;
const packageJson = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
  version: string;
  type: string;
  bin: Record<string, string>;
  devDependencies: Record<string, string>;
};

const of = (stage: Stage, keyword: string) => stage.instructions.filter((instruction) => instruction.keyword === keyword);
const stageNamed = (name: string) => dockerfile.find((stage) => stage.name === name);

/** `COPY [--from=X] [--chown=...] SRC... DEST` -> its parts. */
function copyParts(instruction: Instruction): { from: string | undefined; sources: string[]; destination: string } {
  const words = instruction.value.split(/\s+/);
  const options = words.filter((word) => word.startsWith('--'));
  const paths = words.filter((word) => !word.startsWith('--'));
  return { from: options.find((option) => option.startsWith('--from='))?.slice('--from='.length), sources: paths.slice(0, -1), destination: paths.at(-1)! };
}

/** Where a COPY puts `source` in the image: absolute, resolved against the stage's WORKDIR. */
function copiedTo(stage: Stage, copy: Instruction): string {
  const workdirs = of(stage, 'WORKDIR').filter((workdir) => workdir.line < copy.line);
  const workdir = workdirs.at(-1)?.value ?? '/';
  return posix.resolve(workdir, copyParts(copy).destination);
}

describe('Dockerfile', () => {
  test('every base image is pinned: an exact version tag or a digest, never latest or no tag', () => {
    for (const stage of dockerfile) {
      const digest = /@sha256:[0-9a-f]{64}$/.test(stage.image);
      const tag = /:([^/:@]+)(?:@|$)/.exec(stage.image)?.[1];
      assert.ok(digest || (tag !== undefined && tag !== 'latest'), `${stage.image} is not pinned by tag or digest`);
      if (stage.image.startsWith('node:')) {
        assert.match(tag ?? '', /^22\.\d+\.\d+-/, `${stage.image}: build stages pin an exact Node 22 release`);
      }
    }
  });

  test('the runtime is distroless Node 22 as the nonroot user, with no RUN (no shell at run time)', () => {
    assert.match(runtime.image, /^gcr\.io\/distroless\/nodejs22-debian12:nonroot(@sha256:[0-9a-f]{64})?$/);
    assert.deepEqual(of(runtime, 'RUN'), [], 'the runtime stage runs nothing: distroless has no shell');
    const users = of(runtime, 'USER');
    assert.ok(users.length > 0, 'the runtime stage sets USER');
    const user = users.at(-1)!.value.split(':')[0]!;
    assert.ok(!['root', '0', ''].includes(user), `USER ${users.at(-1)!.value} is root`);
    assert.match(user, /^[1-9]\d*$/, 'USER is numeric, so Kubernetes runAsNonRoot can verify it');
  });

  test('node_modules comes from a separate npm ci --omit=dev stage, never from the build stage', () => {
    const copies = of(runtime, 'COPY').map((copy) => ({ ...copyParts(copy), to: copiedTo(runtime, copy) }));
    const modules = copies.filter((copy) => copy.sources.some((source) => source.endsWith('node_modules')));
    assert.equal(modules.length, 1, 'node_modules is copied into the runtime exactly once');
    const source = stageNamed(modules[0]!.from ?? '');
    assert.ok(source, `node_modules is copied from a named stage (got --from=${modules[0]!.from})`);
    const installs = of(source, 'RUN').map((run) => run.value);
    assert.ok(installs.some((command) => /\bnpm ci\b/.test(command) && /--omit=dev\b/.test(command)), `stage ${source.name} installs with npm ci --omit=dev: ${installs.join(' | ')}`);
    assert.ok(!installs.some((command) => /\bnpm (install|i|ci)\b/.test(command) && !/--omit=dev\b/.test(command)), `stage ${source.name} installs nothing else`);
    assert.ok(!installs.some((command) => /\bnpm run\b|\bprune\b/.test(command)), `stage ${source.name} neither builds nor prunes`);
    // Nothing else in the image comes from a stage that installed devDependencies, except dist.
    const build = copies.filter((copy) => copy.from !== undefined && copy.from !== source.name);
    for (const copy of build) {
      assert.ok(copy.sources.every((path) => !/node_modules/.test(path)), `COPY --from=${copy.from} ${copy.sources.join(' ')} brings no node_modules`);
    }
  });

  test('the ENTRYPOINT runs the CLI that package.json "bin" names, and the build output holds it', () => {
    const entrypoints = of(runtime, 'ENTRYPOINT');
    assert.equal(entrypoints.length, 1);
    const entrypoint = JSON.parse(entrypoints[0]!.value) as string[];
    assert.equal(entrypoint.length, 2, 'exec form ["node", "/app/dist/cli.js"] (no shell form: no shell)');
    assert.equal(entrypoint[0], '/nodejs/bin/node', "distroless Node's binary");
    const workdir = of(runtime, 'WORKDIR').at(-1)?.value ?? '/';
    const script = posix.relative(workdir, entrypoint[1]!);
    assert.deepEqual(Object.values(packageJson.bin), [script], `package.json "bin" agrees with the ENTRYPOINT (${script} under ${workdir})`);
    assert.ok(existsSync(join(REPO_ROOT, script)), `${script} exists in the build output (npm run build)`);
    // dist arrives at that path, and package.json beside it ("type": "module" makes dist/*.js ES modules).
    const copies = of(runtime, 'COPY').map((copy) => ({ ...copyParts(copy), to: copiedTo(runtime, copy) }));
    assert.ok(copies.some((copy) => copy.sources.some((source) => /(^|\/)dist\/?$/.test(source)) && copy.to === posix.join(workdir, 'dist')), 'dist is copied to WORKDIR/dist');
    assert.equal(packageJson.type, 'module');
    assert.ok(copies.some((copy) => copy.sources.some((source) => source.endsWith('package.json')) && posix.join(copy.to, copy.to.endsWith('package.json') ? '' : 'package.json').endsWith(posix.join(workdir, 'package.json'))), 'package.json is copied beside dist');
    assert.deepEqual(JSON.parse(of(runtime, 'CMD').at(-1)?.value ?? '[]'), ['run'], 'the default command is run');
  });

  test('EXPOSE names the default inbound and admin ports of the CLI', () => {
    const exposed = of(runtime, 'EXPOSE').flatMap((expose) => expose.value.split(/\s+/)).map((port) => Number(port.replace(/\/tcp$/, '')));
    const inbound = parseListen('inbound', runOptions.inbound.default)!;
    const admin = parseListen('admin', runOptions.admin.default)!;
    assert.deepEqual(exposed.sort(), [inbound.port, admin.port].sort());
  });

  test('OCI labels: title, description, licenses and a version equal to package.json', () => {
    const labels = new Map<string, string>();
    for (const label of of(runtime, 'LABEL')) {
      for (const match of label.value.matchAll(/([\w.-]+)="([^"]*)"/g)) labels.set(match[1]!, match[2]!);
    }
    for (const key of ['title', 'description', 'licenses', 'version']) assert.ok(labels.get(`org.opencontainers.image.${key}`), `label org.opencontainers.image.${key}`);
    assert.equal(labels.get('org.opencontainers.image.version'), packageJson.version);
  });

  test('.dockerignore keeps host node_modules, dist, .git and certificates out of the build context', () => {
    const rules = readFileSync(join(REPO_ROOT, '.dockerignore'), 'utf8').split('\n').map((line) => line.trim()).filter((line) => line && !line.startsWith('#'));
    // Allow-list form: everything is excluded, then only what the Dockerfile copies is let back in.
    assert.equal(rules[0], '*');
    const allowed = rules.filter((rule) => rule.startsWith('!')).map((rule) => rule.slice(1).replace(/\/$/, ''));
    const copiedFromContext = dockerfile.flatMap((stage) => of(stage, 'COPY').map(copyParts).filter((copy) => copy.from === undefined).flatMap((copy) => copy.sources));
    assert.deepEqual([...new Set(copiedFromContext.map((source) => source.replace(/\/$/, '')))].sort(), allowed.sort());
  });
});

describe('the image runtime layout, rebuilt without Docker (deploy/image-layout.sh)', () => {
  test('npm ci --omit=dev + dist, read-only, as the image user: ready, proxies a request, writes nothing, exits 0 on SIGTERM', { timeout: 90000 }, async () => {
    const result = await runCommand('bash', [join(REPO_ROOT, 'deploy/image-layout.sh')], { timeoutMs: 85000, cwd: REPO_ROOT, env: process.env });
    assert.equal(result.code, 0, `image-layout.sh failed:\n${result.stderr}\n${result.stdout}`);
    const summary = JSON.parse(result.stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
    assert.equal(summary.ready, true);
    assert.equal(summary.readyz, 200);
    assert.equal(summary.status, 200, 'a request went outbound -> inbound -> app');
    assert.equal(summary.xfccUri, 'spiffe://image.local/ns/test/sa/image-layout');
    assert.equal(summary.exitCode, 0);
    assert.equal(summary.filesWritten, 0);
    assert.deepEqual(summary.devDependenciesPresent, []);
    if (process.getuid?.() === 0) assert.equal(summary.runtimeUid, 65532, "as root, the sidecar ran as the image's user");
    assert.match(result.stderr, /app folder and cert dir are read-only/);
  });
});
