/**
 * Memory of the last checkpoint a client trusted for each log, so that every newer checkpoint must
 * come with a consistency proof from it and an older one is caught as a rollback.
 *
 * The file store keeps one small JSON file per log (named after the origin and a hash of origin and
 * verifier key: the same log reached through several URLs or mirrors shares one memory). Updates
 * are compare-and-set under a per-log lock file, so concurrent processes never replace a newer
 * trusted checkpoint with an older one or lose evidence of a fork; each write goes to a temporary
 * file that is fsync'd and renamed over the old one, so a crash leaves the old or the new record,
 * never a torn one.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { StorageError } from '../core/errors.js';
import { sha256 } from '../core/hash.js';

/** Which log a memory belongs to: its origin and verifier key. */
export interface LogIdentity {
  origin: string;
  vkey: string;
}

export type CompareAndSetResult = { ok: true } | { ok: false; current: string | undefined };

export interface TrustStore {
  /** The last trusted signed checkpoint of the log, or undefined if none was trusted yet. */
  get(log: LogIdentity): Promise<string | undefined>;
  /**
   * Replaces the trusted checkpoint by `next` if it is still `expected` (undefined: none yet).
   * Otherwise changes nothing and returns what is trusted now, for the caller to reconcile.
   */
  compareAndSet(
    log: LogIdentity,
    expected: string | undefined,
    next: string,
    info?: { size?: number; source?: string },
  ): Promise<CompareAndSetResult>;
}

/** A trust store that lives as long as the process (the default for library users). */
export class MemoryTrustStore implements TrustStore {
  private readonly notes = new Map<string, string>();

  async get(log: LogIdentity): Promise<string | undefined> {
    return this.notes.get(logFileStem(log));
  }

  async compareAndSet(
    log: LogIdentity,
    expected: string | undefined,
    next: string,
  ): Promise<CompareAndSetResult> {
    const k = logFileStem(log);
    const current = this.notes.get(k);
    if (current !== expected) return { ok: false, current };
    this.notes.set(k, next);
    return { ok: true };
  }
}

/** `$XDG_STATE_HOME/trustix/trusted`, or `~/.local/state/trustix/trusted`. */
export function defaultTrustDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_STATE_HOME;
  // The XDG spec says relative values are invalid and must be ignored.
  const base = xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.local', 'state');
  return join(base, 'trustix', 'trusted');
}

/** File name stem for a log: readable origin plus a hash that makes it unique per (origin, vkey). */
export function logFileStem(log: LogIdentity): string {
  // asked on every lookup; a process follows few logs
  const id = `${log.origin}\n${log.vkey}`;
  let stem = stems.get(id);
  if (stem === undefined) {
    const readable = log.origin.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 64);
    stem = `${readable}-${sha256(Buffer.from(id, 'utf8')).toString('hex').slice(0, 16)}`;
    if (stems.size >= 1024) stems.clear();
    stems.set(id, stem);
  }
  return stem;
}

const stems = new Map<string, string>();

interface TrustRecord {
  version: 1;
  origin: string;
  vkey: string;
  size?: number;
  checkpoint: string;
  updated: string;
  source?: string;
}

const LOCK_WAIT_MS = 10_000;
/** A lock older than this is considered left behind by a crashed process even if its pid lives on (pid reuse). */
const LOCK_STALE_MS = 30_000;

export class FileTrustStore implements TrustStore {
  constructor(readonly dir: string) {}

  fileFor(log: LogIdentity): string {
    return join(this.dir, `${logFileStem(log)}.json`);
  }

  async get(log: LogIdentity): Promise<string | undefined> {
    return (await this.read(log))?.checkpoint;
  }

  async compareAndSet(
    log: LogIdentity,
    expected: string | undefined,
    next: string,
    info: { size?: number; source?: string } = {},
  ): Promise<CompareAndSetResult> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const file = this.fileFor(log);
    return withLock(`${file}.lock`, async () => {
      const current = (await this.read(log))?.checkpoint;
      if (current !== expected) return { ok: false, current };
      const record: TrustRecord = {
        version: 1,
        origin: log.origin,
        vkey: log.vkey,
        ...(info.size !== undefined ? { size: info.size } : {}),
        checkpoint: next,
        updated: new Date().toISOString(),
        ...(info.source !== undefined ? { source: info.source } : {}),
      };
      await writeFileAtomic(file, `${JSON.stringify(record, null, 2)}\n`);
      return { ok: true };
    });
  }

  private async read(log: LogIdentity): Promise<TrustRecord | undefined> {
    const file = this.fileFor(log);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new StorageError(`cannot read trust record ${file}: ${(err as Error).message}`, { cause: err });
    }
    let r: TrustRecord;
    try {
      r = JSON.parse(text) as TrustRecord;
    } catch (err) {
      throw new StorageError(
        `trust record ${file} is damaged (not JSON); remove it to start trusting afresh`,
        {
          cause: err,
        },
      );
    }
    if (
      typeof r !== 'object' ||
      r === null ||
      r.version !== 1 ||
      typeof r.checkpoint !== 'string' ||
      r.origin !== log.origin ||
      r.vkey !== log.vkey
    ) {
      throw new StorageError(
        `trust record ${file} is damaged or for another log; remove it to start trusting afresh`,
      );
    }
    return r;
  }
}

async function writeFileAtomic(file: string, content: string): Promise<void> {
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(content, 'utf8');
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  // The rename itself is durable only once the directory is synced.
  const dir = await open(join(file, '..'), 'r').catch(() => undefined);
  if (dir) {
    await dir.sync().catch(() => {});
    await dir.close();
  }
}

/**
 * Runs `fn` holding an exclusive lock file (created with O_EXCL). Critical sections here are a
 * read and a write of one small file, so waiting is short; a lock whose owner process is gone, or
 * that is far older than any critical section, is taken over.
 */
async function withLock<T>(lockPath: string, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      const fh = await open(lockPath, 'wx', 0o600);
      try {
        await fh.writeFile(`${process.pid}\n`);
      } finally {
        await fh.close();
      }
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new StorageError(`cannot lock ${lockPath}: ${(err as Error).message}`, { cause: err });
      }
    }
    if (await isStale(lockPath)) {
      await unlink(lockPath).catch(() => {});
      continue;
    }
    if (Date.now() > deadline) {
      throw new StorageError(
        `trust store is locked by another process (${lockPath}); remove the file if no trustix is running`,
      );
    }
    await new Promise((r) => setTimeout(r, Math.min(100, 5 + attempt * 5) * (0.5 + Math.random())));
  }
  try {
    return await fn();
  } finally {
    await unlink(lockPath).catch(() => {});
  }
}

async function isStale(lockPath: string): Promise<boolean> {
  try {
    const [text, st] = await Promise.all([readFile(lockPath, 'utf8'), stat(lockPath)]);
    if (Date.now() - st.mtimeMs > LOCK_STALE_MS) return true;
    const pid = Number(text.trim());
    // An empty file is a lock being written right now.
    if (!Number.isSafeInteger(pid) || pid <= 0) return false;
    try {
      process.kill(pid, 0);
      return false;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ESRCH';
    }
  } catch {
    // gone already: not stale, just retry
    return false;
  }
}
