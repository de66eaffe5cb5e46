/**
 * The binary caches the voting proxy fetches from: `http(s)://` caches through a connection pool
 * each, `file://` caches (a directory written by `nix copy --to file://...`) read directly. Each
 * remembers for a while that it served bytes that did not match the vote, so the proxy tries the
 * other caches first.
 */
import { type FileHandle, open, readFile, stat } from 'node:fs/promises';
import {
  type ClientRequest,
  Agent as HttpAgent,
  request as httpRequest,
  type IncomingMessage,
} from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { resolve, sep } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { TrustixError } from '../core/errors.js';
import type { UpstreamConfig } from './cache-config.js';
import { type NarInfo, parseNarInfo } from './narinfo.js';

/** Narinfos are small; one that is not is refused rather than buffered. */
const MAX_NARINFO_BYTES = 1 << 20;

export class UpstreamError extends TrustixError {
  constructor(message: string) {
    super('UPSTREAM', message);
  }
}

/** The bytes an upstream served are not the NAR the vote decided (hash, size or compression). */
export class BadNarError extends TrustixError {
  constructor(message: string) {
    super('BAD_NAR', message);
  }
}

/** A file an upstream is sending. */
export interface UpstreamFile {
  body: Readable;
  /** Its size in bytes, when known before reading it (Content-Length, or the file's size). */
  size?: number;
}

export abstract class Upstream {
  /** Until when (ms since the epoch) this cache is tried last, after it served bad bytes. */
  private badUntil = 0;
  private badReason = '';

  constructor(readonly cfg: UpstreamConfig) {}

  /** The cache's URL, as configured. */
  get url(): string {
    return this.cfg.url;
  }

  /** A file of the cache (relative path), whole; undefined when the cache has none. */
  protected abstract fetchSmall(path: string, limit: number): Promise<Buffer | undefined>;

  /**
   * A stream of a file of the cache, with its size when the cache says it; UpstreamError when it
   * has none or cannot send it.
   */
  abstract open(path: string, idleTimeoutMs: number): Promise<UpstreamFile>;

  abstract close(): void;

  /** The upstream's narinfo for a hash part, or undefined when it has none. */
  async narinfo(hashPart: string): Promise<NarInfo | undefined> {
    const body = await this.fetchSmall(`${hashPart}.narinfo`, MAX_NARINFO_BYTES);
    return body === undefined ? undefined : parseNarInfo(body);
  }

  /** The cache's `nix-cache-info`, or undefined when it has none. */
  async cacheInfo(): Promise<string | undefined> {
    return (await this.fetchSmall('nix-cache-info', MAX_NARINFO_BYTES))?.toString('utf8');
  }

  markBad(reason: string, forMs: number, now = Date.now()): void {
    this.badUntil = now + forMs;
    this.badReason = reason;
  }

  /** Why this cache is tried last, or undefined while it is in good standing. */
  bad(now = Date.now()): string | undefined {
    return now < this.badUntil ? this.badReason : undefined;
  }
}

/** A whole stream of at most `limit` bytes; beyond, it is destroyed and `tooLarge()` thrown. */
export async function readLimited(body: Readable, limit: number, tooLarge: () => Error): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) {
      body.destroy();
      throw tooLarge();
    }
    chunks.push(chunk);
  }
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
}

export function createUpstream(cfg: UpstreamConfig): Upstream {
  return cfg.url.startsWith('file:') ? new FileUpstream(cfg) : new HttpUpstream(cfg);
}

/** One HTTP(S) cache with its own connection pool, so a slow one queues only its own requests. */
class HttpUpstream extends Upstream {
  private readonly agent: HttpAgent;
  private readonly base: URL;

  constructor(cfg: UpstreamConfig) {
    super(cfg);
    this.base = new URL(cfg.url);
    const opts = { keepAlive: true, maxSockets: cfg.maxConnections };
    this.agent = this.base.protocol === 'https:' ? new HttpsAgent(opts) : new HttpAgent(opts);
  }

  /**
   * GET `path` (relative to the cache root); resolves with the response once its headers arrive,
   * within the upstream's timeout (queueing for a connection included).
   */
  private get(path: string, retried = false): Promise<{ res: IncomingMessage; req: ClientRequest }> {
    const url = new URL(path, this.base);
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const req = send(url, { agent: this.agent, headers: { 'user-agent': 'trustix-cache' } });
      const timer = setTimeout(
        () => req.destroy(new UpstreamError(`${url.href}: no answer within ${this.cfg.timeoutMs} ms`)),
        this.cfg.timeoutMs,
      );
      req.on('response', (res) => {
        clearTimeout(timer);
        resolve({ res, req });
      });
      req.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        // a kept-alive connection the cache closed just as the request went out: once more, on a
        // new connection (nothing was answered, so nothing is repeated)
        if (!retried && req.reusedSocket && (err.code === 'ECONNRESET' || err.message === 'socket hang up')) {
          this.get(path, true).then(resolve, reject);
          return;
        }
        reject(err instanceof UpstreamError ? err : new UpstreamError(`${url.href}: ${err.message}`));
      });
      req.end();
    });
  }

  protected async fetchSmall(path: string, limit: number): Promise<Buffer | undefined> {
    const { res, req } = await this.get(path);
    const timer = setTimeout(
      () => req.destroy(new UpstreamError(`${this.cfg.url}${path}: body too slow`)),
      this.cfg.timeoutMs,
    );
    try {
      if (res.statusCode === 404 || res.statusCode === 403) {
        res.resume();
        return undefined;
      }
      if (res.statusCode !== 200) {
        res.resume();
        throw new UpstreamError(`${this.cfg.url}${path}: HTTP ${res.statusCode}`);
      }
      return await readLimited(
        res,
        limit,
        () => new UpstreamError(`${this.cfg.url}${path}: larger than ${limit} bytes`),
      );
    } finally {
      clearTimeout(timer);
    }
  }

  async open(path: string, idleTimeoutMs: number): Promise<UpstreamFile> {
    const { res, req } = await this.get(path);
    if (res.statusCode !== 200) {
      res.resume();
      throw new UpstreamError(`${this.cfg.url}${path}: HTTP ${res.statusCode}`);
    }
    req.setTimeout(idleTimeoutMs, () =>
      req.destroy(new UpstreamError(`${this.cfg.url}${path}: stalled for ${idleTimeoutMs} ms`)),
    );
    // node:http does not decode a Content-Encoding, so Content-Length counts the bytes read
    const length = res.headers['content-length'];
    const size = length !== undefined && /^\d{1,15}$/.test(length) ? Number(length) : undefined;
    return { body: res, ...(size !== undefined ? { size } : {}) };
  }

  close(): void {
    this.agent.destroy();
  }
}

/** A cache in a local directory (`file:///srv/cache`), as `nix copy --to file://...` writes it. */
class FileUpstream extends Upstream {
  /** The cache directory with a trailing separator. */
  private readonly root: string;

  constructor(cfg: UpstreamConfig) {
    super(cfg);
    const dir = resolve(fileURLToPath(cfg.url));
    this.root = dir.endsWith(sep) ? dir : dir + sep;
  }

  /** The file a relative cache path names; never outside the cache directory. */
  private file(path: string): string {
    let rel: string;
    try {
      rel = decodeURIComponent(path);
    } catch {
      throw new UpstreamError(`${this.cfg.url}: bad path ${JSON.stringify(path)}`);
    }
    const file = resolve(this.root, rel);
    if (!file.startsWith(this.root)) {
      throw new UpstreamError(`${this.cfg.url}: path ${JSON.stringify(path)} leaves the cache directory`);
    }
    return file;
  }

  private failure(path: string, err: unknown): UpstreamError {
    return new UpstreamError(`${this.cfg.url}${path}: ${(err as Error).message}`);
  }

  protected async fetchSmall(path: string, limit: number): Promise<Buffer | undefined> {
    const file = this.file(path);
    try {
      if ((await stat(file)).size > limit) {
        throw new UpstreamError(`${this.cfg.url}${path}: larger than ${limit} bytes`);
      }
      return await readFile(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err instanceof UpstreamError ? err : this.failure(path, err);
    }
  }

  async open(path: string): Promise<UpstreamFile> {
    const file = this.file(path);
    let handle: FileHandle;
    try {
      handle = await open(file, 'r');
    } catch (err) {
      throw this.failure(path, err);
    }
    try {
      const { size } = await handle.stat();
      return { body: handle.createReadStream({ highWaterMark: 256 * 1024 }), size };
    } catch (err) {
      await handle.close();
      throw this.failure(path, err);
    }
  }

  close(): void {}
}
