// `trustix serve --storage postgresql://...`: the log lives in PostgreSQL, the state directory keeps
// the config (with the storage URL) and the signing key; a copy of it is a standby that sends
// writers to the sequencer; a node without the key serves reads; a bad or unreachable database is
// a clear error without a stack trace or the password.
import assert from 'node:assert/strict';
import { cpSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LogClient } from '../../src/client/client.js';
import { type PgCluster, startPostgres } from '../fixtures/postgres.js';
import {
  cleanup,
  makeEntries,
  runServeExpectingFailure,
  startServer,
  submit,
  tempDir,
  token,
} from '../fixtures/server-helpers.js';
import { sequencing, skipWithoutPostgres } from '../fixtures/shared-nodes.js';

describe('serve --storage postgresql://', { skip: skipWithoutPostgres }, () => {
  let cluster: PgCluster;
  const dirs: string[] = [];
  before(async () => {
    cluster = await startPostgres();
  });
  after(() => {
    cluster?.stop();
    for (const d of dirs) cleanup(d);
  });

  test('creates the log in the database; a copy of DIR stands by; a node without the key reads', async () => {
    const url = await cluster.createDatabase();
    const base = tempDir();
    dirs.push(base);
    const first = join(base, 'a');
    let a = await startServer(['--state', first, '--listen', '127.0.0.1:0', '--storage', url]);
    const auth = { authorization: `Bearer ${token(first)}` };
    const r = await submit(a.url, makeEntries(5), auth);
    assert.equal(r.status, 200);
    assert.match(readFileSync(join(first, 'trustix.toml'), 'utf8'), /^storage = "postgresql:\/\/.*"$/m);
    // no embedded store in DIR: the log is in the database
    assert.deepEqual(readdirSync(join(first, 'logs', 'default')).sort(), ['signing.key']);
    await a.stop();
    // the storage is in the config now: restarted without --storage, the same log
    a = await startServer(['--state', first, '--listen', '127.0.0.1:0']);
    assert.ok(a.stdout.some((l) => /opened postgresql:\/\/.* \(size 5\)/.test(l)));

    const second = join(base, 'b');
    cpSync(first, second, { recursive: true });
    const b = await startServer(['--state', second, '--listen', '127.0.0.1:0']);
    const reader = join(base, 'c');
    cpSync(first, reader, { recursive: true });
    rmSync(join(reader, 'logs', 'default', 'signing.key'));
    const c = await startServer(['--state', reader, '--listen', '127.0.0.1:0']);
    try {
      assert.equal(await sequencing(a.url), true);
      assert.equal(await sequencing(b.url), false);
      assert.ok(c.stdout.some((l) => /no signing key .*serving reads only/.test(l)));
      const entries = makeEntries(3);
      const refused = await submit(b.url, entries, auth);
      assert.equal(refused.status, 503);
      assert.equal(refused.headers.get('retry-after'), '1');
      assert.equal(refused.headers.get('trustix-sequencer'), a.url);
      assert.equal(((await refused.json()) as { code: string }).code, 'NOT_SEQUENCER');
      // a reader (no key) sends writers to the sequencer too
      const toReader = await submit(c.url, entries, auth);
      assert.equal(toReader.status, 503);
      assert.equal(toReader.headers.get('trustix-sequencer'), a.url);
      assert.equal(await sequencing(c.url), false);
      assert.equal((await submit(a.url, entries, auth)).status, 200);
      // every node answers verified lookups from the database
      for (const node of [a, b, c]) {
        const client = new LogClient({ url: `${node.url}/logs/default/`, vkey: a.vkey });
        const found = await client.lookup('nix', entries[2].key);
        assert.equal(found.status, 'present');
        assert.equal((await client.checkpoint()).checkpoint.size, 8);
      }
      // a sequencer that stops gives its lease up: the standby takes over at once
      await a.stop();
      const end = Date.now() + 10_000;
      while (!(await sequencing(b.url))) {
        assert.ok(Date.now() < end, 'the standby took over');
        await new Promise((res) => setTimeout(res, 50));
      }
      assert.equal((await submit(b.url, makeEntries(2), auth)).status, 200);
    } finally {
      await Promise.all([a.stop(), b.stop(), c.stop()]);
    }
  });

  test('a malformed or unreachable database: one clear line, no stack, no password', async () => {
    const base = tempDir();
    dirs.push(base);
    const cases: Array<[string, RegExp]> = [
      ['mysql://u:s3cret@db.test/x', /--storage: only PostgreSQL is supported/],
      ['not a url s3cret', /--storage: not a URL/],
      [
        'postgresql://u:s3cret@127.0.0.1:1/x',
        /cannot connect to PostgreSQL at postgresql:\/\/u:\*\*\*@127\.0\.0\.1:1\/x/,
      ],
    ];
    for (const [i, [url, re]] of cases.entries()) {
      const r = await runServeExpectingFailure([
        '--state',
        join(base, `s${i}`),
        '--listen',
        '127.0.0.1:0',
        '--storage',
        url,
      ]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, re);
      assert.doesNotMatch(r.stderr + r.stdout, /s3cret/);
      assert.doesNotMatch(r.stderr, /\n\s+at /);
    }
  });
});
