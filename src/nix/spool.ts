/**
 * The publisher's spool: what waits for the log, so a build never waits on the network and no
 * entry is lost while the log is down (docs/nix.md, "Publishing").
 *
 * Files in the spool directory:
 *   <19-digit ns>-<pid>.build                a build recorded by the post-build hook (text, see
 *                                            `BuildRecord`); the publisher turns it into entries
 *   <13-digit ms>-<pid>-<hex>.entries        entries to deliver (written to a dot-tmp file, fsync'd,
 *                                            renamed)
 *   <...>.claim-<pid>                        either of the above, taken by the publisher with that pid
 *   rejected/<name>, rejected/<name>.reason  set aside for good, with why: unreadable, refused by
 *                                            the log (400, 413), or a build whose outputs are gone
 *                                            from the store; never deleted, never blocking the rest
 * A claim is a rename, which exactly one process can win. A claim is released (renamed back) when
 * delivery fails, and recovered by the next publisher when its owner died or it is older than
 * `STALE_CLAIM_MS`. A file is deleted only after its receipts verified (or, for a build, after its
 * entries were spooled), so an entry may be delivered twice (the log ignores a resubmitted value)
 * but is never lost.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, stat, unlink, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeBase64Strict, toBase64 } from '../core/bytes.js';
import { decodeEntry, type Entry, encodeEntry } from '../core/entry.js';
import { StorageError } from '../core/errors.js';
import { isStorePath } from './store-path.js';

/** A claim older than this is taken back even if a process with its pid exists (pid reuse). */
export const STALE_CLAIM_MS = 60 * 60 * 1000;

const PENDING_RE = /^[0-9]{13}-[0-9]+-[0-9a-f]{8}\.entries$/;
const BUILD_RE = /^([0-9]{19})-[0-9]+\.build$/;
const CLAIM_RE = /^([0-9]{13}-[0-9]+-[0-9a-f]{8}\.entries|[0-9]{19}-[0-9]+\.build)\.claim-([0-9]+)$/;
/** The folder of files set aside for good. */
export const REJECTED_DIR = 'rejected';
const BUILD_MAGIC = 'trustix-build 1';

/** A claimed pending file. */
export interface Held {
  /** The pending file name it came from. */
  name: string;
  /** Where it is now. */
  path: string;
}

export interface Claim extends Held {
  entries: Entry[];
}

/**
 * A build the post-build hook recorded: Nix's `DRV_PATH` and `OUT_PATHS` (empty in Nix 2.8) and
 * the store it built in (`store = ` of the hook's `NIX_CONFIG`, empty for the default store).
 * On disk, four lines: `trustix-build 1`, `drv=...`, `out=...` (space-separated), `store=...`.
 */
export interface BuildRecord {
  drv: string;
  outputs: string[];
  store: string;
}

export interface BuildClaim extends Held {
  record: BuildRecord;
  /** When the hook recorded it, ms since the epoch. */
  recorded: number;
}

/** `store = ` of a `NIX_CONFIG` text, or ''. */
export function storeOfNixConfig(nixConfig: string | undefined): string {
  const m = /(?:^|\n)store = ([^\n]*)/.exec(nixConfig ?? '');
  return m ? m[1].trim() : '';
}

/** The text of a build record file (what the hook wrapper's `printf` writes). */
export function formatBuildRecord(r: BuildRecord): string {
  return `${BUILD_MAGIC}\ndrv=${r.drv}\nout=${r.outputs.join(' ')}\nstore=${r.store}\n`;
}

export function parseBuildRecord(text: string): BuildRecord {
  const lines = text.split('\n');
  if (lines[0] !== BUILD_MAGIC)
    throw new StorageError(`not a build record (first line is not "${BUILD_MAGIC}")`);
  const field = (i: number, k: string) => {
    const l = lines[i];
    if (l === undefined || !l.startsWith(`${k}=`)) throw new StorageError(`line ${i + 1} is not ${k}=...`);
    return l.slice(k.length + 1).trim();
  };
  const r = {
    drv: field(1, 'drv'),
    outputs: field(2, 'out')
      .split(/\s+/)
      .filter((p) => p !== ''),
    store: field(3, 'store'),
  };
  if (r.drv === '' && r.outputs.length === 0)
    throw new StorageError('names neither a derivation nor outputs');
  for (const p of r.drv === '' ? r.outputs : [r.drv, ...r.outputs]) {
    if (!isStorePath(p)) throw new StorageError(`not a store path: ${JSON.stringify(p)}`);
  }
  return r;
}

interface SpoolDoc {
  version: 1;
  created: string;
  entries: string[];
}

export class Spool {
  readonly warn: (message: string) => void;

  constructor(
    readonly dir: string,
    opts: { warn?: (message: string) => void } = {},
  ) {
    this.warn = opts.warn ?? ((m) => process.stderr.write(`trustix: ${m}\n`));
  }

  /** Writes `entries` durably as one new pending file; returns its name. */
  async add(entries: readonly Entry[], now = Date.now()): Promise<string> {
    const doc: SpoolDoc = {
      version: 1,
      created: new Date(now).toISOString(),
      entries: entries.map((e) => toBase64(encodeEntry(e))),
    };
    const name = `${String(now).padStart(13, '0')}-${process.pid}-${randomBytes(4).toString('hex')}.entries`;
    return this.writeDurably(name, `${JSON.stringify(doc)}\n`);
  }

  /** Writes `text` as `name` in `dir`: dot-tmp file (`mode`), fsync, rename, fsync dir. */
  private async writeDurably(name: string, text: string, dir = this.dir, mode = 0o600): Promise<string> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const tmp = join(dir, `.${name}.tmp`);
    const fh = await open(tmp, 'wx', mode);
    try {
      await fh.writeFile(text, 'utf8');
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await rename(tmp, join(dir, name));
    } catch (err) {
      await unlink(tmp).catch(() => {});
      throw err;
    }
    await syncDir(dir);
    return name;
  }

  /**
   * Records a build durably as one new `.build` file; returns its name. The hook wrapper written
   * by `trustix nix install-hook` writes the same file from the shell.
   */
  async addBuild(record: BuildRecord, nowNs = process.hrtime.bigint() + NS_EPOCH_OFFSET): Promise<string> {
    return this.writeDurably(
      `${String(nowNs).padStart(19, '0')}-${process.pid}.build`,
      formatBuildRecord(record),
    );
  }

  /** Pending (unclaimed) entries files, oldest first. */
  async pending(): Promise<string[]> {
    return (await this.list()).filter((n) => PENDING_RE.test(n)).sort();
  }

  /** Pending (unclaimed) build records, oldest first. */
  async pendingBuilds(): Promise<string[]> {
    return (await this.list()).filter((n) => BUILD_RE.test(n)).sort();
  }

  /** Pending and claimed files, and files set aside for good. */
  async status(): Promise<{ pending: number; builds: number; claimed: number; rejected: number }> {
    const names = await this.list();
    const rejected = await this.list(join(this.dir, REJECTED_DIR));
    return {
      pending: names.filter((n) => PENDING_RE.test(n)).length,
      builds: names.filter((n) => BUILD_RE.test(n)).length,
      claimed: names.filter((n) => CLAIM_RE.test(n)).length,
      rejected: rejected.filter((n) => !n.endsWith('.reason') && !n.startsWith('.')).length,
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
    if (n > 0) await syncDir(this.dir);
    return n;
  }

  /**
   * Claims pending entries file `name`. Undefined if another process got it first. A file that
   * cannot be read as entries is set aside in `rejected/` with a warning and undefined is returned.
   */
  async claim(name: string): Promise<Claim | undefined> {
    const held = await this.hold(name);
    if (!held) return undefined;
    try {
      return { ...held, entries: parseSpoolFile(await readFile(held.path)) };
    } catch (err) {
      await this.reject(held, `unreadable: ${(err as Error).message}`);
      return undefined;
    }
  }

  /** Claims pending build record `name`, as `claim` does for entries files. */
  async claimBuild(name: string): Promise<BuildClaim | undefined> {
    const held = await this.hold(name);
    if (!held) return undefined;
    try {
      const record = parseBuildRecord(await readFile(held.path, 'utf8'));
      const ns = BUILD_RE.exec(name)?.[1] ?? '0';
      return { ...held, record, recorded: Number(BigInt(ns) / 1_000_000n) };
    } catch (err) {
      await this.reject(held, `unreadable: ${(err as Error).message}`);
      return undefined;
    }
  }

  /** Renames pending file `name` to a claim of this process; undefined if it is gone. */
  private async hold(name: string): Promise<Held | undefined> {
    const from = join(this.dir, name);
    const path = `${from}.claim-${process.pid}`;
    if (!(await renameIfThere(from, path))) return undefined;
    // rename keeps the mtime; the claim's age is what staleness is judged by
    const t = new Date();
    await utimes(path, t, t).catch(() => {});
    return { name, path };
  }

  /** The claim is dealt with (its entries are in the log, or its build's entries are spooled). */
  async done(claim: Held): Promise<void> {
    await unlink(claim.path).catch((err: NodeJS.ErrnoException) => {
      // recovered by another flusher meanwhile (only after a pid reuse or a long stall): it will
      // be delivered again, which the log treats as a duplicate
      if (err.code !== 'ENOENT') throw err;
    });
    await syncDir(this.dir);
  }

  /**
   * Sets the claimed file aside for good as `rejected/<name>`, with `why` in
   * `rejected/<name>.reason` (both kept for the operator, never deleted), and warns, so the files
   * behind it are not held up.
   */
  async reject(claim: Held, why: string): Promise<void> {
    const dir = join(this.dir, REJECTED_DIR);
    // a temporary file left by a crash while rejecting a file of this name earlier
    await unlink(join(dir, `.${claim.name}.reason.tmp`)).catch(() => {});
    await this.writeDurably(`${claim.name}.reason`, `${why}\n`, dir);
    const to = join(dir, claim.name);
    if (!(await renameIfThere(claim.path, to))) return;
    await syncDir(dir);
    await syncDir(this.dir);
    this.warn(`spool file ${claim.name} set aside as ${to}: ${why}`);
  }

  /** Delivery failed: put the claim back in the queue. */
  async release(claim: Held): Promise<void> {
    await renameIfThere(claim.path, join(this.dir, claim.name));
    await syncDir(this.dir);
  }

  private async list(dir = this.dir): Promise<string[]> {
    try {
      return await readdir(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw new StorageError(`cannot read spool ${dir}: ${(err as Error).message}`, { cause: err });
    }
  }
}

/** Nanoseconds since the epoch minus `process.hrtime.bigint()`, for ordered build record names. */
const NS_EPOCH_OFFSET = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();

async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r').catch(() => undefined);
  if (!d) return;
  try {
    await d.sync();
  } catch {
    // some file systems refuse fsync on directories; the rename is still atomic
  } finally {
    await d.close();
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
