// Our Nix formats against the real Nix 2.8 (Debian's nix-bin): NAR hashes and bytes, nix32,
// keys, narinfos of a real binary cache, and signatures accepted and refused by the real client.
// Nix must be installed: without it these tests fail (CI installs nix-bin), they never skip.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { decodeNix32, encodeNix32 } from '../../src/nix/base32.js';
import {
  formatNixPublicKey,
  formatNixSecretKey,
  generateNixSecretKey,
  type NixSecretKey,
  parseNixPublicKey,
  parseNixSecretKey,
  signFingerprint,
  signNarInfo,
  verifyNarInfo,
} from '../../src/nix/keys.js';
import { narBytes, narHash } from '../../src/nix/nar.js';
import { formatNarInfo, type NarInfo, narInfoFingerprint, parseNarInfo } from '../../src/nix/narinfo.js';
import { parseStorePath } from '../../src/nix/store-path.js';
import { writeNixConf } from '../fixtures/nix-conf.js';

const run = promisify(execFile);

const dir = mkdtempSync(join(tmpdir(), 'trustix-nix-interop-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const env = { ...process.env, NIX_CONF_DIR: join(dir, 'conf'), XDG_CACHE_HOME: join(dir, 'xdg'), HOME: dir };
const store = join(dir, 'store');

async function nix(cmd: string, args: string[]): Promise<string> {
  const { stdout } = await run(cmd, args, { env, maxBuffer: 64 << 20 });
  return stdout;
}

async function nixBuffer(cmd: string, args: string[]): Promise<Buffer> {
  const { stdout } = await run(cmd, args, { env, maxBuffer: 64 << 20, encoding: 'buffer' });
  return stdout;
}

/** Where a logical /nix/store path lives in a chroot store. */
function real(storeRoot: string, path: string): string {
  return join(storeRoot, path);
}

// Derivations without nixpkgs covering every NAR node kind and the padding cases. The tree refers
// to `file`, so its narinfo has a reference.
const DERIVATIONS = String.raw`
let mk = name: script: derivation {
  inherit name; system = builtins.currentSystem; builder = "/bin/sh";
  PATH = "/usr/bin:/bin"; args = [ "-c" script ];
};
in rec {
  file = mk "tx-file" "printf 'hello, seven' > $out";
  empty = mk "tx-empty" ": > $out";
  exe = mk "tx-exe" "printf '#!/bin/sh\\necho hi\\n' > $out; chmod 555 $out";
  link = mk "tx-link" "ln -s /nowhere/at/all $out";
  tree = mk "tx-tree" ''
    mkdir -p $out/bin $out/share/deep/er $out/empty-dir
    printf '#!/bin/sh\necho hi\n' > $out/bin/run; chmod 755 $out/bin/run
    : > $out/share/empty
    printf 'abcdefghijk' > $out/share/deep/er/odd
    printf '01234567' > $out/share/eight
    yes 'trustix' | head -c 300001 > $out/share/big
    ln -s ../share/deep $out/bin/link
    ln -s @FILE@ $out/ref
    printf x > $out/B; printf y > $out/a; printf z > $out/_u
    printf 1 > "$out/$(printf '\357\275\241')"; printf 2 > "$out/$(printf '\360\220\200\200')"
  '';
}
`.replace('@FILE@', '$' + '{file}');

interface Setup {
  paths: Record<string, string>;
  sk: NixSecretKey;
  skText: string;
  pkText: string;
  cache: string;
}

async function setup(): Promise<Setup> {
  try {
    await nix('nix-store', ['--version']);
  } catch (err) {
    throw new Error('the real Nix is required for these tests: apt-get install nix-bin', { cause: err });
  }
  writeNixConf(env.NIX_CONF_DIR);
  writeFileSync(join(dir, 'd.nix'), DERIVATIONS);
  const out = await nix('nix-build', ['--store', store, join(dir, 'd.nix'), '--no-out-link', '--quiet']);
  const paths: Record<string, string> = {};
  for (const p of out.trim().split('\n')) paths[parseStorePath(p).name.replace(/^tx-/, '')] = p;
  assert.deepEqual(Object.keys(paths).sort(), ['empty', 'exe', 'file', 'link', 'tree']);

  const skFile = join(dir, 'sk');
  const pkFile = join(dir, 'pk');
  await nix('nix-store', ['--generate-binary-cache-key', 'nix-made-1', skFile, pkFile]);
  const skText = readFileSync(skFile, 'utf8');
  const pkText = readFileSync(pkFile, 'utf8');
  const cache = join(dir, 'cache');
  await nix('nix', [
    'copy',
    '--store',
    store,
    '--to',
    `file://${cache}?compression=none&secret-key=${skFile}`,
    ...Object.values(paths),
  ]);
  return { paths, sk: parseNixSecretKey(skText), skText, pkText, cache };
}

const ready = setup();
ready.catch(() => {});

describe('NAR against nix-store', () => {
  test('narHash of every realised path equals nix-store -q --hash and --size', async () => {
    const { paths } = await ready;
    for (const [name, p] of Object.entries(paths)) {
      const ours = await narHash(real(store, p));
      const theirs = (await nix('nix-store', ['--store', store, '-q', '--hash', p])).trim();
      assert.equal('sha256:' + encodeNix32(ours.hash), theirs, name);
      const size = Number((await nix('nix-store', ['--store', store, '-q', '--size', p])).trim());
      assert.equal(ours.size, size, name);
    }
  });

  test('NAR bytes equal nix store dump-path byte for byte', async () => {
    const { paths } = await ready;
    for (const [name, p] of Object.entries(paths)) {
      const theirs = await nixBuffer('nix', ['store', 'dump-path', '--store', store, p]);
      const ours = await narBytes(real(store, p));
      assert.ok(ours.equals(theirs), `${name}: ${ours.length} vs ${theirs.length} bytes`);
    }
  });
});

describe('nix32 against nix hash', () => {
  test('to-base32 and to-base16 agree with ours', async () => {
    const hashes = Array.from({ length: 8 }, () => randomBytes(32));
    hashes.push(Buffer.alloc(32), Buffer.alloc(32, 0xff));
    const b32 = (
      await nix('nix', ['hash', 'to-base32', '--type', 'sha256', ...hashes.map((h) => h.toString('hex'))])
    )
      .trim()
      .split('\n');
    assert.deepEqual(
      b32,
      hashes.map((h) => encodeNix32(h)),
    );
    const b16 = (await nix('nix', ['hash', 'to-base16', '--type', 'sha256', ...b32])).trim().split('\n');
    assert.deepEqual(
      b16,
      b32.map((s) => decodeNix32(s, 32).toString('hex')),
    );
    const sha1 = Array.from({ length: 4 }, () => randomBytes(20));
    const s1 = (
      await nix('nix', ['hash', 'to-base32', '--type', 'sha1', ...sha1.map((h) => h.toString('hex'))])
    )
      .trim()
      .split('\n');
    assert.deepEqual(
      s1,
      sha1.map((h) => encodeNix32(h)),
    );
    for (const s of s1) assert.equal(encodeNix32(decodeNix32(s, 20)), s);
  });
});

describe('keys and a real binary cache', () => {
  test('keys from nix-store --generate-binary-cache-key parse and re-format exactly', async () => {
    const { sk, skText, pkText } = await ready;
    assert.equal(formatNixSecretKey(sk), skText);
    const pk = parseNixPublicKey(pkText);
    assert.equal(formatNixPublicKey(pk), pkText);
    assert.ok(sk.publicKey.key.equals(pk.key));
    assert.equal(pk.name, 'nix-made-1');
  });

  test('narinfos from nix copy parse, re-serialise byte for byte and verify; we sign identically', async () => {
    const { paths, sk, pkText, cache } = await ready;
    const pk = parseNixPublicKey(pkText);
    const files = readdirSync(cache).filter((f) => f.endsWith('.narinfo'));
    assert.equal(files.length, Object.keys(paths).length);
    for (const p of Object.values(paths)) {
      const { hashPart } = parseStorePath(p);
      const text = readFileSync(join(cache, `${hashPart}.narinfo`), 'utf8');
      const info = parseNarInfo(text);
      assert.equal(formatNarInfo(info), text);
      assert.equal(info.storePath, p);
      assert.deepEqual(verifyNarInfo(info, [pk]), ['nix-made-1']);
      // ed25519 is deterministic: our signature of the fingerprint is Nix's, character for character.
      assert.deepEqual(info.sigs, [signFingerprint(sk, narInfoFingerprint(info))]);
      const ours = await narHash(real(store, p));
      assert.ok(info.narHash.equals(ours.hash));
      assert.equal(info.narSize, ours.size);
      assert.ok(readFileSync(join(cache, info.url)).equals(await narBytes(real(store, p))));
      const refs = (await nix('nix-store', ['--store', store, '-q', '--references', p])).trim();
      assert.deepEqual(
        info.references,
        refs === '' ? [] : refs.split('\n').map((r) => parseStorePath(r).baseName),
      );
    }
    const tree = parseNarInfo(
      readFileSync(join(cache, `${parseStorePath(paths.tree).hashPart}.narinfo`), 'utf8'),
    );
    assert.deepEqual(tree.references, [parseStorePath(paths.file).baseName]);
  });
});

/** A binary cache written entirely by our code: NARs from narBytes, narinfos from scratch. */
async function ourNarInfo(p: string, sign: (info: NarInfo) => NarInfo): Promise<[NarInfo, Buffer]> {
  const nar = await narBytes(real(store, p));
  const { hash, size } = await narHash(real(store, p));
  const refs = (await nix('nix-store', ['--store', store, '-q', '--references', p])).trim();
  const info: NarInfo = {
    storePath: p,
    url: `nar/${encodeNix32(hash)}.nar`,
    compression: 'none',
    fileHash: hash,
    fileSize: size,
    narHash: hash,
    narSize: size,
    references: refs === '' ? [] : refs.split('\n').map((r) => parseStorePath(r).baseName),
    sigs: [],
    extra: [],
  };
  return [sign(info), nar];
}

/** Serves caches under /<prefix>/: a map from path to body. */
async function serve(
  files: Map<string, Buffer | string>,
): Promise<{ url: string; server: Server; log: string[] }> {
  const log: string[] = [];
  const server = createServer((req, res) => {
    log.push(`${req.method} ${req.url}`);
    const body = req.method === 'GET' ? files.get(req.url ?? '') : undefined;
    if (body === undefined) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-length': Buffer.byteLength(body) }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server, log };
}

async function addCache(
  files: Map<string, Buffer | string>,
  prefix: string,
  storePaths: string[],
  sign: (info: NarInfo) => NarInfo,
): Promise<void> {
  files.set(`/${prefix}/nix-cache-info`, 'StoreDir: /nix/store\n');
  for (const p of storePaths) {
    const [info, nar] = await ourNarInfo(p, sign);
    files.set(`/${prefix}/${parseStorePath(p).hashPart}.narinfo`, formatNarInfo(info));
    files.set(`/${prefix}/${info.url}`, nar);
  }
}

async function substitute(
  url: string,
  pk: string,
  p: string,
): Promise<{ ok: boolean; stderr: string; root: string }> {
  const root = mkdtempSync(join(dir, 'fresh-'));
  try {
    await run(
      'nix-store',
      ['--store', root, '-r', p, '--option', 'substituters', url, '--option', 'trusted-public-keys', pk],
      // Own narinfo disk cache per run: concurrent runs on one SQLite cache collide.
      { env: { ...env, XDG_CACHE_HOME: join(root, 'xdg') }, maxBuffer: 16 << 20 },
    );
    return { ok: true, stderr: '', root };
  } catch (err) {
    return { ok: false, stderr: String((err as { stderr?: string }).stderr ?? err), root };
  }
}

describe('the real Nix client and our signatures', () => {
  test('substitutes from narinfos we signed (Nix-made key and our key); refuses tampered ones', async () => {
    const { paths, sk, pkText } = await ready;
    const ourKey = generateNixSecretKey('trustix-made-1');
    const closure = [paths.tree, paths.file];
    const files = new Map<string, Buffer | string>();
    await addCache(files, 'nixkey', closure, (i) => signNarInfo(i, sk));
    await addCache(files, 'ourkey', closure, (i) => signNarInfo(i, ourKey));
    await addCache(files, 'tampered', closure, (i) => {
      const signed = signNarInfo(i, sk);
      const [name, b64] = signed.sigs[0].split(':');
      const sig = Buffer.from(b64, 'base64');
      sig[10] ^= 1;
      return { ...signed, sigs: [`${name}:${sig.toString('base64')}`] };
    });
    await addCache(files, 'unsigned', closure, (i) => i);
    const { url, server, log } = await serve(files);
    try {
      const [nixKey, ours, tampered, unsigned, wrongKey] = await Promise.all([
        substitute(`${url}/nixkey`, pkText, paths.tree),
        substitute(`${url}/ourkey`, formatNixPublicKey(ourKey.publicKey), paths.tree),
        substitute(`${url}/tampered`, pkText, paths.tree),
        substitute(`${url}/unsigned`, pkText, paths.tree),
        substitute(`${url}/nixkey`, formatNixPublicKey(ourKey.publicKey), paths.tree),
      ]);
      for (const [label, r] of [
        ['nix-made key', nixKey],
        ['our key', ours],
      ] as const) {
        assert.ok(r.ok, `${label}: ${r.stderr}`);
        const got = await narHash(real(r.root, paths.tree));
        assert.ok(got.hash.equals((await narHash(real(store, paths.tree))).hash), label);
        assert.ok(existsSync(real(r.root, paths.file)), `${label}: reference substituted`);
      }
      assert.ok(
        log.some((l) => l.startsWith('GET /nixkey/nar/')),
        'NARs were fetched from the cache we signed',
      );
      for (const [label, r] of [
        ['tampered', tampered],
        ['unsigned', unsigned],
        ['wrong key', wrongKey],
      ] as const) {
        assert.equal(r.ok, false, label);
        assert.match(r.stderr, /is not signed by any of the keys in 'trusted-public-keys'/, label);
      }
      // Refused before any NAR was requested.
      assert.ok(!log.some((l) => /^GET \/(tampered|unsigned)\/nar\//.test(l)), log.join('\n'));
    } finally {
      server.close();
    }
  });

  test('nix store verify accepts our signature on a file:// cache and refuses a tampered one', async () => {
    const { paths, sk, pkText, cache } = await ready;
    const p = paths.tree;
    const name = `${parseStorePath(p).hashPart}.narinfo`;
    const variants: Array<[string, (info: NarInfo) => NarInfo, boolean]> = [
      ['resigned', (i) => signNarInfo({ ...i, sigs: [] }, sk), true],
      [
        'tampered',
        (i) => {
          const s = signNarInfo({ ...i, sigs: [] }, sk);
          return {
            ...s,
            narSize: s.narSize,
            sigs: [s.sigs[0].replace(/:(.)/, (_, c) => ':' + (c === 'A' ? 'B' : 'A'))],
          };
        },
        false,
      ],
    ];
    for (const [label, change, accepted] of variants) {
      const c = join(dir, `verify-${label}`);
      mkdirSync(join(c, 'nar'), { recursive: true });
      writeFileSync(join(c, 'nix-cache-info'), 'StoreDir: /nix/store\n');
      const info = change(parseNarInfo(readFileSync(join(cache, name), 'utf8')));
      writeFileSync(join(c, name), formatNarInfo(info));
      writeFileSync(join(c, info.url), readFileSync(join(cache, info.url)));
      let ok = true;
      let stderr = '';
      try {
        await run(
          'nix',
          ['store', 'verify', '--store', `file://${c}`, '--trusted-public-keys', pkText.trim(), p],
          {
            env,
          },
        );
      } catch (err) {
        ok = false;
        stderr = String((err as { stderr?: string }).stderr);
      }
      assert.equal(ok, accepted, `${label}: ${stderr}`);
      if (!accepted) assert.match(stderr, /untrusted/);
    }
  });
});
