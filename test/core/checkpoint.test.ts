import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  type Checkpoint,
  formatCheckpoint,
  openCheckpoint,
  parseCheckpoint,
  signCheckpoint,
} from '../../src/core/checkpoint.js';
import { FormatError, VerificationError } from '../../src/core/errors.js';
import { sha256 } from '../../src/core/hash.js';
import { generateKey, signerFromSkey, signNote, verifierFromVkey } from '../../src/core/note.js';

const TESSERA_VKEY = 'example.com/log/testdata+33d7b496+AeHTu4Q3hEIMHNqc6fASMsq3rKNx280NI+oO5xCFkkSx';
const TESSERA_SKEY =
  'PRIVATE+KEY+example.com/log/testdata+33d7b496+AeymY/SZAX0jZcJ8enZ5FY1Dz+wTML2yWSkK+9DSF3eg';
const TESSERA_DIR = new URL('../../../shared/testdata/tessera-log/', import.meta.url);
const ORIGIN = 'example.com/log/testdata';

const ROOT = Buffer.from('rKbDipCvhuX1GZ7g5BBe8sA6BbJ7ja/1nk427v383cs=', 'base64');
const MAP = Buffer.alloc(32, 0xab);
const MAP_LINE = `map ${MAP.toString('base64')}`;
const BODY = `example.com/log\n15\n${ROOT.toString('base64')}\n`;

function tessera(file: string): string {
  return readFileSync(new URL(file, TESSERA_DIR), 'utf8');
}

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

describe('Tessera checkpoints', () => {
  const verifier = verifierFromVkey(TESSERA_VKEY);
  const signer = signerFromSkey(TESSERA_SKEY);

  for (let size = 0; size <= 15; size++) {
    test(`checkpoint.${size} parses, opens and re-signs byte for byte`, () => {
      const note = tessera(`checkpoint.${size}`);
      const { checkpoint, note: returned } = openCheckpoint(note, verifier);
      assert.equal(returned, note);
      assert.equal(checkpoint.origin, ORIGIN);
      assert.equal(checkpoint.size, size);
      assert.equal(checkpoint.rootHash.length, 32);
      assert.equal(checkpoint.mapRoot, undefined);
      assert.deepEqual(checkpoint.extensions, []);
      assert.equal(signCheckpoint(checkpoint, signer), note);
      assert.equal(formatCheckpoint(checkpoint), note.slice(0, note.indexOf('\n\n') + 1));
    });
  }

  test('the empty tree has root SHA-256("") and the latest checkpoint is size 15', () => {
    const empty = openCheckpoint(tessera('checkpoint.0'), verifier).checkpoint;
    assert.deepEqual(empty.rootHash, sha256(Buffer.alloc(0)));
    const latest = openCheckpoint(tessera('checkpoint'), verifier).checkpoint;
    assert.equal(latest.size, 15);
    assert.deepEqual(latest.rootHash, ROOT);
    assert.equal(tessera('checkpoint'), tessera('checkpoint.15'));
  });

  test('bytes are accepted too', () => {
    const bytes = readFileSync(new URL('checkpoint.3', TESSERA_DIR));
    const { checkpoint, note } = openCheckpoint(bytes, verifier);
    assert.equal(checkpoint.size, 3);
    assert.equal(note, bytes.toString('utf8'));
  });
});

describe('formatCheckpoint / parseCheckpoint', () => {
  test('with a map line and other extensions: map line first, others verbatim', () => {
    const cp: Checkpoint = {
      origin: 'example.com/log',
      size: 15,
      rootHash: ROOT,
      mapRoot: MAP,
      extensions: ['x y', 'z'],
    };
    const text = formatCheckpoint(cp);
    assert.equal(text, `${BODY}${MAP_LINE}\nx y\nz\n`);
    assert.deepEqual(parseCheckpoint(text), cp);
  });

  test('without map line and extensions', () => {
    const cp: Checkpoint = { origin: 'example.com/log', size: 15, rootHash: ROOT, extensions: [] };
    assert.equal(formatCheckpoint(cp), BODY);
    const parsed = parseCheckpoint(BODY);
    assert.deepEqual(parsed, cp);
    assert.ok(!('mapRoot' in parsed));
  });

  test('a foreign extension line without map line', () => {
    const parsed = parseCheckpoint(`${BODY}mapping\nmap\n`);
    assert.equal(parsed.mapRoot, undefined);
    assert.deepEqual(parsed.extensions, ['mapping', 'map']);
  });

  test('sizes: 0 and 2^53-1 accepted', () => {
    for (const size of [0, 1, 10, Number.MAX_SAFE_INTEGER]) {
      const text = `o\n${size}\n${ROOT.toString('base64')}\n`;
      assert.equal(parseCheckpoint(text).size, size);
      assert.equal(formatCheckpoint(parseCheckpoint(text)), text);
    }
  });

  test('round trip (property)', () => {
    const line = fc
      .string({ unit: 'grapheme', minLength: 1, maxLength: 20 })
      .filter((x) => noControl(x) && !x.startsWith('map '));
    const hash = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b));
    fc.assert(
      fc.property(
        line,
        fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
        hash,
        fc.option(hash, { nil: undefined }),
        fc.array(line, { maxLength: 3 }),
        (origin, size, rootHash, mapRoot, extensions) => {
          const cp: Checkpoint = { origin, size, rootHash, extensions };
          if (mapRoot !== undefined) cp.mapRoot = mapRoot;
          const text = formatCheckpoint(cp);
          assert.deepEqual(parseCheckpoint(text), cp);
          assert.equal(formatCheckpoint(parseCheckpoint(text)), text);
        },
      ),
      { numRuns: 200 },
    );
  });

  test('parse rejects malformed bodies', () => {
    const root = ROOT.toString('base64');
    const short = ROOT.subarray(0, 31).toString('base64');
    const long = Buffer.concat([ROOT, Buffer.alloc(1)]).toString('base64');
    const bad = [
      '',
      '\n',
      'o\n15\n', // no root
      'o\n15', // no newline, no root
      `o\n15\n${root}`, // no final newline
      `o\n15\n${root}\n\n`, // empty extension line
      `o\n15\n${root}\n\nx\n`, // empty line before an extension
      `\n15\n${root}\n`, // empty origin
      `o\n\n${root}\n`, // empty size
      `o\n015\n${root}\n`,
      `o\n00\n${root}\n`,
      `o\n+15\n${root}\n`,
      `o\n-1\n${root}\n`,
      `o\n 15\n${root}\n`,
      `o\n15 \n${root}\n`,
      `o\n1.5\n${root}\n`,
      `o\n1e3\n${root}\n`,
      `o\n0x10\n${root}\n`,
      `o\n\u0661\n${root}\n`, // Arabic-Indic digit one
      `o\n9007199254740992\n${root}\n`, // 2^53
      `o\n99999999999999999999\n${root}\n`,
      `o\n15\n${short}\n`,
      `o\n15\n${long}\n`,
      `o\n15\n${root.slice(0, -1)}\n`, // missing padding
      `o\n15\n${root.replace('/', '_')}\n`, // base64url
      `o\n15\n ${root}\n`,
      `o\n15\n${ROOT.toString('hex')}\n`,
      `o\r\n15\n${root}\n`,
      `o\t\n15\n${root}\n`,
      `\ud800\n15\n${root}\n`,
      `o\n15\n${root}\n${MAP_LINE}\n${MAP_LINE}\n`, // duplicate map line
      `o\n15\n${root}\nx\n${MAP_LINE}\n`, // map line not first
      `o\n15\n${root}\nmap \n`,
      `o\n15\n${root}\nmap ${short}\n`,
      `o\n15\n${root}\nmap ${long}\n`,
      `o\n15\n${root}\nmap  ${MAP.toString('base64')}\n`,
      `o\n15\n${root}\nmap ${MAP.toString('base64')} \n`,
      `o\n15\n${root}\nx\x00\n`,
    ];
    for (const text of bad) {
      assert.throws(() => parseCheckpoint(text), FormatError, JSON.stringify(text));
    }
  });

  test('format rejects what it could not write back', () => {
    const base: Checkpoint = { origin: 'o', size: 1, rootHash: ROOT, extensions: [] };
    const bad: Checkpoint[] = [
      { ...base, origin: '' },
      { ...base, origin: 'a\nb' },
      { ...base, origin: 'a\tb' },
      { ...base, origin: '\udc00' },
      { ...base, size: -1 },
      { ...base, size: 1.5 },
      { ...base, size: Number.NaN },
      { ...base, size: 2 ** 53 },
      { ...base, rootHash: ROOT.subarray(1) },
      { ...base, mapRoot: Buffer.alloc(33) },
      { ...base, extensions: [''] },
      { ...base, extensions: ['a\nb'] },
      { ...base, extensions: [MAP_LINE] },
    ];
    for (const cp of bad) assert.throws(() => formatCheckpoint(cp), FormatError, JSON.stringify(cp));
  });
});

describe('openCheckpoint', () => {
  const { skey, vkey } = generateKey('example.com/log');
  const signer = signerFromSkey(skey);
  const verifier = verifierFromVkey(vkey);
  const cp: Checkpoint = {
    origin: 'example.com/log',
    size: 15,
    rootHash: ROOT,
    mapRoot: MAP,
    extensions: [],
  };

  test('round trip with a map line', () => {
    const note = signCheckpoint(cp, signer);
    assert.ok(note.startsWith(`${BODY}${MAP_LINE}\n\n\u2014 example.com/log `));
    assert.deepEqual(openCheckpoint(note, verifier).checkpoint, cp);
  });

  test('origin must match the key name, or the given origin', () => {
    const other: Checkpoint = { ...cp, origin: 'example.com/other' };
    const note = signCheckpoint(other, signer);
    rejects(() => openCheckpoint(note, verifier), 'checkpoint.origin-mismatch');
    assert.equal(
      openCheckpoint(note, verifier, { origin: 'example.com/other' }).checkpoint.origin,
      'example.com/other',
    );
    rejects(
      () => openCheckpoint(signCheckpoint(cp, signer), verifier, { origin: 'x' }),
      'checkpoint.origin-mismatch',
    );
  });

  test('a valid signature over a malformed body', () => {
    const note = signNote(`example.com/log\n015\n${ROOT.toString('base64')}\n`, [signer]);
    rejects(() => openCheckpoint(note, verifier), 'checkpoint.malformed');
  });

  test('signature failures come from openNote', () => {
    const note = signCheckpoint(cp, signer);
    rejects(() => openCheckpoint(note.replace('\n15\n', '\n16\n'), verifier), 'note.bad-signature');
    rejects(() => openCheckpoint(note, verifierFromVkey(TESSERA_VKEY)), 'note.no-known-signature');
    rejects(() => openCheckpoint(note.replace('\n\n', '\n'), verifier), 'note.malformed');
    rejects(() => openCheckpoint(tessera('checkpoint.5'), verifier), 'note.no-known-signature');
  });
});
