/**
 * Streaming decompression of the NAR files a Nix binary cache serves (`Compression:` in a
 * narinfo). Every decoder is a Node Transform with bounded memory and real backpressure, so a
 * NAR of hundreds of megabytes is never held whole.
 */
import { createRequire } from 'node:module';
import { PassThrough, Transform, type TransformCallback } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { FormatError } from '../core/errors.js';

export type NarCompression = 'none' | 'xz' | 'bzip2' | 'zstd';

const COMPRESSIONS: ReadonlySet<string> = new Set<NarCompression>(['none', 'xz', 'bzip2', 'zstd']);

/** Nix's `Compression:` narinfo field value -> ours. An empty or absent field is the caller's business. */
export function parseCompression(text: string): NarCompression {
  if (COMPRESSIONS.has(text)) return text as NarCompression;
  throw new FormatError(`unsupported NAR compression: ${JSON.stringify(text)}`);
}

export interface DecompressorOptions {
  /** zstd only: how long one 64 KiB piece may take before the input is called corrupt (default 30 s). */
  stallMs?: number;
}

/**
 * A Transform taking the compressed bytes and emitting the NAR bytes. Corrupt, truncated or empty
 * input ends it with a FormatError on 'error'. 'none' is a pass-through.
 */
export function createDecompressor(c: NarCompression, options: DecompressorOptions = {}): Transform {
  switch (c) {
    case 'none':
      return new PassThrough();
    case 'xz':
      return new XzDecompressor();
    case 'zstd':
      return new ZstdDecompressor(options.stallMs ?? ZSTD_STALL_MS);
    case 'bzip2':
      return new SyncDecompressor('bzip2', bzip2Decoder);
    default:
      throw new FormatError(`unsupported NAR compression: ${JSON.stringify(c)}`);
  }
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

/** The part of lzma-native's stream (a readable-stream v3 Transform) we use. */
interface LzmaStream {
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
  createStream(coder: 'streamDecoder', options: { memlimit: number }): LzmaStream;
}

let lzmaNative: LzmaNative | undefined;

/**
 * liblzma (through lzma-native, prebuilt) on the libuv thread pool. Its stream pushes all output
 * of a written chunk regardless of the reader, so we write it slices and pause it when our reader
 * is full; its own buffers then fill and its `write` reports backpressure, which we pass upstream.
 */
class XzDecompressor extends Transform {
  readonly #inner: LzmaStream;
  #sawInput = false;
  /** A `_read` came and nothing has been pushed since. */
  #pulled = false;

  constructor() {
    super();
    lzmaNative ??= require('lzma-native') as LzmaNative;
    const inner = lzmaNative.createStream('streamDecoder', { memlimit: XZ_MEMLIMIT });
    inner.on('data', (data) => {
      this.#pulled = false;
      if (!this.push(data)) inner.pause();
    });
    inner.on('error', (err) => {
      const message = detail(err);
      this.destroy(
        // liblzma's LZMA_BUF_ERROR: the input ended inside a stream.
        /no progress is possible/i.test(message)
          ? truncated('xz', 'unexpected end of input', err)
          : corrupt('xz', err),
      );
    });
    this.#inner = inner;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (chunk.length === 0) {
      callback();
      return;
    }
    this.#sawInput = true;
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
      callback(truncated('xz', 'empty input'));
      return;
    }
    this.#inner.once('end', () => callback());
    this.#inner.end();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.#inner.destroy();
    callback(err);
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
 * zstd through fzstd (pure JS) in a pooled worker thread, one piece at a time. Node's own zstd
 * (22.15+) is not used: it stops silently after the first frame, and Node 20 has none.
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
