import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { FormatError, VerificationError } from '../../src/core/errors.js';
import {
  ALG_COSIGNATURE_V1,
  ALG_ED25519,
  cosignatureTimestamp,
  cosignatureVerifierFromVkey,
  cosignerFromSkey,
  formatSignatureLine,
  generateKey,
  isValidKeyName,
  keyId,
  MAX_NOTE_SIGNATURES,
  type NoteVerifier,
  openNote,
  parseNote,
  signerFromSkey,
  signNote,
  verifierFromVkey,
} from '../../src/core/note.js';

// Vectors of Go's golang.org/x/mod/sumdb/note (DESIGN §2).
const PN_VKEY = 'PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW';
const PN_SKEY = 'PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz';
const PN_TEXT =
  "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const PN_SIG =
  '\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n';
const PN_NOTE = `${PN_TEXT}\n${PN_SIG}`;

const FOO_VKEY = 'example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k';
const FOO_NOTE =
  'This is an example message.\n\n' +
  '\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n';

// The Tessera test log and its keys (shared/testdata/tessera-log).
const TESSERA_VKEY = 'example.com/log/testdata+33d7b496+AeHTu4Q3hEIMHNqc6fASMsq3rKNx280NI+oO5xCFkkSx';
const TESSERA_SKEY =
  'PRIVATE+KEY+example.com/log/testdata+33d7b496+AeymY/SZAX0jZcJ8enZ5FY1Dz+wTML2yWSkK+9DSF3eg';
const TESSERA_DIR = new URL('../../../shared/testdata/tessera-log/', import.meta.url);
const TESSERA_FILES = [...Array.from({ length: 16 }, (_, i) => `checkpoint.${i}`), 'checkpoint'];

// Verifier keys of transparency-dev/formats' tests: type 0x01 with a '+' inside its base64, and type 0x04.
const PLUS_VKEY = 'TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6';
const REMORA_VKEY = 'remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2';

// A public checkpoint of a staging CT log with its real witness cosignatures (type 0x04), plus a type 0x05
// (RFC 6962 tree head) signature that we do not implement and must ignore.
const ARCHE_VKEY =
  'arche2025h1.staging.ct.transparency.dev+ba2f06c0+AU0vHmlGCS/PdN8b2OaGmKprLI8HKM+dJ472xgFYh15f';
const WITNESS_VKEYS = [
  REMORA_VKEY,
  'transparency.dev/DEV:witness-little-garden+d8042a87+BCtusOxINQNUTN5Oj8HObRkh2yHf/MwYaGX4CPdiVEPM',
  'witness1.smartit.nu/witness1+a48c820f+BPSFWg9G6KPiO7QPryYO5Xq4oYJJ+kAvLKLSimDhoxMO',
];
const ARCHE_NOTE = [
  'arche2025h1.staging.ct.transparency.dev',
  '1432088532',
  'U7WM79jrzyhGZ5/GUBTpM7NzwdyfFx61t3RovgcC4Ro=',
  '',
  '\u2014 arche2025h1.staging.ct.transparency.dev zTM8sQAAAZ5W0WdjBAMARjBEAiBjW5IQf9pvsYLfQFX6hoGREPMHbdQ3urbllzalApkptQIgIpwtEroeW2BXaHAI4kJXFbon5Ch9MNL5zRNZ55lvGt0=',
  '\u2014 arche2025h1.staging.ct.transparency.dev ui8GwCF1+kWqZrxGdhj4aX3gcw7XUlXQQabg/27lefwhUkzbC3NygNI75MdhL1bfTW9g8Ei59RA23oHP7Ry1k3ZFWwQ=',
  '\u2014 transparency.dev/DEV:witness-little-garden 2AQqhwAAAABqEiEgzgFIqqhbUoDwjMWE6UP8nd8/KYTzwZ2rhIgcqoXHAwVkjZr4AscylP3v7sEodkRAErumC2q44vdgJY096st5BQ==',
  '\u2014 witness1.smartit.nu/witness1 pIyCDwAAAABqEiEghIp82KWebrw7/oHQwlTAm3g2RKS4+eebl8eO0WH+/iEcxZ75W3u5hNI7TOQtmJbqmNWVuE0tgh0XwzdZsDsUAQ==',
  '\u2014 remora.n621.de 2net5wAAAABqEiEgPlfF3V06o0Y+fHM+J5J9s27wgxxcOVSpZ/2g/KSiXCg9DEZI+aVCIobWX9sXTynk5XeU/zZ0WBxtqB0DrAWfBw==',
  '\u2014 witness.stagemole.eu Z/euoAAAAABqEiEgw0i+7g2ENfDAWHmtRzCfKTHSDwYDJA2NmKeGi9Y8FtEyOUvVr+AJmIY/2TUFucgKi7lI7cUiOvKFYe/TmN9DAg==',
  '',
].join('\n');

/** No character below U+0020 (a note allows none but newline). */
function noControl(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) < 0x20) return false;
  return true;
}

function rejects(fn: () => unknown, check: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof VerificationError, `expected VerificationError, got ${String(err)}`);
    assert.equal(err.check, check);
    return true;
  });
}

function formatError(fn: () => unknown, message?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof FormatError, `expected FormatError, got ${String(err)}`);
    if (message) assert.match(err.message, message);
    return true;
  });
}

/** Flips one bit of the byte at `index` of the base64 payload of signature line `line` (0-based). */
function flipSignatureBit(note: string, line: number, index: number): string {
  const split = note.lastIndexOf('\n\n') + 2;
  const lines = note.slice(split, -1).split('\n');
  const space = lines[line].indexOf(' ', 2);
  const raw = Buffer.from(lines[line].slice(space + 1), 'base64');
  raw[index] ^= 0x01;
  lines[line] = lines[line].slice(0, space + 1) + raw.toString('base64');
  return `${note.slice(0, split)}${lines.join('\n')}\n`;
}

describe('Go sumdb/note vectors', () => {
  test('PeterNeumann: keys parse, the note verifies, and re-signing reproduces it byte for byte', () => {
    const v = verifierFromVkey(PN_VKEY);
    const s = signerFromSkey(PN_SKEY);
    assert.equal(v.name, 'PeterNeumann');
    assert.equal(v.keyId, 0xc74f20a3);
    assert.equal(s.keyId, 0xc74f20a3);
    assert.equal(v.vkey, PN_VKEY);
    assert.equal(s.vkey, PN_VKEY);
    const opened = openNote(PN_NOTE, [v]);
    assert.equal(opened.text, PN_TEXT);
    assert.equal(opened.verified.length, 1);
    assert.equal(opened.verified[0].name, 'PeterNeumann');
    assert.equal(opened.verified[0].keyId, 0xc74f20a3);
    assert.equal(opened.verified[0].signature.length, 64);
    assert.deepEqual(opened.unverified, []);
    assert.equal(signNote(PN_TEXT, [s]), PN_NOTE);
  });

  test('example.com/foo verifies', () => {
    const v = verifierFromVkey(FOO_VKEY);
    assert.equal(v.keyId, 0x530d903a);
    const opened = openNote(FOO_NOTE, [v]);
    assert.equal(opened.text, 'This is an example message.\n');
    assert.equal(opened.verified[0].base64, FOO_NOTE.slice(FOO_NOTE.lastIndexOf(' ') + 1, -1));
  });

  test('both keys together: both signatures verify, order kept', () => {
    const s1 = signerFromSkey(PN_SKEY);
    const { skey } = generateKey('example.com/other');
    const s2 = signerFromSkey(skey);
    const note = signNote(PN_TEXT, [s1, s2]);
    assert.ok(note.startsWith(PN_NOTE));
    const opened = openNote(note, [verifierFromVkey(s2.vkey), verifierFromVkey(PN_VKEY)]);
    assert.deepEqual(
      opened.verified.map((x) => x.name),
      ['PeterNeumann', 'example.com/other'],
    );
  });

  test('keyId follows SHA-256(name || "\\n" || type || key)[:4]', () => {
    const pub = Buffer.from('1a5cd907143c384c41e830c5bce12aa8817ec5649aaabf2c31388b35b2d744d6', 'hex');
    assert.equal(keyId('PeterNeumann', pub), 0xc74f20a3);
    assert.equal(keyId('PeterNeumann', pub, ALG_ED25519), 0xc74f20a3);
    assert.notEqual(keyId('PeterNeumann', pub, ALG_COSIGNATURE_V1), 0xc74f20a3);
    assert.notEqual(keyId('PeterNeumanN', pub), 0xc74f20a3);
  });
});

describe('Tessera test log', () => {
  const verifier = verifierFromVkey(TESSERA_VKEY);
  const signer = signerFromSkey(TESSERA_SKEY);

  test('the skey and vkey belong together', () => {
    assert.equal(signer.vkey, TESSERA_VKEY);
    assert.equal(signer.keyId, 0x33d7b496);
  });

  for (const file of TESSERA_FILES) {
    test(`${file} verifies and re-signs byte for byte`, () => {
      const note = readFileSync(new URL(file, TESSERA_DIR), 'utf8');
      const opened = openNote(note, [verifier]);
      assert.equal(opened.verified.length, 1);
      assert.equal(signNote(opened.text, [signer]), note);
      // The same bytes as a Uint8Array.
      assert.equal(openNote(readFileSync(new URL(file, TESSERA_DIR)), [verifier]).text, opened.text);
    });
  }
});

describe('openNote rejects', () => {
  const v = verifierFromVkey(PN_VKEY);

  test('a note signed only by another key', () => {
    const other = verifierFromVkey(generateKey('PeterNeumann').vkey);
    rejects(() => openNote(PN_NOTE, [other]), 'note.no-known-signature');
    rejects(() => openNote(PN_NOTE, []), 'note.no-known-signature');
    rejects(() => openNote(PN_NOTE, [verifierFromVkey(FOO_VKEY)]), 'note.no-known-signature');
  });

  test('a known name and key id whose key does not verify (colliding key id)', () => {
    const real = verifierFromVkey(generateKey('PeterNeumann').vkey);
    const impostor: NoteVerifier = { name: v.name, keyId: v.keyId, vkey: real.vkey, verify: real.verify };
    rejects(() => openNote(PN_NOTE, [impostor]), 'note.bad-signature');
  });

  test('a flipped bit anywhere in the signature or in the text', () => {
    for (const i of [4, 5, 30, 67])
      rejects(() => openNote(flipSignatureBit(PN_NOTE, 0, i), [v]), 'note.bad-signature');
    const bytes = Buffer.from(PN_NOTE);
    for (const i of [0, 10, PN_TEXT.length - 2]) {
      const b = Buffer.from(bytes);
      b[i] ^= 0x01;
      rejects(() => openNote(b, [v]), 'note.bad-signature');
    }
  });

  test('a flipped key id bit makes the signature unknown', () => {
    rejects(() => openNote(flipSignatureBit(PN_NOTE, 0, 0), [v]), 'note.no-known-signature');
  });

  test('a missing blank line', () => {
    rejects(() => openNote(PN_TEXT + PN_SIG, [v]), 'note.malformed');
  });

  test('a missing trailing newline', () => {
    rejects(() => openNote(PN_NOTE.slice(0, -1), [v]), 'note.malformed');
    rejects(() => openNote(`${PN_NOTE}\n`, [v]), 'note.malformed');
  });

  test('a signature line with another dash or without its space', () => {
    for (const dash of ['-', '--', '\u2013', '\u2015', '\u2014\u2014']) {
      rejects(() => openNote(PN_NOTE.replace('\u2014', dash), [v]), 'note.malformed');
    }
    rejects(() => openNote(PN_NOTE.replace('\u2014 ', '\u2014'), [v]), 'note.malformed');
    rejects(() => openNote(PN_NOTE.replace('\u2014 ', '\u2014  '), [v]), 'note.malformed');
    rejects(() => openNote(PN_NOTE.replace('\u2014 ', ' \u2014 '), [v]), 'note.malformed');
  });

  test('malformed signature lines', () => {
    const sig = PN_SIG.slice(PN_SIG.lastIndexOf(' ') + 1, -1);
    const lines = [
      `\u2014 PeterNeumann\n`, // no signature
      `\u2014 PeterNeumann \n`, // empty signature
      `\u2014  ${sig}\n`, // empty name
      `\u2014 Peter+Neumann ${sig}\n`, // '+' in name
      `\u2014 PeterNeumann  ${sig}\n`, // two spaces
      `\u2014 PeterNeumann ${sig} \n`, // trailing space
      `\u2014 PeterNeumann ${sig.slice(0, -1)}\n`, // bad padding
      `\u2014 PeterNeumann ${sig.replace('/', '_')}\n`, // base64url
      `\u2014 PeterNeumann AQIDBA==\n`, // 4 bytes: only a key id
      `\u2014 PeterNeumann x08go/Z=\n`, // non-canonical base64 (padding bits set)
      `\u2014 Peter\u00a0Neumann ${sig}\n`, // Unicode space in name
    ];
    for (const line of lines) rejects(() => openNote(`${PN_TEXT}\n${line}`, [v]), 'note.malformed');
    // Also a bad line after a good one.
    rejects(() => openNote(`${PN_NOTE}\u2014 x\n`, [v]), 'note.malformed');
    rejects(() => openNote(`${PN_NOTE}\n`, [v]), 'note.malformed');
  });

  test('invalid UTF-8 and control characters', () => {
    const bytes = Buffer.from(PN_NOTE);
    for (const bad of [[0xff], [0xc3], [0xed, 0xa0, 0x80], [0xc0, 0x80]]) {
      const b = Buffer.concat([Buffer.from('x'), Buffer.from(bad), bytes]);
      rejects(() => openNote(b, [v]), 'note.malformed');
    }
    rejects(() => openNote(`\ud800${PN_NOTE}`, [v]), 'note.malformed');
    for (const c of ['\t', '\r', '\0', '\x1b', '\x0b']) {
      rejects(() => openNote(`${c}${PN_NOTE}`, [v]), 'note.malformed');
      rejects(() => openNote(PN_NOTE.replace('x08go', `x08go${c}`), [v]), 'note.malformed');
    }
    rejects(() => openNote(PN_NOTE.replaceAll('\n', '\r\n'), [v]), 'note.malformed');
  });

  test('too many signatures', () => {
    const unknown = (i: number) => formatSignatureLine(`u${i}`, i, Buffer.alloc(64, i));
    let lines = '';
    for (let i = 0; i < MAX_NOTE_SIGNATURES - 1; i++) lines += unknown(i);
    const ok = PN_NOTE + lines;
    const opened = openNote(ok, [v]);
    assert.equal(opened.unverified.length, MAX_NOTE_SIGNATURES - 1);
    rejects(() => openNote(ok + unknown(1000), [v]), 'note.malformed');
  });

  test('a good signature followed by a bad duplicate of the same key', () => {
    const bad = flipSignatureBit(PN_NOTE, 0, 20).slice(PN_TEXT.length + 1);
    rejects(() => openNote(PN_NOTE + bad, [v]), 'note.bad-signature');
    rejects(() => openNote(`${PN_TEXT}\n${bad}${PN_SIG}`, [v]), 'note.bad-signature');
  });

  test('two different verifiers with the same name and key id', () => {
    const other = verifierFromVkey(generateKey('PeterNeumann').vkey);
    const twin: NoteVerifier = { name: v.name, keyId: v.keyId, vkey: other.vkey, verify: other.verify };
    rejects(() => openNote(PN_NOTE, [v, twin]), 'note.ambiguous-verifier');
    // The same key given twice is not ambiguous.
    assert.equal(openNote(PN_NOTE, [v, verifierFromVkey(PN_VKEY)]).verified.length, 1);
  });
});

describe('openNote accepts', () => {
  const v = verifierFromVkey(PN_VKEY);

  test('unknown signers, returned unverified (identical lines once)', () => {
    const foo = FOO_NOTE.slice(FOO_NOTE.indexOf('\u2014'));
    const note = PN_NOTE + foo + foo;
    const opened = openNote(note, [v]);
    assert.equal(opened.verified.length, 1);
    assert.equal(opened.unverified.length, 1);
    assert.equal(opened.unverified[0].name, 'example.com/foo');
    assert.equal(opened.unverified[0].keyId, 0x530d903a);
    // A signature line from an unknown key may come first.
    assert.equal(openNote(`${PN_TEXT}\n${foo}${PN_SIG}`, [v]).verified.length, 1);
  });

  test('the same signature line twice, reported once', () => {
    const opened = openNote(PN_NOTE + PN_SIG, [v]);
    assert.equal(opened.verified.length, 1);
  });

  test('a known name with another key id is ignored, not an error', () => {
    const line = formatSignatureLine('PeterNeumann', 0x12345678, Buffer.alloc(64));
    const opened = openNote(PN_NOTE + line, [v]);
    assert.equal(opened.verified.length, 1);
    assert.equal(opened.unverified[0].keyId, 0x12345678);
  });

  test('text with blank lines: signatures start after the last one', () => {
    const s = signerFromSkey(PN_SKEY);
    for (const text of ['a\n\nb\n', '\n', 'a\n\n', '\n\n\n', '\u2014 x y\n\n']) {
      const note = signNote(text, [s]);
      assert.equal(openNote(note, [v]).text, text);
      assert.equal(parseNote(note).signatures.length, 1);
    }
  });
});

describe('parseNote', () => {
  test('returns every signature line, raw', () => {
    const parsed = parseNote(PN_NOTE + PN_SIG);
    assert.equal(parsed.text, PN_TEXT);
    assert.equal(parsed.signatures.length, 2);
    const sig = parsed.signatures[0];
    assert.equal(sig.keyId, 0xc74f20a3);
    assert.equal(sig.signature.length, 64);
    assert.equal(
      Buffer.concat([Buffer.from('c74f20a3', 'hex'), sig.signature]).toString('base64'),
      sig.base64,
    );
  });

  test('throws FormatError on malformed notes', () => {
    formatError(() => parseNote(''));
    formatError(() => parseNote('\n'));
    formatError(() => parseNote('\n\n'));
    formatError(() => parseNote(PN_TEXT + '\n'));
    formatError(() => parseNote(Buffer.from([0x61, 0x0a, 0x0a, 0xff, 0x0a])), /UTF-8/);
  });
});

describe('signNote', () => {
  const s = signerFromSkey(PN_SKEY);

  test('rejects malformed text', () => {
    formatError(() => signNote('', [s]), /newline/);
    formatError(() => signNote('no newline', [s]), /newline/);
    formatError(() => signNote('tab\there\n', [s]), /control/);
    formatError(() => signNote('cr\r\n', [s]), /control/);
    formatError(() => signNote('lone \ud800 surrogate\n', [s]), /UTF-8/);
    formatError(() => signNote('lone \udc00 surrogate\n', [s]), /UTF-8/);
  });

  test('rejects no signers, duplicate signers and invalid names', () => {
    formatError(() => signNote(PN_TEXT, []));
    formatError(() => signNote(PN_TEXT, [s, signerFromSkey(PN_SKEY)]), /duplicate/);
    formatError(() => signNote(PN_TEXT, [{ ...s, name: 'Peter Neumann' }]), /name/);
  });

  test('accepts astral characters', () => {
    const text = 'emoji \u{1f600} and \u00e9\n';
    assert.equal(openNote(signNote(text, [s]), [verifierFromVkey(PN_VKEY)]).text, text);
  });

  test('round-trips arbitrary valid texts (property)', () => {
    const v = verifierFromVkey(PN_VKEY);
    const line = fc.string({ unit: 'grapheme', maxLength: 30 }).filter((x) => noControl(x));
    fc.assert(
      fc.property(fc.array(line, { minLength: 1, maxLength: 6 }), (lines) => {
        const text = `${lines.join('\n')}\n`;
        const note = signNote(text, [s]);
        assert.equal(openNote(note, [v]).text, text);
        assert.equal(openNote(Buffer.from(note), [v]).text, text);
      }),
      { numRuns: 100 },
    );
  });
});

describe('keys', () => {
  test('generateKey round trip', () => {
    const { skey, vkey } = generateKey('example.com/log/1');
    assert.match(skey, /^PRIVATE\+KEY\+example\.com\/log\/1\+[0-9a-f]{8}\+A[A-Za-z0-9+/]{43}$/);
    assert.match(vkey, /^example\.com\/log\/1\+[0-9a-f]{8}\+A[A-Za-z0-9+/]{43}$/);
    const s = signerFromSkey(skey);
    const v = verifierFromVkey(vkey);
    assert.equal(s.vkey, vkey);
    assert.equal(v.vkey, vkey);
    assert.equal(s.keyId, v.keyId);
    assert.equal(skey.split('+')[3], vkey.split('+')[1]);
    assert.equal(openNote(signNote('hello\n', [s]), [v]).text, 'hello\n');
    assert.notEqual(generateKey('example.com/log/1').skey, skey);
    formatError(() => generateKey(''));
    formatError(() => generateKey('a b'));
    formatError(() => generateKey('a+b'));
  });

  test('a vkey with "+" inside its base64 splits on the first two "+" only', () => {
    const v = verifierFromVkey(PLUS_VKEY);
    assert.equal(v.name, 'TEST');
    assert.equal(v.keyId, 0x7997405c);
    assert.equal(v.vkey, PLUS_VKEY);
  });

  test('key names', () => {
    assert.ok(isValidKeyName('example.com/log'));
    assert.ok(isValidKeyName('\u00e9t\u00e9'));
    for (const bad of ['', 'a b', 'a+b', 'a\tb', 'a\nb', 'a\u00a0b', 'a\u2003b', 'a\u3000b', '\ud800']) {
      assert.ok(!isValidKeyName(bad), JSON.stringify(bad));
    }
  });

  test('malformed verifier keys', () => {
    const b64 = PN_VKEY.split('+')[2];
    const cases: Array<[string, RegExp]> = [
      ['', /expected/],
      ['PeterNeumann', /expected/],
      ['PeterNeumann+c74f20a3', /expected/],
      [`+c74f20a3+${b64}`, /name/],
      [`Peter Neumann+c74f20a3+${b64}`, /name/],
      [`PeterNeumann+c74f20a+${b64}`, /8 hex/],
      [`PeterNeumann+c74f20a3a+${b64}`, /8 hex/],
      [`PeterNeumann+c74f20g3+${b64}`, /8 hex/],
      [`PeterNeumann+-74f20a3+${b64}`, /8 hex/],
      [`PeterNeumann+c74f20a4+${b64}`, /does not match/],
      ['PeterNeumann+c74f20a3+', /base64/],
      [`PeterNeumann+c74f20a3+${b64.slice(0, -1)}`, /base64/],
      [`PeterNeumann+c74f20a3+${b64} `, /base64/],
      [`PeterNeumann+c74f20a3+${b64.replace('/', '_')}`, /base64/],
      [
        `PeterNeumann+c74f20a3+${Buffer.from([2, ...Buffer.from(b64, 'base64').subarray(1)]).toString('base64')}`,
        /type 0x02/,
      ],
      [`PeterNeumann+c74f20a3+${Buffer.from(b64, 'base64').subarray(0, 32).toString('base64')}`, /32 bytes/],
      [
        `PeterNeumann+c74f20a3+${Buffer.concat([Buffer.from(b64, 'base64'), Buffer.alloc(1)]).toString('base64')}`,
        /32 bytes/,
      ],
      [REMORA_VKEY, /type 0x04/],
    ];
    for (const [vkey, msg] of cases) formatError(() => verifierFromVkey(vkey), msg);
    // Upper-case hex is read (as Go does) and written back in lower case.
    assert.equal(verifierFromVkey(PN_VKEY.replace('c74f20a3', 'C74F20A3')).vkey, PN_VKEY);
  });

  test('malformed signer keys', () => {
    const rest = PN_SKEY.slice('PRIVATE+KEY+'.length);
    const b64 = PN_SKEY.split('+').slice(4).join('+');
    const seed = Buffer.from(b64, 'base64');
    const cases: Array<[string, RegExp]> = [
      [rest, /PRIVATE\+KEY/],
      [PN_VKEY, /PRIVATE\+KEY/],
      [`private+key+${rest}`, /PRIVATE\+KEY/],
      [`PRIVATE+KEYS+${rest}`, /PRIVATE\+KEY/],
      ['PRIVATE+KEY+PeterNeumann', /expected/],
      [`PRIVATE+KEY+PeterNeumann+c74f20+${b64}`, /8 hex/],
      [`PRIVATE+KEY+PeterNeumann+c74f20a4+${b64}`, /does not match/],
      [`PRIVATE+KEY+Peter+c74f20a3+${b64}`, /does not match/],
      [`PRIVATE+KEY+PeterNeumann+c74f20a3+${b64.slice(1)}`, /base64/],
      [
        `PRIVATE+KEY+PeterNeumann+c74f20a3+${Buffer.from([2, ...seed.subarray(1)]).toString('base64')}`,
        /type 0x02/,
      ],
      [`PRIVATE+KEY+PeterNeumann+c74f20a3+${seed.subarray(0, 32).toString('base64')}`, /32 bytes/],
    ];
    for (const [skey, msg] of cases) formatError(() => signerFromSkey(skey), msg);
  });
});

describe('cosignatures (tlog-cosignature v1)', () => {
  test('real witness cosignatures on a public checkpoint verify; other signature types are ignored', () => {
    const witnesses = WITNESS_VKEYS.map(cosignatureVerifierFromVkey);
    const log = verifierFromVkey(ARCHE_VKEY);
    const opened = openNote(ARCHE_NOTE, [log, ...witnesses]);
    assert.deepEqual(
      opened.verified.map((s) => s.name),
      [
        'arche2025h1.staging.ct.transparency.dev',
        'transparency.dev/DEV:witness-little-garden',
        'witness1.smartit.nu/witness1',
        'remora.n621.de',
      ],
    );
    // The type 0x05 signature of the log and the unknown witness.
    assert.deepEqual(
      opened.unverified.map((s) => s.name),
      ['arche2025h1.staging.ct.transparency.dev', 'witness.stagemole.eu'],
    );
    const remora = opened.verified[3];
    assert.equal(remora.keyId, 0xda77ade7);
    assert.equal(remora.signature.length, 72);
    assert.equal(cosignatureTimestamp(remora.signature), 0x6a122120);
    assert.equal(openNote(ARCHE_NOTE, [witnesses[0]]).verified.length, 1);
  });

  test('a changed checkpoint or timestamp fails', () => {
    const w = cosignatureVerifierFromVkey(REMORA_VKEY);
    rejects(() => openNote(ARCHE_NOTE.replace('1432088532', '1432088533'), [w]), 'note.bad-signature');
    // Line 4 is remora's; bytes 4..11 are the timestamp.
    rejects(() => openNote(flipSignatureBit(ARCHE_NOTE, 4, 11), [w]), 'note.bad-signature');
    rejects(() => openNote(flipSignatureBit(ARCHE_NOTE, 4, 4), [w]), 'note.bad-signature');
    rejects(() => openNote(flipSignatureBit(ARCHE_NOTE, 4, 50), [w]), 'note.bad-signature');
  });

  test('timestamp of a transparency-dev/formats test signature', () => {
    const raw = Buffer.from(
      'ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA==',
      'base64',
    );
    assert.equal(cosignatureTimestamp(raw.subarray(4)), 1727964367);
    formatError(() => cosignatureTimestamp(raw.subarray(5)));
    formatError(() => cosignatureTimestamp(Buffer.alloc(72, 0xff)), /range/);
  });

  test('a 0x01 vkey becomes a 0x04 cosignature verifier with the 0x04 key id', () => {
    const w = cosignatureVerifierFromVkey(PLUS_VKEY);
    const pub = Buffer.from(PLUS_VKEY.slice('TEST+7997405c+'.length), 'base64').subarray(1);
    assert.equal(w.keyId, keyId('TEST', pub, ALG_COSIGNATURE_V1));
    assert.equal(
      w.vkey,
      `TEST+${w.keyId.toString(16).padStart(8, '0')}+${Buffer.from([4, ...pub]).toString('base64')}`,
    );
    assert.equal(cosignatureVerifierFromVkey(w.vkey).keyId, w.keyId);
    assert.equal(cosignatureVerifierFromVkey(REMORA_VKEY).vkey, REMORA_VKEY);
    formatError(
      () => cosignatureVerifierFromVkey(REMORA_VKEY.replace('da77ade7', 'da77ade8')),
      /does not match/,
    );
    formatError(
      () => cosignatureVerifierFromVkey(PLUS_VKEY.replace('7997405c', '7997405d')),
      /does not match/,
    );
    formatError(
      () => cosignatureVerifierFromVkey('x+00000000+AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'),
      /0x02/,
    );
  });

  test('cosign and verify; the signature is timestamp || Ed25519 over the cosigned message', () => {
    const { skey, vkey } = generateKey('witness.example/w1');
    let clock = 1_700_000_000;
    const c = cosignerFromSkey(skey, () => clock);
    const w = cosignatureVerifierFromVkey(vkey);
    assert.equal(c.vkey, w.vkey);
    assert.equal(c.keyId, w.keyId);
    assert.notEqual(c.keyId, verifierFromVkey(vkey).keyId);
    const text =
      'example.com/log\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\nmap AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n';
    const note = signNote(text, [c]);
    const sig = openNote(note, [w]).verified[0].signature;
    assert.equal(cosignatureTimestamp(sig), 1_700_000_000);
    // The cosignature is an Ed25519 signature over the spec's message, checked with the plain key.
    const plain = verifierFromVkey(vkey);
    const message = Buffer.from(`cosignature/v1\ntime 1700000000\n${text}`);
    assert.ok(plain.verify(message, sig.subarray(8)));
    assert.ok(!plain.verify(Buffer.from(text), sig.subarray(8)));
    // Deterministic for a given time; a plain verifier of the same key does not accept the note.
    assert.deepEqual(c.signAt(Buffer.from(text), 1_700_000_000), sig);
    clock++;
    assert.notDeepEqual(c.sign(Buffer.from(text)), sig);
    rejects(() => openNote(note, [plain]), 'note.no-known-signature');
    // A 0x04 skey works too, with the same key id.
    const seed = Buffer.from(skey.split('+').slice(4).join('+'), 'base64').subarray(1);
    const skey4 = `PRIVATE+KEY+witness.example/w1+${c.keyId.toString(16).padStart(8, '0')}+${Buffer.from([4, ...seed]).toString('base64')}`;
    assert.equal(cosignerFromSkey(skey4).vkey, c.vkey);
    formatError(() => signerFromSkey(skey4), /0x04/);
    formatError(() => c.signAt(Buffer.from(text), -1));
    formatError(() => c.signAt(Buffer.from(text), 1.5));
  });

  test('timestamps above 2^63-1 are refused even when signed', () => {
    const { skey, vkey } = generateKey('w');
    const plain = signerFromSkey(skey);
    const w = cosignatureVerifierFromVkey(vkey);
    const text = Buffer.from('o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n');
    const forge = (t: bigint) => {
      const sig = Buffer.alloc(72);
      sig.writeBigUInt64BE(t, 0);
      plain.sign(Buffer.concat([Buffer.from(`cosignature/v1\ntime ${t}\n`), text])).copy(sig, 8);
      return sig;
    };
    assert.ok(w.verify(text, forge((1n << 63n) - 1n)));
    assert.ok(!w.verify(text, forge(1n << 63n)));
    assert.ok(!w.verify(text, forge((1n << 64n) - 1n)));
  });

  test('wrong lengths never verify', () => {
    const w = cosignatureVerifierFromVkey(REMORA_VKEY);
    assert.equal(w.verify(Buffer.from('x\n'), Buffer.alloc(64)), false);
    assert.equal(w.verify(Buffer.from('x\n'), Buffer.alloc(73)), false);
    assert.equal(w.verify(Buffer.from('x\n'), Buffer.alloc(72, 0xff)), false);
    const v = verifierFromVkey(PN_VKEY);
    assert.equal(v.verify(Buffer.from(PN_TEXT), Buffer.alloc(63)), false);
    assert.equal(v.verify(Buffer.from(PN_TEXT), Buffer.alloc(0)), false);
  });
});
