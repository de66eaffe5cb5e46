import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { FormatError } from '../../src/core/errors.js';
import { parseReceipts, type Receipt, receiptsJson } from '../../src/core/receipts.js';

const parse = (json: Buffer, count: number) => parseReceipts(JSON.parse(json.toString('utf8')), count);

/** What a receipt says, with its proof as base64 (for deepEqual). */
const plain = (r: Receipt) => ({
  index: r.index,
  duplicate: r.duplicate,
  checkpoint: r.checkpoint,
  proof: r.proof.map((h) => Buffer.from(h).toString('base64')),
});

describe('submit receipts', () => {
  test('round trip: shared and repeated hashes, several checkpoints, duplicates, empty proofs', () => {
    const shared = Array.from({ length: 20 }, () => randomBytes(32));
    // the same value in a separate object, as a proof computed afresh would give it
    const copy = Buffer.from(shared[3]);
    const cpA = 'log.example/a\n5\nAAAA\n\n— sig\n';
    const cpB = 'log.example/a\n9\n"quoted" \\ back\n';
    const receipts: Receipt[] = [
      { index: 0, duplicate: false, checkpoint: cpA, proof: [] },
      { index: 1, duplicate: false, checkpoint: cpA, proof: [shared[0], shared[1], shared[2]] },
      { index: 2, duplicate: false, checkpoint: cpA, proof: [shared[5], shared[1], shared[2]] },
      { index: 7, duplicate: true, checkpoint: cpB, proof: [copy, shared[3], randomBytes(32)] },
      { index: 12_345_678_901, duplicate: false, checkpoint: cpB, proof: shared.slice(0, 20) },
      { index: 3, duplicate: false, checkpoint: cpA, proof: [shared[0].subarray(0, 32)] },
    ];
    const json = receiptsJson(receipts);
    const j = JSON.parse(json.toString('utf8')) as { checkpoints: string[]; hashes: string[] };
    assert.deepEqual(j.checkpoints, [cpA, cpB]);
    // each distinct value once: 20 shared (copy and the view are the same values) and one fresh
    assert.equal(j.hashes.length, 21);
    assert.equal(new Set(j.hashes).size, 21);
    assert.deepEqual(parse(json, receipts.length).map(plain), receipts.map(plain));
  });

  test('round trip of random receipts (hash encoding of every byte value, numbers of every length)', () => {
    const hash = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((a) => Buffer.from(a));
    fc.assert(
      fc.property(
        fc.array(hash, { minLength: 1, maxLength: 8 }),
        fc.array(
          fc.record({
            index: fc.maxSafeNat(),
            duplicate: fc.boolean(),
            cp: fc.nat(2),
            proof: fc.array(fc.nat(7), { maxLength: 12 }),
          }),
          { maxLength: 30 },
        ),
        (pool, spec) => {
          const cps = ['a\n1\n', 'b\n2 ü\n', 'c\n3\n'];
          const receipts: Receipt[] = spec.map((s) => ({
            index: s.index,
            duplicate: s.duplicate,
            checkpoint: cps[s.cp],
            proof: s.proof.map((k) => pool[k % pool.length]),
          }));
          assert.deepEqual(parse(receiptsJson(receipts), receipts.length).map(plain), receipts.map(plain));
        },
      ),
    );
  });

  test('an answer that does not hold what was asked is a FormatError', () => {
    const h = randomBytes(32).toString('base64');
    const ok = {
      checkpoints: ['cp\n'],
      hashes: [h],
      receipts: [{ index: 4, duplicate: false, checkpoint: 0, proof: [0, 0] }],
    };
    assert.equal(parseReceipts(ok, 1)[0].proof.length, 2);
    const bad: Array<[unknown, RegExp]> = [
      [null, /object/],
      [{ ...ok, checkpoints: 'cp' }, /checkpoints/],
      [{ ...ok, checkpoints: [''] }, /checkpoints/],
      [{ ...ok, hashes: [randomBytes(31).toString('base64')] }, /hashes\[0\]/],
      [{ ...ok, hashes: [`${h.slice(0, -1)}`] }, /hashes\[0\]/],
      [{ ...ok, receipts: [] }, /expected 1 receipts/],
      [{ ...ok, receipts: [{ ...ok.receipts[0], checkpoint: 1 }] }, /receipt 0/],
      [{ ...ok, receipts: [{ ...ok.receipts[0], index: -1 }] }, /receipt 0/],
      [{ ...ok, receipts: [{ ...ok.receipts[0], index: 1.5 }] }, /receipt 0/],
      [{ ...ok, receipts: [{ ...ok.receipts[0], duplicate: 'no' }] }, /receipt 0/],
      [{ ...ok, receipts: [{ ...ok.receipts[0], proof: [1] }] }, /missing proof hash/],
      [{ ...ok, receipts: [{ ...ok.receipts[0], proof: ['0'] }] }, /missing proof hash/],
      [{ ...ok, receipts: [{ ...ok.receipts[0], proof: new Array(65).fill(0) }] }, /receipt 0/],
    ];
    for (const [answer, message] of bad) {
      assert.throws(
        () => parseReceipts(answer, 1),
        (e: unknown) => e instanceof FormatError && message.test(e.message),
      );
    }
  });
});
