#!/usr/bin/env node
/**
 * The command line (SPEC §2): parses with yargs, then calls one function per command.
 * Exit codes: 0 ok, 1 runtime/certificate problem, 2 usage or configuration error.
 */
import yargs, { type Argv, type InferredOptionTypes, type Options } from 'yargs';
import { hideBin, Parser } from 'yargs/helpers';
import { certsInit, certsIssue } from './commands/certs.js';
import { waitReady } from './commands/wait.js';
import { checkCommand } from './commands/check.js';
import { probeCommand } from './commands/probe.js';
import { buildConfig, checkRunListeners, envName, parseDuration, readEnv, runOptions, type OptionSpec, type RawRunArgs } from './config.js';
import { runDemo } from './demo.js';
import { ConfigError } from './errors.js';
import { createLogger, flushLogs } from './log.js';
import { runSidecar, type RunningSidecar } from './run.js';
import cluster from 'node:cluster';
import { runPrimary } from './cluster.js';

const usageExit = 2;

function usageError(message: string): never {
  process.stderr.write(`mtls-sidecar: ${message}\n`);
  process.exit(usageExit);
}

/** yargs option definitions from the option table; env values become the defaults so flags win. */
function yargsOptions(table: Record<string, OptionSpec>, envValues: Record<string, unknown>): Record<string, Options> {
  const options: Record<string, Options> = {};
  for (const [flag, spec] of Object.entries(table)) {
    const fallback = envValues[flag] ?? spec.default;
    options[flag] = {
      // Numbers are parsed by config.ts so that a bad value is reported with its flag, not as NaN.
      type: spec.type === 'number' ? 'string' : spec.type,
      describe: `${spec.describe} [env ${envName(flag)}]`,
      ...(fallback === undefined ? {} : { default: fallback }),
      ...(spec.choices ? { choices: spec.choices } : {}),
      ...(spec.type === 'array' ? { string: true } : {}),
    };
  }
  return options;
}

/**
 * Usage errors yargs lets through, so each command checks the words as typed: a single-value flag
 * given twice (yargs would make it a list, `--inbound a --inbound b` -> ["a","b"], or for a boolean
 * keep the last) and a flag given with no value (yargs would quietly use the default, so
 * `check --cert-dir` checked /etc/sidecar/certs). The words are parsed again without env values or
 * defaults; booleans are read as text so that every occurrence is kept.
 */
function rejectRepeatedOrEmptyFlags(argv: string[], options: Record<string, Options>): void {
  const flags = Object.keys(options);
  const isList = (flag: string) => options[flag]!.type === 'array';
  const typed = Parser(argv, {
    string: flags.filter((flag) => !isList(flag)),
    array: flags.filter(isList),
    alias: Object.fromEntries(flags.map((flag) => [flag, Parser.camelCase(flag)])),
    configuration: { 'boolean-negation': false },
  });
  for (const flag of flags) {
    const value: unknown = typed[flag];
    const isBoolean = options[flag]!.type === 'boolean';
    if (Array.isArray(value) && !isList(flag)) {
      const given = value.map((item) => (isBoolean && item === '' ? 'true' : JSON.stringify(String(item))));
      usageError(`--${flag} given ${given.length === 2 ? 'twice' : `${given.length} times`} (${given.join(', ')}): give it once`);
    }
    const noValue = isList(flag) ? Array.isArray(value) && value.length === 0 : value === '' && !isBoolean;
    if (noValue) usageError(`--${flag} given with no value: give it one, or leave it out`);
  }
}

/** Declares a command's options; the check above runs before yargs validates the values. */
function declareOptions<T, O extends Record<string, Options>>(command: Argv<T>, options: O, argv: string[]): Argv<Omit<T, keyof O> & InferredOptionTypes<O>> {
  return command.options(options).middleware(() => rejectRepeatedOrEmptyFlags(argv, options), true);
}

async function runCommand(args: RawRunArgs, unknownEnv: string[]): Promise<void> {
  const config = configFrom(args, checkRunListeners);
  // A missing cert dir is not a usage error: it is the start-up failure cert_dir_missing (exit 1),
  // reported by the loader like every other problem with the directory.
  const logger = createLogger({ level: config.logLevel, format: config.logFormat });
  for (const name of unknownEnv) {
    // Kubernetes injects SIDECAR_PORT, SIDECAR_SERVICE_HOST, … for a Service named "sidecar".
    const why = /_(PORT|SERVICE_HOST|SERVICE_PORT)(_|$)/.test(name) ? ' (Kubernetes sets <SERVICE>_PORT… for every Service)' : '';
    logger.warn({ env: name }, `ignoring environment variable ${name}: no such flag${why}`);
  }
  const exit = async (code: number): Promise<never> => {
    await flushLogs();
    process.exit(code);
  };
  if (config.workers > 1 && cluster.isPrimary) return exit(await runPrimary(config, logger));
  // A worker of --workers N: the primary owns the admin listener and answers for every worker.
  // Signals are taken from before start-up: `sidecar ready` is logged before runSidecar returns, and
  // a SIGTERM right after it must drain, not kill the process.
  let running: RunningSidecar | undefined = undefined;
  let stopRequested: string | undefined;
  const onSignal = (signal: string) => (running ? running.stop(signal) : (stopRequested ??= signal));
  process.once('SIGTERM', () => onSignal('SIGTERM'));
  process.once('SIGINT', () => onSignal('SIGINT'));
  const started = await runSidecar(cluster.isWorker ? { ...config, admin: null } : config, logger);
  if (typeof started === 'number') return exit(started);
  running = started;
  if (stopRequested) running.stop(stopRequested);
  return exit(await running.stopped);
}

function addRunOptions(command: Argv, envValues: Record<string, unknown>, argv: string[]): Argv {
  return declareOptions(command, yargsOptions(runOptions, envValues), argv);
}

/** The flags `check` and `probe` share with `run`, so they load certificates exactly as it does. */
const certFlags = ['cert-dir', 'cert-file', 'key-file', 'ca-file', 'key-passphrase-file', 'min-tls', 'trust-domain'] as const;

function addCertOptions(command: Argv, envValues: Record<string, unknown>, argv: string[], more: Record<string, Options> = {}): Argv {
  const table = Object.fromEntries(certFlags.map((flag) => [flag, runOptions[flag]]));
  const json: Options = { type: 'boolean', default: false, describe: 'print the report as JSON' };
  return declareOptions(command, { ...yargsOptions(table, envValues), json, ...more }, argv);
}

/** Flags whose value came from a SIDECAR_* variable (not given on the command line), set by main. */
let fromEnvironment: (flag: string) => boolean = () => false;

/** A usage line about `flag`, naming the variable when its value came from one. */
function aboutFlag(flag: string, line: string): string {
  return fromEnvironment(flag) ? `${line} (set by ${envName(flag)})` : line;
}

/** The validated config (and what `check` adds, e.g. run's listener rules); a ConfigError is a usage error. */
function configFrom(args: RawRunArgs, check?: (config: ReturnType<typeof buildConfig>) => void) {
  try {
    const config = buildConfig(args);
    check?.(config);
    return config;
  } catch (error) {
    if (error instanceof ConfigError) usageError(aboutFlag(error.flag, error.message));
    throw error;
  }
}

export async function main(argv: string[]): Promise<void> {
  const { values: envValues, unknown: unknownEnv } = readEnv(runOptions, process.env);
  fromEnvironment = (flag) => flag in envValues && !argv.some((arg) => arg === `--${flag}` || arg.startsWith(`--${flag}=`));
  const cli = yargs(argv)
    .scriptName('mtls-sidecar')
    .usage('$0 <command> [options]\n\nA service-mesh sidecar: verified mutual TLS in and out of a local app.')
    .command(
      ['run', '$0'],
      'run the sidecar (the default command)',
      (command) => addRunOptions(command, envValues, argv),
      (args) => runCommand(args as RawRunArgs, unknownEnv),
    )
    .command(
      'check',
      'load the cert dir exactly as run would and explain every problem (exit 0 healthy, 1 problems)',
      (command) => addCertOptions(command, envValues, argv),
      async (args) => process.exit(await checkCommand(configFrom(args as RawRunArgs).certs, args.json === true)),
    )
    .command(
      'probe <url>',
      'connect to an upstream as run would and explain the outcome (exit 0 ok, 1 problems)',
      (command) =>
        addCertOptions(command, envValues, argv, {
          'expect-spiffe': { type: 'string', describe: 'SPIFFE ID the upstream must present' },
          timeout: { type: 'string', default: '5s', describe: 'give up on each step after this long' },
        })
          .positional('url', { type: 'string', describe: 'https://HOST:PORT/path of the upstream', demandOption: true }),
      async (args) => {
        // Here --expect-spiffe is one ID for this upstream, not run's HOST=ID list.
        const config = configFrom({ ...(args as RawRunArgs), 'expect-spiffe': undefined });
        let timeoutMs = 5000;
        try {
          timeoutMs = parseDuration('timeout', args.timeout);
        } catch (error) {
          usageError((error as Error).message);
        }
        const expectSpiffe = typeof args['expect-spiffe'] === 'string' ? args['expect-spiffe'] : undefined;
        const code = await probeCommand(
          { url: String(args.url), certs: config.certs, expectSpiffe, trustDomain: config.trustDomain, minTls: config.minTls, timeoutMs },
          args.json === true,
        );
        process.exit(code);
      },
    )
    .command('certs', 'development certificates (node-forge)', (certs) =>
      certs
        .command(
          'init',
          'create a development CA in --out (ca.crt, ca.key)',
          (command) =>
            declareOptions(
              command,
              {
                out: { type: 'string', demandOption: true, describe: 'directory to write the CA into' },
                days: { type: 'number', describe: 'validity in days (default 365)' },
                name: { type: 'string', describe: 'CA common name' },
                'if-missing': { type: 'boolean', default: false, describe: 'keep an existing CA and exit 0 instead of refusing' },
              } as const,
              argv,
            ),
          async (args) => process.exit(await certsInit({ out: args.out, days: args.days, name: args.name, ifMissing: args['if-missing'] })),
        )
        .command(
          'issue',
          'issue a service certificate into --out (tls.crt, tls.key, ca.crt)',
          (command) =>
            declareOptions(
              command,
              {
                ca: { type: 'string', demandOption: true, describe: 'directory made by `certs init`' },
                name: { type: 'string', demandOption: true, describe: 'service name (subject CN)' },
                dns: { type: 'array', string: true, describe: 'DNS SANs (repeatable or comma-separated)' },
                spiffe: { type: 'array', string: true, describe: 'SPIFFE ID URI SANs' },
                ip: { type: 'array', string: true, describe: 'IP SANs' },
                days: { type: 'number', describe: 'validity in days (default 30)' },
                out: { type: 'string', demandOption: true, describe: 'directory to write the certificate into' },
                force: { type: 'boolean', default: false, describe: 'replace an existing tls.crt, tls.key or other ca.crt in --out (refused otherwise: a sidecar may be serving them)' },
              } as const,
              argv,
            ),
          async (args) => {
            const list = (value: unknown) => (Array.isArray(value) ? value.flatMap((item) => String(item).split(',')).filter(Boolean) : undefined);
            process.exit(await certsIssue({ ca: args.ca, name: args.name, dns: list(args.dns), spiffe: list(args.spiffe), ip: list(args.ip), days: args.days, out: args.out, force: args.force }));
          },
        )
        .demandCommand(1, 'name a certs command: init or issue'),
    )
    .command(
      'wait',
      'exit 0 once the sidecar is ready (its /readyz answers 200)',
      (command) =>
        declareOptions(
          command,
          {
            admin: { type: 'string', default: process.env.SIDECAR_ADMIN ?? runOptions.admin.default, describe: 'admin address HOST:PORT or URL' },
            timeout: { type: 'string', default: '60s', describe: 'give up after this long (exit 1)' },
          } as const,
          argv,
        ),
      async (args) => {
        let timeoutMs: number;
        try {
          timeoutMs = parseDuration('timeout', args.timeout);
        } catch (error) {
          usageError((error as Error).message);
        }
        process.exit(await waitReady({ admin: args.admin, timeoutMs }));
      },
    )
    .command('demo', 'run the whole mission on loopback with no set-up, then exit', {}, async () => process.exit(await runDemo()))
    // No `--no-<flag>` negation (the SPEC has none), so an unknown `--no-x` is named as typed.
    .parserConfiguration({ 'boolean-negation': false })
    .strict()
    .help()
    .version()
    .wrap(Math.min(120, process.stdout.columns || 100))
    .fail((message, error) => {
      if (error) throw error;
      const unknown = /Unknown arguments?: (.*)/.exec(message ?? '');
      if (unknown) {
        // yargs also lists each camelCase expansion (--cert-drr, --certDrr): flags here are kebab-case.
        const names = unknown[1]!.split(', ').filter((name) => !/[A-Z]/.test(name));
        // yargs names positional words the same way as flags; only what was typed as a flag is one.
        const typedAsFlag = (name: string) => argv.some((arg) => arg === `--${name}` || arg.startsWith(`--${name}=`) || arg === `-${name}`);
        const flags = names.filter(typedAsFlag);
        const words = names.filter((name) => !typedAsFlag(name));
        if (flags.length) usageError(`unknown flag ${flags.map((name) => (name.length > 1 ? `--${name}` : `-${name}`)).join(', ')} (see --help)`);
        usageError(`unexpected argument ${words.map((word) => JSON.stringify(word)).join(', ')}: the commands are run, check, probe, certs, wait and demo (see --help)`);
      }
      // yargs reports a value outside `choices` on two lines; say it in ConfigError's one-line form.
      const invalid = [...(message ?? '').matchAll(/Argument: ([^,]+), Given: (.*), Choices: (.*)/g)];
      if (invalid.length > 0) {
        usageError(
          invalid
            .map(([, flag, given, choices]) => aboutFlag(flag!, `--${flag}: ${given} is not valid: ${choices!.split(', ').map((choice) => choice.replace(/^"|"$/g, '')).join(' or ')}`))
            .join('; '),
        );
      }
      usageError(message ?? 'invalid usage (see --help)');
    });
  await cli.parseAsync();
}

main(hideBin(process.argv)).catch(async (error: unknown) => {
  await flushLogs();
  process.stderr.write(`mtls-sidecar: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
