import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  decodeEntry,
  type Entry,
  encodeEntry,
  entryLayout,
  indexPath,
  indexPathOfEncodedInto,
  indexValue,
  MAX_ENTRY_SIZE,
  parseIndexValue,
} from '../../src/core/entry.js';
import { FormatError } from '../../src/core/errors.js';
import { sha256 } from '../../src/core/hash.js';
import { LEAF_HASH_PREFIX, leafHash, leafHashInto } from '../../src/core/merkle.js';

// Vectors computed independently (Python hashlib/struct), also listed in docs/entry-format.md.
const NAR = Buffer.from('c1a3d0ab649821db54ec4dc668c63489ea17738ca1727ed2638a230ede605e3f', 'hex');
const KEY = Buffer.from('0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k');
const VECTORS: Array<{ entry: Entry; hex: string; leaf: string }> = [
  {
    entry: { protocol: 'nix', key: KEY, value: NAR, metadata: Buffer.alloc(0) },
    hex: '01036e69780020306338693277773264776b35686e38647977647a78366c306c727a307362346b20c1a3d0ab649821db54ec4dc668c63489ea17738ca1727ed2638a230ede605e3f0000',
    leaf: '51f9367941f38c7d5a755da3d62a8aa355e7f15020ffac48e121793d37111c16',
  },
  {
    entry: { protocol: 'nix', key: KEY, value: NAR, metadata: Buffer.from('{"name":"hello-2.12"}') },
    hex: '01036e69780020306338693277773264776b35686e38647977647a78366c306c727a307362346b20c1a3d0ab649821db54ec4dc668c63489ea17738ca1727ed2638a230ede605e3f00157b226e616d65223a2268656c6c6f2d322e3132227d',
    leaf: 'c34be032611df4bce41caf03d80f2b7d887c8648f683198cc365454d833596f5',
  },
];

describe('entry encoding', () => {
  test('vectors encode, decode and hash as documented', () => {
    for (const v of VECTORS) {
      const enc = encodeEntry(v.entry);
      assert.equal(enc.toString('hex'), v.hex);
      assert.equal(leafHash(enc).toString('hex'), v.leaf);
      // with headroom: the same bytes after it, so 0x00 in front hashes to the leaf hash
      const framed = encodeEntry(v.entry, 1);
      assert.equal(framed.subarray(1).toString('hex'), v.hex);
      framed[0] = LEAF_HASH_PREFIX;
      assert.equal(sha256(framed).toString('hex'), v.leaf);
      const back = decodeEntry(enc);
      assert.equal(back.protocol, v.entry.protocol);
      assert.deepEqual(Buffer.from(back.key), v.entry.key);
      assert.deepEqual(Buffer.from(back.value), v.entry.value);
      assert.deepEqual(Buffer.from(back.metadata), v.entry.metadata);
    }
  });

  test('index path is SHA-256(len(protocol) || protocol || key)', () => {
    assert.equal(
      indexPath('nix', KEY).toString('hex'),
      'fc2b5f834a459bed81f2b6ed2c9ea3a078b30ebf6af3a48f49cabaa962870e5b',
    );
    // the length prefix keeps ("ni", "x...") apart from ("nix", "...")
    assert.notDeepEqual(indexPath('ni', Buffer.from('xabc')), indexPath('nix', Buffer.from('abc')));
  });

  test('index value round trip', () => {
    const leaf = Buffer.alloc(32, 7);
    const v = indexValue(123456789012, leaf);
    assert.equal(v.length, 40);
    assert.deepEqual(parseIndexValue(v), { logIndex: 123456789012, leafHash: leaf });
    assert.equal(v.subarray(0, 8).toString('hex'), '0000001cbe991a14');
    for (const i of [0, 1, 2 ** 32 - 1, 2 ** 32, Number.MAX_SAFE_INTEGER]) {
      assert.equal(parseIndexValue(indexValue(i, leaf)).logIndex, i);
    }
    assert.throws(() => parseIndexValue(v.subarray(1)), FormatError);
  });

  test('rejects malformed encodings', () => {
    const good = Buffer.from(VECTORS[1].hex, 'hex');
    for (let cut = 0; cut < good.length; cut++) {
      assert.throws(() => decodeEntry(good.subarray(0, cut)), FormatError, `truncated at ${cut}`);
    }
    assert.throws(() => decodeEntry(Buffer.concat([good, Buffer.from([0])])), FormatError);
    const badVersion = Buffer.from(good);
    badVersion[0] = 2;
    assert.throws(() => decodeEntry(badVersion), /version/);
  });

  test('rejects out-of-range fields with a clear message', () => {
    const base = VECTORS[0].entry;
    assert.throws(() => encodeEntry({ ...base, protocol: '' }), FormatError);
    assert.throws(() => encodeEntry({ ...base, protocol: 'has space' }), FormatError);
    assert.throws(() => encodeEntry({ ...base, protocol: 'x'.repeat(65) }), FormatError);
    assert.throws(() => encodeEntry({ ...base, key: Buffer.alloc(0) }), /key must be/);
    assert.throws(() => encodeEntry({ ...base, key: Buffer.alloc(1025) }), /key must be/);
    assert.throws(() => encodeEntry({ ...base, value: Buffer.alloc(65) }), /value must be/);
    assert.throws(() => encodeEntry({ ...base, value: Buffer.alloc(0) }), /value must be/);
    assert.throws(() => encodeEntry({ ...base, metadata: Buffer.alloc(MAX_ENTRY_SIZE) }), /limit/);
    const max = encodeEntry({ ...base, metadata: Buffer.alloc(MAX_ENTRY_SIZE - 7 - 3 - KEY.length - 32) });
    assert.equal(max.length, MAX_ENTRY_SIZE);
  });

  test('the index path and the leaf hash of an encoding, written in place, are those of its fields', () => {
    const out = Buffer.alloc(96, 0xee);
    for (const v of VECTORS) {
      const enc = encodeEntry(v.entry);
      indexPathOfEncodedInto(enc, entryLayout(enc), out, 32);
      assert.deepEqual(out.subarray(32, 64), indexPath(v.entry.protocol, v.entry.key));
      leafHashInto(enc, out, 64);
      assert.equal(out.subarray(64).toString('hex'), v.leaf);
      // nothing around the 32 bytes written
      assert.deepEqual(out.subarray(0, 32), Buffer.alloc(32, 0xee));
    }
    // another protocol and key length in turn (the hash input is a reused scratch)
    const other = encodeEntry({
      protocol: 'go',
      key: Buffer.from('k'),
      value: NAR,
      metadata: Buffer.alloc(0),
    });
    indexPathOfEncodedInto(other, entryLayout(other), out, 0);
    assert.deepEqual(out.subarray(0, 32), indexPath('go', Buffer.from('k')));
  });

  test('decoding refuses every field that encoding refuses, with the same message', () => {
    // encoded by hand: encodeEntry would refuse these
    const raw = (protocol: Buffer, key: Buffer, value: Buffer, metadata: Buffer) => {
      const kl = Buffer.alloc(2);
      kl.writeUInt16BE(key.length);
      const ml = Buffer.alloc(2);
      ml.writeUInt16BE(metadata.length);
      const head = Buffer.from([1, protocol.length]);
      return Buffer.concat([head, protocol, kl, key, Buffer.from([value.length]), value, ml, metadata]);
    };
    const p = Buffer.from('nix');
    const none = Buffer.alloc(0);
    const cases: Array<[Buffer, RegExp]> = [
      [raw(none, KEY, NAR, none), /protocol must be/],
      [raw(Buffer.from('has space'), KEY, NAR, none), /protocol must be/],
      [raw(Buffer.from([0x6e, 0x7f]), KEY, NAR, none), /protocol must be/],
      [raw(Buffer.from([0x6e, 0x80]), KEY, NAR, none), /protocol must be/],
      [raw(Buffer.alloc(65, 0x78), KEY, NAR, none), /protocol must be/],
      [raw(p, none, NAR, none), /key must be 1-1024 bytes, got 0/],
      [raw(p, Buffer.alloc(1025, 0x61), NAR, none), /key must be 1-1024 bytes, got 1025/],
      [raw(p, KEY, none, none), /value must be 1-64 bytes, got 0/],
      [raw(p, KEY, Buffer.alloc(65), none), /value must be 1-64 bytes, got 65/],
      [raw(p, KEY, NAR, Buffer.alloc(MAX_ENTRY_SIZE - 7 - 3 - KEY.length - 32 + 1)), /the limit is 65535/],
    ];
    for (const [enc, message] of cases) {
      assert.throws(
        () => decodeEntry(enc),
        (e: Error) => e instanceof FormatError && message.test(e.message),
      );
      assert.throws(() => entryLayout(enc), message);
    }
    // the largest valid one still decodes
    const max = raw(p, KEY, NAR, Buffer.alloc(MAX_ENTRY_SIZE - 7 - 3 - KEY.length - 32));
    assert.equal(decodeEntry(max).metadata.length, max.length - 7 - 3 - KEY.length - 32);
  });
});
