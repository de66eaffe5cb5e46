/**
 * The publisher's spool: entries waiting for the log, one file per hook run, so a build never
 * waits on the network for long and no entry is lost while the log is down (docs/nix.md).
 *
 * Files in the spool directory:
 *   <13-digit ms>-<pid>-<hex>.entries        pending (written to a dot-tmp file, fsync'd, renamed)
 *   <...>.entries.claim-<pid>                taken by the flusher with that pid
 *   <...>.entries.bad                        unreadable, set aside with a warning (never deleted)
 *   <...>.entries.refused                    refused by the log as malformed (400), set aside with a
 *                                            warning (never deleted), so it does not block the rest
 * A claim is a rename, which exactly one process can win. A claim is released (renamed back) when
 * delivery fails, and recovered by the next flusher when its owner died or it is older than
 * `STALE_CLAIM_MS`. A file is deleted only after its receipts verified, so an entry may be
 * delivered twice (the log ignores a resubmitted value) but is never lost.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, stat, unlink, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeBase64Strict, toBase64 } from '../core/bytes.js';
import { decodeEntry, type Entry, encodeEntry } from '../core/entry.js';
import { StorageError } from '../core/errors.js';

/** A claim older than this is taken back even if a process with its pid exists (pid reuse). */
export const STALE_CLAIM_MS = 60 * 60 * 1000;

const PENDING_RE = /^[0-9]{13}-[0-9]+-[0-9a-f]{8}\.entries$/;
const CLAIM_RE = /^([0-9]{13}-[0-9]+-[0-9a-f]{8}\.entries)\.claim-([0-9]+)$/;

export interface Claim {
  /** The pending file name it came from. */
  name: string;
  /** Where it is now. */
  path: string;
  entries: Entry[];
}

interface SpoolDoc {
  version: 1;
  created: string;
  entries: string[];
}

export class Spool {
  private readonly warn: (message: string) => void;

  constructor(
    readonly dir: string,
    opts: { warn?: (message: string) => void } = {},
  ) {
    this.warn = opts.warn ?? ((m) => process.stderr.write(`trustix: ${m}\n`));
  }

  /** Writes `entries` durably as one new pending file; returns its name. */
  async add(entries: readonly Entry[], now = Date.now()): Promise<string> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const doc: SpoolDoc = {
      version: 1,
      created: new Date(now).toISOString(),
      entries: entries.map((e) => toBase64(encodeEntry(e))),
    };
    const name = `${String(now).padStart(13, '0')}-${process.pid}-${randomBytes(4).toString('hex')}.entries`;
    const tmp = join(this.dir, `.${name}.tmp`);
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(`${JSON.stringify(doc)}\n`, 'utf8');
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await rename(tmp, join(this.dir, name));
    } catch (err) {
      await unlink(tmp).catch(() => {});
      throw err;
    }
    await this.syncDir();
    return name;
  }

  /** Pending (unclaimed) file names, oldest first. */
  async pending(): Promise<string[]> {
    return (await this.list()).filter((n) => PENDING_RE.test(n)).sort();
  }

  /** Claimed and pending files, and files set aside as bad. */
  async status(): Promise<{ pending: number; claimed: number; bad: number; refused: number }> {
    const names = await this.list();
    return {
      pending: names.filter((n) => PENDING_RE.test(n)).length,
      claimed: names.filter((n) => CLAIM_RE.test(n)).length,
      bad: names.filter((n) => n.endsWith('.entries.bad')).length,
      refused: names.filter((n) => n.endsWith('.entries.refused')).length,
    };
  }

  /**
   * Puts claims whose owner is gone (or that are older than `staleMs`) back in the queue. Returns
   * how many were released.
   */
  async recover(staleMs = STALE_CLAIM_MS, now = Date.now()): Promise<number> {
    let n = 0;
    for (const f of await this.list()) {
      const m = CLAIM_RE.exec(f);
      if (!m) continue;
      const pid = Number(m[2]);
      let stale = pid !== process.pid && !alive(pid);
      if (!stale) {
        const st = await stat(join(this.dir, f)).catch(() => undefined);
        stale = st !== undefined && now - st.mtimeMs > staleMs;
      }
      if (!stale) continue;
      if (await renameIfThere(join(this.dir, f), join(this.dir, m[1]))) n++;
    }
    if (n > 0) await this.syncDir();
    return n;
  }

  /**
   * Claims pending file `name`. Undefined if another process got it first. A file that cannot be
   * read as entries is renamed to `.bad` with a warning and undefined is returned.
   */
  async claim(name: string): Promise<Claim | undefined> {
    const from = join(this.dir, name);
    const path = `${from}.claim-${process.pid}`;
    if (!(await renameIfThere(from, path))) return undefined;
    // rename keeps the mtime; the claim's age is what staleness is judged by
    const t = new Date();
    await utimes(path, t, t).catch(() => {});
    let entries: Entry[];
    try {
      entries = parseSpoolFile(await readFile(path));
    } catch (err) {
      const bad = `${from}.bad`;
      await rename(path, bad);
      await this.syncDir();
      this.warn(`spool file ${name} is unreadable (${(err as Error).message}); set aside as ${bad}`);
      return undefined;
    }
    return { name, path, entries };
  }

  /** The claim's entries are in the log: forget them. */
  async done(claim: Claim): Promise<void> {
    await unlink(claim.path).catch((err: NodeJS.ErrnoException) => {
      // recovered by another flusher meanwhile (only after a pid reuse or a long stall): it will
      // be delivered again, which the log treats as a duplicate
      if (err.code !== 'ENOENT') throw err;
    });
    await this.syncDir();
  }

  /**
   * The log refused the claim's entries as malformed: set the file aside as `.refused` (kept for
   * the operator, never deleted) with a warning, so the files behind it can still be delivered.
   */
  async refuse(claim: Claim, why: string): Promise<void> {
    const to = join(this.dir, `${claim.name}.refused`);
    if (!(await renameIfThere(claim.path, to))) return;
    await this.syncDir();
    this.warn(`the log refused spool file ${claim.name} (${why}); set aside as ${to}`);
  }

  /** Delivery failed: put the claim back in the queue. */
  async release(claim: Claim): Promise<void> {
    await renameIfThere(claim.path, join(this.dir, claim.name));
    await this.syncDir();
  }

  private async list(): Promise<string[]> {
    try {
      return await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw new StorageError(`cannot read spool ${this.dir}: ${(err as Error).message}`, { cause: err });
    }
  }

  private async syncDir(): Promise<void> {
    const d = await open(this.dir, 'r').catch(() => undefined);
    if (!d) return;
    try {
      await d.sync();
    } catch {
      // some file systems refuse fsync on directories; the rename is still atomic
    } finally {
      await d.close();
    }
  }
}

/** Decodes a spool file: a JSON document whose `entries` are base64 entry encodings. */
export function parseSpoolFile(data: Buffer): Entry[] {
  let doc: SpoolDoc;
  try {
    doc = JSON.parse(data.toString('utf8')) as SpoolDoc;
  } catch {
    throw new StorageError('not JSON');
  }
  if (typeof doc !== 'object' || doc === null || doc.version !== 1 || !Array.isArray(doc.entries)) {
    throw new StorageError('not a version 1 spool file');
  }
  return doc.entries.map((s, i) => {
    const b = typeof s === 'string' ? decodeBase64Strict(s) : undefined;
    if (!b) throw new StorageError(`entry ${i} is not base64`);
    try {
      return decodeEntry(b);
    } catch (err) {
      throw new StorageError(`entry ${i}: ${(err as Error).message}`, { cause: err });
    }
  });
}

async function renameIfThere(from: string, to: string): Promise<boolean> {
  try {
    await rename(from, to);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
