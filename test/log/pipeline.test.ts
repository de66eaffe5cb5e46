import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { openCheckpoint } from '../../src/core/checkpoint.js';
import type { Entry } from '../../src/core/entry.js';
import { StorageError } from '../../src/core/errors.js';
import { verifyLookup } from '../../src/core/lookup.js';
import { leafHash, verifyInclusion } from '../../src/core/merkle.js';
import { verifierFromVkey } from '../../src/core/note.js';
import { auditStore } from '../../src/log/audit.js';
import { Log, type SubmitReceipt } from '../../src/log/log.js';
import type { CommitBatch } from '../../src/storage/store.js';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'trustix-pipeline-'));
  dirs.push(d);
  return d;
}
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const entry = (key: string, value: Buffer): Entry => ({
  protocol: 'nix',
  key: Buffer.from(key),
  value,
  metadata: Buffer.from(`{"k":"${key}"}`),
});

/** What the sequencer built each batch on: whether a batch still being committed, and whether the worker did the index. */
interface PrepareCall {
  onUncommitted: boolean;
  offloaded: boolean;
}

/** Records the sequencer's (private) prepare calls of `log`; `onCall` runs after each. */
function spyPrepare(log: Log, onCall: (c: PrepareCall) => void = () => {}): PrepareCall[] {
  const calls: PrepareCall[] = [];
  const target = (log as unknown as { appender: object }).appender as {
    prepare: (
      batch: unknown,
      base: { built?: unknown } | undefined,
    ) => Promise<{ built?: { offloadSeq?: number } }>;
  };
  const original = target.prepare.bind(target);
  target.prepare = async (batch, base) => {
    const r = await original(batch, base);
    const c = { onUncommitted: base?.built !== undefined, offloaded: r.built?.offloadSeq !== undefined };
    calls.push(c);
    onCall(c);
    return r;
  };
  return calls;
}

const BATCH = 2600;

/** Chunks of exactly BATCH entries, so that every chunk is one batch. */
function chunks(): Entry[][] {
  const a = Array.from({ length: BATCH }, (_, i) => entry(`a${i}`, randomBytes(32)));
  return [
    a,
    // resubmissions of the batch before (still being committed), replacements and new keys
    [
      ...a.slice(0, 300),
      ...a.slice(600, 1100).map((e) => entry(e.key.toString(), randomBytes(32))),
      ...Array.from({ length: 1800 }, (_, i) => entry(`b${i}`, randomBytes(32))),
    ],
    // mostly resubmissions: under the worker's threshold, so the index is updated in this thread
    // on top of an uncommitted batch the worker computed
    [...a.slice(0, 2000), ...Array.from({ length: 600 }, (_, i) => entry(`c${i}`, randomBytes(32)))],
    // on top of a batch built in this thread
    [...a.slice(1100, 1600).map((e) => entry(e.key.toString(), randomBytes(32))), ...a.slice(1600)],
  ].map((c) => {
    while (c.length < BATCH)
      c.push(entry(`pad${c.length}-${randomBytes(4).toString('hex')}`, randomBytes(32)));
    return c;
  });
}

describe('pipelined sequencing', () => {
  test('batches built on batches still being committed give what one at a time gives', async () => {
    const input = chunks();
    const piped = await Log.create(tempDir(), 'test.example/pipe', { batchDelayMs: 1, maxBatch: BATCH });
    const serial = await Log.create(tempDir(), 'test.example/pipe', { batchDelayMs: 1, maxBatch: BATCH });
    const calls = spyPrepare(piped);
    const verifier = verifierFromVkey(piped.vkey);
    // all at once: each batch is built while the one before it commits
    const pipedReceipts = await Promise.all(input.map((c) => piped.submit(c)));
    const serialReceipts: SubmitReceipt[][] = [];
    for (const c of input) serialReceipts.push(await serial.submit(c));

    assert.equal(calls.length, input.length);
    assert.ok(
      calls.slice(1).every((c) => c.onUncommitted),
      JSON.stringify(calls),
    );
    assert.deepEqual(
      calls.map((c) => c.offloaded),
      [true, true, false, false],
    );
    for (let b = 0; b < input.length; b++) {
      assert.deepEqual(
        pipedReceipts[b].map((r) => [r.index, r.duplicate]),
        serialReceipts[b].map((r) => [r.index, r.duplicate]),
        `batch ${b}`,
      );
      const cp = openCheckpoint(pipedReceipts[b][0].checkpoint, verifier).checkpoint;
      for (let i = 0; i < BATCH; i += 37) {
        const r = pipedReceipts[b][i];
        verifyInclusion(leafHash(piped.entry(r.index)), r.index, cp.size, r.proof, cp.rootHash);
      }
    }
    assert.equal(pipedReceipts[1][0].duplicate, true, 'resubmission of the uncommitted batch before');
    assert.equal(pipedReceipts[1][0].index, 0);
    const [hp, hs] = [piped.head(), serial.head()];
    assert.equal(hp.size, hs.size);
    assert.deepEqual(hp.rootHash, hs.rootHash);
    assert.deepEqual(hp.mapRoot, hs.mapRoot);
    assert.ok((await auditStore(piped.storage, verifier)).ok);
    await Promise.all([piped.close(), serial.close()]);
  });

  test('a commit that fails while the next batch is built: nothing of it is acknowledged, the next is rebuilt', async () => {
    const dir = tempDir();
    const log = await Log.create(dir, 'test.example/fail', { batchDelayMs: 1, maxBatch: BATCH });
    const verifier = verifierFromVkey(log.vkey);
    let nextBuilt: () => void = () => {};
    const nextBuiltOnFailing = new Promise<void>((resolve) => {
      nextBuilt = resolve;
    });
    const calls = spyPrepare(log, (c) => {
      if (c.onUncommitted) nextBuilt();
    });
    const store = log.storage as unknown as { commit: (b: CommitBatch) => Promise<void> };
    const commit = store.commit.bind(log.storage);
    let failed = 0;
    store.commit = async (b) => {
      if (b.firstIndex === 0 && failed === 0) {
        failed++;
        // fail only once the next batch has been built on top of this one
        await Promise.race([nextBuiltOnFailing, new Promise((r) => setTimeout(r, 20_000))]);
        throw new StorageError('disk full');
      }
      return commit(b);
    };

    const first = Array.from({ length: BATCH }, (_, i) => entry(`f${i}`, randomBytes(32)));
    // 100 identical resubmissions of the failing batch: they must not count as duplicates
    const second = [
      ...first.slice(0, 100),
      ...Array.from({ length: BATCH - 100 }, (_, i) => entry(`s${i}`, randomBytes(32))),
    ];
    const [r1, r2] = await Promise.allSettled([log.submit(first), log.submit(second)]);
    assert.equal(failed, 1);
    assert.equal(r1.status, 'rejected');
    assert.ok((r1 as PromiseRejectedResult).reason instanceof StorageError);
    assert.deepEqual(
      calls.map((c) => c.onUncommitted),
      [false, true, false],
      'the second batch was built on the failing one, then again on the committed state',
    );
    assert.equal(r2.status, 'fulfilled');
    const receipts = (r2 as PromiseFulfilledResult<SubmitReceipt[]>).value;
    assert.deepEqual(
      receipts.map((r) => [r.index, r.duplicate]),
      second.map((_, i) => [i, false]),
    );
    const cp = openCheckpoint(receipts[0].checkpoint, verifier).checkpoint;
    assert.equal(cp.size, BATCH);
    for (let i = 0; i < BATCH; i += 53) {
      const r = receipts[i];
      verifyInclusion(leafHash(log.entry(r.index)), r.index, cp.size, r.proof, cp.rootHash);
    }
    await log.close();

    const reopened = await Log.open(dir);
    assert.equal(reopened.head().size, BATCH);
    assert.ok((await auditStore(reopened.storage, verifier)).ok);
    const lookup = (key: string) =>
      verifyLookup(reopened.lookup('nix', Buffer.from(key)), verifier, {
        protocol: 'nix',
        key: Buffer.from(key),
      }).status;
    assert.equal(lookup('f0'), 'present', 'resubmitted in the second batch');
    assert.equal(lookup('f2000'), 'absent', 'only in the failed batch');
    assert.equal(lookup('s7'), 'present');
    const more = await reopened.submit([entry('f2000', randomBytes(32))]);
    assert.equal(more[0].index, BATCH);
    await reopened.close();
  });

  test("a batch's receipts, built while the next batch commits, verify against the batch's own checkpoint", async () => {
    const log = await Log.create(tempDir(), 'test.example/acks', { batchDelayMs: 1, maxBatch: 300 });
    const verifier = verifierFromVkey(log.vkey);
    const target = (log as unknown as { appender: object }).appender as {
      acknowledgeBatch: (prepared: unknown, head: { size: number }, started: bigint) => void;
    };
    const acknowledge = target.acknowledgeBatch.bind(target);
    let afterNext = 0;
    // build each batch's receipts only once a later batch is in the store (the last one gives up
    // waiting): its partial tiles have been rewritten wider by then
    target.acknowledgeBatch = (prepared, head, started) => {
      const until = Date.now() + 2000;
      const wait = () => {
        if (log.head().size > head.size) afterNext++;
        else if (Date.now() < until) return void setTimeout(wait, 1);
        acknowledge(prepared, head, started);
      };
      wait();
    };
    const input = Array.from({ length: 8 }, (_, b) =>
      Array.from({ length: 300 }, (_, i) => entry(`k${b}-${i}`, randomBytes(32))),
    );
    const receipts = await Promise.all(input.map((c) => log.submit(c)));
    assert.ok(afterNext >= 5, `receipts built after the next commit: ${afterNext} of 8 batches`);
    for (let b = 0; b < input.length; b++) {
      const cp = openCheckpoint(receipts[b][0].checkpoint, verifier).checkpoint;
      assert.equal(cp.size, 300 * (b + 1));
      for (let i = 0; i < 300; i += 7) {
        const r = receipts[b][i];
        assert.equal(r.index, 300 * b + i);
        verifyInclusion(leafHash(log.entry(r.index)), r.index, cp.size, r.proof, cp.rootHash);
      }
    }
    await log.close();
  });
});
