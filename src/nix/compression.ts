/**
 * Streaming decompression of the NAR files a Nix binary cache serves (`Compression:` in a
 * narinfo). Every decoder is a Node Transform with bounded memory and real backpressure, so a
 * NAR of hundreds of megabytes is never held whole.
 *
 * Each format has more than one decoder; `decoderFor` picks the fastest one this machine has:
 * - zstd: Node's own (`zlib`, Node 22.15+ and 24; used only when it decodes every frame of a
 *   multi-frame input, which early versions did not), else the `zstd` program in a child process
 *   (streams only: starting a process costs more than decoding a small NAR), else fzstd (pure
 *   JavaScript) in a pooled worker thread.
 * - xz: the `xz` program in a child process for streams, liblzma (lzma-native) otherwise: on the
 *   libuv thread pool for streams, synchronously for a small NAR decoded whole.
 * - bzip2: unbzip2-stream (pure JavaScript).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { createRequire } from 'node:module';
import { PassThrough, Transform, type TransformCallback } from 'node:stream';
import { Worker } from 'node:worker_threads';
import * as zlib from 'node:zlib';
import { FormatError } from '../core/errors.js';
import { findProgram } from '../runtime/find-program.js';

export type NarCompression = 'none' | 'xz' | 'bzip2' | 'zstd';

const COMPRESSIONS: ReadonlySet<string> = new Set<NarCompression>(['none', 'xz', 'bzip2', 'zstd']);

/** Nix's `Compression:` narinfo field value -> ours. An empty or absent field is the caller's business. */
export function parseCompression(text: string): NarCompression {
  if (COMPRESSIONS.has(text)) return text as NarCompression;
  throw new FormatError(`unsupported NAR compression: ${JSON.stringify(text)}`);
}

/** The file name extension Nix gives a NAR of this compression (`.nar` + it). */
export function narExtension(c: NarCompression): string {
  return { none: '', xz: '.xz', bzip2: '.bz2', zstd: '.zst' }[c];
}

/**
 * The ways to decode: `zlib` (Node's zstd), `zstd-program` and `xz-program` (a child process),
 * `fzstd` (JavaScript in a worker), `liblzma` (lzma-native), `unbzip2` (JavaScript), `copy` (none).
 */
export type Decoder = 'zlib' | 'zstd-program' | 'fzstd' | 'xz-program' | 'liblzma' | 'unbzip2' | 'copy';

export interface DecompressorOptions {
  /** fzstd only: how long one 64 KiB piece may take before the input is called corrupt (default 30 s). */
  stallMs?: number;
  /** Which decoder (one of `decoders(c)`); default `decoderFor(c)`. */
  decoder?: Decoder;
}

/** What this machine offers: Node's zstd and the `zstd` and `xz` programs. */
export interface DecoderSupport {
  zlibZstd: boolean;
  /** Where the programs are, when on the PATH. */
  zstdProgram?: string;
  xzProgram?: string;
}

type ZlibWithZstd = typeof zlib & {
  createZstdDecompress?: () => Transform;
  zstdCompressSync?: (b: Buffer) => Buffer;
  zstdDecompressSync?: {
    (b: Buffer): Buffer;
    (
      b: Buffer,
      o: { maxOutputLength: number; info: true },
    ): { buffer: Buffer; engine: { bytesWritten: number } };
  };
};
const zz = zlib as ZlibWithZstd;

/** Node's zstd, if it has one that decodes past the end of the first frame (22.15 stopped there). */
function zlibZstdWorks(): boolean {
  if (zz.createZstdDecompress === undefined || zz.zstdCompressSync === undefined) return false;
  try {
    const two = Buffer.concat([
      zz.zstdCompressSync(Buffer.from('one ')),
      zz.zstdCompressSync(Buffer.from('two')),
    ]);
    return zz.zstdDecompressSync!(two).toString() === 'one two';
  } catch {
    return false;
  }
}

let support: DecoderSupport | undefined;

/** What this machine offers (looked up once). */
export function decoderSupport(): DecoderSupport {
  if (support === undefined) {
    const zstdProgram = findProgram('zstd');
    const xzProgram = findProgram('xz');
    support = {
      zlibZstd: zlibZstdWorks(),
      ...(zstdProgram !== undefined ? { zstdProgram } : {}),
      ...(xzProgram !== undefined ? { xzProgram } : {}),
    };
  }
  return support;
}

/**
 * The decoder to use for `c`, given what the machine offers: `whole` for a NAR decoded in one
 * piece (no child process: starting one costs tens of milliseconds), else for a stream.
 */
export function decoderFor(c: NarCompression, whole = false, s: DecoderSupport = decoderSupport()): Decoder {
  switch (c) {
    case 'none':
      return 'copy';
    case 'bzip2':
      return 'unbzip2';
    case 'xz':
      return !whole && s.xzProgram !== undefined ? 'xz-program' : 'liblzma';
    case 'zstd':
      if (s.zlibZstd) return 'zlib';
      return !whole && s.zstdProgram !== undefined ? 'zstd-program' : 'fzstd';
    default:
      throw new FormatError(`unsupported NAR compression: ${JSON.stringify(c)}`);
  }
}

/** Every decoder this machine can run for `c`. */
export function decoders(c: NarCompression, s: DecoderSupport = decoderSupport()): Decoder[] {
  switch (c) {
    case 'none':
      return ['copy'];
    case 'bzip2':
      return ['unbzip2'];
    case 'xz':
      return [...(s.xzProgram !== undefined ? (['xz-program'] as const) : []), 'liblzma'];
    case 'zstd':
      return [
        ...(s.zlibZstd ? (['zlib'] as const) : []),
        ...(s.zstdProgram !== undefined ? (['zstd-program'] as const) : []),
        'fzstd',
      ];
    default:
      throw new FormatError(`unsupported NAR compression: ${JSON.stringify(c)}`);
  }
}

const FORMAT_OF: Record<Decoder, NarCompression> = {
  zlib: 'zstd',
  'zstd-program': 'zstd',
  fzstd: 'zstd',
  'xz-program': 'xz',
  liblzma: 'xz',
  unbzip2: 'bzip2',
  copy: 'none',
};

/**
 * A Transform taking the compressed bytes and emitting the NAR bytes. Corrupt, truncated or empty
 * input ends it with a FormatError on 'error'. 'none' is a pass-through.
 */
export function createDecompressor(c: NarCompression, options: DecompressorOptions = {}): Transform {
  const decoder = options.decoder ?? decoderFor(c);
  if (FORMAT_OF[decoder] !== c) throw new FormatError(`unsupported NAR compression: ${JSON.stringify(c)}`);
  const s = decoderSupport();
  switch (decoder) {
    case 'copy':
      return new PassThrough();
    case 'liblzma':
      return new InnerStreamDecompressor('xz', lzmaStream(false));
    case 'xz-program':
      return new InnerStreamDecompressor(
        'xz',
        new ChildCoder('xz', programOrThrow(s.xzProgram, 'xz'), XZ_ARGS),
      );
    case 'zlib':
      return new InnerStreamDecompressor('zstd', zz.createZstdDecompress!() as unknown as InnerStream);
    case 'zstd-program':
      return new InnerStreamDecompressor(
        'zstd',
        new ChildCoder('zstd', programOrThrow(s.zstdProgram, 'zstd'), ZSTD_ARGS),
      );
    case 'fzstd':
      return new ZstdDecompressor(options.stallMs ?? ZSTD_STALL_MS);
    case 'unbzip2':
      return new SyncDecompressor('bzip2', bzip2Decoder);
  }
}

function programOrThrow(path: string | undefined, name: string): string {
  if (path === undefined) throw new FormatError(`the ${name} program is not installed`);
  return path;
}

/**
 * A whole compressed NAR, decoded in this process without a thread or process hop where the
 * format allows (Node's zstd, liblzma synchronously); at most `maxOutput` bytes, else a
 * FormatError.
 */
export async function decompressWhole(c: NarCompression, input: Buffer, maxOutput: number): Promise<Buffer> {
  const decoder = decoderFor(c, true);
  if (decoder === 'copy') {
    if (input.length > maxOutput) throw new FormatError(`the data is larger than ${maxOutput} bytes`);
    return input;
  }
  if (decoder === 'zlib') {
    if (input.length === 0) throw truncated('zstd', 'empty input');
    let out: { buffer: Buffer; engine: { bytesWritten: number } };
    try {
      out = zz.zstdDecompressSync!(input, { maxOutputLength: maxOutput, info: true });
    } catch (err) {
      if (err instanceof RangeError) throw new FormatError(`the data is larger than ${maxOutput} bytes`);
      throw corruptOrTruncated('zstd', err);
    }
    if (out.engine.bytesWritten < input.length) {
      throw corrupt('zstd', 'data after the end of the compressed stream');
    }
    return out.buffer;
  }
  const d =
    decoder === 'liblzma'
      ? new InnerStreamDecompressor('xz', lzmaStream(true))
      : createDecompressor(c, { decoder });
  const out: Buffer[] = [];
  let size = 0;
  d.end(input);
  for await (const chunk of d as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxOutput) {
      d.destroy();
      throw new FormatError(`the data is larger than ${maxOutput} bytes`);
    }
    out.push(chunk);
  }
  return out.length === 1 ? out[0]! : Buffer.concat(out, size);
}

// Input is handed to a decoder at most this much at a time. Decoders emit everything one piece
// expands to before we can pause them, so this bounds the memory a highly compressible piece costs.
const SLICE = 64 * 1024;

// liblzma allocates the dictionary the stream header asks for; xz -9 needs 65 MiB.
const XZ_MEMLIMIT = 128 * 1024 * 1024;

function detail(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

function corrupt(format: string, err: unknown): FormatError {
  if (err instanceof FormatError) return err;
  return new FormatError(`${format} data is corrupt: ${detail(err)}`, { cause: err });
}

function truncated(format: string, what: string, cause?: unknown): FormatError {
  return new FormatError(`${format} data is truncated: ${what}`, { cause });
}

/** A pure-JS decoder that runs synchronously and hands its output to `emit` as it goes. */
interface SyncDecoder {
  write(input: Buffer): void;
  /** End of input: throws if the data stopped mid-stream. */
  end(): void;
}

type DecoderFactory = (emit: (out: Buffer) => void) => SyncDecoder;

class SyncDecompressor extends Transform {
  readonly #format: string;
  readonly #decoder: SyncDecoder;
  #sawInput = false;
  /** Set when the reader is full: true until `_read` asks for more. */
  #blocked = false;
  #resume: (() => void) | null = null;

  constructor(format: string, factory: DecoderFactory) {
    super();
    this.#format = format;
    this.#decoder = factory((out) => {
      if (!this.push(out)) this.#blocked = true;
    });
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (chunk.length > 0) this.#sawInput = true;
    this.#feed(chunk, 0, callback);
  }

  #feed(chunk: Buffer, offset: number, callback: TransformCallback): void {
    while (offset < chunk.length) {
      const end = Math.min(chunk.length, offset + SLICE);
      try {
        this.#decoder.write(end - offset === chunk.length ? chunk : chunk.subarray(offset, end));
      } catch (err) {
        callback(corrupt(this.#format, err));
        return;
      }
      offset = end;
      if (this.#blocked && offset < chunk.length) {
        // The rest of this chunk waits until the reader has room: `_read` picks it up.
        this.#resume = () => this.#feed(chunk, offset, callback);
        return;
      }
    }
    callback();
  }

  override _read(size: number): void {
    this.#blocked = false;
    const resume = this.#resume;
    if (resume !== null) {
      this.#resume = null;
      resume();
    }
    // Finishing a chunk inside `_read` can park its callback in Transform (the buffer is still
    // above the mark), and no further `_read` comes until something is pushed: release it here.
    super._read(size);
  }

  override _flush(callback: TransformCallback): void {
    if (!this.#sawInput) {
      callback(truncated(this.#format, 'empty input'));
      return;
    }
    try {
      this.#decoder.end();
    } catch (err) {
      callback(corrupt(this.#format, err));
      return;
    }
    callback();
  }
}

const require = createRequire(import.meta.url);

/** The part of unbzip2-stream's classic (`through`) stream we use: it decodes synchronously in write. */
interface ThroughStream {
  write(data: Buffer): boolean;
  end(): void;
  on(event: 'data', listener: (data: Buffer) => void): this;
  on(event: 'error', listener: (err: unknown) => void): this;
}

const unbzip2 = require('unbzip2-stream') as () => ThroughStream;

function bzip2Decoder(emit: (out: Buffer) => void): SyncDecoder {
  const stream = unbzip2();
  let failure: unknown = null;
  let failed = false;
  stream.on('data', emit);
  stream.on('error', (err) => {
    if (!failed) {
      failed = true;
      failure = err;
    }
  });
  const check = (atEnd: boolean): void => {
    if (!failed) return;
    const message = detail(failure);
    // Running out of bits mid-block shows up as a TypeError from the bit reader.
    if (atEnd && (failure instanceof TypeError || /ended prematurely/.test(message))) {
      throw truncated('bzip2', 'unexpected end of input', failure);
    }
    throw corrupt('bzip2', failure);
  };
  return {
    write(input) {
      stream.write(input);
      check(false);
    },
    end() {
      stream.end();
      check(true);
    },
  };
}

/** A decoding stream we feed and read: lzma-native's (readable-stream v3), zlib's, or a ChildCoder. */
interface InnerStream {
  write(chunk: Buffer): boolean;
  end(): void;
  pause(): void;
  resume(): void;
  destroy(): void;
  on(event: 'data', listener: (data: Buffer) => void): this;
  on(event: 'error', listener: (err: unknown) => void): this;
  once(event: 'drain' | 'end', listener: () => void): this;
}

interface LzmaNative {
  createStream(coder: 'streamDecoder', options: { memlimit: number; synchronous?: boolean }): InnerStream;
}

let lzmaNative: LzmaNative | undefined;

/** liblzma's decoder: on the libuv thread pool, or in this thread (`synchronous`, for small input). */
function lzmaStream(synchronous: boolean): InnerStream {
  lzmaNative ??= require('lzma-native') as LzmaNative;
  return lzmaNative.createStream('streamDecoder', { memlimit: XZ_MEMLIMIT, synchronous });
}

// liblzma's LZMA_BUF_ERROR, zlib's and the programs' messages for input that stops mid-stream
const TRUNCATED = /no progress is possible|unexpected end of (file|input)/i;

function corruptOrTruncated(format: string, err: unknown): FormatError {
  return TRUNCATED.test(detail(err))
    ? truncated(format, 'unexpected end of input', err)
    : corrupt(format, err);
}

/**
 * A decoding stream (liblzma, Node's zstd, a program) behind our Transform. Such a stream pushes
 * all output of a written chunk regardless of the reader, so we write it slices and pause it when
 * our reader is full; its own buffers then fill and its `write` reports backpressure, which we
 * pass upstream.
 */
class InnerStreamDecompressor extends Transform {
  readonly #format: string;
  readonly #inner: InnerStream;
  #sawInput = false;
  /** A `_read` came and nothing has been pushed since. */
  #pulled = false;
  /** Bytes written to the inner stream, and whether its input was ended. */
  #fed = 0;
  #ending = false;

  constructor(format: string, inner: InnerStream) {
    super();
    this.#format = format;
    inner.on('data', (data) => {
      this.#pulled = false;
      if (!this.push(data)) inner.pause();
    });
    inner.on('error', (err) => this.destroy(corruptOrTruncated(format, err)));
    // Node's zstd ends at the end of the compressed data and leaves what follows unread
    // (`bytesWritten` counts what it read): data after the end is corrupt input, as for the others
    inner.once('end', () => {
      const read = (inner as { bytesWritten?: unknown }).bytesWritten;
      if (!this.#ending || (typeof read === 'number' && read < this.#fed)) {
        this.destroy(corrupt(format, 'data after the end of the compressed stream'));
      }
    });
    this.#inner = inner;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (chunk.length === 0) {
      callback();
      return;
    }
    this.#sawInput = true;
    this.#fed += chunk.length;
    let ready = true;
    for (let offset = 0; offset < chunk.length; offset += SLICE) {
      ready = this.#inner.write(
        chunk.length <= SLICE ? chunk : chunk.subarray(offset, Math.min(chunk.length, offset + SLICE)),
      );
    }
    if (ready) callback();
    else
      this.#inner.once('drain', () => {
        callback();
        // See ZstdDecompressor.#feed: a `_read` no push has answered will not come again.
        if (this.#pulled) super._read(0);
      });
  }

  override _read(size: number): void {
    this.#pulled = true;
    this.#inner.resume();
    super._read(size);
  }

  override _flush(callback: TransformCallback): void {
    if (!this.#sawInput) {
      callback(truncated(this.#format, 'empty input'));
      return;
    }
    this.#ending = true;
    this.#inner.once('end', () => {
      if (!this.destroyed) callback();
    });
    this.#inner.end();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.#inner.destroy();
    callback(err);
  }
}

const ZSTD_ARGS = ['-d', '-c', '-q', '--no-progress'];
const XZ_ARGS = ['-d', '-c', '-q', `--memlimit-decompress=${XZ_MEMLIMIT}`];
/** How much of a program's complaint is kept for the error message. */
const MAX_STDERR = 2048;

/**
 * A decoding program (`zstd -d`, `xz -d`) in a child process, as a stream: input to its stdin,
 * output from its stdout. 'end' once it exited 0 after all its output; 'error' with what it said
 * on stderr otherwise. Decoding runs on another core, outside Node's event loop.
 */
class ChildCoder extends EventEmitter implements InnerStream {
  readonly #child: ChildProcess;
  #stderr = '';
  #stdoutEnded = false;
  #exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  #destroyed = false;

  constructor(
    readonly name: string,
    path: string,
    args: string[],
  ) {
    super();
    const child = spawn(path, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.#child = child;
    child.stdout!.on('data', (d: Buffer) => this.emit('data', d));
    child.stdout!.on('end', () => {
      this.#stdoutEnded = true;
      this.#settle();
    });
    child.stderr!.on('data', (d: Buffer) => {
      if (this.#stderr.length < MAX_STDERR) this.#stderr += d.toString('utf8');
    });
    // the program stops reading when the data is bad: its exit status says why
    child.stdin!.on('error', () => {});
    child.stdin!.on('drain', () => this.emit('drain'));
    child.on('error', (err) => this.#fail(`${name}: ${err.message}`));
    child.on('exit', (code, signal) => {
      this.#exit = { code, signal };
      this.#settle();
    });
  }

  #settle(): void {
    const exit = this.#exit;
    if (exit === undefined || this.#destroyed) return;
    if (exit.code !== 0) {
      const said = this.#stderr.trim().split('\n').pop() ?? '';
      this.#fail(said !== '' ? said : `${this.name} exited with ${exit.code ?? exit.signal}`);
    } else if (this.#stdoutEnded) this.emit('end');
  }

  #fail(message: string): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.emit('error', new Error(message));
  }

  write(chunk: Buffer): boolean {
    return this.#child.stdin!.write(chunk);
  }

  end(): void {
    this.#child.stdin!.end();
  }

  pause(): void {
    this.#child.stdout!.pause();
  }

  resume(): void {
    this.#child.stdout!.resume();
  }

  destroy(): void {
    this.#destroyed = true;
    this.#child.stdin!.destroy();
    this.#child.stdout!.destroy();
    if (this.#child.exitCode === null && this.#child.signalCode === null) this.#child.kill('SIGKILL');
  }
}

// fzstd's error code for UnexpectedEOF (its ZstdErrorCode).
const ZSTD_UNEXPECTED_EOF = 5;

// A piece of corrupt zstd input can send fzstd 0.1.1 into an endless loop (a Huffman table whose
// states read zero bits), so it runs in a worker that we stop when one piece takes this long. A
// 64 KiB piece takes milliseconds.
const ZSTD_STALL_MS = 30_000;

// The worker's side, as CommonJS source: decode each piece, answer with its output blocks. A
// worker serves one stream at a time and is reused for the next: a piece with a new `gen` starts a
// new decoder, and every answer carries the `gen` it belongs to.
const ZSTD_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { Decompress } = require(workerData);
let out = [];
let gen = -1;
let decoder;
parentPort.on('message', (msg) => {
  if (msg.gen !== gen) {
    gen = msg.gen;
    out = [];
    decoder = new Decompress((block) => { if (block.length > 0) out.push(block); });
  }
  try {
    decoder.push(msg.input, msg.final);
    const blocks = out;
    out = [];
    parentPort.postMessage({ gen, blocks });
  } catch (err) {
    out = [];
    parentPort.postMessage({ gen, error: String(err && err.message), code: err && err.code });
  }
});
`;

// Starting a worker thread costs tens of milliseconds, more than decoding a small NAR: idle
// workers are kept (unreferenced, so they never hold the process open) for the next streams. Nix
// fetches up to 16 paths at once, so up to 16 are kept; one idle for 30 s is stopped.
const MAX_IDLE_ZSTD_WORKERS = 16;
const ZSTD_WORKER_IDLE_MS = 30_000;
const idleZstdWorkers: Array<{ worker: Worker; timer: NodeJS.Timeout }> = [];
let zstdGen = 0;
/**
 * How many zstd worker threads were started so far (each is reused while it stays healthy), and
 * how many pieces were sent to them (each a round trip between threads).
 */
export const zstdWorkerStats = { started: 0, messages: 0 };

function takeZstdWorker(): Worker {
  const idle = idleZstdWorkers.pop();
  if (idle !== undefined) {
    clearTimeout(idle.timer);
    idle.worker.ref();
    return idle.worker;
  }
  const worker = new Worker(ZSTD_WORKER, { eval: true, workerData: require.resolve('fzstd') });
  zstdWorkerStats.started++;
  // a worker that dies is never handed out again
  worker.once('exit', () => {
    const i = idleZstdWorkers.findIndex((w) => w.worker === worker);
    if (i >= 0) {
      clearTimeout(idleZstdWorkers[i].timer);
      idleZstdWorkers.splice(i, 1);
    }
  });
  return worker;
}

function returnZstdWorker(worker: Worker): void {
  if (idleZstdWorkers.length >= MAX_IDLE_ZSTD_WORKERS) {
    void worker.terminate();
    return;
  }
  worker.unref();
  const timer = setTimeout(() => void worker.terminate(), ZSTD_WORKER_IDLE_MS);
  timer.unref();
  idleZstdWorkers.push({ worker, timer });
}

interface ZstdReply {
  gen: number;
  blocks?: Uint8Array[];
  error?: string;
  code?: unknown;
}

/**
 * zstd through fzstd (pure JS) in a pooled worker thread, one piece at a time: the decoder of last
 * resort, when neither Node's zstd nor the `zstd` program is there.
 */
class ZstdDecompressor extends Transform {
  readonly #stallMs: number;
  readonly #gen = zstdGen++;
  #worker: Worker | null = null;
  /** A piece is in the worker and not answered yet. */
  #busy = false;
  #onError = (err: Error): void => {
    this.destroy(corrupt('zstd', err));
  };
  #sawInput = false;
  #held: Buffer | null = null;
  #resume: (() => void) | null = null;
  #timer: NodeJS.Timeout | undefined;
  /** A `_read` came and nothing has been pushed since. */
  #pulled = false;

  constructor(stallMs: number) {
    super();
    this.#stallMs = stallMs;
  }

  #start(): Worker {
    const worker = takeZstdWorker();
    worker.on('error', this.#onError);
    this.#worker = worker;
    return worker;
  }

  /** Decodes one piece in the worker; pushes the output and reports whether the reader has room. */
  #decode(input: Buffer, final: boolean, done: (err: FormatError | null, room: boolean) => void): void {
    const worker = this.#worker ?? this.#start();
    this.#busy = true;
    this.#timer = setTimeout(() => {
      worker.off('message', onMessage);
      done(
        new FormatError(`zstd data is corrupt: the decoder made no progress in ${this.#stallMs} ms`),
        false,
      );
    }, this.#stallMs);
    const onMessage = (reply: ZstdReply): void => {
      if (reply.gen !== this.#gen) return; // a late answer to the worker's previous stream
      clearTimeout(this.#timer);
      this.#busy = false;
      worker.off('message', onMessage);
      if (reply.error !== undefined) {
        done(
          final && reply.code === ZSTD_UNEXPECTED_EOF
            ? truncated('zstd', 'unexpected end of input')
            : new FormatError(`zstd data is corrupt: ${reply.error}`),
          false,
        );
        return;
      }
      let room = true;
      for (const block of reply.blocks ?? []) {
        this.#pulled = false;
        room = this.push(Buffer.from(block.buffer, block.byteOffset, block.length));
      }
      done(null, room);
    };
    worker.on('message', onMessage);
    zstdWorkerStats.messages++;
    worker.postMessage({ gen: this.#gen, input, final });
  }

  /**
   * The latest chunk is held until the next one (or the end) arrives, so the last piece goes to
   * the worker together with the end of input: a small NAR costs one round trip to the worker.
   */
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (chunk.length === 0) {
      callback();
      return;
    }
    this.#sawInput = true;
    const previous = this.#held;
    this.#held = chunk;
    if (previous === null) callback();
    else this.#feed(previous, 0, false, callback);
  }

  /** Decodes `chunk` from `offset` piece by piece; with `final`, its last piece ends the input. */
  #feed(chunk: Buffer, offset: number, final: boolean, callback: TransformCallback): void {
    if (offset >= chunk.length) {
      callback();
      // As in SyncDecompressor._read: a `_read` that no push has answered yet will not be
      // repeated, so release the callback Transform may have parked meanwhile.
      if (this.#pulled) super._read(0);
      return;
    }
    const end = Math.min(chunk.length, offset + SLICE);
    this.#decode(chunk.subarray(offset, end), final && end >= chunk.length, (err, room) => {
      if (err !== null) callback(err);
      else if (room || end >= chunk.length) this.#feed(chunk, end, final, callback);
      else this.#resume = () => this.#feed(chunk, end, final, callback);
    });
  }

  override _read(size: number): void {
    this.#pulled = true;
    const resume = this.#resume;
    if (resume !== null) {
      this.#resume = null;
      resume();
      return;
    }
    super._read(size);
  }

  override _flush(callback: TransformCallback): void {
    if (!this.#sawInput) {
      callback(truncated('zstd', 'empty input'));
      return;
    }
    const last = this.#held!;
    this.#held = null;
    this.#feed(last, 0, true, (err) => {
      this.#stop();
      callback(err);
    });
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.#stop();
    callback(err);
  }

  /** Gives the worker back for the next stream, unless it is still decoding (it may be stuck). */
  #stop(): void {
    clearTimeout(this.#timer);
    const worker = this.#worker;
    this.#worker = null;
    if (worker === null) return;
    worker.off('error', this.#onError);
    worker.removeAllListeners('message');
    if (this.#busy) void worker.terminate();
    else returnZstdWorker(worker);
  }
}
