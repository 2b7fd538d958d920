/**
 * The process logger: pino JSON on stdout (or a compact human format with --log-format pretty).
 * Keys, passphrases and credential headers are redacted at the logger so no call site can leak them.
 */
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';

export type { Logger };

const redactPaths = [
  'key',
  'keyPem',
  'passphrase',
  'headers.authorization',
  'headers.cookie',
  'headers["proxy-authorization"]',
  'headers["set-cookie"]',
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["proxy-authorization"]',
];

/** Renders one pino JSON line (ISO time, level label) as `HH:MM:SS LEVEL msg key=value …`. */
export function prettyLine(line: string): string {
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line + '\n';
  }
  const { time, level, msg, pid: _pid, hostname: _hostname, ...rest } = record;
  const clock = typeof time === 'string' ? time.slice(11, 19) : new Date(Number(time)).toISOString().slice(11, 19);
  const fields = Object.entries(rest).map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
  return `${clock} ${String(level).toUpperCase().padEnd(5)} ${String(msg ?? '')} ${fields.join(' ')}`.trimEnd() + '\n';
}

function prettyStream(): Writable {
  let pending = '';
  return new Writable({
    write(chunk: Buffer, _encoding, callback) {
      pending += chunk.toString('utf8');
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) if (line) process.stdout.write(prettyLine(line));
      callback();
    },
  });
}

let jsonDestination: ReturnType<typeof pino.destination> | undefined;
/** stdout failed (EPIPE: whoever read the logs went away); lines are dropped from then on. */
let stdoutFailed = false;

/**
 * Writes any buffered log lines and ends the JSON destination, then resolves: await it right before
 * process.exit. The destination writes asynchronously, because a synchronous write per access-log
 * line blocks the event loop on every request. Not sonic-boom's flushSync: on EPIPE it retries
 * forever, so a sidecar whose log reader had died would never finish exiting. Resolves at the
 * latest after `timeoutMs`, and at once when stdout has already failed.
 */
export function flushLogs(timeoutMs = 2000): Promise<void> {
  const destination = jsonDestination;
  if (!destination || stdoutFailed) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, timeoutMs);
    destination.once('close', done);
    destination.once('error', done);
    destination.end();
    function done(): void {
      clearTimeout(timer);
      resolve();
    }
  });
}

/** A broken stdout loses log lines, never the process: the sidecar keeps serving and still exits on SIGTERM. */
function markStdoutFailed(): void {
  stdoutFailed = true;
}

export function createLogger(options: { level: string; format: 'json' | 'pretty' }): Logger {
  const destination = options.format === 'pretty' ? prettyStream() : (jsonDestination = pino.destination({ fd: 1, sync: false }));
  process.stdout.on('error', markStdoutFailed);
  jsonDestination?.on('error', markStdoutFailed);
  return pino(
    {
      level: options.level,
      base: { pid: process.pid },
      redact: { paths: redactPaths, censor: '[redacted]' },
      formatters: { level: (label) => ({ level: label }) },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination,
  );
}

/**
 * Logs at most once per key per interval, so a misbehaving peer cannot flood the log; returns how
 * many events were suppressed since the last line for that key.
 */
export class RateLimitedLog {
  private readonly last = new Map<string, { at: number; suppressed: number }>();

  constructor(private readonly intervalMs: number, private readonly maxKeys = 10_000) {}

  /** Returns the suppressed count to report if this event should be logged now, else undefined. */
  admit(key: string, now = Date.now()): number | undefined {
    const entry = this.last.get(key);
    if (entry && now - entry.at < this.intervalMs) {
      entry.suppressed += 1;
      return undefined;
    }
    if (this.last.size >= this.maxKeys) this.last.clear();
    this.last.set(key, { at: now, suppressed: 0 });
    return entry?.suppressed ?? 0;
  }
}
