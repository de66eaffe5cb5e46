import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type LookupAnswer, verifyLookup } from '../../src/core/lookup.js';
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
});
