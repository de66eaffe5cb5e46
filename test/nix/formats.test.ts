// Nix formats without the real Nix: base32, store paths, NAR, narinfo, keys.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import { FormatError, VerificationError } from '../../src/core/errors.js';
import { decodeNix32, encodeNix32, isNix32, nix32Length } from '../../src/nix/base32.js';
import {
  formatNixPublicKey,
  formatNixSecretKey,
  generateNixSecretKey,
  parseNixPublicKey,
  parseNixSecretKey,
  signFingerprint,
  signNarInfo,
  validNarInfoSigners,
  verifyFingerprint,
  verifyNarInfo,
} from '../../src/nix/keys.js';
import { narBytes, narHash, narStream } from '../../src/nix/nar.js';
import { formatNarInfo, type NarInfo, narInfoFingerprint, parseNarInfo } from '../../src/nix/narinfo.js';
import { isStorePath, parseStorePath, parseStorePathBaseName } from '../../src/nix/store-path.js';

const tmp = mkdtempSync(join(tmpdir(), 'trustix-nix-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('nix32', () => {
  test('known values (from nix hash to-base32)', () => {
    const one = Buffer.alloc(32);
    one[31] = 1;
    assert.equal(encodeNix32(one), '0080000000000000000000000000000000000000000000000000');
    const ff = Buffer.alloc(32);
    ff[0] = 0xff;
    assert.equal(encodeNix32(ff), '000000000000000000000000000000000000000000000000007z');
    const sha1 = Buffer.from('0102030405060708090a0b0c0d0e0f1011121314', 'hex');
    assert.equal(encodeNix32(sha1), '2h9i448h1w70s30b184hh1q60l2060h1');
    assert.deepEqual(decodeNix32('2h9i448h1w70s30b184hh1q60l2060h1', 20), sha1);
    assert.equal(encodeNix32(Buffer.alloc(0)), '');
  });

  test('round trips for every length', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 70 }), (bytes) => {
        const s = encodeNix32(bytes);
        assert.equal(s.length, nix32Length(bytes.length));
        assert.deepEqual(decodeNix32(s, bytes.length), Buffer.from(bytes));
        assert.deepEqual(decodeNix32(s), Buffer.from(bytes));
      }),
    );
  });

  test('rejects bad characters, lengths and stray high bits', () => {
    const good = encodeNix32(randomBytes(32));
    for (const c of ['e', 'o', 'u', 't', 'A', ' ', '\u00e9']) {
      assert.throws(() => decodeNix32(c + good.slice(1), 32), FormatError);
    }
    assert.throws(() => decodeNix32(good.slice(1), 32), FormatError);
    assert.throws(() => decodeNix32(good + '0', 32), FormatError);
    assert.throws(() => decodeNix32('0'), FormatError);
    // 52 characters carry 260 bits: the first one must be 0 or 1.
    assert.throws(() => decodeNix32('2' + good.slice(1), 32), FormatError);
    assert.equal(isNix32('1' + good.slice(1), 32), true);
    assert.equal(isNix32('z' + good.slice(1), 32), false);
  });
});

describe('store paths', () => {
  const hash = '85abj5vfq1h9m2x97ibhg61kcj88kk0h';
  test('parses', () => {
    const p = parseStorePath(`/nix/store/${hash}-hello-2.12`);
    assert.deepEqual(p, {
      hashPart: hash,
      name: 'hello-2.12',
      baseName: `${hash}-hello-2.12`,
      path: `/nix/store/${hash}-hello-2.12`,
    });
    assert.equal(parseStorePathBaseName(`${hash}-x?=+_-.y`).name, 'x?=+_-.y');
    // Nix 2.8 accepts names starting with a dot.
    assert.equal(isStorePath(`/nix/store/${hash}-.foo`), true);
    assert.equal(isStorePath(`/nix/store/${hash}-${'a'.repeat(211)}`), true);
  });

  test('rejects', () => {
    const bad = [
      `/nix/store/${hash}`,
      `/nix/store/${hash}-`,
      `/nix/store/${hash}_x`,
      `/nix/store/${hash}-a b`,
      `/nix/store/${hash}-a/b`,
      `/nix/store/${hash}-a/`,
      `/nix/store/${hash}-${'a'.repeat(212)}`,
      `/nix/store/${hash}-caf\u00e9`,
      `/nix/store/${hash.slice(1)}-x`,
      `/nix/store/e${hash.slice(1)}-x`,
      `/nix/store/${hash.toUpperCase()}-x`,
      `/gnu/store/${hash}-x`,
      `nix/store/${hash}-x`,
      `/nix/store//${hash}-x`,
    ];
    for (const p of bad) assert.throws(() => parseStorePath(p), FormatError, p);
  });
});

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}
function tok(s: string | Buffer): Buffer {
  const b = Buffer.from(s);
  return Buffer.concat([u64(b.length), b, Buffer.alloc((8 - (b.length % 8)) % 8)]);
}
function toks(...xs: Array<string | Buffer>): Buffer {
  return Buffer.concat(xs.map(tok));
}

describe('NAR', () => {
  test('a regular file, byte for byte', async () => {
    const f = join(tmp, 'seven');
    writeFileSync(f, 'abcdefg');
    chmodSync(f, 0o644);
    const expected = toks('nix-archive-1', '(', 'type', 'regular', 'contents', 'abcdefg', ')');
    assert.deepEqual(await narBytes(f), expected);
    const h = await narHash(f);
    assert.equal(h.size, expected.length);
  });

  test('directory: executable, symlink, empty file, entries sorted by bytes', async () => {
    const d = join(tmp, 'tree');
    mkdirSync(join(d, 'sub'), { recursive: true });
    writeFileSync(join(d, 'sub', 'run'), '#!/bin/sh\n');
    chmodSync(join(d, 'sub', 'run'), 0o755);
    writeFileSync(join(d, 'empty'), '');
    chmodSync(join(d, 'empty'), 0o600);
    symlinkSync('../target', join(d, 'link'));
    // UTF-16 order puts U+10000 first; byte order (EF.. < F0..) puts U+FF61 first.
    writeFileSync(join(d, '\u{10000}'), 'b');
    writeFileSync(join(d, '\u{ff61}'), 'a');
    for (const n of ['\u{10000}', '\u{ff61}']) chmodSync(join(d, n), 0o644);
    const entry = (name: string, ...node: Array<string | Buffer>) =>
      toks('entry', '(', 'name', name, 'node', '(', ...node, ')', ')');
    const expected = Buffer.concat([
      toks('nix-archive-1', '(', 'type', 'directory'),
      entry('empty', 'type', 'regular', 'contents', ''),
      entry('link', 'type', 'symlink', 'target', '../target'),
      toks('entry', '(', 'name', 'sub', 'node', '(', 'type', 'directory'),
      entry('run', 'type', 'regular', 'executable', '', 'contents', '#!/bin/sh\n'),
      toks(')', ')'),
      entry('\u{ff61}', 'type', 'regular', 'contents', 'a'),
      entry('\u{10000}', 'type', 'regular', 'contents', 'b'),
      toks(')'),
    ]);
    assert.deepEqual(await narBytes(d), expected);
  });

  test('a symlink at the root is archived, not followed', async () => {
    const l = join(tmp, 'rootlink');
    symlinkSync('/nowhere/at/all', l);
    assert.deepEqual(
      await narBytes(l),
      toks('nix-archive-1', '(', 'type', 'symlink', 'target', '/nowhere/at/all', ')'),
    );
  });

  test('large files stream in bounded chunks and hash like the whole', async () => {
    const f = join(tmp, 'big');
    const data = randomBytes(700_001);
    writeFileSync(f, data);
    chmodSync(f, 0o755);
    let max = 0;
    const parts: Buffer[] = [];
    for await (const c of narStream(f)) {
      max = Math.max(max, c.length);
      parts.push(c);
    }
    assert.ok(max <= 256 * 1024, `largest chunk ${max}`);
    const whole = Buffer.concat(parts);
    assert.deepEqual(
      whole,
      toks('nix-archive-1', '(', 'type', 'regular', 'executable', '', 'contents', data, ')'),
    );
    const h = await narHash(f);
    assert.equal(h.size, whole.length);
    assert.deepEqual(h.hash, (await import('node:crypto')).createHash('sha256').update(whole).digest());
  });

  test('sockets and FIFOs are FormatErrors', async () => {
    const d = join(tmp, 'special');
    mkdirSync(d);
    const fifo = join(d, 'fifo');
    execFileSync('mkfifo', [fifo]);
    await assert.rejects(narHash(fifo), FormatError);
    await assert.rejects(narHash(d), FormatError);
    rmSync(fifo);
    const sock = join(d, 'sock');
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    try {
      await assert.rejects(
        narHash(d),
        (err: unknown) => err instanceof FormatError && /socket/.test(err.message),
      );
    } finally {
      server.close();
    }
  });

  test('a file whose size differs from its lstat is refused, not archived corruptly', async () => {
    // procfs files report size 0 but have contents: exactly what a file growing mid-archive looks like.
    await assert.rejects(
      narHash('/proc/self/status'),
      (err: unknown) => err instanceof FormatError && /grew/.test(err.message),
    );
  });

  test('a missing path is an fs error, not a NAR', async () => {
    await assert.rejects(narHash(join(tmp, 'absent')), /ENOENT/);
  });
});

const SAMPLE = `StorePath: /nix/store/br3wh5z11cq2r3x7dvqwlxl2jvyb05qx-with-ref
URL: nar/1g29wkmk6sdihczbgxc1hvy0zmvc77faafx9phqnh5lszc0pqziz.nar
Compression: none
FileHash: sha256:1g29wkmk6sdihczbgxc1hvy0zmvc77faafx9phqnh5lszc0pqziz
FileSize: 952
NarHash: sha256:1g29wkmk6sdihczbgxc1hvy0zmvc77faafx9phqnh5lszc0pqziz
NarSize: 952
References: jg3p8m5b3w0jbm1pvb1hkfd891kw1bn3-hello-trivial
Deriver: lkhb76s0dkdag307slkmhxs9b7h5h6hn-with-ref.drv
Sig: test-cache-1:P8fD5Z+MdsDYOyXCzbDPoLIEHC6yHp9o7FXMWDtX2qmebuJ2OZsCKXwjECd5I/La+4IUlG815VRgZLQAVDmrAw==
`;

describe('narinfo', () => {
  test('parses and re-serialises byte for byte', () => {
    const info = parseNarInfo(SAMPLE);
    assert.equal(info.storePath, '/nix/store/br3wh5z11cq2r3x7dvqwlxl2jvyb05qx-with-ref');
    assert.equal(info.narSize, 952);
    assert.equal(info.fileSize, 952);
    assert.deepEqual(info.references, ['jg3p8m5b3w0jbm1pvb1hkfd891kw1bn3-hello-trivial']);
    assert.equal(info.sigs.length, 1);
    assert.equal(formatNarInfo(info), SAMPLE);
    assert.equal(formatNarInfo(parseNarInfo(Buffer.from(SAMPLE))), SAMPLE);
    assert.equal(
      narInfoFingerprint(info),
      '1;/nix/store/br3wh5z11cq2r3x7dvqwlxl2jvyb05qx-with-ref;sha256:1g29wkmk6sdihczbgxc1hvy0zmvc77faafx9phqnh5lszc0pqziz;952;/nix/store/jg3p8m5b3w0jbm1pvb1hkfd891kw1bn3-hello-trivial',
    );
  });

  test('empty References keeps its space; fingerprint ends in ;', () => {
    const text = SAMPLE.replace(/^References: .*$/m, 'References: ').replace(/^Deriver: .*\n/m, '');
    const info = parseNarInfo(text);
    assert.deepEqual(info.references, []);
    assert.equal(formatNarInfo(info), text);
    assert.match(formatNarInfo(info), /\nReferences: \n/);
    assert.ok(narInfoFingerprint(info).endsWith(';952;'));
  });

  test('fingerprint sorts and dedupes references like Nix', () => {
    const a = 'jg3p8m5b3w0jbm1pvb1hkfd891kw1bn3-a';
    const b = '0g3p8m5b3w0jbm1pvb1hkfd891kw1bn3-b';
    const info = parseNarInfo(SAMPLE.replace(/^References: .*$/m, `References: ${a} ${b} ${a}`));
    assert.deepEqual(info.references, [a, b, a]);
    assert.ok(narInfoFingerprint(info).endsWith(`;/nix/store/${b},/nix/store/${a}`));
  });

  test('unknown fields are kept in order and written after the known ones', () => {
    const text = SAMPLE + 'X-Zeta: 1\nX-Alpha: two words\n';
    const info = parseNarInfo(text);
    assert.deepEqual(info.extra, [
      ['X-Zeta', '1'],
      ['X-Alpha', 'two words'],
    ]);
    assert.equal(formatNarInfo(info), text);
    const mixed = SAMPLE.replace('Compression: none\n', 'Compression: none\nX-Mid: m\n');
    assert.equal(formatNarInfo(parseNarInfo(mixed)), SAMPLE + 'X-Mid: m\n');
  });

  test('System, CA and several Sigs in Nix order', () => {
    const text =
      SAMPLE.replace(/^Sig: .*\n/m, '') +
      'System: x86_64-linux\nSig: a:' +
      Buffer.alloc(64).toString('base64') +
      '\nSig: b:' +
      Buffer.alloc(64, 1).toString('base64') +
      '\nCA: fixed:r:sha256:1g29wkmk6sdihczbgxc1hvy0zmvc77faafx9phqnh5lszc0pqziz\n';
    const info = parseNarInfo(text);
    assert.equal(info.sigs.length, 2);
    assert.equal(info.system, 'x86_64-linux');
    assert.equal(formatNarInfo(info), text);
  });

  test('missing required fields are named', () => {
    for (const field of ['StorePath', 'URL', 'Compression', 'NarHash', 'NarSize']) {
      const text = SAMPLE.replace(new RegExp(`^${field}: .*\\n`, 'm'), '');
      assert.throws(
        () => parseNarInfo(text),
        (err: unknown) => err instanceof FormatError && err.message.includes(field),
        field,
      );
    }
    // Optional in our model (Nix writes them, but older caches may not).
    for (const field of ['FileHash', 'FileSize', 'References', 'Deriver', 'Sig']) {
      const info = parseNarInfo(SAMPLE.replace(new RegExp(`^${field}: .*\\n`, 'm'), ''));
      assert.equal(info.storePath, '/nix/store/br3wh5z11cq2r3x7dvqwlxl2jvyb05qx-with-ref', field);
    }
  });

  test('rejects malformed input', () => {
    const bad = [
      '',
      SAMPLE.slice(0, -1),
      SAMPLE.replace(/\n/g, '\r\n'),
      SAMPLE + '\n',
      SAMPLE + 'NoColon\n',
      SAMPLE + 'Key:no-space\n',
      SAMPLE + ': empty key\n',
      SAMPLE + 'NarSize: 952\n',
      SAMPLE.replace('NarSize: 952', 'NarSize: 0'),
      SAMPLE.replace('NarSize: 952', 'NarSize: 0952'),
      SAMPLE.replace('NarSize: 952', 'NarSize: -1'),
      SAMPLE.replace('NarSize: 952', 'NarSize: 99999999999999999999'),
      SAMPLE.replace('FileSize: 952', 'FileSize: 9.5'),
      SAMPLE.replace('NarHash: sha256:1', 'NarHash: sha256:2'),
      SAMPLE.replace('NarHash: sha256:', 'NarHash: sha512:'),
      SAMPLE.replace('NarHash: sha256:1g29', 'NarHash: sha256:1g2'),
      SAMPLE.replace('FileHash: sha256:1g29', 'FileHash: sha256:1g2e'),
      SAMPLE.replace('StorePath: /nix/store/br3wh5z11', 'StorePath: /nix/store/br3wh5z1'),
      SAMPLE.replace('with-ref\n', 'with ref\n'),
      SAMPLE.replace('-hello-trivial', '-hello trivial'),
      SAMPLE.replace('References: jg3p', 'References: /nix/store/jg3p'),
      SAMPLE.replace('References: jg3p8m5b3w0jbm1pvb1hkfd891kw1bn3-hello-trivial', 'References:  '),
      SAMPLE.replace('Deriver: lkhb', 'Deriver: xxx'),
      SAMPLE.replace('Sig: test-cache-1:', 'Sig: '),
      SAMPLE.replace('URL: nar/1g29wkmk6sdihczbgxc1hvy0zmvc77faafx9phqnh5lszc0pqziz.nar', 'URL: '),
      SAMPLE + 'StorePath: /nix/store/br3wh5z11cq2r3x7dvqwlxl2jvyb05qx-with-ref\n',
    ];
    for (const text of bad)
      assert.throws(() => parseNarInfo(text), FormatError, JSON.stringify(text.slice(-80)));
    assert.throws(
      () => parseNarInfo(Buffer.concat([Buffer.from(SAMPLE), Buffer.from([0xff, 0x0a])])),
      FormatError,
    );
  });
});

describe('keys and signatures', () => {
  test('generate, format, parse', () => {
    const sk = generateNixSecretKey('cache.example.org-1');
    const text = formatNixSecretKey(sk);
    assert.match(text, /^cache\.example\.org-1:[A-Za-z0-9+/]{86}==$/);
    const again = parseNixSecretKey(text);
    assert.deepEqual(again.seed, sk.seed);
    assert.deepEqual(again.publicKey.key, sk.publicKey.key);
    const pk = parseNixPublicKey(formatNixPublicKey(sk.publicKey));
    assert.deepEqual(pk.key, sk.publicKey.key);
    assert.equal(pk.name, 'cache.example.org-1');
    assert.equal(parseNixPublicKey(formatNixPublicKey(pk) + '\n').name, pk.name);
  });

  test('rejects malformed keys', () => {
    const sk = generateNixSecretKey('k');
    const raw = Buffer.concat([sk.seed, sk.publicKey.key]);
    const wrongPub = Buffer.concat([sk.seed, generateNixSecretKey('k').publicKey.key]);
    for (const text of [
      'k',
      ':' + raw.toString('base64'),
      'k:' + raw.toString('base64').slice(0, -2),
      'k:' + raw.subarray(0, 32).toString('base64'),
      'k:' + wrongPub.toString('base64'),
      'k:' + raw.toString('base64url'),
      'a b:' + raw.toString('base64'),
    ]) {
      assert.throws(() => parseNixSecretKey(text), FormatError, text);
    }
    for (const text of [
      'k:',
      'k:' + raw.toString('base64'),
      'k:' + sk.publicKey.key.toString('base64') + '=',
    ]) {
      assert.throws(() => parseNixPublicKey(text), FormatError, text);
    }
    assert.throws(() => generateNixSecretKey('a:b'), FormatError);
  });

  test('sign and verify narinfos', () => {
    const sk = generateNixSecretKey('test-1');
    const other = generateNixSecretKey('test-2');
    const unsigned: NarInfo = { ...parseNarInfo(SAMPLE), sigs: [] };
    const signed = signNarInfo(unsigned, sk);
    assert.equal(signed.sigs.length, 1);
    assert.equal(unsigned.sigs.length, 0);
    assert.deepEqual(verifyNarInfo(signed, [sk.publicKey]), ['test-1']);
    assert.deepEqual(validNarInfoSigners(signed, [other.publicKey]), []);
    assert.throws(() => verifyNarInfo(signed, [other.publicKey]), VerificationError);
    // Re-signing with the same key replaces, another key adds.
    assert.equal(signNarInfo(signed, sk).sigs.length, 1);
    const both = signNarInfo(signed, other);
    assert.deepEqual(verifyNarInfo(both, [sk.publicKey, other.publicKey]).sort(), ['test-1', 'test-2']);
    // The signature binds the store path, hash, size and references, not the URL or compression.
    assert.deepEqual(verifyNarInfo({ ...signed, url: 'nar/x.nar.xz', compression: 'xz' }, [sk.publicKey]), [
      'test-1',
    ]);
    for (const tampered of [
      { ...signed, narSize: signed.narSize + 1 },
      { ...signed, narHash: Buffer.alloc(32) },
      { ...signed, references: [] },
      { ...signed, storePath: signed.storePath + 'x' },
    ]) {
      assert.deepEqual(validNarInfoSigners(tampered, [sk.publicKey]), []);
    }
    // A key with the trusted name but other bytes does not verify.
    const impostor = { ...other.publicKey, name: 'test-1' };
    assert.deepEqual(validNarInfoSigners(signed, [impostor]), []);
  });

  test('broken signatures do not count', () => {
    const sk = generateNixSecretKey('n');
    const fp = narInfoFingerprint(parseNarInfo(SAMPLE));
    const sig = signFingerprint(sk, fp);
    assert.equal(verifyFingerprint(sk.publicKey, fp, sig), true);
    assert.equal(verifyFingerprint(sk.publicKey, fp + 'x', sig), false);
    assert.equal(verifyFingerprint(sk.publicKey, fp, 'm' + sig.slice(1)), false);
    assert.equal(verifyFingerprint(sk.publicKey, fp, sig.slice(0, -4)), false);
    assert.equal(verifyFingerprint(sk.publicKey, fp, 'n:!!!!'), false);
    assert.equal(verifyFingerprint(sk.publicKey, fp, 'nothing'), false);
  });
});
