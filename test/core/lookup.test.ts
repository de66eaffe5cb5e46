import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { decodeBase64Strict, equalBytes } from '../../src/core/bytes.js';
import { openCheckpoint } from '../../src/core/checkpoint.js';
import { decodeEntry, indexPath, indexValue } from '../../src/core/entry.js';
import { FormatError, TrustixError, VerificationError } from '../../src/core/errors.js';
import {
  decodeBase64Canonical,
  type LookupAnswer,
  type LookupVerdict,
  parseLookupAnswer,
  verifyLookup,
} from '../../src/core/lookup.js';
import { leafHash, verifyInclusion } from '../../src/core/merkle.js';
import { generateKey, type NoteVerifier, verifierFromVkey } from '../../src/core/note.js';
import { decodeSmtProof, verifySmtProof } from '../../src/core/smt.js';
import { Log } from '../../src/log/log.js';

// verifyLookup against real answers from a real log, then against every way of bending them.
let dir: string;
let log: Log;
const q = (key: string) => ({ protocol: 'nix', key: Buffer.from(key) });

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'trustix-lookup-'));
  log = await Log.create(dir, 'lookup.test/log', { batchDelayMs: 1 });
  await log.submit(
    Array.from({ length: 300 }, (_, i) => ({
      protocol: 'nix',
      key: Buffer.from(`key-${i}`),
      value: Buffer.alloc(32, i % 251),
      metadata: Buffer.alloc(0),
    })),
  );
});
after(async () => {
  await log.close();
  rmSync(dir, { recursive: true, force: true });
});

const clone = (a: LookupAnswer): LookupAnswer => JSON.parse(JSON.stringify(a));
function flipBase64(s: string, byte = 0): string {
  const b = Buffer.from(s, 'base64');
  b[byte % b.length] ^= 1;
  return b.toString('base64');
}

describe('verifyLookup', () => {
  test('honest answers: present and absent', () => {
    const v = verifierFromVkey(log.vkey);
    const present = verifyLookup(log.lookup('nix', Buffer.from('key-7')), v, q('key-7'));
    assert.equal(present.status, 'present');
    if (present.status === 'present') assert.equal(present.index, 7);
    assert.equal(verifyLookup(log.lookup('nix', Buffer.from('nope')), v, q('nope')).status, 'absent');
  });

  test('every tampering makes the answer invalid, never absent', () => {
    const v = verifierFromVkey(log.vkey);
    const real = log.lookup('nix', Buffer.from('key-42'));
    const absentReal = log.lookup('nix', Buffer.from('nope'));
    const cases: Array<[string, LookupAnswer | unknown, string]> = [];
    const add = (name: string, f: (a: LookupAnswer) => unknown, base = real) =>
      cases.push([name, f(clone(base)), name]);

    add('entry dropped (absence claimed with an inclusion proof)', (a) => {
      delete a.entry;
      return a;
    });
    add('answer for another key', (a) => a, log.lookup('nix', Buffer.from('key-43')));
    add(
      'absence proof of another key',
      (a) => ({ ...a, key: Buffer.from('key-42').toString('base64') }),
      absentReal,
    );
    add('flipped map proof byte', (a) => ({ ...a, mapProof: flipBase64(a.mapProof, 10) }));
    add('truncated map proof', (a) => ({
      ...a,
      mapProof: Buffer.from(a.mapProof, 'base64').subarray(0, 20).toString('base64'),
    }));
    add('entry data altered', (a) => {
      a.entry!.data = flipBase64(a.entry!.data, 40);
      return a;
    });
    add('entry index shifted', (a) => {
      a.entry!.index += 1;
      return a;
    });
    add('inclusion proof element flipped', (a) => {
      a.entry!.proof[2] = flipBase64(a.entry!.proof[2]);
      return a;
    });
    add('inclusion proof truncated', (a) => {
      a.entry!.proof.pop();
      return a;
    });
    add('inclusion proof extended', (a) => {
      a.entry!.proof.push(a.entry!.proof[0]);
      return a;
    });
    add('checkpoint signature flipped', (a) => ({
      ...a,
      checkpoint: a.checkpoint.replace(/ (\S+)\n$/, (_m, sig) => ` ${flipBase64(sig, 9)}\n`),
    }));
    add('checkpoint size changed', (a) => ({ ...a, checkpoint: a.checkpoint.replace('\n300\n', '\n301\n') }));
    add('not an object', () => 'hello');
    add('missing fields', () => ({ checkpoint: real.checkpoint }));
    add('non-base64 proof', (a) => ({ ...a, mapProof: 'not base64!' }));
    add('huge proof array', (a) => {
      a.entry!.proof = Array.from({ length: 1000 }, () => a.entry!.proof[0]);
      return a;
    });

    for (const [name, answer] of cases) {
      const verdict = verifyLookup(answer, v, q('key-42'));
      assert.equal(verdict.status, 'invalid', `${name}: got ${verdict.status}`);
      if (verdict.status === 'invalid')
        assert.ok(verdict.check.length > 0 && verdict.reason.length > 0, name);
    }
  });

  test('a log signed by another key is invalid', () => {
    const other = verifierFromVkey(generateKey('lookup.test/log').vkey);
    const verdict = verifyLookup(log.lookup('nix', Buffer.from('key-1')), other, q('key-1'));
    assert.equal(verdict.status, 'invalid');
    if (verdict.status === 'invalid') assert.match(verdict.check, /^note\./);
  });

  test('bent answers stay invalid after the node memory has seen the honest ones', () => {
    const v = verifierFromVkey(log.vkey);
    const honest = log.lookup('nix', Buffer.from('key-9'));
    const absent = log.lookup('nix', Buffer.from('nope-9'));
    // warm: the top nodes of both trees on these paths are now remembered
    for (let i = 0; i < 3; i++) {
      assert.equal(verifyLookup(honest, v, q('key-9')).status, 'present');
      assert.equal(verifyLookup(absent, v, q('nope-9')).status, 'absent');
    }
    const proofLen = honest.entry!.proof.length;
    for (let i = 0; i < proofLen; i++) {
      for (const byte of [0, 31]) {
        const a = clone(honest);
        a.entry!.proof[i] = flipBase64(a.entry!.proof[i], byte);
        assert.equal(verifyLookup(a, v, q('key-9')).status, 'invalid', `inclusion element ${i} byte ${byte}`);
      }
    }
    const mapLen = Buffer.from(honest.mapProof, 'base64').length;
    for (let byte = 4; byte < mapLen; byte++) {
      for (const answer of [honest, absent]) {
        const a = clone(answer);
        a.mapProof = flipBase64(a.mapProof, byte);
        const key = answer === honest ? 'key-9' : 'nope-9';
        assert.equal(verifyLookup(a, v, q(key)).status, 'invalid', `map proof byte ${byte} (${key})`);
      }
    }
  });
});

describe('decodeBase64Canonical', () => {
  test('accepts exactly what decodeBase64Strict accepts, with the same bytes', () => {
    const chars =
      'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n\t\r.%\u00e9\u00ff\u0100\u2014\ud83d\0';
    const same = (text: string) => {
      const a = decodeBase64Strict(text);
      const b = decodeBase64Canonical(text);
      assert.deepEqual(b, a, JSON.stringify(text));
    };
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), (bytes) => {
        const text = Buffer.from(bytes).toString('base64');
        same(text);
        // every single-character change, including the padding and the bits before it
        for (let i = 0; i < text.length; i++) {
          for (const c of [
            'A',
            'B',
            'C',
            'D',
            'Q',
            'g',
            'w',
            '=',
            '-',
            '_',
            '/',
            '+',
            ' ',
            '\n',
            '.',
            '\u00e9',
            '\u0141',
          ]) {
            same(text.slice(0, i) + c + text.slice(i + 1));
          }
          same(text.slice(0, i) + text.slice(i + 1));
        }
      }),
      { numRuns: 200 },
    );
    // long texts take the native decoder
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 60, maxLength: 130 }), fc.nat(), (bytes, at) => {
        const text = Buffer.from(bytes).toString('base64');
        same(text);
        const i = at % text.length;
        for (const c of ['A', 'D', 'g', '=', '-', '_', ' ', '.', '\u00e9', '\u0141']) {
          same(text.slice(0, i) + c + text.slice(i + 1));
          same(text.slice(0, -1) + c);
          same(text.slice(0, -2) + c + text.slice(-1));
        }
        same(text.slice(0, i) + text.slice(i + 1));
      }),
      { numRuns: 300 },
    );
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...chars), { maxLength: 12 }), (cs) => same(cs.join(''))),
      { numRuns: 2000 },
    );
    for (const t of ['', '=', '==', 'A===', 'AA==', 'AB==', 'AAA=', 'AAB=', 'AAAA', 'AA=A', 'Zg==', 'Zh=='])
      same(t);
  });
});

/**
 * verifyLookup as it was before its decoding was made cheaper (base64 through decodeBase64Strict, a buffer
 * per field, no node memory): the reference the fast path must agree with, verdict, check and reason.
 */
function referenceVerify(
  answer: unknown,
  verifier: NoteVerifier,
  query: { protocol: string; key: Uint8Array },
) {
  const b64 = (text: unknown, field: string): Buffer => {
    const b = typeof text === 'string' ? decodeBase64Strict(text) : undefined;
    if (!b) throw new FormatError(`${field} is not valid base64`);
    return b;
  };
  try {
    const a = parseLookupAnswer(answer);
    const { checkpoint } = openCheckpoint(a.checkpoint, verifier);
    if (!checkpoint.mapRoot)
      throw new VerificationError('lookup.no-map-root', 'checkpoint carries no map root');
    if (a.protocol !== query.protocol || !equalBytes(b64(a.key, 'key'), query.key)) {
      throw new VerificationError('lookup.wrong-key', 'answer is for another key');
    }
    const path = indexPath(query.protocol, query.key);
    const mapProof = decodeSmtProof(b64(a.mapProof, 'mapProof'));
    if (!a.entry) {
      verifySmtProof(checkpoint.mapRoot, path, undefined, mapProof);
      return { status: 'absent' };
    }
    const data = b64(a.entry.data, 'entry.data');
    const entry = decodeEntry(data);
    if (entry.protocol !== query.protocol || !equalBytes(entry.key, query.key)) {
      throw new VerificationError('lookup.entry-key-mismatch', 'entry is for another key');
    }
    const leaf = leafHash(data);
    verifySmtProof(checkpoint.mapRoot, path, indexValue(a.entry.index, leaf), mapProof);
    const proof = a.entry.proof.map((t, i) => b64(t, `entry.proof[${i}]`));
    verifyInclusion(leaf, a.entry.index, checkpoint.size, proof, checkpoint.rootHash);
    return { status: 'present', index: a.entry.index, value: entry.value.toString('hex') };
  } catch (err) {
    if (err instanceof VerificationError) return { status: 'invalid', check: err.check, reason: err.message };
    if (err instanceof TrustixError)
      return { status: 'invalid', check: 'lookup.malformed', reason: err.message };
    throw err;
  }
}

function verdictOf(v: LookupVerdict) {
  if (v.status === 'present')
    return { status: v.status, index: v.index, value: v.entry.value.toString('hex') };
  if (v.status === 'absent') return { status: v.status };
  return v;
}

/** One change to a base64 text: a character replaced, removed or added, or a decoded byte flipped. */
const textEdit = fc.oneof(
  fc.record({
    op: fc.constant('set' as const),
    at: fc.nat(),
    c: fc.constantFrom(
      'A',
      'B',
      'Q',
      'g',
      'w',
      '/',
      '+',
      '=',
      '-',
      '_',
      ' ',
      '\n',
      '.',
      '\u00e9',
      '\u0141',
      '\0',
    ),
  }),
  fc.record({ op: fc.constant('drop' as const), at: fc.nat() }),
  fc.record({
    op: fc.constantFrom('insert' as const),
    at: fc.nat(),
    c: fc.constantFrom('A', '=', 'AAAA', '===='),
  }),
  fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ op: fc.constant('cut' as const), at: fc.nat() }),
);
type TextEdit = typeof textEdit extends fc.Arbitrary<infer T> ? T : never;

function editText(s: string, e: TextEdit): string {
  const at = s.length === 0 ? 0 : e.at % s.length;
  switch (e.op) {
    case 'set':
      return s.slice(0, at) + e.c + s.slice(at + 1);
    case 'drop':
      return s.slice(0, at) + s.slice(at + 1);
    case 'insert':
      return s.slice(0, at) + e.c + s.slice(at);
    case 'cut':
      return s.slice(0, at);
    case 'flip': {
      const b = Buffer.from(s, 'base64');
      if (b.length > 0) b[e.at % b.length] ^= 1 << e.bit;
      return b.toString('base64');
    }
  }
}

describe('verifyLookup agrees with the reference on bent answers', () => {
  test('the first bad inclusion element is the one named, whatever is wrong with the later ones', () => {
    const v = verifierFromVkey(log.vkey);
    const a = clone(log.lookup('nix', Buffer.from('key-5')));
    const p = a.entry!.proof;
    p[1] = `!${p[1].slice(1)}`;
    p[3] = p[3].slice(1);
    const verdict = verifyLookup(a, v, q('key-5'));
    assert.deepEqual(verdict, referenceVerify(a, v, q('key-5')));
    assert.match(verdict.status === 'invalid' ? verdict.reason : '', /entry\.proof\[1\]/);
  });

  test('random edits of present and absent answers: same verdict, check and reason', () => {
    const v = verifierFromVkey(log.vkey);
    const names = ['key-3', 'key-200', 'key-299', 'nope-1', 'nope-2'];
    const honest = names.map((k) => ({ key: k, answer: log.lookup('nix', Buffer.from(k)) }));
    const field = fc.constantFrom('key', 'mapProof', 'data', 'proof', 'index', 'shape', 'proofs');
    fc.assert(
      fc.property(
        fc.nat({ max: honest.length - 1 }),
        fc.array(fc.tuple(field, fc.nat(), textEdit), { minLength: 1, maxLength: 3 }),
        (which, edits) => {
          const { key, answer } = honest[which];
          const a = clone(answer) as LookupAnswer & Record<string, unknown>;
          for (const [f, n, e] of edits) {
            if (f === 'key') a.key = editText(a.key, e);
            else if (f === 'mapProof') a.mapProof = editText(a.mapProof, e);
            else if (a.entry === undefined) a.entry = { index: n % 400, data: answer.key, proof: [] };
            else if (typeof a.entry !== 'object' || a.entry === null || !Array.isArray(a.entry.proof)) {
              // already bent out of shape: nothing left to edit
            } else if (f === 'data') a.entry.data = editText(a.entry.data, e);
            else if (f === 'proof' && a.entry.proof.length > 0) {
              const i = n % a.entry.proof.length;
              a.entry.proof[i] = editText(a.entry.proof[i], e);
            } else if (f === 'proofs') {
              const p = a.entry.proof;
              if (n % 3 === 0) p.splice(n % (p.length + 1), 1);
              else if (n % 3 === 1) p.splice(n % (p.length + 1), 0, p[0] ?? 'AAAA');
              else p.reverse();
            } else if (f === 'index') a.entry.index = n % 3 === 0 ? -1 : n % 400;
            else if (f === 'shape') {
              const bad = [null, 7, 'x', [], { index: 1 }][n % 5];
              if (n % 2 === 0) (a as Record<string, unknown>).entry = bad;
              else (a.entry as unknown as Record<string, unknown>).proof = bad;
            }
          }
          const q2 = q(key);
          assert.deepEqual(verdictOf(verifyLookup(a, v, q2)), referenceVerify(a, v, q2));
          // and the honest answer still verifies after the bent one went through the node memory
          assert.deepEqual(verdictOf(verifyLookup(answer, v, q2)), referenceVerify(answer, v, q2));
        },
      ),
      { numRuns: 3000 },
    );
  });
});
