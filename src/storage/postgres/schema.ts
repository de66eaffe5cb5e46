/**
 * The PostgreSQL driver's schema, created and migrated by the node itself. Each migration runs
 * once, in order, in one transaction under an advisory lock, so any number of nodes starting at
 * once over one database apply it exactly once. `schema_version` records the last one applied;
 * a database migrated by a newer trustix than this one is refused rather than misread.
 */
import type { ClientBase } from 'pg';
import { StorageError } from '../../core/errors.js';

/** The schema that holds a log's tables (one database per log). */
export const SCHEMA = 'trustix';

/** Migrations by version: migration i (from 1) brings the schema from version i - 1 to i. */
const MIGRATIONS: readonly string[][] = [
  [
    `CREATE TABLE ${SCHEMA}.entries (idx bigint PRIMARY KEY, data bytea NOT NULL)`,
    `CREATE TABLE ${SCHEMA}.tiles (
       level integer NOT NULL, idx bigint NOT NULL, width integer NOT NULL, expanded bytea NOT NULL,
       PRIMARY KEY (level, idx))`,
    `CREATE TABLE ${SCHEMA}.strata (id bytea PRIMARY KEY, data bytea NOT NULL)`,
    `CREATE TABLE ${SCHEMA}.checkpoints (size bigint PRIMARY KEY, note text NOT NULL)`,
    // the one head row: what every reader starts from, written by each commit
    `CREATE TABLE ${SCHEMA}.head (
       one boolean PRIMARY KEY DEFAULT true CHECK (one), size bigint NOT NULL,
       root_hash bytea NOT NULL, map_root bytea NOT NULL, checkpoint text NOT NULL)`,
    `CREATE TABLE ${SCHEMA}.meta (name text PRIMARY KEY, value text NOT NULL)`,
    `CREATE TABLE ${SCHEMA}.nonces (id text PRIMARY KEY, expires bigint NOT NULL)`,
    `CREATE INDEX nonces_expires ON ${SCHEMA}.nonces (expires)`,
    // the sequencer lease: who may commit, until when, and the epoch that fences older holders
    `CREATE TABLE ${SCHEMA}.sequencer (
       one boolean PRIMARY KEY DEFAULT true CHECK (one), holder text, epoch bigint NOT NULL,
       expires timestamptz NOT NULL)`,
    `INSERT INTO ${SCHEMA}.sequencer (holder, epoch, expires) VALUES (NULL, 0, '-infinity')`,
  ],
  // where the lease holder takes writes (its advertised URL), so other nodes can point clients to it
  [`ALTER TABLE ${SCHEMA}.sequencer ADD COLUMN url text`],
];

/** The schema version this trustix writes. */
export const SCHEMA_VERSION = MIGRATIONS.length;

/** Any fixed number: the advisory lock that serialises migrations across nodes. */
const MIGRATION_LOCK = 0x74727374;

/** Creates or migrates the schema to SCHEMA_VERSION; returns the version found before. */
export async function migrate(client: ClientBase): Promise<number> {
  await client.query('BEGIN');
  try {
    await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${SCHEMA}`);
    await client.query(`CREATE TABLE IF NOT EXISTS ${SCHEMA}.schema_version (version integer NOT NULL)`);
    const r = await client.query<{ version: number }>(`SELECT version FROM ${SCHEMA}.schema_version`);
    const found = r.rows[0]?.version ?? 0;
    if (found > SCHEMA_VERSION) {
      throw new StorageError(
        `the database's log schema is version ${found}, newer than this trustix knows (${SCHEMA_VERSION}); upgrade trustix`,
      );
    }
    for (let v = found + 1; v <= SCHEMA_VERSION; v++) {
      for (const sql of MIGRATIONS[v - 1]) await client.query(sql);
    }
    if (r.rows.length === 0) {
      await client.query(`INSERT INTO ${SCHEMA}.schema_version (version) VALUES ($1)`, [SCHEMA_VERSION]);
    } else if (found !== SCHEMA_VERSION) {
      await client.query(`UPDATE ${SCHEMA}.schema_version SET version = $1`, [SCHEMA_VERSION]);
    }
    await client.query('COMMIT');
    return found;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
}
