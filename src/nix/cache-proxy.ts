/**
 * The voting binary cache proxy: a Nix substituter that serves a store path only when the user's
 * decision procedure, run over independent verified logs, agrees on its NAR hash.
 *
 * - `/<hash>.narinfo`: decide the NAR hash for the hash part. The narinfo served is built from the
 *   vote alone: NarHash the decided value; StorePath, NarSize and References from the log entries
 *   that voted for it (which must agree); Deriver when those entries all name the same one. It
 *   points at the proxy's own uncompressed NAR URL and carries only the proxy's signature. An
 *   upstream is used only when its narinfo says the same (path, NarHash, NarSize, References). No
 *   decision, or no such upstream: 404 with the reason, never 5xx (Nix treats 5xx as a broken cache
 *   and fails the build instead of building locally).
 * - `/nar/<hash>-<narhash>.nar`: fetch the NAR from an upstream that has it, decompress and hash
 *   it. A NAR up to `verify_first_max` bytes is checked whole before its first byte is sent, so a
 *   cache serving bad bytes is passed over for the next; a larger one streams with Content-Length
 *   = NarSize and its last chunk held back until the hash is checked, so a wrong NAR is always cut
 *   short and never imported. A cache that served bad bytes is tried last for `bad_upstream_ttl`.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Counter, Registry } from 'prom-client';
import { decodeBase64Strict, fromHexStrict } from '../core/bytes.js';
import { decodeEntry } from '../core/entry.js';
import { FormatError } from '../core/errors.js';
import type { Decision, LogResult } from '../decide/decide.js';
import { decodeNix32, encodeNix32 } from './base32.js';
import { type CacheConfig, cacheInfo } from './cache-config.js';
import {
  BadNarError,
  createUpstream,
  readLimited,
  type Upstream,
  UpstreamError,
  type UpstreamFile,
} from './cache-upstream.js';
import {
  createDecompressor,
  decompressWhole,
  type NarCompression,
  narExtension,
  parseCompression,
} from './compression.js';
import { parseNixMetadata } from './entry.js';
import type { NixSecretKey } from './keys.js';
import { signNarInfo } from './keys.js';
import { formatNarInfo, type NarInfo } from './narinfo.js';
import { NIX_STORE_DIR } from './store-path.js';

/** What the proxy needs from a decider (src/decide/decide.ts implements it). */
export interface NarHashDecider {
  decide(key: string, protocol: string): Promise<{ decision: Decision; results: readonly LogResult[] }>;
}

const NARINFO_PATH = /^\/([0-9a-df-np-sv-z]{32})\.narinfo$/;
const NAR_PATH = /^\/nar\/([0-9a-df-np-sv-z]{32})-([0-9a-df-np-sv-z]{52})\.nar(\.xz|\.zst|\.bz2)?$/;
const COMPRESSION_OF_EXTENSION: Record<string, NarCompression> = {
  '': 'none',
  '.xz': 'xz',
  '.zst': 'zstd',
  '.bz2': 'bzip2',
};
/**
 * A compressed NAR read whole (to check it before sending) may be at most this much larger than
 * its NarSize: incompressible data grows by a few bytes per block in xz, zstd and bzip2.
 */
const slack = (narSize: number) => (narSize >> 3) + 64 * 1024;
const MAX_CACHED_RESOLUTIONS = 100_000;
/** A hash part no log holds: the start-up check looks it up to see each log answer and verify. */
const PROBE_KEY = '00000000000000000000000000000000';

/** What the vote says a store path is: everything Nix registers from a narinfo. */
export interface VotedPath {
  storePath: string;
  narHash: Buffer;
  narSize: number;
  /** Base names, sorted. */
  references: string[];
  deriver?: string;
}

/**
 * The store path the decision voted for, from the metadata of the entries of the logs whose value
 * won. Those entries must agree on name, NAR size and references (builders that agree write equal
 * entries); if they do not, the vote does not say what to register and the answer is a reason
 * string. Deriver is kept only when every such entry names the same one (it is informational and
 * not covered by Nix signatures; differing derivers of one output are legitimate).
 */
export function votedPath(
  hashPart: string,
  decision: Decision,
  results: readonly LogResult[],
): VotedPath | string {
  const narHash = fromHexStrict(decision.value ?? '');
  if (narHash?.length !== 32) return 'the decided value is not a SHA-256 NAR hash';
  const voters = results.filter((r) => r.status === 'present' && r.value === decision.value);
  if (voters.length === 0) return 'no log entry holds the decided value, so nothing says what to register';
  const seen: Array<{ log: string; text: string }> = [];
  let first: VotedPath | undefined;
  const derivers = new Set<string | undefined>();
  for (const r of voters) {
    const data = r.answer?.entry?.data;
    const bytes = data === undefined ? undefined : decodeBase64Strict(data);
    let meta: ReturnType<typeof parseNixMetadata>;
    try {
      if (bytes === undefined) throw new FormatError('no entry in the answer');
      meta = parseNixMetadata(decodeEntry(bytes).metadata);
    } catch (err) {
      return `log ${r.name} voted for the value but its entry has no usable Nix metadata: ${(err as Error).message}`;
    }
    const text = `${meta.name} ${meta.narSize} [${meta.references.join(' ')}]`;
    seen.push({ log: r.name, text });
    derivers.add(meta.deriver);
    first ??= {
      storePath: `${NIX_STORE_DIR}/${hashPart}-${meta.name}`,
      narHash,
      narSize: meta.narSize,
      references: meta.references,
    };
  }
  if (new Set(seen.map((s) => s.text)).size > 1) {
    return `the logs that agree on the NAR hash disagree on name, NarSize or References (${seen
      .map((s) => `${s.log}: ${s.text}`)
      .join('; ')})`;
  }
  const voted = first!;
  if (voted.narSize <= 0) return 'the voted entries give NarSize 0';
  const [deriver] = derivers;
  if (derivers.size === 1 && deriver !== undefined) voted.deriver = deriver;
  return voted;
}

/** Why an upstream narinfo cannot serve the voted path, or undefined when it matches. */
function contradiction(info: NarInfo, voted: VotedPath): string | undefined {
  if (info.storePath !== voted.storePath) return `its narinfo is for ${info.storePath}`;
  if (!info.narHash.equals(voted.narHash)) return 'its NarHash is not the voted one';
  if (info.narSize !== voted.narSize) return `its NarSize ${info.narSize} is not the voted ${voted.narSize}`;
  const refs = [...new Set(info.references)].sort();
  if (refs.join(' ') !== voted.references.join(' ')) return 'its References are not the voted ones';
  try {
    parseCompression(info.compression);
  } catch (err) {
    return (err as Error).message;
  }
  return undefined;
}

/** A per-log summary of a decision: `a=<hex prefix>, b=absent, c=failed(http.timeout)`. */
function tally(d: Decision): string {
  return d.logs
    .map((l) => {
      if (l.value !== undefined) return `${l.name}=${l.value.slice(0, 12)}`;
      if (l.status === 'failed') return `${l.name}=failed(${l.check ?? ''})`;
      return `${l.name}=${l.status}`;
    })
    .join(', ');
}

interface Candidate {
  upstream: Upstream;
  info: NarInfo;
}

/**
 * The upstreams with a narinfo that matches the vote, in the order they answered; grows while
 * slower upstreams answer, so a NAR request can fall over to one that answered late.
 */
class Candidates {
  readonly found: Candidate[] = [];
  /** Why each upstream that does not qualify was passed over. */
  readonly passed: string[] = [];
  settled = false;
  private waiters: Array<() => void> = [];

  add(c: Candidate): void {
    this.found.push(c);
    this.wake();
  }

  settle(): void {
    this.settled = true;
    this.wake();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private changed(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }

  /** The first candidate to answer; undefined once every upstream answered and none qualifies. */
  async first(): Promise<Candidate | undefined> {
    while (this.found.length === 0 && !this.settled) await this.changed();
    return this.found[0];
  }

  /** The next candidate not yet tried: those in good standing first, then the ones marked bad. */
  async next(tried: ReadonlySet<Candidate>): Promise<Candidate | undefined> {
    for (;;) {
      const good = this.found.find((c) => !tried.has(c) && c.upstream.bad() === undefined);
      if (good) return good;
      if (this.settled) return this.found.find((c) => !tried.has(c));
      await this.changed();
    }
  }
}

/** The outcome for one hash part: the voted path with the upstreams that have it, or why not. */
type Resolution =
  | {
      ok: true;
      voted: VotedPath;
      decision: Decision;
      candidates: Candidates;
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
  private readonly badNars = new Counter({
    name: 'trustix_cache_bad_nars_total',
    help: 'NARs an upstream served that did not match the vote, by upstream',
    labelNames: ['upstream'],
    registers: [this.metrics],
  });

  constructor(private readonly opts: CacheProxyOptions) {
    this.upstreams = opts.config.upstreams.map(createUpstream);
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

  /**
   * The start-up check: every upstream's `nix-cache-info` and every log's verified answer for a
   * key none holds, one line each, with `ok` or what is wrong. Problems are reported, not fatal:
   * a cache or log that is down now may be up by the first request.
   */
  async check(): Promise<string[]> {
    const ups = this.upstreams.map(async (u) => {
      try {
        const text = await u.cacheInfo();
        if (text === undefined)
          return `upstream ${u.url}: PROBLEM: no nix-cache-info (is this a binary cache?)`;
        const storeDir = /^StoreDir: (.*)$/m.exec(text)?.[1];
        if (storeDir !== undefined && storeDir !== NIX_STORE_DIR) {
          return `upstream ${u.url}: PROBLEM: its StoreDir is ${storeDir}, not ${NIX_STORE_DIR}; none of its paths can match`;
        }
        return `upstream ${u.url}: ok (StoreDir ${storeDir ?? 'not given'})`;
      } catch (err) {
        return `upstream ${u.url}: PROBLEM: ${(err as Error).message}`;
      }
    });
    let logs: string[];
    try {
      const { results } = await this.opts.decider.decide(PROBE_KEY, this.opts.config.protocol);
      logs = results.map((r) =>
        r.status === 'failed'
          ? `log ${r.name}: PROBLEM: ${r.check}: ${r.reason}`
          : `log ${r.name}: ok (verified answer at size ${r.size}, ${Math.round(r.ms)} ms)`,
      );
    } catch (err) {
      logs = [`logs: PROBLEM: ${(err as Error).message}`];
    }
    return [...(await Promise.all(ups)), ...logs];
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
    if (m) return this.serveNar(m[1], m[2], COMPRESSION_OF_EXTENSION[m[3] ?? '']!, res, head);
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
    compression: NarCompression,
    res: ServerResponse,
    head: boolean,
  ): Promise<void> {
    const r = await this.resolve(hashPart);
    const wanted = decodeNix32(narHashText, 32);
    if (!r.ok || !r.voted.narHash.equals(wanted)) {
      this.narCounter.inc({ outcome: 'refused' });
      const why = r.ok ? 'not the decided NAR' : r.reason;
      this.log(`nar ${hashPart}: 404: ${why}`);
      return send(res, 404, 'text/plain', `${why}\n`, head);
    }
    const { narHash, narSize } = r.voted;
    if (head) {
      const length = compression === 'none' ? { 'content-length': narSize } : {};
      res.writeHead(200, { 'content-type': 'application/x-nix-nar', ...length });
      res.end();
      return;
    }
    const cfg = this.opts.config;
    const tried = new Set<Candidate>();
    const failures: string[] = [];
    for (let c = await r.candidates.next(tried); c; c = await r.candidates.next(tried)) {
      tried.add(c);
      const { upstream, info } = c;
      const has = parseCompression(info.compression);
      // the bytes go to Nix as the upstream has them when they are in the compression the URL
      // names; only an uncompressed URL can be served from an upstream of another compression
      const passThrough = has === compression;
      if (!passThrough && compression !== 'none') {
        failures.push(`${upstream.url}: has it compressed as ${has}, not ${compression}`);
        continue;
      }
      try {
        const file = await upstream.open(info.url, cfg.narIdleTimeoutMs);
        if (narSize <= cfg.verifyFirstMax) {
          const limit = has === 'none' ? narSize : narSize + slack(narSize);
          const body = await readLimited(
            file.body,
            limit,
            () => new BadNarError(`the file is larger than ${limit} bytes, more than its NarSize allows`),
          );
          const nar = await decompressWhole(has, body, narSize);
          checkNar(nar, narHash, narSize);
          const out = passThrough ? body : nar;
          res.writeHead(200, { 'content-type': 'application/x-nix-nar', 'content-length': out.length });
          res.end(out);
        } else if (passThrough) {
          await streamBeside(file, has, narHash, narSize, res);
        } else {
          await streamVerified(file.body, createDecompressor(has), narHash, narSize, res);
        }
        this.narCounter.inc({ outcome: 'served' });
        this.narBytes.inc(narSize);
        return;
      } catch (e) {
        const err = e instanceof FormatError ? new BadNarError(e.message) : (e as Error);
        if (err instanceof BadNarError) {
          upstream.markBad(err.message, cfg.badUpstreamTtlMs);
          this.badNars.inc({ upstream: upstream.url });
        }
        const why = `${err instanceof BadNarError ? 'bad bytes from' : 'failed:'} ${upstream.url}: ${err.message}`;
        if (res.headersSent) {
          // the last chunk was held back: cutting the connection now means the client can never
          // complete (or import) this NAR
          res.destroy();
          this.narCounter.inc({ outcome: 'aborted' });
          this.log(`nar ${hashPart}: aborted: ${why}`);
          return;
        }
        this.log(`nar ${hashPart}: ${why}`);
        failures.push(why);
      }
    }
    this.narCounter.inc({ outcome: 'refused' });
    const why = `no upstream could serve the decided NAR: ${failures.join('; ') || 'none has it'}`;
    this.log(`nar ${hashPart}: 404: ${why}`);
    return send(res, 404, 'text/plain', `${why}\n`, false);
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
    const refuse = (reason: string): Resolution => {
      this.log(`narinfo ${hashPart}: 404: ${reason}`);
      return { ok: false, reason };
    };
    // the upstreams are asked while the logs are, so a cold narinfo waits for the slower of the two
    // rather than their sum (their answers are dropped when there is no decision)
    const asked = this.upstreams.map((upstream) => {
      const info = upstream.narinfo(hashPart);
      info.catch(() => {});
      return { upstream, info };
    });
    let decision: Decision;
    let results: readonly LogResult[];
    try {
      ({ decision, results } = await this.opts.decider.decide(hashPart, this.opts.config.protocol));
    } catch (err) {
      return refuse(`deciding failed: ${(err as Error).message}`);
    }
    if (!decision.decided || decision.value === undefined) {
      return refuse(`no decision: ${decision.reason} (${tally(decision)})`);
    }
    const voted = votedPath(hashPart, decision, results);
    if (typeof voted === 'string') return refuse(`no decision: ${voted}`);
    const candidates = this.findCandidates(hashPart, voted, asked);
    const first = await candidates.first();
    if (first === undefined) {
      return refuse(
        `decided sha256:${encodeNix32(voted.narHash)} (${decision.reason}), but no upstream has it: ${candidates.passed.join('; ')}`,
      );
    }
    this.log(
      `narinfo ${hashPart}: decided sha256:${encodeNix32(voted.narHash)} (${decision.reason}); from ${first.upstream.url}`,
    );
    // A NAR checked whole before sending goes out uncompressed, so that any upstream, whatever its
    // compression, can stand in for one that served bad bytes; a larger one goes out as the first
    // upstream compressed it, checked beside (a bad one is cut short, and no fallback could help)
    const { serveCompressed, verifyFirstMax } = this.opts.config;
    const compression =
      serveCompressed && voted.narSize > verifyFirstMax ? parseCompression(first.info.compression) : 'none';
    return { ok: true, voted, decision, candidates, narinfo: this.servedNarinfo(voted, compression) };
  }

  /**
   * The narinfo the proxy serves: the voted path, its own NAR URL naming the compression it serves,
   * its own signature only. FileHash and FileSize are given only for an uncompressed NAR, where
   * they are the voted NarHash and NarSize: a compressed file's hash and size are not in the vote,
   * and the file may come from any upstream with that compression.
   */
  private servedNarinfo(voted: VotedPath, compression: NarCompression): string {
    const hashPart = voted.storePath.slice(NIX_STORE_DIR.length + 1, NIX_STORE_DIR.length + 33);
    const served = signNarInfo(
      {
        storePath: voted.storePath,
        url: `${narUrl(hashPart, voted.narHash)}${narExtension(compression)}`,
        compression,
        ...(compression === 'none' ? { fileHash: voted.narHash, fileSize: voted.narSize } : {}),
        narHash: voted.narHash,
        narSize: voted.narSize,
        references: voted.references,
        ...(voted.deriver !== undefined ? { deriver: voted.deriver } : {}),
        sigs: [],
        extra: [],
      },
      this.opts.key,
    );
    return formatNarInfo(served);
  }

  /**
   * The upstreams' narinfos (asked all at once): those that match the vote become candidates as
   * they answer, so a slow or dead upstream delays nothing once another answered.
   */
  private findCandidates(
    hashPart: string,
    voted: VotedPath,
    asked: ReadonlyArray<{ upstream: Upstream; info: Promise<NarInfo | undefined> }>,
  ): Candidates {
    const out = new Candidates();
    let pending = asked.length;
    const settle = () => {
      if (--pending === 0) out.settle();
    };
    for (const { upstream, info: answer } of asked) {
      answer.then(
        (info) => {
          const why = info === undefined ? 'no narinfo' : contradiction(info, voted);
          if (why === undefined) out.add({ upstream, info: info! });
          else {
            out.passed.push(`${upstream.url}: ${why}`);
            if (info !== undefined) this.log(`narinfo ${hashPart}: skipped ${upstream.url}: ${why}`);
          }
          settle();
        },
        (err: unknown) => {
          out.passed.push((err as Error).message);
          this.log(`narinfo ${hashPart}: ${(err as Error).message}`);
          settle();
        },
      );
    }
    return out;
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

/** Throws BadNarError unless `nar` is the voted NAR. */
function checkNar(nar: Buffer, narHash: Buffer, narSize: number): void {
  if (nar.length !== narSize) throw new BadNarError(`NAR is ${nar.length} bytes, NarSize says ${narSize}`);
  if (!createHash('sha256').update(nar).digest().equals(narHash)) {
    throw new BadNarError('NAR hash mismatch: not the decided NAR');
  }
}

/**
 * Hashes the NAR coming out of `decompress` (fed by the caller): resolves once its size and
 * SHA-256 matched, BadNarError on any mismatch or corrupt data.
 */
async function hashOut(decompress: Transform, narHash: Buffer, narSize: number): Promise<void> {
  const hash = createHash('sha256');
  let seen = 0;
  try {
    for await (const chunk of decompress as AsyncIterable<Buffer>) {
      seen += chunk.length;
      if (seen > narSize) throw new BadNarError(`NAR is larger than its NarSize ${narSize}`);
      hash.update(chunk);
    }
  } catch (err) {
    throw err instanceof FormatError ? new BadNarError(err.message) : err;
  }
  if (seen !== narSize) throw new BadNarError(`NAR is ${seen} bytes, NarSize says ${narSize}`);
  if (!hash.digest().equals(narHash)) throw new BadNarError('NAR hash mismatch: not the decided NAR');
}

/** Resolves when `w` can take more (or will never: closed). */
function drained(w: {
  once(e: 'drain' | 'close', f: () => void): unknown;
  off(e: 'drain' | 'close', f: () => void): unknown;
}): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      w.off('drain', done);
      w.off('close', done);
      resolve();
    };
    w.once('drain', done);
    w.once('close', done);
  });
}

/** Writes to a NAR response: headers with the first chunk, waits while the client is full. */
function narWriter(res: ServerResponse, length: number | undefined): (chunk: Buffer) => Promise<void> {
  return async (chunk) => {
    if (!res.headersSent) {
      res.writeHead(200, {
        'content-type': 'application/x-nix-nar',
        ...(length !== undefined ? { 'content-length': length } : {}),
      });
    }
    if (!res.write(chunk)) {
      await drained(res);
      if (res.destroyed) throw new UpstreamError('the client went away');
    }
  };
}

/**
 * Sends the upstream's file as it is (Nix decompresses it) while decompressing and hashing it
 * beside: every chunk goes out as it arrives except the last, which is written only after the
 * NAR's size and SHA-256 matched. Throws (after the headers went out) on any mismatch.
 */
async function streamBeside(
  file: UpstreamFile,
  compression: NarCompression,
  narHash: Buffer,
  narSize: number,
  res: ServerResponse,
): Promise<void> {
  const decompress = createDecompressor(compression);
  let failure: unknown;
  const checked = hashOut(decompress, narHash, narSize);
  checked.catch((err: unknown) => {
    failure ??= err;
  });
  const write = narWriter(res, file.size);
  let held: Buffer | undefined;
  try {
    for await (const chunk of file.body as AsyncIterable<Buffer>) {
      if (failure !== undefined) throw failure;
      if (held) await write(held);
      held = chunk;
      if (!decompress.write(chunk)) await Promise.race([drained(decompress), checked]);
    }
    decompress.end();
    await checked;
  } catch (err) {
    decompress.destroy();
    file.body.destroy();
    throw failure ?? err;
  }
  if (held) await write(held);
  res.end();
}

/**
 * Runs `source` through `decompress`, hashing, and hands every chunk but the last to `emit`; the
 * last is returned once size and SHA-256 matched. BadNarError on any mismatch.
 */
async function verify(
  source: Readable,
  decompress: Transform,
  narHash: Buffer,
  narSize: number,
  emit: (chunk: Buffer) => void | Promise<void>,
): Promise<Buffer | undefined> {
  const hash = createHash('sha256');
  let seen = 0;
  let held: Buffer | undefined;
  await pipeline(source, decompress, async (chunks: AsyncIterable<Buffer>) => {
    for await (const chunk of chunks) {
      seen += chunk.length;
      if (seen > narSize) throw new BadNarError(`NAR is larger than its NarSize ${narSize}`);
      hash.update(chunk);
      if (held) await emit(held);
      held = chunk;
    }
  });
  if (seen !== narSize) throw new BadNarError(`NAR is ${seen} bytes, NarSize says ${narSize}`);
  if (!hash.digest().equals(narHash)) throw new BadNarError('NAR hash mismatch: not the decided NAR');
  return held;
}

/**
 * Streams the NAR into `res` as it is checked; the final chunk is written only after the size and
 * SHA-256 matched. Throws (after headers went out) on any mismatch.
 */
async function streamVerified(
  source: Readable,
  decompress: Transform,
  narHash: Buffer,
  narSize: number,
  res: ServerResponse,
): Promise<void> {
  const write = narWriter(res, narSize);
  const last = await verify(source, decompress, narHash, narSize, write);
  if (last) await write(last);
  res.end();
}
