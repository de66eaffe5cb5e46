/**
 * Opening a node's log that lives in PostgreSQL (LogConfig.storage), a database other nodes may
 * share: the log is created in it by the first node that holds the sequencer lease, and every node
 * opens it as a standby (it sequences once SequencerRole gives it the lease). The signing key stays
 * in the log's directory; a node without it serves reads only.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { readSecretFile } from '../config/secret.js';
import { generateKey } from '../core/note.js';
import { Log, type LogOptions } from '../log/log.js';
import { writeFileDurably } from '../storage/durable.js';
import { FencedError, PgLogStore, redact } from '../storage/postgres/postgres.js';
import { ConfigError, type LogConfig } from './config.js';

export interface OpenedSharedLog {
  log: Log;
  store: PgLogStore;
  /** False when the node has no signing key: it never sequences (a reader). */
  canSequence: boolean;
}

/** How many lease lifetimes a first start waits for another node to create the log. */
const CREATE_WAIT_LEASES = 3;

export async function openSharedLog(
  lc: LogConfig & { storage: string },
  i: number,
  opts: LogOptions,
  say: (line: string) => void,
): Promise<OpenedSharedLog> {
  if (existsSync(join(lc.dir, 'log.mdb'))) {
    throw new ConfigError(
      `log[${i}]: storage is ${redact(lc.storage)} but ${lc.dir} holds a log of the embedded store (log.mdb); a log cannot move between stores`,
    );
  }
  const keyFile = lc.keyFile ?? join(lc.dir, 'signing.key');
  const store = await PgLogStore.open(lc.storage, {
    leaseMs: lc.leaseMs,
    // a holder is told apart in the lease row and in messages by host and process
    holder: `${hostname()}/${process.pid}/${randomBytes(3).toString('hex')}`,
  });
  try {
    let skey = existsSync(keyFile) ? readSecretFile(keyFile, 'signing key') : undefined;
    let log: Log | undefined;
    if (store.read((s) => s.head()) === undefined) {
      skey ??= newKey(lc.origin, keyFile, lc.dir);
      log = await createOrWait(store, lc.origin, { ...opts, skey, standby: true });
      if (log) say(`log ${lc.id}: created in ${redact(lc.storage)}, signing key ${keyFile} (mode 0600)`);
    }
    log ??= Log.openIn(store, skey === undefined ? { readOnly: true } : { ...opts, skey, standby: true });
    if (log.origin !== lc.origin) {
      await log.close();
      throw new ConfigError(
        `log[${i}].origin: the config says ${lc.origin} but the log in ${redact(lc.storage)} has origin ${log.origin}`,
      );
    }
    say(`log ${lc.id}: opened ${redact(lc.storage)} (size ${log.head().size})`);
    if (skey === undefined) say(`log ${lc.id}: no signing key at ${keyFile}: serving reads only`);
    return { log, store, canSequence: skey !== undefined };
  } catch (err) {
    await store.close();
    throw err;
  }
}

/** A new signing key for `origin`, written to `keyFile` (mode 0600) before any log uses it. */
function newKey(origin: string, keyFile: string, dir: string): string {
  const { skey } = generateKey(origin);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileDurably(keyFile, `${skey}\n`, 0o600);
  return skey;
}

/**
 * Creates the log in the empty database under the sequencer lease and opens it as a standby; while
 * another node holds the lease (it may be creating the log itself), waits for it. Undefined if
 * another node created it.
 */
async function createOrWait(
  store: PgLogStore,
  origin: string,
  opts: LogOptions & { skey: string; standby: true },
): Promise<Log | undefined> {
  const deadline = Date.now() + CREATE_WAIT_LEASES * store.leaseMs;
  for (;;) {
    try {
      await store.takeLease();
    } catch (err) {
      if (!(err instanceof FencedError) || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, Math.min(store.leaseMs, (err.expiresInMs ?? 100) + 10)));
      if (store.read((s) => s.head()) !== undefined) return undefined;
      continue;
    }
    if (store.read((s) => s.head()) !== undefined) return undefined;
    return Log.createIn(store, origin, opts);
  }
}
