/**
 * One place that knows how to undo everything the bench started: child processes and temp dirs.
 * Hooks run in reverse order of registration (proxies stop before the app, temp dir goes last)
 * on normal exit, on error and on SIGINT/SIGTERM/SIGHUP.
 */
type CleanupHook = () => Promise<void> | void;

const hooks: CleanupHook[] = [];
let cleaning: Promise<void> | undefined;
let interruptedBy: NodeJS.Signals | undefined;

/** Once cleanup has begun nothing new may start: it would outlive the bench. */
export function assertNotShuttingDown(what: string): void {
  if (cleaning) throw new Error(`not starting ${what}: the bench is shutting down`);
}

/** The signal that stopped the run, if any (errors caused by that are not worth reporting). */
export function interruptedBySignal(): NodeJS.Signals | undefined {
  return interruptedBy;
}

export function onCleanup(hook: CleanupHook): () => void {
  hooks.push(hook);
  return () => {
    const at = hooks.indexOf(hook);
    if (at >= 0) hooks.splice(at, 1);
  };
}

export function runCleanup(): Promise<void> {
  cleaning ??= (async () => {
    while (hooks.length > 0) {
      const hook = hooks.pop() as CleanupHook;
      try {
        await hook();
      } catch (error) {
        process.stderr.write(`bench: cleanup step failed: ${String(error)}\n`);
      }
    }
  })();
  return cleaning;
}

export function installSignalHandlers(): void {
  const exitCodes: Record<string, number> = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };
  for (const [signal, code] of Object.entries(exitCodes)) {
    process.once(signal as NodeJS.Signals, () => {
      interruptedBy = signal as NodeJS.Signals;
      process.stderr.write(`\nbench: ${signal} received, stopping every process and removing temp files...\n`);
      void runCleanup().finally(() => process.exit(code));
    });
  }
}
