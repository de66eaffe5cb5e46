import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  consistencyBundle,
  formatBundle,
  inclusionBundle,
  lookupBundle,
  verifyBundle,
} from '../../src/core/bundle.js';
import { toBase64 } from '../../src/core/bytes.js';
import { VerificationError } from '../../src/core/errors.js';
import { generateKey } from '../../src/core/note.js';
import type { Log } from '../../src/log/log.js';
import { entry, makeLog, ORIGIN } from './helpers.js';

const { skey, vkey } = generateKey(ORIGIN);
const other = generateKey(ORIGIN);

function rejects(b: unknown, check: string | RegExp, opts: { vkey?: string } = {}): void {
  assert.throws(
    () => verifyBundle(b, opts),
    (err: unknown) => {
      assert.ok(err instanceof VerificationError, `expected VerificationError, got ${err}`);
      if (typeof check === 'string') assert.equal(err.check, check, err.message);
      else assert.match(err.check, check, err.message);
      return true;
    },
  );
}

const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x)) as T;

function flipBase64(s: string, at: number): string {
  const b = Buffer.from(s, 'base64');
  b[at % b.length] ^= 0x40;
  return b.toString('base64');
}

describe('proof bundles', () => {
  let log: Log;
  let fork: Log;
  let note100: string;
  before(async () => {
    log = await makeLog(skey, [100]);
    note100 = log.head().checkpoint;
    await log.submit(Array.from({ length: 200 }, (_, i) => entry(`more-${i}`)));
    fork = await makeLog(skey, [100], 'fork');
  });
  after(async () => {
    await log.close();
    await fork.close();
  });

  test('inclusion: verifies offline, text or object; tampering is rejected', () => {
    const size = log.head().size;
    const b = inclusionBundle(
      vkey,
      log.head().checkpoint,
      150,
      log.entry(150),
      log.inclusionProof(150, size),
    );
    const text = formatBundle(b);
    for (const input of [b, text, Buffer.from(text)]) {
      const r = verifyBundle(input, { vkey });
      assert.equal(r.type, 'trustix-inclusion/v1');
      assert.ok(r.type === 'trustix-inclusion/v1');
      assert.equal(r.index, 150);
      assert.equal(r.checkpoint.size, size);
      assert.deepEqual(r.entry?.key, Buffer.from('more-50'));
    }
    assert.equal(verifyBundle(b).vkey, vkey, 'without a pinned key the bundle key is used and reported');

    rejects({ ...b, entry: flipBase64(b.entry, 10) }, 'inclusion.root-mismatch');
    rejects({ ...b, index: 151 }, 'inclusion.root-mismatch');
    rejects({ ...b, index: size }, 'inclusion.index-out-of-range');
    rejects({ ...b, proof: b.proof.slice(1) }, 'inclusion.proof-length');
    b.proof.forEach((p, i) => {
      const t = clone(b);
      t.proof[i] = flipBase64(p, i);
      rejects(t, 'inclusion.root-mismatch');
    });
    rejects(
      { ...b, checkpoint: b.checkpoint.replace(`\n${size}\n`, `\n${size + 1}\n`) },
      'note.bad-signature',
    );
    rejects(b, 'bundle.vkey-mismatch', { vkey: other.vkey });
    rejects({ ...b, vkey: other.vkey }, 'note.no-known-signature');
    rejects({ ...b, vkey: other.vkey }, 'bundle.vkey-mismatch', { vkey });
    rejects({ ...b, extra: 1 }, 'bundle.malformed');
    rejects({ ...b, type: 'trustix-inclusion/v2' }, 'bundle.unknown-type');
    rejects({ ...b, proof: ['not base64!'] }, 'bundle.malformed');
    rejects(text.slice(0, -10), 'bundle.malformed');
    rejects([b], 'bundle.malformed');
  });

  test('consistency: verifies offline; swapped, forked or tampered is rejected', () => {
    const size = log.head().size;
    const b = consistencyBundle(vkey, note100, log.head().checkpoint, log.consistencyProof(100, size));
    const r = verifyBundle(formatBundle(b), { vkey });
    assert.ok(r.type === 'trustix-consistency/v1');
    assert.equal(r.old.size, 100);
    assert.equal(r.new.size, size);
    rejects({ ...b, old: b.new, new: b.old }, 'consistency.size-order');
    rejects({ ...b, old: fork.head().checkpoint }, 'consistency.root1-mismatch');
    rejects(
      { ...b, proof: [...b.proof.slice(0, -1), flipBase64(b.proof[b.proof.length - 1], 3)] },
      /^consistency\.root[12]-mismatch$/,
    );
    rejects({ ...b, proof: b.proof.slice(0, -1) }, 'consistency.proof-length');
    rejects({ ...b, new: b.new.replace('\u2014 ', '\u2014 x') }, /^note\./);
    // the same checkpoint twice is trivially consistent; two different ones of one size are not
    assert.equal(verifyBundle(consistencyBundle(vkey, note100, note100, [])).type, 'trustix-consistency/v1');
    rejects(consistencyBundle(vkey, note100, fork.head().checkpoint, []), 'consistency.root-mismatch');
  });

  test('lookup: present and absent verify offline; relabelled or stripped answers are rejected', () => {
    const present = lookupBundle(vkey, log.lookup('nix', Buffer.from('more-7')));
    const r = verifyBundle(formatBundle(present), { vkey });
    assert.ok(r.type === 'trustix-lookup/v1');
    assert.equal(r.status, 'present');
    assert.equal(r.index, 107);
    assert.deepEqual(r.key, Buffer.from('more-7'));
    const absent = lookupBundle(vkey, log.lookup('nix', Buffer.from('nothing')));
    const a = verifyBundle(absent, { vkey });
    assert.ok(a.type === 'trustix-lookup/v1');
    assert.equal(a.status, 'absent');

    rejects(
      { ...present, answer: { ...present.answer, key: toBase64(Buffer.from('more-8')) } },
      'lookup.entry-key-mismatch',
    );
    rejects({ ...present, answer: { ...present.answer, entry: undefined } }, /^smt\./);
    rejects({ ...absent, answer: { ...absent.answer, key: present.answer.key } }, /^smt\./);
    rejects({ ...present, answer: { ...present.answer, checkpoint: note100 } }, /^(smt|inclusion)\./);
    rejects({ ...present, answer: { ...present.answer, mapProof: 'AAAA' } }, /^(smt\.|lookup\.malformed)/);
    rejects({ ...present, answer: { checkpoint: 1 } }, 'bundle.malformed');
    rejects(present, 'bundle.vkey-mismatch', { vkey: other.vkey });
  });
});
