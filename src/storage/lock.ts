/**
 * The writer lock of a log directory. Two writers on one store would each sequence and sign on
 * their own view of it: acknowledged entries lost, and two different trees signed for one size.
 * So whatever writes a store (`serve`, a local `submit`, `init`) first takes an exclusive lock on
 * `DIR/lock`, and a second writer is refused, named by the PID the holder wrote into the file.
 *
 * The lock is an open file description lock (Linux `F_OFD_SETLK`; `flock` on macOS) through
 * fs-native-extensions: the kernel drops it when the holder's file is closed, so also when the
 * holder dies (SIGKILL, power loss), and no stale lock is ever left to clean up. It conflicts
 * between two opens of the file in one process too (two `[[log]]` entries reaching one directory).
 * Readers (lookup, info, audit) take no lock: LMDB gives them consistent snapshots beside a writer.
 */
import { closeSync, constants, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { tryLock } from 'fs-native-extensions';
import { TrustixError } from '../core/errors.js';

export const LOCK_FILE = 'lock';

/** Another process (or another open in this one) holds the writer lock of a store. */
export class StoreLockedError extends TrustixError {
  constructor(
    readonly dir: string,
    readonly holderPid: number | undefined,
  ) {
    const who = holderPid === undefined ? 'another process' : `process ${holderPid}`;
    super(
      'LOCKED',
      `log store ${dir} is in use by another writer (${who}, lock ${join(dir, LOCK_FILE)}); stop it first, ` +
        'or use read-only commands (lookup, info, audit)',
    );
  }
}

/** A held writer lock; `release` closes the file, which drops the lock. */
export interface StoreLock {
  release(): void;
}

/** Takes the writer lock of `dir` (which must exist) or throws StoreLockedError. Never waits. */
export function lockStore(dir: string): StoreLock {
  const file = join(dir, LOCK_FILE);
  const fd = openSync(file, constants.O_RDWR | constants.O_CREAT, 0o644);
  let granted: boolean;
  try {
    granted = tryLock(fd);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  if (!granted) {
    closeSync(fd);
    throw new StoreLockedError(dir, holderOf(file));
  }
  // the PID is for the message of a writer refused later; the lock itself is what counts, so a
  // PID that cannot be written (a full disk) is left out
  try {
    ftruncateSync(fd, 0);
    writeSync(fd, `${process.pid}\n`, 0);
  } catch {
    // the message will say "another process"
  }
  let released = false;
  return {
    release() {
      if (released) return;
      released = true;
      closeSync(fd);
    },
  };
}

function holderOf(file: string): number | undefined {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim());
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}
