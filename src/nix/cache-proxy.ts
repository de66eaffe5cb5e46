/**
 * The voting binary cache proxy: a Nix substituter that serves a store path only when the user's
 * decision procedure, run over independent verified logs, agrees on its NAR hash.
 *
 * - `/<hash>.narinfo`: decide the NAR hash for the hash part; take an upstream narinfo with exactly
 *   that NarHash; serve it uncompressed-NAR style (URL pointing here) and signed by the proxy's own
 *   key, so clients trust only that key. No decision, or no matching upstream: 404, never 5xx (Nix
 *   treats 5xx as a broken cache and fails the build instead of building locally).
 * - `/nar/<hash>-<narhash>.nar`: stream the upstream NAR, decompressed, hashing as it goes. The
 *   response carries Content-Length = NarSize and the last chunk is held back until the hash is
 *   checked, so a wrong NAR is always cut short and never imported.
 */
import { createHash } from 'node:crypto';
import {
  type ClientRequest,
  createServer,
  Agent as HttpAgent,
  request as httpRequest,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Counter, Registry } from 'prom-client';
import { fromHexStrict } from '../core/bytes.js';
import { TrustixError } from '../core/errors.js';
import type { Decision } from '../decide/decide.js';
import { decodeNix32, encodeNix32 } from './base32.js';
import { type CacheConfig, cacheInfo, type UpstreamConfig } from './cache-config.js';
import { createDecompressor, parseCompression } from './compression.js';
import type { NixSecretKey } from './keys.js';
import { signNarInfo } from './keys.js';
import { formatNarInfo, type NarInfo, parseNarInfo } from './narinfo.js';
import { parseStorePath } from './store-path.js';

/** What the proxy needs from a decider (src/decide/decide.ts implements it). */
export interface NarHashDecider {
  decide(key: string, protocol: string): Promise<{ decision: Decision }>;
}

const NARINFO_PATH = /^\/([0-9a-df-np-sv-z]{32})\.narinfo$/;
const NAR_PATH = /^\/nar\/([0-9a-df-np-sv-z]{32})-([0-9a-df-np-sv-z]{52})\.nar$/;
/** Narinfos are small; one that is not is refused rather than buffered. */
const MAX_NARINFO_BYTES = 1 << 20;
const MAX_CACHED_RESOLUTIONS = 100_000;

class UpstreamError extends TrustixError {
  constructor(message: string) {
    super('UPSTREAM', message);
  }
}

/** One upstream binary cache with its own connection pool, so a slow one queues only its own requests. */
class Upstream {
  private readonly agent: HttpAgent;
  private readonly base: URL;

  constructor(readonly cfg: UpstreamConfig) {
    this.base = new URL(cfg.url);
    const opts = { keepAlive: true, maxSockets: cfg.maxConnections };
    this.agent = this.base.protocol === 'https:' ? new HttpsAgent(opts) : new HttpAgent(opts);
  }

  /**
   * GET `path` (relative to the cache root); resolves with the response once its headers arrive,
   * within the upstream's timeout (queueing for a connection included).
   */
  get(path: string): Promise<{ res: IncomingMessage; req: ClientRequest }> {
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
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(err instanceof UpstreamError ? err : new UpstreamError(`${url.href}: ${err.message}`));
      });
      req.end();
    });
  }

  /** The upstream's narinfo for a hash part, or undefined when it has none (404/403). */
  async narinfo(hashPart: string): Promise<NarInfo | undefined> {
    const { res, req } = await this.get(`${hashPart}.narinfo`);
    const timer = setTimeout(
      () => req.destroy(new UpstreamError(`${this.cfg.url}: narinfo body too slow`)),
      this.cfg.timeoutMs,
    );
    try {
      if (res.statusCode === 404 || res.statusCode === 403) {
        res.resume();
        return undefined;
      }
      if (res.statusCode !== 200) {
        res.resume();
        throw new UpstreamError(`${this.cfg.url}${hashPart}.narinfo: HTTP ${res.statusCode}`);
      }
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const c of res as AsyncIterable<Buffer>) {
        size += c.length;
        if (size > MAX_NARINFO_BYTES) {
          req.destroy();
          throw new UpstreamError(
            `${this.cfg.url}${hashPart}.narinfo: larger than ${MAX_NARINFO_BYTES} bytes`,
          );
        }
        chunks.push(c);
      }
      return parseNarInfo(Buffer.concat(chunks));
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    this.agent.destroy();
  }
}

interface Candidate {
  upstream: Upstream;
  info: NarInfo;
}

/** The outcome for one hash part: a decided NAR hash with the upstreams that have it, or why not. */
type Resolution =
  | {
      ok: true;
      narHash: Buffer;
      decision: Decision;
      candidates: Candidate[];
      /** What the proxy serves for it: signed once per resolution, as Nix asks several times. */
      narinfo: string;
    }
  | { ok: false; reason: string };

export interface CacheProxyOptions {
  config: CacheConfig;
  decider: NarHashDecider;
  key: NixSecretKey;
  /** One line per event worth a log line (decisions, refusals, aborted NARs). */
  log?: (line: string) => void;
}

export class CacheProxy {
  private readonly upstreams: Upstream[];
  private readonly resolutions = new Map<string, { expires: number; value: Promise<Resolution> }>();
  private readonly server: Server;
  private readonly info: string;
  private readonly log: (line: string) => void;
  readonly metrics = new Registry();
  private readonly narinfoCounter = new Counter({
    name: 'trustix_cache_narinfo_requests_total',
    help: 'narinfo requests by outcome',
    labelNames: ['outcome'],
    registers: [this.metrics],
  });
  private readonly narCounter = new Counter({
    name: 'trustix_cache_nar_requests_total',
    help: 'NAR requests by outcome (served, refused, aborted)',
    labelNames: ['outcome'],
    registers: [this.metrics],
  });
  private readonly narBytes = new Counter({
    name: 'trustix_cache_nar_bytes_total',
    help: 'verified NAR bytes served',
    registers: [this.metrics],
  });

  constructor(private readonly opts: CacheProxyOptions) {
    this.upstreams = opts.config.upstreams.map((u) => new Upstream(u));
    this.info = cacheInfo(opts.config);
    this.log = opts.log ?? (() => {});
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        // anything unexpected is still a 404 to Nix, and a log line for the operator
        this.log(`error ${req.url}: ${(err as Error).message}`);
        if (!res.headersSent) send(res, 404, 'text/plain', 'not available\n', req.method === 'HEAD');
        else res.destroy();
      });
    });
    this.server.keepAliveTimeout = 30_000;
  }

  async listen(): Promise<URL> {
    const { host, port } = this.opts.config.listen;
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    const a = this.server.address() as AddressInfo;
    const h = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return new URL(`http://${h}:${a.port}/`);
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
    });
    for (const u of this.upstreams) u.close();
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const head = req.method === 'HEAD';
    if (req.method !== 'GET' && !head) {
      res.setHeader('allow', 'GET, HEAD');
      return send(res, 405, 'text/plain', 'only GET and HEAD\n', false);
    }
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/nix-cache-info') return send(res, 200, 'text/x-nix-cache-info', this.info, head);
    if (path === '/healthz') return send(res, 200, 'text/plain', 'ok\n', head);
    if (path === '/metrics') {
      return send(res, 200, this.metrics.contentType, await this.metrics.metrics(), head);
    }
    let m = NARINFO_PATH.exec(path);
    if (m) return this.serveNarinfo(m[1], res, head);
    m = NAR_PATH.exec(path);
    if (m) return this.serveNar(m[1], m[2], res, head);
    return send(res, 404, 'text/plain', 'not found\n', head);
  }

  private async serveNarinfo(hashPart: string, res: ServerResponse, head: boolean): Promise<void> {
    const r = await this.resolve(hashPart);
    if (!r.ok) {
      this.narinfoCounter.inc({ outcome: 'refused' });
      return send(res, 404, 'text/plain', `${r.reason}\n`, head);
    }
    this.narinfoCounter.inc({ outcome: 'served' });
    return send(res, 200, 'text/x-nix-narinfo', r.narinfo, head);
  }

  private async serveNar(
    hashPart: string,
    narHashText: string,
    res: ServerResponse,
    head: boolean,
  ): Promise<void> {
    const r = await this.resolve(hashPart);
    const wanted = decodeNix32(narHashText, 32);
    if (!r.ok || !r.narHash.equals(wanted)) {
      this.narCounter.inc({ outcome: 'refused' });
      return send(res, 404, 'text/plain', r.ok ? 'not the decided NAR\n' : `${r.reason}\n`, head);
    }
    const narSize = r.candidates[0].info.narSize;
    if (head) {
      res.writeHead(200, { 'content-type': 'application/x-nix-nar', 'content-length': narSize });
      res.end();
      return;
    }
    // the first upstream that answers 200 serves the bytes; candidates may grow while we try
    for (let i = 0; i < r.candidates.length; i++) {
      const { upstream, info } = r.candidates[i];
      let got: { res: IncomingMessage; req: ClientRequest };
      try {
        const compression = parseCompression(info.compression);
        got = await upstream.get(info.url);
        if (got.res.statusCode !== 200) {
          got.res.resume();
          throw new UpstreamError(`${upstream.cfg.url}${info.url}: HTTP ${got.res.statusCode}`);
        }
        got.req.setTimeout(this.opts.config.narIdleTimeoutMs, () =>
          got.req.destroy(new UpstreamError(`${upstream.cfg.url}${info.url}: stalled`)),
        );
        await streamVerified(got.res, createDecompressor(compression), r.narHash, narSize, res);
        this.narCounter.inc({ outcome: 'served' });
        this.narBytes.inc(narSize);
        return;
      } catch (err) {
        if (res.headersSent) {
          // Content-Length promised NarSize bytes and the last chunk was held back: cutting the
          // connection now means the client can never complete (or import) this NAR
          res.destroy();
          this.narCounter.inc({ outcome: 'aborted' });
          this.log(`nar ${hashPart}: aborted: ${(err as Error).message}`);
          return;
        }
        this.log(`nar ${hashPart}: ${(err as Error).message}`);
      }
    }
    this.narCounter.inc({ outcome: 'refused' });
    return send(res, 404, 'text/plain', 'no upstream could serve this NAR\n', false);
  }

  /** Decides a hash part and finds matching upstream narinfos; cached briefly, shared by concurrent callers. */
  resolve(hashPart: string): Promise<Resolution> {
    const now = Date.now();
    const hit = this.resolutions.get(hashPart);
    if (hit && hit.expires > now) return hit.value;
    const value = this.resolveNow(hashPart);
    const entry = { expires: Number.POSITIVE_INFINITY, value };
    this.resolutions.delete(hashPart);
    this.resolutions.set(hashPart, entry);
    if (this.resolutions.size > MAX_CACHED_RESOLUTIONS) {
      this.resolutions.delete(this.resolutions.keys().next().value!);
    }
    value.then((r) => {
      const ttl = r.ok ? this.opts.config.decisionTtlMs : this.opts.config.negativeTtlMs;
      entry.expires = Date.now() + ttl;
    });
    return value;
  }

  private async resolveNow(hashPart: string): Promise<Resolution> {
    let decision: Decision;
    try {
      ({ decision } = await this.opts.decider.decide(hashPart, this.opts.config.protocol));
    } catch (err) {
      this.log(`narinfo ${hashPart}: deciding failed: ${(err as Error).message}`);
      return { ok: false, reason: `deciding failed: ${(err as Error).message}` };
    }
    if (!decision.decided || decision.value === undefined) {
      this.log(`narinfo ${hashPart}: no decision: ${decision.reason}`);
      return { ok: false, reason: `no decision: ${decision.reason}` };
    }
    const narHash = fromHexStrict(decision.value) ?? Buffer.alloc(0);
    if (narHash.length !== 32) {
      this.log(`narinfo ${hashPart}: the decided value is not a SHA-256 NAR hash`);
      return { ok: false, reason: 'the decided value is not a SHA-256 NAR hash' };
    }
    const candidates = await this.findCandidates(hashPart, narHash);
    if (candidates.length === 0) {
      this.log(`narinfo ${hashPart}: decided sha256:${encodeNix32(narHash)} but no upstream has it`);
      return { ok: false, reason: 'decided, but no upstream has a narinfo with the decided NAR hash' };
    }
    this.log(
      `narinfo ${hashPart}: decided sha256:${encodeNix32(narHash)} (${decision.reason}); from ${candidates[0].upstream.cfg.url}`,
    );
    return {
      ok: true,
      narHash,
      decision,
      candidates,
      narinfo: this.servedNarinfo(hashPart, narHash, candidates[0].info),
    };
  }

  /** The upstream narinfo as the proxy serves it: its own uncompressed NAR URL, its own signature only. */
  private servedNarinfo(hashPart: string, narHash: Buffer, info: NarInfo): string {
    const served = signNarInfo(
      {
        storePath: info.storePath,
        url: narUrl(hashPart, narHash),
        compression: 'none',
        fileHash: narHash,
        fileSize: info.narSize,
        narHash,
        narSize: info.narSize,
        references: info.references,
        ...(info.deriver !== undefined ? { deriver: info.deriver } : {}),
        ...(info.system !== undefined ? { system: info.system } : {}),
        ...(info.ca !== undefined ? { ca: info.ca } : {}),
        sigs: [],
        extra: [],
      },
      this.opts.key,
    );
    return formatNarInfo(served);
  }

  /**
   * Asks every upstream at once and settles on the first that has a narinfo for this store path
   * with the decided NAR hash, so a slow or dead upstream delays nothing once another answered.
   * Later matches are appended for NAR fallback.
   */
  private findCandidates(hashPart: string, narHash: Buffer): Promise<Candidate[]> {
    const found: Candidate[] = [];
    return new Promise((resolve) => {
      let pending = this.upstreams.length;
      const settle = () => {
        if (--pending === 0 || found.length === 1) resolve(found);
      };
      for (const upstream of this.upstreams) {
        upstream.narinfo(hashPart).then(
          (info) => {
            if (info === undefined) return settle();
            if (parseStorePath(info.storePath).hashPart !== hashPart) {
              this.log(
                `narinfo ${hashPart}: ${upstream.cfg.url} answered for another path (${info.storePath})`,
              );
            } else if (!info.narHash.equals(narHash)) {
              this.log(`narinfo ${hashPart}: ${upstream.cfg.url} has a different NAR (not the decided one)`);
            } else {
              try {
                parseCompression(info.compression);
                found.push({ upstream, info });
              } catch (err) {
                this.log(`narinfo ${hashPart}: ${upstream.cfg.url}: ${(err as Error).message}`);
              }
            }
            settle();
          },
          (err: unknown) => {
            this.log(`narinfo ${hashPart}: ${(err as Error).message}`);
            settle();
          },
        );
      }
    });
  }
}

function narUrl(hashPart: string, narHash: Buffer): string {
  return `nar/${hashPart}-${encodeNix32(narHash)}.nar`;
}

function send(res: ServerResponse, status: number, type: string, body: string, head: boolean): void {
  const bytes = Buffer.from(body, 'utf8');
  res.writeHead(status, { 'content-type': type, 'content-length': bytes.length });
  res.end(head ? undefined : bytes);
}

/**
 * Streams `source` through `decompress` into `res` while hashing; the final chunk is written only
 * after the size and SHA-256 matched. Throws (after headers went out) on any mismatch.
 */
async function streamVerified(
  source: IncomingMessage,
  decompress: Transform,
  narHash: Buffer,
  narSize: number,
  res: ServerResponse,
): Promise<void> {
  const hash = createHash('sha256');
  let seen = 0;
  let held: Buffer | undefined;
  const write = async (chunk: Buffer) => {
    if (!res.headersSent) {
      res.writeHead(200, { 'content-type': 'application/x-nix-nar', 'content-length': narSize });
    }
    if (!res.write(chunk)) {
      await new Promise<void>((resolve, reject) => {
        const done = (err?: Error) => {
          res.off('drain', done);
          res.off('close', closed);
          if (err) reject(err);
          else resolve();
        };
        const closed = () => done(new UpstreamError('the client went away'));
        res.on('drain', done);
        res.on('close', closed);
      });
    }
  };
  await pipeline(source, decompress, async (chunks: AsyncIterable<Buffer>) => {
    for await (const chunk of chunks) {
      seen += chunk.length;
      if (seen > narSize) throw new UpstreamError(`NAR is larger than its NarSize ${narSize}`);
      hash.update(chunk);
      if (held) await write(held);
      held = chunk;
    }
  });
  if (seen !== narSize) throw new UpstreamError(`NAR is ${seen} bytes, NarSize says ${narSize}`);
  if (!hash.digest().equals(narHash)) throw new UpstreamError('NAR hash mismatch: not the decided NAR');
  if (held) await write(held);
  res.end();
}
