/**
 * The worker thread behind PgLogStore's synchronous reads (see sync-reads.ts): it holds the read
 * connection, runs each request and posts the answer on its port before waking the waiting thread.
 * The requests of one `read` run in one REPEATABLE READ, READ ONLY transaction: one snapshot.
 */
import { type MessagePort, workerData } from 'node:worker_threads';
import pg from 'pg';
import { connectionLost } from './errors.js';
import { SCHEMA } from './schema.js';
import type { ReadAnswer, ReadRequest } from './sync-reads.js';

const { url, ctrl, port } = workerData as { url: string; ctrl: SharedArrayBuffer; port: MessagePort };
const flag = new Int32Array(ctrl);
let client: pg.Client | undefined;
/** The connection whose transaction is the open snapshot, if a read is under way. */
let snapshotOn: pg.Client | undefined;

async function connection(): Promise<pg.Client> {
  if (client !== undefined) return client;
  const c = new pg.Client({ connectionString: url, application_name: 'trustix reader' });
  // a connection that fails later is dropped and made again by the next request
  c.on('error', () => {
    if (client === c) client = undefined;
  });
  await c.connect();
  client = c;
  return c;
}

function bytes(v: Buffer | null | undefined): Buffer | undefined {
  return v ?? undefined;
}

async function run(req: ReadRequest): Promise<unknown> {
  const c = await connection();
  if (req.op === 'end') {
    const open = snapshotOn;
    snapshotOn = undefined;
    if (open === c) await c.query('COMMIT');
    return undefined;
  }
  if (req.begin) {
    await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    snapshotOn = c;
  } else if (req.inRead && snapshotOn !== c) {
    // the rest of this read would see another snapshot
    throw new Error('the connection to PostgreSQL was lost during a read');
  }
  switch (req.op) {
    case 'head': {
      const r = await c.query(
        `SELECT size::float8 AS size, root_hash, map_root, checkpoint FROM ${SCHEMA}.head`,
      );
      const h = r.rows[0];
      return h === undefined
        ? undefined
        : { size: h.size, rootHash: h.root_hash, mapRoot: h.map_root, checkpoint: h.checkpoint };
    }
    case 'entry': {
      const r = await c.query(`SELECT data FROM ${SCHEMA}.entries WHERE idx = $1`, [req.index]);
      return bytes(r.rows[0]?.data);
    }
    case 'tile': {
      const r = await c.query(`SELECT width, expanded FROM ${SCHEMA}.tiles WHERE level = $1 AND idx = $2`, [
        req.level,
        req.index,
      ]);
      const t = r.rows[0];
      return t === undefined ? undefined : { width: t.width, expanded: t.expanded };
    }
    case 'stratum': {
      const r = await c.query(`SELECT data FROM ${SCHEMA}.strata WHERE id = $1`, [Buffer.from(req.id)]);
      return bytes(r.rows[0]?.data);
    }
    case 'strata': {
      const r = await c.query(`SELECT id, data FROM ${SCHEMA}.strata WHERE id = ANY($1::bytea[])`, [
        req.ids.map((id) => Buffer.from(id)),
      ]);
      return r.rows.map((row: { id: Buffer; data: Buffer }) => [row.id, row.data]);
    }
    case 'entries': {
      const r = await c.query(
        `SELECT idx::float8 AS idx, data FROM ${SCHEMA}.entries WHERE idx >= $1 AND idx < $2 ORDER BY idx LIMIT $3`,
        [req.start, req.end, req.max],
      );
      return r.rows.map((row: { idx: number; data: Buffer }) => [row.idx, row.data]);
    }
    case 'checkpoints': {
      const r = await c.query(`SELECT size::float8 AS size, note FROM ${SCHEMA}.checkpoints ORDER BY size`);
      return r.rows.map((row: { size: number; note: string }) => ({ size: row.size, checkpoint: row.note }));
    }
    case 'meta': {
      const r = await c.query(`SELECT value FROM ${SCHEMA}.meta WHERE name = $1`, [req.name]);
      return r.rows[0]?.value;
    }
    case 'nonces': {
      const r = await c.query(
        `SELECT id, expires::float8 AS expires FROM ${SCHEMA}.nonces WHERE expires >= $1 ORDER BY expires, id`,
        [req.now],
      );
      return r.rows;
    }
  }
}

function answer(a: ReadAnswer): void {
  port.postMessage(a);
  Atomics.store(flag, 0, 1);
  Atomics.notify(flag, 0);
}

// one request at a time on the connection, in order (an `end` is not waited for by the store)
let queue: Promise<void> = Promise.resolve();
port.on('message', (req: ReadRequest) => {
  queue = queue.then(() => handle(req));
});

function handle(req: ReadRequest): Promise<void> {
  if (req.op === 'close') {
    port.close();
    return client?.end().catch(() => {}) ?? Promise.resolve();
  }
  return run(req).then(
    (value) => {
      if (req.op !== 'end') answer({ ok: true, value, seq: req.seq });
    },
    async (err: Error & { code?: string }) => {
      // a failed statement aborts the snapshot's transaction: end it so the next read starts clean
      const open = snapshotOn;
      snapshotOn = undefined;
      if (open !== undefined && open === client) {
        await open.query('ROLLBACK').catch(() => {
          if (client === open) client = undefined;
        });
      }
      if (req.op !== 'end')
        answer({ ok: false, message: err.message, code: err.code, lost: connectionLost(err), seq: req.seq });
    },
  );
}
