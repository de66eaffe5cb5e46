/**
 * The witness's durable state in its state directory:
 * - `witness.mdb`: per log origin, the latest cosigned checkpoint (LMDB, fsync at every commit, so a
 *   200 is only answered once the new state is on disk). Check-and-set runs in one LMDB write
 *   transaction, which LMDB also serialises across processes sharing the directory.
 * - `evidence/<id>.json`: misbehaviour records (core/misbehaviour.ts), written to a temporary file,
 *   fsynced and renamed.
 */

import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { open, type RootDatabase } from 'lmdb';
import { decodeBase64Strict } from '../core/bytes.js';
import { StorageError } from '../core/errors.js';
import type { MisbehaviourProof } from '../core/misbehaviour.js';
import { writeProofFile } from '../misbehaviour/files.js';
import type { CosignedState } from './protocol.js';

export const STATE_FILE = 'witness.mdb';
export const EVIDENCE_DIR = 'evidence';
const EVIDENCE_NAME_RE = /^[a-z-]+-[0-9a-f]{24}\.json$/;

export class WitnessStore {
  private constructor(
    private readonly db: RootDatabase<string, string>,
    private readonly evidenceDir: string,
  ) {}

  static open(dir: string): WitnessStore {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const evidenceDir = join(dir, EVIDENCE_DIR);
    mkdirSync(evidenceDir, { recursive: true, mode: 0o700 });
    let db: RootDatabase<string, string>;
    try {
      db = open<string, string>({
        path: join(dir, STATE_FILE),
        encoding: 'string',
        // Durable at commit: a transaction's promise resolves after fsync.
        overlappingSync: false,
        noSync: false,
        compression: false,
      });
    } catch (err) {
      throw new StorageError(
        `cannot open witness state ${join(dir, STATE_FILE)}: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
    return new WitnessStore(db, evidenceDir);
  }

  /** The latest checkpoint cosigned for `origin`, if any, as of the latest commit of any process. */
  get(origin: string): CosignedState | undefined {
    // lmdb-js keeps a read snapshot for the rest of the event-loop turn; another process (or an
    // earlier commit in this turn) may have moved on since.
    this.db.resetReadTxn();
    const raw = this.db.get(origin);
    return raw === undefined ? undefined : decodeState(origin, raw);
  }

  /**
   * Stores `next` for `origin` if the stored size is still `expectedSize` (0 for none), in one LMDB
   * write transaction; resolves once that is committed and fsynced. Otherwise nothing changes and
   * the stored size is returned. Transactions started in one event-loop turn share one commit (one
   * fsync), and the event loop does not wait for the disk.
   */
  compareAndSet(
    origin: string,
    expectedSize: number,
    next: CosignedState,
  ): Promise<{ ok: true } | { ok: false; size: number }> {
    return this.db.transaction(() => {
      const raw = this.db.get(origin);
      const size = raw === undefined ? 0 : decodeState(origin, raw).size;
      if (size !== expectedSize) return { ok: false as const, size };
      this.db.put(origin, encodeState(next));
      return { ok: true as const };
    });
  }

  /** Every origin with a stored state. */
  origins(): string[] {
    return [...this.db.getKeys()] as string[];
  }

  /** Writes a record (once per pair of checkpoints, see writeProofFile); returns its file name. */
  saveEvidence(e: MisbehaviourProof): string {
    return basename(writeProofFile(this.evidenceDir, e));
  }

  evidenceNames(): string[] {
    return readdirSync(this.evidenceDir)
      .filter((n) => EVIDENCE_NAME_RE.test(n))
      .sort();
  }

  /** The text of a record by file name; undefined when there is no such record. */
  readEvidence(name: string): string | undefined {
    if (!EVIDENCE_NAME_RE.test(name)) return undefined;
    try {
      return readFileSync(join(this.evidenceDir, name), 'utf8');
    } catch {
      return undefined;
    }
  }

  close(): Promise<void> {
    return this.db.close();
  }
}

function encodeState(s: CosignedState): string {
  return JSON.stringify({ size: s.size, root: s.rootHash.toString('base64'), note: s.note });
}

function decodeState(origin: string, raw: string): CosignedState {
  try {
    const o = JSON.parse(raw) as { size: unknown; root: unknown; note: unknown };
    const rootHash = typeof o.root === 'string' ? decodeBase64Strict(o.root) : undefined;
    if (
      Number.isSafeInteger(o.size) &&
      (o.size as number) >= 0 &&
      rootHash?.length === 32 &&
      typeof o.note === 'string'
    ) {
      return { size: o.size as number, rootHash, note: o.note };
    }
  } catch {
    // reported below
  }
  throw new StorageError(`witness state for ${JSON.stringify(origin)} is damaged`);
}
