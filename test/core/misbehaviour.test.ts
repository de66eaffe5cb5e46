// Misbehaviour proofs (core/misbehaviour.ts), checked offline with only the log's vkey: forks at
// one size, trees that do not extend each other, map lines that lie about the entries. Trees and
// signatures come from independent code (test/witness/spec-log.ts) or from a real Log.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { parseCheckpoint, signCheckpoint } from '../../src/core/checkpoint.js';
import { encodeEntry } from '../../src/core/entry.js';
import { FormatError } from '../../src/core/errors.js';
import { leafHash, rootFromLeafHashes } from '../../src/core/merkle.js';
import {
  consistencyProof,
  formatProof,
  type MisbehaviourProof,
  mapMismatchProof,
  parseProof,
  proofFileName,
  rootsOfEntries,
  sameSizeProof,
  verifyProof,
} from '../../src/core/misbehaviour.js';
import { generateKey, signerFromSkey } from '../../src/core/note.js';
import { Log } from '../../src/log/log.js';
import { consistency, mth, SpecLog } from '../witness/spec-log.js';

const log = new SpecLog('example.com/proofs').grow(30);
// The same key signs a second history that leaves the first after 15 leaves.
const forkLeaves = [
  ...log.leaves.slice(0, 15),
  ...Array.from({ length: 15 }, (_, i) => Buffer.from(`fork ${i}`)),
];
const forkNote = (size: number) => log.checkpoint(size, { root: mth(forkLeaves.slice(0, size)) });
const vkey = log.key.vkey;

/** The verdict on `p` after a round trip through its file form. */
function verdict(p: MisbehaviourProof, key = vkey) {
  return verifyProof(parseProof(formatProof(p)), key);
}

function notProven(p: MisbehaviourProof, reason: RegExp, key = vkey): void {
  const v = verdict(p, key);
  assert.equal(v.proven, false, JSON.stringify(v));
  if (!v.proven) assert.match(v.reason, reason);
}

test('two signed trees of one size: proven with only the log key, one name for the pair', () => {
  const p = sameSizeProof(vkey, log.checkpoint(20), forkNote(20), { observer: 'test' });
  const v = verdict(p);
  assert.equal(v.proven, true, JSON.stringify(v));
  if (v.proven) assert.match(v.what, /signed two different trees of size 20/);
  const swapped = sameSizeProof(vkey, forkNote(20), log.checkpoint(20), { observed: 'later' });
  assert.equal(
    proofFileName(p),
    proofFileName(swapped),
    'named by the pair, not who saw it or in what order',
  );
  assert.match(proofFileName(p), /^same-size-different-root-[0-9a-f]{24}\.json$/);
  // another C2SP log's extension lines need not follow Trustix's rules for its map line
  const foreign = log.checkpoint(20, { extensions: ['map of the world', 'x'] });
  assert.equal(verdict(sameSizeProof(vkey, foreign, forkNote(20))).proven, true);
  // a witness's cosignature on one of the notes does not make it another contradiction
  const cosigned = log.checkpoint(20, { signers: [log.key, new SpecLog('w.example').key] });
  assert.equal(proofFileName(sameSizeProof(vkey, cosigned, forkNote(20))), proofFileName(p));

  notProven(sameSizeProof(vkey, log.checkpoint(20), log.checkpoint(20)), /same roots/);
  notProven(sameSizeProof(vkey, log.checkpoint(20), forkNote(21)), /not one size/);
  // A record cannot bring its own key: notes by another key with the log's name prove nothing.
  const other = new SpecLog(log.origin).grow(30);
  const framed = sameSizeProof(other.key.vkey, other.checkpoint(20), forkNote(20));
  notProven(framed, /not signed by the log's key/);
  // Neither can it claim another origin.
  notProven(
    { ...p, origin: 'example.com/elsewhere' },
    /is for example\.com\/proofs, not example\.com\/elsewhere/,
  );
});

test("a newer tree that does not extend the older one: proven by the log's own proof hashes", () => {
  // The fork's proof from 20 to 30 reproduces the fork's root at 30 and its own prefix at 20.
  const p = consistencyProof(vkey, log.checkpoint(20), forkNote(30), consistency(20, forkLeaves));
  const v = verdict(p);
  assert.equal(v.proven, true, JSON.stringify(v));
  if (v.proven) assert.match(v.what, /size 30 that does not extend its tree of size 20/);

  // The honest proof shows consistency; hashes that lead to neither root prove nothing.
  notProven(consistencyProof(vkey, log.checkpoint(20), log.checkpoint(30), log.proof(20, 30)), /extends/);
  const garbage = consistency(20, forkLeaves).map((h, i) => (i === 0 ? Buffer.alloc(32, 7) : h));
  notProven(consistencyProof(vkey, log.checkpoint(20), forkNote(30), garbage), /bad proof, not a fork/);
  notProven(consistencyProof(vkey, forkNote(30), log.checkpoint(20), []), /older size < newer size/);

  // From a power-of-two size the RFC proof omits the older root: alone it leads to neither root;
  // with the newer tree's own root at that size first, it proves the fork.
  const rfc = consistency(16, forkLeaves);
  notProven(consistencyProof(vkey, log.checkpoint(16), forkNote(30), rfc), /bad proof/);
  const seeded = [mth(forkLeaves.slice(0, 16)), ...rfc];
  assert.equal(verdict(consistencyProof(vkey, log.checkpoint(16), forkNote(30), seeded)).proven, true);
});

test('records witnesses wrote in the v1 layout are still read', () => {
  const v1 = {
    type: 'trustix-misbehaviour/v1',
    kind: 'same-size-different-root',
    origin: log.origin,
    vkeys: [vkey],
    accepted: log.checkpoint(20),
    refused: forkNote(20),
    proof: [],
    observer: 'witness',
    observed: new Date(0).toISOString(),
  };
  const p = parseProof(JSON.stringify(v1));
  assert.deepEqual(p.checkpoints, [v1.accepted, v1.refused]);
  assert.equal(verifyProof(p, vkey).proven, true);
});

test('malformed records are FormatErrors', () => {
  const good = JSON.parse(formatProof(sameSizeProof(vkey, log.checkpoint(20), forkNote(20))));
  for (const text of [
    'nope',
    '[]',
    '{"type":"other"}',
    JSON.stringify({ ...good, kind: 'x' }),
    JSON.stringify({ ...good, checkpoints: [good.checkpoints[0]] }),
    JSON.stringify({ ...good, kind: 'consistency-proof-failed' }),
  ]) {
    assert.throws(() => parseProof(text), FormatError, text);
  }
  assert.throws(() => verifyProof(parseProof(JSON.stringify(good)), 'not a key'), FormatError);
});

test('the log root of the entries is the RFC 6962 root at every size', () => {
  const all = Array.from({ length: 21 }, (_, i) =>
    encodeEntry({
      protocol: 'nix',
      key: Buffer.from(`k${i}`),
      value: Buffer.alloc(32, i),
      metadata: Buffer.alloc(0),
    }),
  );
  for (let n = 0; n <= all.length; n++) {
    const some = all.slice(0, n);
    assert.deepEqual(
      rootsOfEntries(some).logRoot,
      rootFromLeafHashes(some.map((e) => leafHash(e))),
      `size ${n}`,
    );
  }
});

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

test('a map line that is not the index of the entries: proven from the entries alone', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'trustix-proofs-'));
  dirs.push(dir);
  const { skey, vkey: logVkey } = generateKey('example.com/map-log');
  const real = await Log.create(dir, 'example.com/map-log', { skey, batchDelayMs: 1 });
  try {
    const entry = (k: string, v: number) => ({
      protocol: 'nix',
      key: Buffer.from(k),
      value: Buffer.alloc(32, v),
      metadata: Buffer.alloc(0),
    });
    // A key given twice: the index keeps the later entry.
    const receipts = await real.submit([entry('a', 1), entry('b', 2), entry('c', 3), entry('a', 4)]);
    const honest = receipts[0].checkpoint;
    const entries = Array.from({ length: 4 }, (_, i) => real.entry(i));
    assert.deepEqual(entries[3], encodeEntry(entry('a', 4)));
    notProven(mapMismatchProof(logVkey, honest, entries), /signed map line: no contradiction/, logVkey);

    // The log signs the same tree with the map root of another index.
    const cp = parseCheckpoint(honest.slice(0, honest.indexOf('\n\n') + 1));
    const lying = signCheckpoint({ ...cp, mapRoot: Buffer.alloc(32, 9) }, signerFromSkey(skey));
    const p = mapMismatchProof(logVkey, lying, entries, { observer: 'mirror' });
    const v = verdict(p, logVkey);
    assert.equal(v.proven, true, JSON.stringify(v));
    if (v.proven) assert.match(v.what, /map line .* is not the index of its entries/);
    assert.match(proofFileName(p), /^map-mismatch-[0-9a-f]{24}\.json$/);

    // Entries other than the log's do not give its signed root; too few do not match its size.
    const swapped = [entries[1], entries[0], entries[2], entries[3]];
    notProven(mapMismatchProof(logVkey, lying, swapped), /log root/, logVkey);
    notProven(mapMismatchProof(logVkey, lying, entries.slice(0, 3)), /3 entries, the checkpoint 4/, logVkey);
    // A checkpoint without a map line has nothing to contradict.
    const noMap = signCheckpoint({ ...cp, mapRoot: undefined }, signerFromSkey(skey));
    notProven(mapMismatchProof(logVkey, noMap, entries), /no map line/, logVkey);
  } finally {
    await real.close();
  }
});
