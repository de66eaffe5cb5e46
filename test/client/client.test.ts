import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LogClient, listLogs, serverRootOf } from '../../src/client/client.js';
import {
  BadResponseError,
  ForkError,
  InvalidCheckpointError,
  InvalidProofError,
  RemoteError,
  RollbackError,
  UnprovenGrowthError,
  UnreachableError,
} from '../../src/client/errors.js';
import { FileTrustStore } from '../../src/client/trust-store.js';
import { toBase64 } from '../../src/core/bytes.js';
import { decodeEntry } from '../../src/core/entry.js';
import { VerificationError } from '../../src/core/errors.js';
import { parseProof, verifyProof } from '../../src/core/misbehaviour.js';
import { generateKey, verifierFromVkey } from '../../src/core/note.js';
import { auditEntries } from '../../src/log/audit.js';
import type { Log } from '../../src/log/log.js';
import { bodyJson, type FakeAnswer, type FakeServer, json, startFakeServer } from './fake-server.js';
import { addBatches, entry, makeLog, ORIGIN, rejectsWith, tempDir } from './helpers.js';

const { skey, vkey } = generateKey(ORIGIN);

/** The fork's misbehaviour proof proves it with only the log key; its file, if written, too. */
function assertProven(err: ForkError, what: RegExp): void {
  assert.ok(err.proof, 'the error carries a proof');
  const v = verifyProof(err.proof, vkey);
  assert.equal(v.proven, true, JSON.stringify(v));
  if (v.proven) assert.match(v.what, what);
  if (err.proofFile !== undefined) {
    assert.match(err.message, /proof written to /);
    assert.equal(verifyProof(parseProof(readFileSync(err.proofFile, 'utf8')), vkey).proven, true);
  }
}

describe('verifying client against a real log over HTTP', () => {
  let log: Log;
  let server: FakeServer;
  let oldNote: string; // a checkpoint of log at size 100
  let oldAbsentAnswer: unknown; // an answer, at size 100, proving 'late-key' absent
  const logs: Log[] = [];

  before(async () => {
    log = await makeLog(skey, [60, 40]);
    oldNote = log.head().checkpoint;
    oldAbsentAnswer = log.lookup('nix', Buffer.from('late-key'));
    await addBatches(log, [200, 50]);
    await log.submit([entry('late-key')]);
    logs.push(log);
    server = await startFakeServer(log);
  });
  after(async () => {
    await server.close();
    for (const l of logs) await l.close();
  });

  const client = (opts: Partial<ConstructorParameters<typeof LogClient>[0]> = {}) =>
    new LogClient({ url: server.url, vkey, timeoutMs: 2000, ...opts });
  const withTamper = async (t: FakeServer['tamper'], fn: () => Promise<void>) => {
    server.tamper = t;
    try {
      await fn();
    } finally {
      server.tamper = undefined;
    }
  };

  test('present and absent lookups verify end to end', async () => {
    const c = client();
    const present = await c.lookup('nix', 'late-key');
    assert.equal(present.status, 'present');
    assert.ok(present.status === 'present');
    assert.equal(present.index, log.head().size - 1);
    assert.deepEqual(present.entry.value, entry('late-key').value);
    assert.equal(present.checkpoint.size, log.head().size);
    assert.deepEqual(decodeEntry(present.data).key, Buffer.from('late-key'));

    const absent = await c.lookup('nix', 'never-submitted');
    assert.equal(absent.status, 'absent');
    assert.equal(absent.checkpoint.size, log.head().size);
    // odd bytes in keys survive the URL round trip
    const odd = await c.lookup('nix', Buffer.from([0x2f, 0x25, 0x00, 0xff, 0x2e]));
    assert.equal(odd.status, 'absent');
  });

  test('the trusted checkpoint is remembered on disk and growth needs a consistency proof', async () => {
    const dir = tempDir();
    const store = new FileTrustStore(dir);
    const c1 = client({ trustStore: store });
    const t1 = await c1.checkpoint();
    const file = store.fileFor(c1.identity);
    assert.ok(existsSync(file));
    const record = JSON.parse(readFileSync(file, 'utf8'));
    assert.equal(record.checkpoint, t1.note);
    assert.equal(record.size, t1.checkpoint.size);
    assert.equal(record.vkey, vkey);

    // a new client (as a new process would) starts from the remembered checkpoint
    const c2 = client({ trustStore: new FileTrustStore(dir) });
    assert.equal((await c2.trusted())?.note, t1.note);
    await log.submit([entry('grown-1'), entry('grown-2')]);
    server.requests.length = 0;
    const t2 = await c2.checkpoint();
    assert.equal(t2.checkpoint.size, t1.checkpoint.size + 2);
    assert.ok(
      server.requests.includes(`proof/consistency?old=${t1.checkpoint.size}&new=${t2.checkpoint.size}`),
      `requests: ${server.requests}`,
    );
    assert.equal(await new FileTrustStore(dir).get(c2.identity), t2.note);
    // a lookup against the trusted checkpoint needs no further proof
    server.requests.length = 0;
    await c2.lookup('nix', 'grown-1');
    assert.deepEqual(server.requests, ['lookup/nix/grown-1']);
  });

  test('a log that serves an older checkpoint is a rollback', async () => {
    const c = client();
    await c.checkpoint();
    await withTamper(
      (req, a) => (req.path === 'checkpoint' ? { ...a, body: Buffer.from(oldNote, 'utf8') } : undefined),
      async () => {
        const err = (await rejectsWith(c.checkpoint(), RollbackError, 'trust.rollback')) as RollbackError;
        assert.equal(err.presentedSize, 100);
        assert.ok(err instanceof VerificationError);
      },
    );
  });

  test('an absence claimed for a present key, from an older log state, is caught', async () => {
    const c = client();
    await c.checkpoint();
    // the old, genuinely signed answer: at size 100 'late-key' was absent
    await withTamper(
      (req) => (req.path.startsWith('lookup/') ? json(200, oldAbsentAnswer) : undefined),
      async () => {
        await rejectsWith(c.lookup('nix', 'late-key'), RollbackError, 'trust.rollback');
      },
    );
    // the old non-inclusion proof spliced under the current checkpoint
    await withTamper(
      (req, a) => {
        if (!req.path.startsWith('lookup/')) return undefined;
        const j = bodyJson<Record<string, unknown>>(a);
        return json(200, {
          ...j,
          mapProof: (oldAbsentAnswer as { mapProof: string }).mapProof,
          entry: undefined,
        });
      },
      async () => {
        await rejectsWith(c.lookup('nix', 'late-key'), InvalidProofError, /^smt\./);
      },
    );
    // dropping the entry from a genuine present answer does not make it absent
    await withTamper(
      (req, a) =>
        req.path.startsWith('lookup/')
          ? json(200, { ...bodyJson<Record<string, unknown>>(a), entry: undefined })
          : undefined,
      async () => {
        await rejectsWith(c.lookup('nix', 'late-key'), InvalidProofError, /^smt\./);
      },
    );
  });

  test('a fork (same key, other entries) is caught at the same size and at a larger size', async () => {
    const size = log.head().size;
    const forkSame = await makeLog(skey, [size - 1], 'fork');
    await forkSame.submit([entry('fork-last')]);
    const forkBig = await makeLog(skey, [size + 10], 'fork');
    logs.push(forkSame, forkBig);
    assert.equal(forkSame.head().size, size);

    const proofDir = join(tempDir(), 'misbehaviour');
    const c = client({ proofDir });
    await c.checkpoint();
    server.log = forkSame;
    try {
      const same = await rejectsWith(c.checkpoint(), ForkError, 'trust.fork-same-size');
      assertProven(same as ForkError, /two different trees of size/);
      server.log = forkBig;
      const big = await rejectsWith(c.checkpoint(), ForkError, 'trust.fork-inconsistent');
      assertProven(big as ForkError, /does not extend its tree of size/);
      assert.equal(readdirSync(proofDir).length, 2, 'one proof file per fork');
      // the lookup path catches it too
      await rejectsWith(c.lookup('nix', 'fork0-0-0'), ForkError, 'trust.fork-inconsistent');
    } finally {
      server.log = log;
    }
    // and the fork did not displace the trusted checkpoint
    assert.equal((await c.trusted())?.checkpoint.size, size);
  });

  test('a fork seen from a trusted size that is a power of two is a fork, not a bad proof', async () => {
    const base = await makeLog(skey, [64], 'pow');
    const fork = await makeLog(skey, [74], 'other');
    logs.push(base, fork);
    const fake = await startFakeServer(base);
    try {
      const c = new LogClient({ url: fake.url, vkey, timeoutMs: 2000 });
      assert.equal((await c.checkpoint()).checkpoint.size, 64);
      fake.log = fork;
      const err = await rejectsWith(c.checkpoint(), ForkError, 'trust.fork-inconsistent');
      // the log's proof from 64 leaves out the old root: the client completes it from a tile
      assertProven(err as ForkError, /does not extend its tree of size 64/);
      assert.equal((await c.trusted())?.checkpoint.size, 64);
    } finally {
      await fake.close();
    }
  });

  test('a newer checkpoint whose consistency proof is refused is unproven growth, and not trusted', async () => {
    const grown = await makeLog(skey, [30], 'grow');
    logs.push(grown);
    const fake = await startFakeServer(grown);
    try {
      const c = new LogClient({ url: fake.url, vkey, timeoutMs: 2000 });
      await c.checkpoint();
      await addBatches(grown, [5], 'grow2');
      for (const status of [404, 500, 503]) {
        fake.tamper = (req, a) =>
          req.path.startsWith('proof/consistency') ? json(status, { error: 'no', code: 'X' }) : a;
        const err = (await rejectsWith(
          c.checkpoint(),
          UnprovenGrowthError,
          'trust.unproven-growth',
        )) as UnprovenGrowthError;
        assert.equal(err.trustedSize, 30);
        assert.equal(err.presentedSize, 35);
        await rejectsWith(c.lookup('nix', 'grow0-0-0'), UnprovenGrowthError, 'trust.unproven-growth');
        assert.equal((await c.trusted())?.checkpoint.size, 30, 'the trust store is unchanged');
      }
      // a log that cannot be reached at all is still an outage
      fake.tamper = () => 'hang';
      await rejectsWith(
        new LogClient({ url: fake.url, vkey, timeoutMs: 200 }).checkpoint(),
        UnreachableError,
        'http.timeout',
      );
      fake.tamper = undefined;
      assert.equal((await c.checkpoint()).checkpoint.size, 35);
    } finally {
      await fake.close();
    }
  });

  test('a lookup answer with unknown fields is refused; padding beyond a valid answer is not read', async () => {
    const pad = (extra: (j: Record<string, unknown>) => void) => (req: { path: string }, a: FakeAnswer) => {
      if (!req.path.startsWith('lookup/')) return a;
      const j = bodyJson(a);
      extra(j);
      return json(200, j);
    };
    for (const maxLookupBatch of [1, 64]) {
      const c = client({ maxLookupBatch });
      await withTamper(
        pad((j) => {
          j.note = 'hello';
        }),
        async () => {
          const err = await rejectsWith(c.lookup('nix', 'late-key'), InvalidProofError, 'lookup.malformed');
          assert.match(err.message, /unknown field "note"/);
        },
      );
      await withTamper(
        pad((j) => {
          (j.entry as Record<string, unknown>).extra = [1];
        }),
        async () => {
          await rejectsWith(c.lookup('nix', 'late-key'), InvalidProofError, 'lookup.malformed');
        },
      );
      await withTamper(
        pad((j) => {
          j.x = 'x'.repeat(600_000);
        }),
        async () => {
          // two at once, so that the batched client sends them in one POST
          const [a, b] = await Promise.allSettled([c.lookup('nix', 'late-key'), c.lookup('nix', 'k0-0-0')]);
          for (const r of [a, b]) {
            assert.equal(r.status, 'rejected');
            const e = (r as PromiseRejectedResult).reason as BadResponseError;
            assert.ok(e instanceof BadResponseError, String(e));
            assert.equal(e.check, 'response.too-large');
          }
        },
      );
    }
  });

  test('an answer for another key is rejected', async () => {
    const c = client();
    await withTamper(
      (req) =>
        req.path.startsWith('lookup/') ? json(200, log.lookup('nix', Buffer.from('late-key'))) : undefined,
      async () => {
        await rejectsWith(c.lookup('nix', 'k0-0-5'), InvalidProofError, 'lookup.wrong-key');
      },
    );
    // relabelled: claims to answer for the asked key, but proves another
    await withTamper(
      (req) => {
        if (!req.path.startsWith('lookup/')) return undefined;
        return json(200, {
          ...log.lookup('nix', Buffer.from('late-key')),
          key: toBase64(Buffer.from('k0-0-5')),
        });
      },
      async () => {
        await rejectsWith(c.lookup('nix', 'k0-0-5'), InvalidProofError, 'lookup.entry-key-mismatch');
      },
    );
  });

  test('bad signatures and foreign keys are rejected', async () => {
    const c = client();
    const flip = (note: string) => {
      const i = note.lastIndexOf(' ') + 8;
      return note.slice(0, i) + (note[i] === 'A' ? 'B' : 'A') + note.slice(i + 1);
    };
    await withTamper(
      (req, a) =>
        req.path === 'checkpoint' ? { ...a, body: Buffer.from(flip(a.body.toString())) } : undefined,
      async () => {
        await rejectsWith(c.checkpoint(), InvalidCheckpointError, 'note.bad-signature');
      },
    );
    await withTamper(
      (req, a) => {
        if (!req.path.startsWith('lookup/')) return undefined;
        const j = bodyJson<{ checkpoint: string }>(a);
        return json(200, { ...j, checkpoint: flip(j.checkpoint) });
      },
      async () => {
        await rejectsWith(c.lookup('nix', 'late-key'), InvalidCheckpointError, 'note.bad-signature');
      },
    );
    const other = generateKey(ORIGIN);
    const c2 = client({ vkey: other.vkey });
    await rejectsWith(c2.checkpoint(), InvalidCheckpointError, 'note.no-known-signature');
    await rejectsWith(c2.lookup('nix', 'late-key'), InvalidCheckpointError, 'note.no-known-signature');
  });

  test('truncated proofs and answers are rejected', async () => {
    const c = client();
    await withTamper(
      (req, a) => {
        if (!req.path.startsWith('lookup/')) return undefined;
        const j = bodyJson<{ entry: { proof: string[] } }>(a);
        j.entry.proof.pop();
        return json(200, j);
      },
      async () => {
        await rejectsWith(c.lookup('nix', 'late-key'), InvalidProofError, 'inclusion.proof-length');
      },
    );
    await withTamper(
      (req, a) =>
        req.path.startsWith('lookup/') ? { ...a, body: a.body.subarray(0, a.body.length - 20) } : undefined,
      async () => {
        await rejectsWith(c.lookup('nix', 'late-key'), BadResponseError, 'response.malformed');
      },
    );
    // a consistency proof missing a hash
    const c2 = client();
    await withTamper(
      (req, a) => (req.path === 'checkpoint' ? { ...a, body: Buffer.from(oldNote) } : undefined),
      () => c2.checkpoint().then(() => {}),
    );
    await withTamper(
      (req, a) => {
        if (!req.path.startsWith('proof/consistency')) return undefined;
        const j = bodyJson<{ proof: string[] }>(a);
        j.proof.pop();
        return json(200, j);
      },
      async () => {
        await rejectsWith(c2.checkpoint(), InvalidProofError, 'consistency.proof-length');
      },
    );
    assert.equal((await c2.trusted())?.checkpoint.size, 100, 'nothing newer was trusted');
    await c2.checkpoint();
  });

  test('a hanging server times out; an unreachable one and error statuses are typed', async () => {
    const c = client({ timeoutMs: 300 });
    const started = Date.now();
    await withTamper(
      () => 'hang',
      async () => {
        await rejectsWith(c.checkpoint(), UnreachableError, 'http.timeout');
        await rejectsWith(c.lookup('nix', 'x'), UnreachableError, 'http.timeout');
      },
    );
    assert.ok(Date.now() - started < 3000);
    // headers sent, body never finished
    await withTamper(
      async (_req, a) => ({ ...a, headers: { ...a.headers, 'content-length': String(a.body.length + 100) } }),
      async () => {
        await rejectsWith(c.checkpoint(), UnreachableError, /^http\.(timeout|network)$/);
      },
    );
    await withTamper(
      () => ({ ...json(503, { error: 'pool full', code: 'BUSY' }), headers: { 'retry-after': '2' } }),
      async () => {
        const err = (await rejectsWith(
          c.checkpoint(),
          UnreachableError,
          'http.unavailable',
        )) as UnreachableError;
        assert.equal(err.retryAfterSeconds, 2);
      },
    );
    const e404 = (await rejectsWith(
      new LogClient({ url: `${server.root}logs/nope/`, vkey }).checkpoint(),
      RemoteError,
      'http.status',
    )) as RemoteError;
    assert.equal(e404.status, 404);
    assert.match(e404.message, /unknown log/);
    const closed = await startFakeServer(log);
    await closed.close();
    await rejectsWith(
      new LogClient({ url: closed.url, vkey }).checkpoint(),
      UnreachableError,
      'http.network',
    );
  });

  test('inclusion and consistency proofs are verified', async () => {
    const c = client();
    const p = await c.proveInclusion(257);
    assert.deepEqual(p.data, log.entry(257));
    assert.equal(p.trusted.checkpoint.size, log.head().size);
    const q = await c.proveConsistency(oldNote);
    assert.equal(q.old.checkpoint.size, 100);
    assert.equal(q.new.checkpoint.size, log.head().size);
    await withTamper(
      (req, a) => {
        if (!req.path.startsWith('tile/entries/')) return undefined;
        const b = Buffer.from(a.body);
        b[b.length - 1] ^= 1;
        return { ...a, body: b };
      },
      async () => {
        await rejectsWith(
          c.proveInclusion(log.head().size - 1),
          InvalidProofError,
          'inclusion.root-mismatch',
        );
      },
    );
    await assert.rejects(c.proveInclusion(log.head().size), /does not exist/);
  });

  test('entries stream from entry bundles and a remote audit reproduces the checkpoint', async () => {
    const c = client({ concurrency: 3 });
    const t = await c.checkpoint();
    let n = 0;
    for await (const chunk of c.entries(250, 300, { treeSize: t.checkpoint.size })) {
      for (const e of chunk) assert.deepEqual(e, log.entry(250 + n++));
    }
    assert.equal(n, 50);
    const verifier = verifierFromVkey(vkey);
    const chunks = () => c.entries(0, t.checkpoint.size, { treeSize: t.checkpoint.size });
    const ok = await auditEntries(
      chunks(),
      [
        { size: 100, checkpoint: oldNote },
        { size: t.checkpoint.size, checkpoint: t.note },
      ],
      verifier,
    );
    assert.deepEqual(ok, { ok: true, size: t.checkpoint.size, checkpoints: 2 });
    // a log serving an altered entry is caught by the audit
    await withTamper(
      (req, a) => {
        if (!req.path.startsWith('tile/entries/001')) return undefined;
        const b = Buffer.from(a.body);
        b[b.length - 3] ^= 1; // inside the last entry's value
        return { ...a, body: b };
      },
      async () => {
        const bad = await auditEntries(chunks(), [{ size: t.checkpoint.size, checkpoint: t.note }], verifier);
        assert.equal(bad.ok, false);
        assert.equal(bad.divergence?.check, 'log-root');
      },
    );
  });

  test('submit verifies receipts; a wrong token is refused', async () => {
    const c = client();
    const before = log.head().size;
    const entries = [entry('sub-1'), entry('sub-2'), entry('late-key')];
    const receipts = await c.submit(entries, { token: server.token });
    assert.equal(receipts.length, 3);
    assert.deepEqual(
      receipts.map((r) => [r.index, r.duplicate, r.verified]),
      [
        [before, false, true],
        [before + 1, false, true],
        [receipts[2].index, true, true],
      ],
    );
    assert.equal((await c.trusted())?.checkpoint.size, before + 2);
    const err = (await rejectsWith(
      c.submit([entry('sub-3')], { token: 'wrong' }),
      RemoteError,
      'http.status',
    )) as RemoteError;
    assert.equal(err.status, 401);
    // the answer edited on its way: the submission is refused with `error` and `check`
    type Answer = { hashes: string[]; receipts: Array<{ proof: number[] }> };
    let n = 0;
    const tampered = (edit: (j: Answer) => void, error: typeof VerificationError, check: string | RegExp) =>
      withTamper(
        (req, a) => {
          if (req.path !== 'submit') return undefined;
          const j = bodyJson<Answer>(a);
          edit(j);
          return json(200, j);
        },
        async () => {
          // new keys each time: a duplicate's proof may fail without failing the submission
          const keys = [entry(`tampered-${++n}`), entry(`tampered-${++n}`)];
          await rejectsWith(c.submit(keys, auth), error, check);
        },
      );
    const auth = { token: server.token };
    await tampered((j) => j.receipts[0].proof.reverse(), InvalidProofError, /^inclusion\./);
    // a hash of the shared table changed: the receipts that name it fail
    await tampered(
      (j) => {
        j.hashes[0] = toBase64(Buffer.alloc(32, 7));
      },
      InvalidProofError,
      /^inclusion\./,
    );
    // a receipt that names a hash the answer does not have
    await tampered((j) => j.receipts[1].proof.push(j.hashes.length), BadResponseError, 'response.malformed');
  });

  test('an answer that is only older than a checkpoint trusted meanwhile is accepted after a consistency proof', async () => {
    const dir = tempDir();
    const slow = client({ trustStore: new FileTrustStore(dir) });
    const other = client({ trustStore: new FileTrustStore(dir) });
    await slow.checkpoint();
    const answerNow = log.lookup('nix', Buffer.from('late-key'));
    await log.submit([entry('race-1')]);
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    server.tamper = async (req) => {
      if (!req.path.startsWith('lookup/')) return undefined;
      await gate;
      return json(200, answerNow);
    };
    try {
      const pending = slow.lookup('nix', 'late-key');
      await other.checkpoint(); // another process trusts the newer checkpoint meanwhile
      server.requests.length = 0;
      release();
      const r = await pending;
      assert.equal(r.status, 'present');
      assert.equal(r.checkpoint.size, log.head().size - 1);
      assert.ok(server.requests.some((p) => p.startsWith('proof/consistency')));
      assert.equal((await slow.trusted())?.checkpoint.size, log.head().size);
    } finally {
      server.tamper = undefined;
    }
  });

  test('concurrent lookups share POST lookup requests, each answer verified for its own key', async () => {
    const c = client();
    server.requests.length = 0;
    const keys = ['late-key', 'k0-0-5', 'never-1', 'k0-0-7', 'never-2', 'k100-0-3'];
    const results = await Promise.all(keys.map((k) => c.lookup('nix', k)));
    assert.deepEqual(
      results.map((r) => r.status),
      ['present', 'present', 'absent', 'present', 'absent', 'present'],
    );
    for (const [i, r] of results.entries()) {
      assert.deepEqual(r.key, Buffer.from(keys[i]));
      if (r.status === 'present') assert.deepEqual(decodeEntry(r.data).key, Buffer.from(keys[i]));
    }
    const posts = server.requests.filter((p) => p === 'lookup').length;
    const gets = server.requests.filter((p) => p.startsWith('lookup/')).length;
    assert.ok(posts >= 1 && posts <= 2, `${posts} POST lookup requests`);
    assert.ok(posts + gets < keys.length, `${posts} POSTs and ${gets} GETs for ${keys.length} keys`);
    // a key that is not UTF-8 text cannot go in the JSON batch: it is asked by GET, and verified
    server.requests.length = 0;
    const odd = await Promise.all([c.lookup('nix', Buffer.from([0xff, 0x00])), c.lookup('nix', 'never-3')]);
    assert.deepEqual(
      odd.map((r) => r.status),
      ['absent', 'absent'],
    );
    assert.ok(
      server.requests.some((p) => p === 'lookup/nix/%FF%00'),
      server.requests.join(' '),
    );
  });

  test('a batch answer that swaps or drops answers fails exactly the keys it lies about', async () => {
    const c = client();
    await withTamper(
      (req, a) => {
        if (req.path !== 'lookup' || a.status !== 200) return undefined;
        const j = bodyJson<{ answers: unknown[] }>(a);
        [j.answers[0], j.answers[1]] = [j.answers[1], j.answers[0]];
        return json(200, j);
      },
      async () => {
        const [a, b, x] = await Promise.allSettled(
          ['late-key', 'k0-0-5', 'k0-0-6'].map((k) => c.lookup('nix', k)),
        );
        for (const r of [a, b]) {
          assert.equal(r.status, 'rejected');
          assert.ok(r.status === 'rejected' && r.reason instanceof InvalidProofError);
          assert.equal((r as PromiseRejectedResult).reason.check, 'lookup.wrong-key');
        }
        assert.ok(x.status === 'fulfilled' && x.value.status === 'present');
      },
    );
    await withTamper(
      (req, a) => {
        if (req.path !== 'lookup' || a.status !== 200) return undefined;
        const j = bodyJson<{ answers: unknown[] }>(a);
        return json(200, { answers: j.answers.slice(1) });
      },
      async () => {
        const all = await Promise.allSettled(['late-key', 'k0-0-5'].map((k) => c.lookup('nix', k)));
        for (const r of all) {
          assert.ok(r.status === 'rejected' && r.reason instanceof BadResponseError, String(r));
          assert.equal((r as PromiseRejectedResult).reason.check, 'response.malformed');
        }
      },
    );
  });

  test('a batch answer with the map proof of one key and the inclusion proof of another altered fails those two keys only', async () => {
    const c = client();
    /** `b64` with one byte flipped: still well-formed base64, no longer the log's hash. */
    const flip = (b64: string, at: number) => {
      const b = Buffer.from(b64, 'base64');
      b[at < 0 ? b.length + at : at] ^= 1;
      return toBase64(b);
    };
    server.requests.length = 0;
    await withTamper(
      (req, a) => {
        if (a.status !== 200) return undefined;
        if (req.path === 'lookup/nix/k0-0-5') {
          const j = bodyJson<{ mapProof: string }>(a);
          j.mapProof = flip(j.mapProof, -1);
          return json(200, j);
        }
        if (req.path === 'lookup/nix/late-key') {
          const j = bodyJson<{ entry: { proof: string[] } }>(a);
          j.entry.proof[0] = flip(j.entry.proof[0], 0);
          return json(200, j);
        }
        return undefined;
      },
      async () => {
        const keys = ['k0-0-4', 'k0-0-5', 'never-7', 'late-key', 'k0-0-6'];
        const settled = await Promise.allSettled(keys.map((k) => c.lookup('nix', k)));
        // one request carried them all, so the altered answers came in the same batch as good ones
        assert.deepEqual(
          server.requests.filter((p) => p.startsWith('lookup')),
          ['lookup'],
        );
        const [a, mapAltered, absent, inclusionAltered, b] = settled;
        for (const r of [mapAltered, inclusionAltered]) {
          assert.ok(r.status === 'rejected' && r.reason instanceof InvalidProofError, String(r));
        }
        assert.ok(a.status === 'fulfilled' && a.value.status === 'present');
        assert.ok(b.status === 'fulfilled' && b.value.status === 'present');
        assert.ok(absent.status === 'fulfilled' && absent.value.status === 'absent');
      },
    );
  });

  test('a server without POST lookup is asked key by key', async () => {
    server.noLookupBatch = true;
    try {
      const c = client();
      server.requests.length = 0;
      const keys = ['late-key', 'never-1', 'k0-0-7'];
      const results = await Promise.all(keys.map((k) => c.lookup('nix', k)));
      assert.deepEqual(
        results.map((r) => r.status),
        ['present', 'absent', 'present'],
      );
      assert.equal(server.requests.filter((p) => p.startsWith('lookup/')).length, keys.length);
      // once known, the batch request is not tried again
      server.requests.length = 0;
      await Promise.all(keys.map((k) => c.lookup('nix', k)));
      assert.deepEqual(
        server.requests.filter((p) => p === 'lookup'),
        [],
      );
    } finally {
      server.noLookupBatch = false;
    }
    const single = client({ maxLookupBatch: 1 });
    server.requests.length = 0;
    await Promise.all(['late-key', 'never-1'].map((k) => single.lookup('nix', k)));
    assert.deepEqual(
      server.requests.filter((p) => p === 'lookup'),
      [],
    );
    assert.throws(() => client({ maxLookupBatch: 0 }), /maxLookupBatch/);
  });

  test('the server list and root are found from a log URL', async () => {
    assert.equal(serverRootOf(server.url)?.href, server.root);
    assert.equal(serverRootOf('http://h/x/'), undefined);
    const list = await listLogs(server.root);
    assert.equal(list[0].vkey, vkey);
  });
});
