import { SingleBar } from 'cli-progress';
import { TrustixError } from '../core/errors.js';

/** Exit codes shared by every command. */
export const EXIT = {
  ok: 0,
  error: 1,
  usage: 2,
  /** lookup: the log proved the key absent */
  absent: 3,
  /** lookup/verify: an answer or bundle failed verification */
  invalid: 4,
} as const;

/** An error meant for the user: printed as one line, exits with `exitCode`. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = EXIT.error,
  ) {
    super(message);
  }
}

export function describeError(err: unknown): string {
  if (err instanceof CliError || err instanceof TrustixError) return err.message;
  // Operating system errors (ENOENT, EACCES...) already say what and where.
  if (err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string') return err.message;
  return err instanceof Error ? `internal error: ${err.message}` : String(err);
}

/** A progress bar on stderr when it is a terminal; otherwise occasional plain lines. */
export function progress(label: string, total: number): { update(done: number): void; stop(): void } {
  if (process.stderr.isTTY) {
    const bar = new SingleBar(
      {
        format: `${label} [{bar}] {percentage}% {value}/{total} {eta_formatted} left`,
        stream: process.stderr,
      },
      undefined,
    );
    bar.start(total, 0);
    return { update: (d) => bar.update(d), stop: () => bar.stop() };
  }
  let last = 0;
  return {
    update(done) {
      const now = Date.now();
      if (now - last > 2000 || done === total) {
        last = now;
        process.stderr.write(`${label}: ${done}/${total}\n`);
      }
    },
    stop() {},
  };
}
