import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { decodeBase64Strict } from '../../src/core/bytes.js';
import { decodeBase64Canonical, type LookupAnswer, verifyLookup } from '../../src/core/lookup.js';
import { generateKey, verifierFromVkey } from '../../src/core/note.js';
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
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...chars), { maxLength: 12 }), (cs) => same(cs.join(''))),
      { numRuns: 2000 },
    );
    for (const t of ['', '=', '==', 'A===', 'AA==', 'AB==', 'AAA=', 'AAB=', 'AAAA', 'AA=A', 'Zg==', 'Zh=='])
      same(t);
  });
});
