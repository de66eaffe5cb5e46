// NAR decompression against the real xz, bzip2 and zstd tools and against real Nix 2.8 binary
// caches (`nix copy --to file://...?compression=...`). Nix must be installed (CI installs nix-bin).
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { FormatError } from '../../src/core/errors.js';
import {
  createDecompressor,
  type Decoder,
  decoderFor,
  decoders,
  decompressWhole,
  type NarCompression,
  parseCompression,
  zstdWorkerStats,
} from '../../src/nix/compression.js';
import { parseNarInfo } from '../../src/nix/narinfo.js';
import { writeNixConf } from '../fixtures/nix-conf.js';

const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'trustix-compression-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const TOOLS: Record<Exclude<NarCompression, 'none'>, string[]> = {
  xz: ['/usr/bin/xz', '-1', '-c'],
  bzip2: ['/usr/bin/bzip2', '-1', '-c'],
  zstd: ['/usr/bin/zstd', '-q', '-3', '-c'],
};
const FORMATS = Object.keys(TOOLS) as Array<Exclude<NarCompression, 'none'>>;

function compressWithTool(c: Exclude<NarCompression, 'none'>, data: Buffer): Buffer {
  const [cmd, ...args] = TOOLS[c] as [string, ...string[]];
  return execFileSync(cmd, args, { input: data, maxBuffer: 256 << 20 });
}

/** Splits `data` into chunks of random sizes in [1, max]. */
function randomChunks(data: Buffer, max: number): Buffer[] {
  const chunks: Buffer[] = [];
  for (let off = 0; off < data.length; ) {
    const n = 1 + Math.floor(Math.random() * max);
    chunks.push(data.subarray(off, off + n));
    off += n;
  }
  return chunks;
}

interface Result {
  sha256: string;
  length: number;
  chunks: number;
}

/** Decompresses, holding every emitted chunk until the end so reused output buffers would show. */
async function decompress(
  c: NarCompression,
  input: Buffer[] | Buffer,
  slowReader = false,
  decoder?: Decoder,
): Promise<Result> {
  const out: Buffer[] = [];
  const sink = new Writable({
    highWaterMark: 1024,
    write(chunk: Buffer, _e, cb) {
      out.push(chunk);
      if (slowReader) setImmediate(cb);
      else cb();
    },
  });
  await pipeline(
    Readable.from(Array.isArray(input) ? input : [input]),
    createDecompressor(c, decoder === undefined ? {} : { decoder }),
    sink,
  );
  const all = Buffer.concat(out);
  return { sha256: createHash('sha256').update(all).digest('hex'), length: all.length, chunks: out.length };
}

function sha256hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Random but compressible data: random runs mixed with repeated text. */
function sampleData(size: number): Buffer {
  const parts: Buffer[] = [];
  let n = 0;
  while (n < size) {
    const r = randomBytes(4096);
    const t = Buffer.from(r.toString('hex').repeat(3));
    parts.push(r, t);
    n += r.length + t.length;
  }
  return Buffer.concat(parts).subarray(0, size);
}

async function expectFormatError(
  c: NarCompression,
  input: Buffer[] | Buffer,
  pattern: RegExp,
  decoder?: Decoder,
): Promise<void> {
  await assert.rejects(decompress(c, input, false, decoder), (err: unknown) => {
    assert.ok(err instanceof FormatError, `expected FormatError, got ${String(err)}`);
    assert.match(err.message, pattern);
    return true;
  });
}

describe('parseCompression', () => {
  test('accepts the four values Nix writes that we decode', () => {
    for (const c of ['none', 'xz', 'bzip2', 'zstd']) assert.equal(parseCompression(c), c);
  });
  test('refuses anything else, naming the value', () => {
    for (const bad of ['', 'br', 'gzip', 'lz4', 'XZ', ' xz', 'xz ', 'zst', 'bz2']) {
      assert.throws(
        () => parseCompression(bad),
        (err: unknown) => err instanceof FormatError && err.message.includes(JSON.stringify(bad)),
      );
    }
  });
  test('createDecompressor refuses an unknown name', () => {
    assert.throws(() => createDecompressor('gzip' as NarCompression), FormatError);
  });
});

describe('round trip against the CLI tools', () => {
  const big = sampleData(2 * 1024 * 1024 + 12345);
  const small = sampleData(5000);
  for (const c of FORMATS)
    for (const dec of decoders(c)) {
      const name = `${c} (${dec})`;
      test(`${name}: multi-MB input in random chunks, slow reader`, async () => {
        const compressed = compressWithTool(c, big);
        const r = await decompress(c, randomChunks(compressed, 100_000), true, dec);
        assert.equal(r.length, big.length);
        assert.equal(r.sha256, sha256hex(big));
      });
      test(`${name}: small input in 1-byte chunks`, async () => {
        const compressed = compressWithTool(c, small);
        const r = await decompress(c, randomChunks(compressed, 1), false, dec);
        assert.equal(r.sha256, sha256hex(small));
        const whole = await decompress(c, compressed, false, dec);
        assert.equal(whole.sha256, sha256hex(small));
      });
      test(`${name}: empty payload`, async () => {
        const r = await decompress(c, compressWithTool(c, Buffer.alloc(0)), false, dec);
        assert.equal(r.length, 0);
      });
      test(`${name}: two concatenated streams decode to both payloads`, async () => {
        const a = sampleData(70_000);
        const b = sampleData(30_000);
        const r = await decompress(
          c,
          Buffer.concat([compressWithTool(c, a), compressWithTool(c, b)]),
          false,
          dec,
        );
        assert.equal(r.sha256, sha256hex(Buffer.concat([a, b])));
      });
    }
  test('none passes bytes through', async () => {
    const r = await decompress('none', randomChunks(small, 7));
    assert.equal(r.sha256, sha256hex(small));
  });
});

describe('backpressure', () => {
  // Moderately compressible data: each decoder emits everything one piece of input (up to 64 KiB)
  // expands to before it can pause, so a highly compressible input would hide the pauses.
  const cases = FORMATS.map((c) => [c, () => sampleData(3 << 20)] as const);
  for (const [c, make] of cases)
    for (const dec of decoders(c)) {
      test(`${c} (${dec}): a reader that does not read stops the decoder and its input`, async () => {
        const plain = make();
        const compressed = compressWithTool(c, plain);
        const d = createDecompressor(c, { decoder: dec });
        let fed = 0;
        const source = Readable.from(randomChunks(compressed, 4096)).on('data', (b: Buffer) => {
          fed += b.length;
        });
        source.pipe(d);
        await new Promise((resolve) => setTimeout(resolve, 700));
        // Nobody reads: the decoder holds a few pieces' worth of output and stops taking input.
        assert.ok(d.readableLength < 4 << 20, `buffered ${d.readableLength} bytes`);
        assert.ok(fed < compressed.length, `fed all ${compressed.length} bytes`);
        const h = createHash('sha256');
        let n = 0;
        for await (const b of d) {
          h.update(b as Buffer);
          n += (b as Buffer).length;
        }
        assert.equal(n, plain.length);
        assert.equal(h.digest('hex'), sha256hex(plain));
      });
    }
});

describe('corrupt and truncated input', () => {
  const plain = sampleData(400_000);
  for (const c of FORMATS) {
    const compressed = compressWithTool(c, plain);
    for (const dec of decoders(c)) {
      const name = `${c} (${dec})`;
      test(`${name}: truncated at several points`, async () => {
        for (const cut of [1, 7, compressed.length >> 1, compressed.length - 1]) {
          await expectFormatError(
            c,
            compressed.subarray(0, cut),
            new RegExp(`^${c} data is (truncated|corrupt)`),
            dec,
          );
        }
      });
      test(`${name}: truncated input fed in small chunks`, async () => {
        await expectFormatError(
          c,
          randomChunks(compressed.subarray(0, compressed.length - 3), 999),
          /truncated|corrupt/,
          dec,
        );
      });
      test(`${name}: empty input`, async () => {
        await expectFormatError(c, Buffer.alloc(0), new RegExp(`^${c} data is truncated: empty input`), dec);
      });
      test(`${name}: not compressed at all`, async () => {
        await expectFormatError(
          c,
          Buffer.from('nix-archive-1 is not compressed'),
          new RegExp(`^${c} data is corrupt`),
          dec,
        );
      });
      test(`${name}: trailing garbage`, async () => {
        await expectFormatError(
          c,
          Buffer.concat([compressed, Buffer.from('trailing garbage!')]),
          /corrupt|truncated/,
          dec,
        );
      });
    }
  }
  for (const dec of decoders('xz'))
    test(`xz (${dec}): a flipped bit in the data fails its check`, async () => {
      const bad = Buffer.from(compressWithTool('xz', plain));
      bad[bad.length >> 1] ^= 0x10;
      await expectFormatError('xz', bad, /^xz data is corrupt/, dec);
    });
  test('bzip2: a flipped bit in a block fails its CRC', async () => {
    const bad = Buffer.from(compressWithTool('bzip2', plain));
    bad[bad.length >> 1] ^= 0x10;
    await expectFormatError('bzip2', bad, /^bzip2 data is corrupt/);
  });
  for (const dec of decoders('zstd'))
    test(`zstd (${dec}): a reserved block type`, async () => {
      const bad = Buffer.from(compressWithTool('zstd', plain));
      // Frame header: magic, descriptor, then window descriptor, dictionary id and content size.
      const fhd = bad[4] as number;
      const single = (fhd >> 5) & 1;
      const fcsSize = [single ? 1 : 0, 2, 4, 8][fhd >> 6] as number;
      const block = 5 + (single ? 0 : 1) + ([0, 1, 2, 4][fhd & 3] as number) + fcsSize;
      bad[block] = ((bad[block] as number) & ~6) | 6;
      await expectFormatError('zstd', bad, /^zstd data is corrupt/, dec);
    });
  test('zstd: input that makes the decoder spin is stopped', async () => {
    // A 40-byte compressed block (cut from a bit-flipped zstd file) whose Huffman-weight table
    // reads zero bits per state: fzstd 0.1.1 loops on it forever.
    const bad = Buffer.from(
      'KLUv/YRYAC0xAUUBAA4AoK5xGxD4qwGUuAZhCcwLZklJaWHqjoiIiMiUE6EZWNx83Gv4YFk=',
      'base64',
    );
    const d = createDecompressor('zstd', { stallMs: 1000, decoder: 'fzstd' });
    const t0 = Date.now();
    await assert.rejects(
      pipeline(Readable.from([bad]), d, new Writable({ write: (_c, _e, cb) => cb() })),
      (err: unknown) =>
        err instanceof FormatError && /^zstd data is corrupt: the decoder made no progress/.test(err.message),
    );
    assert.ok(Date.now() - t0 < 15_000);
  });
});

describe('zstd worker reuse', () => {
  test('streams one after another share a worker thread; a corrupt or abandoned stream does not spoil the next', async () => {
    const plain = sampleData(200_000);
    const good = compressWithTool('zstd', plain);
    const want = sha256hex(plain);
    // one stream first, so a worker exists (and is idle) before counting
    assert.equal((await decompress('zstd', good, false, 'fzstd')).sha256, want);
    const started = zstdWorkerStats.started;
    for (let i = 0; i < 5; i++)
      assert.equal((await decompress('zstd', randomChunks(good, 5000), false, 'fzstd')).sha256, want);
    await expectFormatError(
      'zstd',
      good.subarray(0, good.length >> 1),
      /^zstd data is (truncated|corrupt)/,
      'fzstd',
    );
    assert.equal((await decompress('zstd', good, false, 'fzstd')).sha256, want);
    // abandoned after its first piece: the worker comes back only once it is idle
    const d = createDecompressor('zstd', { decoder: 'fzstd' });
    d.write(good.subarray(0, 70_000));
    await new Promise((r) => setTimeout(r, 50));
    d.destroy();
    assert.equal((await decompress('zstd', good, false, 'fzstd')).sha256, want);
    assert.equal(zstdWorkerStats.started, started, 'no new worker thread per stream');
  });
  test('as many concurrent streams as Nix fetches at once reuse their workers the next time', async () => {
    const plain = sampleData(50_000);
    const good = compressWithTool('zstd', plain);
    const round = () =>
      Promise.all(Array.from({ length: 16 }, () => decompress('zstd', good, false, 'fzstd')));
    await round();
    const started = zstdWorkerStats.started;
    for (const r of await round()) assert.equal(r.sha256, sha256hex(plain));
    assert.equal(zstdWorkerStats.started, started);
  });
  test('a small NAR in one chunk is one round trip to the worker: its only piece carries the end of input', async () => {
    const plain = sampleData(20_000);
    const messages = zstdWorkerStats.messages;
    assert.equal(
      (await decompress('zstd', compressWithTool('zstd', plain), false, 'fzstd')).sha256,
      sha256hex(plain),
    );
    assert.equal(zstdWorkerStats.messages - messages, 1);
  });
});

describe('choosing a decoder', () => {
  const node20 = { zlibZstd: false };
  const programs = { zlibZstd: false, zstdProgram: '/usr/bin/zstd', xzProgram: '/usr/bin/xz' };
  const node24 = { ...programs, zlibZstd: true };
  test("Node's zstd first; else the zstd program for streams; else fzstd", () => {
    assert.equal(decoderFor('zstd', false, node24), 'zlib');
    assert.equal(decoderFor('zstd', true, node24), 'zlib');
    assert.equal(decoderFor('zstd', false, programs), 'zstd-program');
    // starting a process costs more than decoding a small NAR
    assert.equal(decoderFor('zstd', true, programs), 'fzstd');
    assert.equal(decoderFor('zstd', false, node20), 'fzstd');
    assert.deepEqual(decoders('zstd', node20), ['fzstd']);
    assert.deepEqual(decoders('zstd', node24), ['zlib', 'zstd-program', 'fzstd']);
  });
  test('xz: the program for streams, liblzma otherwise', () => {
    assert.equal(decoderFor('xz', false, programs), 'xz-program');
    assert.equal(decoderFor('xz', true, programs), 'liblzma');
    assert.equal(decoderFor('xz', false, node20), 'liblzma');
  });
  test('a decoder of another format is refused', () => {
    assert.throws(() => createDecompressor('xz', { decoder: 'fzstd' }), FormatError);
  });
  test('without the programs on the PATH (Node 20 without zstd): fzstd and liblzma decode', () => {
    const empty = mkdtempSync(join(dir, 'empty-path-'));
    const zst = compressWithTool('zstd', sampleData(100_000));
    const xz = compressWithTool('xz', sampleData(100_000));
    writeFileSync(join(empty, 'in.zst'), zst);
    writeFileSync(join(empty, 'in.xz'), xz);
    const module = new URL('../../src/nix/compression.ts', import.meta.url).href;
    const script = `
      import { readFileSync } from 'node:fs';
      import { createHash } from 'node:crypto';
      import { createDecompressor, decoderFor, decoderSupport } from ${JSON.stringify(module)};
      const out = { support: decoderSupport(), zstd: decoderFor('zstd'), xz: decoderFor('xz') };
      for (const [c, f] of [['zstd', 'in.zst'], ['xz', 'in.xz']]) {
        const d = createDecompressor(c);
        d.end(readFileSync(${JSON.stringify(empty)} + '/' + f));
        const h = createHash('sha256');
        for await (const b of d) h.update(b);
        out[c + 'Hash'] = h.digest('hex');
      }
      console.log(JSON.stringify(out));`;
    writeFileSync(join(empty, 'check.mts'), script);
    const out = JSON.parse(
      execFileSync(process.execPath, ['--import', 'tsx', join(empty, 'check.mts')], {
        env: { ...process.env, PATH: empty },
        encoding: 'utf8',
      }),
    );

    assert.deepEqual(out.support, { zlibZstd: decoders('zstd').includes('zlib') });
    assert.equal(out.zstd, out.support.zlibZstd ? 'zlib' : 'fzstd');
    assert.equal(out.xz, 'liblzma');
    assert.equal(out.zstdHash, sha256hex(execFileSync('/usr/bin/zstd', ['-d', '-c'], { input: zst })));
    assert.equal(out.xzHash, sha256hex(execFileSync('/usr/bin/xz', ['-d', '-c'], { input: xz })));
  });
});

describe('decompressWhole', () => {
  test("zstd without Node's zstd: fzstd in its worker, no process started", async (t) => {
    if (decoderFor('zstd', true) !== 'fzstd') {
      t.skip('this Node has its own zstd, which decodes whole NARs');
      return;
    }
    const plain = sampleData(20_000);
    const messages = zstdWorkerStats.messages;
    const whole = await decompressWhole('zstd', compressWithTool('zstd', plain), plain.length);
    assert.equal(sha256hex(whole), sha256hex(plain));
    assert.equal(zstdWorkerStats.messages - messages, 1);
  });
  for (const c of ['none', ...FORMATS] as NarCompression[]) {
    test(`${c}: the same bytes as every streaming decoder; more than the limit is refused`, async () => {
      const plain = sampleData(300_000);
      const file = c === 'none' ? plain : compressWithTool(c, plain);
      const whole = await decompressWhole(c, file, plain.length);
      assert.equal(sha256hex(whole), sha256hex(plain));
      for (const dec of decoders(c))
        assert.equal((await decompress(c, file, false, dec)).sha256, sha256hex(plain));
      await assert.rejects(decompressWhole(c, file, plain.length - 1), (err: unknown) => {
        assert.ok(err instanceof FormatError);
        assert.match(err.message, /larger than/);
        return true;
      });
      if (c !== 'none') {
        await assert.rejects(
          decompressWhole(c, file.subarray(0, file.length >> 1), plain.length),
          FormatError,
        );
      }
    });
  }
});

describe('real Nix binary caches', () => {
  const env = {
    ...process.env,
    NIX_CONF_DIR: join(dir, 'conf'),
    XDG_CACHE_HOME: join(dir, 'xdg'),
    HOME: dir,
  };
  writeNixConf(join(dir, 'conf'));
  const store = join(dir, 'store');
  const src = join(dir, 'tx-payload');
  mkdirSync(join(src, 'sub'), { recursive: true });
  writeFileSync(join(src, 'sub', 'big'), sampleData(600_000));
  writeFileSync(join(src, 'small'), 'hello, nix\n');

  let storePath: Promise<string> | undefined;
  const addPath = (): Promise<string> => {
    storePath ??= run('nix-store', ['--store', store, '--add', src], { env }).then((r) => r.stdout.trim());
    return storePath;
  };

  for (const c of ['xz', 'bzip2', 'zstd', 'none'] as const) {
    test(`nix copy --to file://...?compression=${c}`, async () => {
      const path = await addPath();
      const cache = join(dir, `cache-${c}`);
      await run('nix', ['copy', '--store', store, '--to', `file://${cache}?compression=${c}`, path], { env });
      const narinfos = readdirSync(cache).filter((f) => f.endsWith('.narinfo'));
      assert.equal(narinfos.length, 1);
      const info = parseNarInfo(readFileSync(join(cache, narinfos[0] as string)));
      assert.equal(parseCompression(info.compression), c);
      const file = readFileSync(join(cache, info.url));
      for (const input of [file, randomChunks(file, 3000)]) {
        const r = await decompress(parseCompression(info.compression), input);
        assert.equal(r.length, info.narSize);
        assert.equal(r.sha256, info.narHash.toString('hex'));
      }
    });
  }
});
