/**
 * The HTTP API (see docs/server.md): per-log C2SP tlog-tiles endpoints, lookups and proofs (read),
 * submissions (write), /metrics (metrics) and /healthz (every listener). One Fastify instance per
 * listener, each with only the routes of the APIs that listener serves.
 */
import { isUtf8 } from 'node:buffer';
import { createServer, type IncomingMessage, Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { gzipSync } from 'node:zlib';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Counter } from 'prom-client';
import { decodeBase64Strict, toBase64 } from '../core/bytes.js';
import {
  type Entry,
  keyFromText,
  MAX_KEY_LENGTH,
  PROTOCOL_PATTERN,
  PROTOCOL_RE,
  validateEntry,
} from '../core/entry.js';
import { StateError, StorageError, StorageUnavailableError, TrustixError } from '../core/errors.js';
import { MAX_LOOKUP_KEYS } from '../core/lookup.js';
import { receiptsJson } from '../core/receipts.js';
import { parseTilePath } from '../core/tiles.js';
import { type Log, NotSequencingError, PoolFullError, type SubmitReceipt } from '../log/log.js';
import { readEntryBundle, readEntryBundleAsync, readHashTile, readHashTileAsync } from '../log/serving.js';
import { StorageFullError } from '../storage/reserve.js';
import { AuthError, SIGNATURE_HEADER, type SignedRequest, type Writer, WriterAuth } from './auth.js';
import type { ApiName, Limits } from './config.js';
import type { Cosigning } from './cosign.js';
import type { LookupCache } from './lookup-cache.js';
import type { LogMetrics, Metrics } from './metrics.js';
import type { SequencerRole } from './sequencer-role.js';

export const PROTOCOLS = ['tlog-tiles', 'trustix-lookup/v1', 'trustix-submit/v1'] as const;

const JSON_TYPE = 'application/json; charset=utf-8';
const TEXT_TYPE = 'text/plain; charset=utf-8';
const IMMUTABLE = 'public, max-age=31536000, immutable';
const NO_STORE = 'no-store';
const CORS = 'access-control-allow-origin';
const CHECKPOINT_HEADERS = { 'content-type': TEXT_TYPE, 'cache-control': NO_STORE, [CORS]: '*' };
const TILE_HEADERS = { 'content-type': 'application/octet-stream', 'cache-control': IMMUTABLE, [CORS]: '*' };
const LOOKUP_HEADERS = { 'content-type': JSON_TYPE, 'cache-control': NO_STORE, [CORS]: '*' };

export interface ServedLog {
  id: string;
  log: Log;
  metrics: LogMetrics;
  /** Set once the log is closing: reads and writes get 503 from then on. */
  closed: boolean;
  /** Why a closed log is unavailable, when not because the server shuts down (a mirror catching up). */
  closedReason?: string;
  /** Answer bodies (UTF-8 JSON) by the raw path of their GET. */
  lookupCache: LookupCache<Buffer>;
  /** Gzipped full entry bundles (immutable) by their path; see answerTile. */
  gzipBundles: LookupCache<Buffer>;
  /** Gathers witness cosignatures when the log has a witness policy. */
  cosign?: Cosigning;
  /** For a log that several nodes share: whether this node sequences it, and who does. */
  role?: SequencerRole;
}

/** The note served at `<prefix>/checkpoint`: with cosignatures once the witness quorum is met. */
function servedCheckpoint(sl: ServedLog): string {
  return sl.cosign?.checkpoint() ?? sl.log.head().checkpoint;
}

export interface AppContext {
  logs: ReadonlyMap<string, ServedLog>;
  auth: WriterAuth;
  metrics: Metrics;
  limits: Limits;
  /** True from the moment the server starts draining (SIGTERM). */
  draining(): boolean;
  /** Wraps every submission, to count those in flight (reported when draining starts). */
  trackSubmit<T>(p: Promise<T>): Promise<T>;
  /**
   * True from the start of a drain until the logs are closed and every request in flight is
   * answered: idle keep-alive connections stay open meanwhile, so a request a client sends on one
   * gets a 503 answer instead of a reset.
   */
  holdIdleConnections(): boolean;
  /** Open connections over every listener (limits.maxConnections). */
  connections: { open: number };
  /**
   * Requests being answered over every listener (those the fast path answers at once are not
   * counted); `idle` is called each time the count falls to 0.
   */
  requests: { open: number; idle(): void };
  /** Bytes of signed request bodies being read before their signature can be checked. */
  unverifiedBytes: { reserved: number };
}

/** An error answered as `{ "error", "code" }` with `status`. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

function notFound(what: string): HttpError {
  return new HttpError(404, 'NOT_FOUND', what);
}

function unavailable(message: string, retryAfter = 1): HttpError {
  return new HttpError(503, 'UNAVAILABLE', message, { 'retry-after': String(retryAfter) });
}

/**
 * A write to a shared log that this node does not sequence: 503, with where the sequencer takes
 * writes (Trustix-Sequencer), when known. Writes are not forwarded (docs/scale-out.md).
 */
function notSequencing(role: SequencerRole): HttpError {
  const url = role.sequencerUrl;
  const message =
    url === undefined
      ? 'this node does not sequence this log; no sequencer is known now, retry'
      : `this node does not sequence this log; send writes to ${url}`;
  return new HttpError(503, 'NOT_SEQUENCER', message, {
    'retry-after': '1',
    ...(url !== undefined ? { 'trustix-sequencer': url } : {}),
  });
}

function errorBody(err: HttpError): string {
  return JSON.stringify({ error: err.message, code: err.code });
}

function sendError(reply: FastifyReply, err: HttpError): void {
  reply.code(err.status).header('content-type', JSON_TYPE).header('cache-control', NO_STORE);
  for (const [k, v] of Object.entries(err.headers)) reply.header(k, v);
  reply.send(errorBody(err));
}

/**
 * A whole HTTP/1.1 error answer in the API's error shape, for a socket no request object belongs
 * to (malformed requests, connections over the cap); the connection is closed after it.
 */
function rawErrorResponse(err: HttpError): string {
  const body = errorBody(err);
  let head = `HTTP/1.1 ${err.status} ${STATUS_TEXT[err.status] ?? 'Error'}\r\ncontent-type: ${JSON_TYPE}\r\ncache-control: ${NO_STORE}\r\n`;
  for (const [k, v] of Object.entries(err.headers)) head += `${k}: ${v}\r\n`;
  return `${head}connection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  408: 'Request Timeout',
  413: 'Payload Too Large',
  431: 'Request Header Fields Too Large',
  503: 'Service Unavailable',
};

/** `err` as the answer to a request Fastify does not see; the connection is closed after it. */
function writeError(res: ServerResponse, err: HttpError): void {
  const body = errorBody(err);
  res.writeHead(err.status, {
    'content-type': JSON_TYPE,
    'cache-control': NO_STORE,
    ...err.headers,
    connection: 'close',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

/** Allowed to send a request's headers (from the connection's start or the previous answer). */
const HEADERS_TIMEOUT_MS = 20_000;

const OVER_CAPACITY = rawErrorResponse(unavailable('too many connections', 5));

/**
 * `/logs/<id>//rest` as `/logs/<id>/rest`: clients join the advertised prefix `/logs/<id>/` and a
 * path with a slash between them.
 */
function joinedPrefix(req: IncomingMessage): void {
  const url = req.url;
  if (url === undefined || !url.startsWith(LOGS_PREFIX)) return;
  const slash = url.indexOf('/', LOGS_PREFIX.length);
  if (slash > 0 && url.charCodeAt(slash + 1) === 0x2f) {
    sentTargets.set(req, url);
    req.url = url.slice(0, slash) + url.slice(slash + 1);
  }
}

/** Request targets as sent, of requests joinedPrefix rewrote (a signature covers what was sent). */
const sentTargets = new WeakMap<IncomingMessage, string>();

/** The answer to a request the HTTP parser refused (Node's `clientError`). */
function clientErrorResponse(code: string | undefined): HttpError {
  switch (code) {
    case 'HPE_HEADER_OVERFLOW':
      return new HttpError(431, 'HEADERS_TOO_LARGE', 'request headers are too large');
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new HttpError(408, 'TIMEOUT', 'request not received in time');
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return new HttpError(413, 'TOO_LARGE', 'chunk extensions are too large');
    default:
      return new HttpError(400, 'BAD_REQUEST', 'malformed HTTP request');
  }
}

/** Maps anything thrown by a handler, a hook or Fastify itself to the API's error shape. */
function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  if (err instanceof AuthError) {
    const headers: Record<string, string> = err.status === 401 ? { 'www-authenticate': 'Bearer' } : {};
    if (err.status === 503) headers['retry-after'] = '1';
    return new HttpError(err.status, err.code, err.message, headers);
  }
  if (err instanceof PoolFullError) return unavailable(err.message, err.retryAfterSeconds);
  // the disk is full: writes are refused (nothing was written), reads go on
  if (err instanceof StorageFullError)
    return new HttpError(507, 'INSUFFICIENT_STORAGE', err.message, { 'retry-after': '60' });
  if (err instanceof StateError || err instanceof StorageUnavailableError) return unavailable(err.message);
  if (err instanceof TrustixError && err.code === 'FORMAT')
    return new HttpError(400, 'BAD_REQUEST', err.message);
  const e = err as { statusCode?: number; code?: string; message?: string; validation?: unknown };
  if (e?.validation) return new HttpError(400, 'BAD_REQUEST', e.message ?? 'invalid request');
  switch (e?.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new HttpError(413, 'TOO_LARGE', 'request body is too large');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return e.statusCode === 415
        ? new HttpError(415, 'UNSUPPORTED_MEDIA_TYPE', 'Content-Type must be application/json')
        : new HttpError(400, 'BAD_REQUEST', e.message ?? 'bad request');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new HttpError(400, 'BAD_REQUEST', 'request body is empty');
  }
  if (typeof e?.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return new HttpError(e.statusCode, 'BAD_REQUEST', e.message ?? 'bad request');
  }
  // a store that fails a read (a database out of reach) says why in one line; anything else is a bug
  const why = err instanceof StorageError ? err.message : ((err as Error)?.stack ?? String(err));
  process.stderr.write(`trustix serve: internal error: ${why}\n`);
  return new HttpError(500, 'INTERNAL', 'internal server error');
}

// Canonical decimal (no sign, no leading zeros, at most 2^53 - 1 digits-wise), checked exactly below.
const DECIMAL_RE = /^(?:0|[1-9][0-9]{0,15})$/;

function parseCount(v: unknown, name: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !DECIMAL_RE.test(v)) {
    throw new HttpError(400, 'BAD_REQUEST', `${name} must be a non-negative decimal integer`);
  }
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new HttpError(400, 'BAD_REQUEST', `${name} is too large`);
  return n;
}

function decodeSegment(s: string, what: string): string {
  // decodeURIComponent returns a string without '%' unchanged (store paths never have one)
  if (!s.includes('%')) return s;
  try {
    return decodeURIComponent(s);
  } catch {
    throw new HttpError(400, 'BAD_REQUEST', `${what} is not valid percent-encoded UTF-8`);
  }
}

/**
 * The raw (undecoded) path after `/logs/<id>/`, without the query: tile paths and lookup keys are
 * parsed from it, since the router's decoding would lose the distinction between "/" and "%2F".
 */
function pathInLog(rawUrl: string): string {
  const q = rawUrl.indexOf('?');
  const path = q < 0 ? rawUrl : rawUrl.slice(0, q);
  const slash = path.indexOf('/', LOGS_PREFIX.length);
  return slash < 0 ? '' : path.slice(slash + 1);
}

const LOGS_PREFIX = '/logs/';

/**
 * The tile or entry bundle at `rest` (`tile/...`): its C2SP bytes, gzipped for an entry bundle when
 * the client accepts gzip (tlog-tiles: entry bundles SHOULD be compressed), with the headers that go
 * with them beyond TILE_HEADERS. Full bundles never change, so their gzipped form is cached.
 */
function answerTile(
  sl: ServedLog,
  rest: string,
  acceptEncoding: string | string[] | undefined,
): { body: Buffer; extra: readonly string[] } {
  const t = parseTile(rest);
  return encodeTile(sl, rest, t, readTile(sl, rest, t), acceptEncoding);
}

/** A tile's answer: an entry bundle gzipped when the client accepts it (see answerTile). */
function encodeTile(
  sl: ServedLog,
  rest: string,
  t: ReturnType<typeof parseTilePath>,
  body: Buffer,
  acceptEncoding: string | string[] | undefined,
): { body: Buffer; extra: readonly string[] } {
  if (t.kind !== 'entries') return { body, extra: [] };
  if (!acceptsGzip(acceptEncoding)) return { body, extra: VARY };
  if (t.width !== 256) return { body: gzipSync(body), extra: GZIPPED };
  let gz = sl.gzipBundles.get(rest, 0);
  if (gz === undefined) {
    gz = gzipSync(body);
    sl.gzipBundles.set(rest, 0, gz);
  }
  return { body: gz, extra: GZIPPED };
}

const VARY = ['vary', 'accept-encoding'];
const GZIPPED = [...VARY, 'content-encoding', 'gzip'];

/** Whether an Accept-Encoding header accepts gzip (named or as `*`, with a q above 0). */
export function acceptsGzip(header: string | string[] | undefined): boolean {
  if (header === undefined) return false;
  let gzip: boolean | undefined;
  let any = false;
  for (const item of (Array.isArray(header) ? header.join(',') : header).split(',')) {
    const [name, ...params] = item.split(';').map((x) => x.trim().toLowerCase());
    const q = params.find((p) => p.startsWith('q='));
    const ok = q === undefined || Number(q.slice(2)) > 0;
    if (name === 'gzip' || name === 'x-gzip') gzip = ok;
    else if (name === '*') any = ok;
  }
  return gzip ?? any;
}

function parseTile(rest: string): ReturnType<typeof parseTilePath> {
  try {
    return parseTilePath(rest);
  } catch (err) {
    throw new HttpError(400, 'BAD_REQUEST', (err as Error).message);
  }
}

/** answerTile through the log's asynchronous reads (Log.readsAsync). */
async function answerTileAsync(
  sl: ServedLog,
  rest: string,
  acceptEncoding: string | string[] | undefined,
): Promise<{ body: Buffer; extra: readonly string[] }> {
  const t = parseTile(rest);
  const size = (await sl.log.headAsync()).size;
  const body =
    t.kind === 'hash'
      ? await readHashTileAsync(sl.log.storage, size, t.level, t.index, t.width)
      : await readEntryBundleAsync(sl.log.storage, size, t.index, t.width);
  if (!body) throw notFound(`${rest} does not exist at tree size ${size}`);
  return encodeTile(sl, rest, t, body, acceptEncoding);
}

/** C2SP bytes of the tile or entry bundle `t` at `rest`; HttpError 404 if it does not exist (yet). */
function readTile(sl: ServedLog, rest: string, t: ReturnType<typeof parseTilePath>): Buffer {
  const size = sl.log.head().size;
  const body =
    t.kind === 'hash'
      ? readHashTile(sl.log.storage, size, t.level, t.index, t.width)
      : readEntryBundle(sl.log.storage, size, t.index, t.width);
  if (!body) throw notFound(`${rest} does not exist at tree size ${size}`);
  return body;
}

/** The protocol and key of `rest` = `lookup/<protocol>/<key>`, percent-encoded. */
function lookupRequest(rest: string): { protocol: string; key: Buffer } {
  const start = 'lookup/'.length;
  const slash = rest.indexOf('/', start);
  if (slash <= start || slash === rest.length - 1) {
    throw new HttpError(400, 'BAD_REQUEST', 'expected /lookup/<protocol>/<percent-encoded key>');
  }
  const protocol = decodeSegment(rest.slice(start, slash), 'protocol');
  if (!PROTOCOL_RE.test(protocol)) {
    throw new HttpError(400, 'BAD_REQUEST', 'protocol must be 1-64 printable ASCII characters');
  }
  const key = Buffer.from(decodeSegment(rest.slice(slash + 1), 'key'), 'utf8');
  // decodeURIComponent refuses percent-encoded bytes that are not UTF-8, so this is valid UTF-8
  if (key.length < 1 || key.length > MAX_KEY_LENGTH)
    throw new HttpError(400, 'BAD_REQUEST', `key must be 1-${MAX_KEY_LENGTH} bytes`);
  return { protocol, key };
}

type LookupBytes = { body: Buffer; size: number; present: boolean | undefined };

/** Counts a lookup answer, and caches it for its tree size. */
function lookupAnswered(sl: ServedLog, rest: string, t0: number, a: LookupBytes): Buffer {
  if (a.present === undefined) {
    sl.metrics.lookupCached.inc();
    return a.body;
  }
  sl.metrics.lookupSeconds.observe((performance.now() - t0) / 1000);
  (a.present ? sl.metrics.lookupPresent : sl.metrics.lookupAbsent).inc();
  sl.lookupCache.set(rest, a.size, a.body);
  return a.body;
}

/** The lookup answer (UTF-8 JSON) for `rest` = `lookup/<protocol>/<key>`, percent-encoded. */
function answerLookup(sl: ServedLog, rest: string): Buffer {
  const { protocol, key } = lookupRequest(rest);
  // the cache is asked inside the lookup's read, for the size of the head that read sees
  const t0 = performance.now();
  return lookupAnswered(
    sl,
    rest,
    t0,
    sl.log.lookupJsonBytes(protocol, key, (at) => sl.lookupCache.get(rest, at)),
  );
}

/** answerLookup through the log's asynchronous reads (Log.readsAsync). */
async function answerLookupAsync(sl: ServedLog, rest: string): Promise<Buffer> {
  const { protocol, key } = lookupRequest(rest);
  const t0 = performance.now();
  const a = await sl.log.lookupJsonBytesAsync(protocol, key, (at) => sl.lookupCache.get(rest, at));
  return lookupAnswered(sl, rest, t0, a);
}

const lookupManySchema = {
  type: 'object',
  required: ['protocol', 'keys'],
  additionalProperties: false,
  properties: {
    protocol: { type: 'string', pattern: PROTOCOL_PATTERN },
    keys: {
      type: 'array',
      minItems: 1,
      maxItems: MAX_LOOKUP_KEYS,
      items: { type: 'string', minLength: 1, maxLength: MAX_KEY_LENGTH },
    },
  },
} as const;

/** `{"answers":[...]}` for the keys (UTF-8 strings) of a `POST lookup` body, in their order. */
function answerLookupMany(sl: ServedLog, protocol: string, keyTexts: readonly string[]): string {
  const keys = keyTexts.map((k, i) => {
    const key = textKey(k, `keys[${i}]`);
    if (key.length > MAX_KEY_LENGTH) {
      throw new HttpError(400, 'BAD_REQUEST', `keys[${i}] must be 1-${MAX_KEY_LENGTH} bytes`);
    }
    return key;
  });
  const t0 = performance.now();
  const { body, present } = sl.log.lookupManyJson(protocol, keys);
  sl.metrics.lookupSeconds.observe((performance.now() - t0) / 1000);
  if (present > 0) sl.metrics.lookupPresent.inc(present);
  if (keys.length > present) sl.metrics.lookupAbsent.inc(keys.length - present);
  return body;
}

interface SubmitEntryJson {
  protocol: string;
  key: string;
  value: string;
  metadata?: string;
}

const submitBodySchema = {
  type: 'object',
  required: ['entries'],
  additionalProperties: false,
  properties: {
    entries: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        required: ['protocol', 'key', 'value'],
        additionalProperties: false,
        properties: {
          protocol: { type: 'string', pattern: PROTOCOL_PATTERN },
          key: { type: 'string', minLength: 1, maxLength: MAX_KEY_LENGTH },
          value: { type: 'string', minLength: 2, maxLength: 128, pattern: '^(?:[0-9a-fA-F]{2})+$' },
          metadata: { type: 'string', maxLength: 90_000 },
        },
      },
    },
  },
} as const;

const countPattern = { type: 'string', pattern: '^(?:0|[1-9][0-9]{0,15})$' } as const;

function entriesFromJson(items: readonly SubmitEntryJson[]): Entry[] {
  const out = new Array<Entry>(items.length);
  for (let i = 0; i < items.length; i++) {
    const it = items[i];
    let metadata: Buffer;
    if (it.metadata === undefined || it.metadata === '') metadata = Buffer.alloc(0);
    else {
      const m = decodeBase64Strict(it.metadata);
      if (!m) throw new HttpError(400, 'BAD_REQUEST', `entries[${i}].metadata is not valid base64`);
      metadata = m;
    }
    const e: Entry = {
      protocol: it.protocol,
      key: textKey(it.key, `entries[${i}]`),
      value: Buffer.from(it.value, 'hex'),
      metadata,
    };
    try {
      validateEntry(e);
    } catch (err) {
      throw new HttpError(400, 'BAD_REQUEST', `entries[${i}]: ${(err as Error).message}`);
    }
    out[i] = e;
  }
  return out;
}

/** keyFromText, its refusal as a 400 naming `where`. */
function textKey(text: string, where: string): Buffer {
  try {
    return keyFromText(text);
  } catch (err) {
    throw new HttpError(400, 'BAD_REQUEST', `${where}: ${(err as Error).message}`);
  }
}

/**
 * The largest `POST lookup` body: MAX_LOOKUP_KEYS keys of MAX_KEY_LENGTH bytes with every byte
 * written as a two-character JSON escape, their quotes and commas, and 4 KiB for the rest.
 */
export const LOOKUP_BODY_LIMIT = MAX_LOOKUP_KEYS * (2 * MAX_KEY_LENGTH + 3) + 4096;

declare module 'fastify' {
  interface FastifyRequest {
    rawBody?: Buffer;
    writer?: Writer;
    /** Set once a signed request's signature is verified. */
    signed?: SignedRequest;
    /** Bytes of the unverified-body budget this request holds (see unverifiedBudget). */
    unverified?: number;
  }
}

/**
 * How many bytes of signed request bodies may be read at once before their signatures are checked:
 * four bodies of the largest size.
 */
function unverifiedBudget(limits: Limits): number {
  return 4 * limits.maxBodyBytes;
}

function releaseUnverified(ctx: AppContext, req: FastifyRequest): void {
  if (req.unverified === undefined) return;
  ctx.unverifiedBytes.reserved -= req.unverified;
  req.unverified = undefined;
}

export function buildApp(
  ctx: AppContext,
  listener: { name: string; api: ReadonlySet<ApiName> },
): FastifyInstance {
  const { limits } = ctx;
  let fast: FastRead | undefined;
  // sockets answered 503 for being over the connection cap: a request parsed on one is dropped
  const overCap = new WeakSet<Socket>();
  const requestDone = () => {
    if (--ctx.requests.open === 0) ctx.requests.idle();
  };
  const app = Fastify({
    logger: false,
    bodyLimit: limits.maxBodyBytes,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    serverFactory: (handler) => {
      const server = createServer((req, res) => {
        if (overCap.has(req.socket)) {
          req.socket.destroy();
          return;
        }
        // a prefix advertised as `/logs/<id>/` and joined as `<prefix>/checkpoint`
        joinedPrefix(req);
        if (ctx.draining()) {
          writeError(res, unavailable('server is shutting down'));
          return;
        }
        const answered = fast?.(req, res);
        if (answered === true) return;
        ctx.requests.open++;
        res.once('close', requestDone);
        // an asynchronous read that did not answer leaves the request to the routes
        if (answered instanceof Promise) void answered.then((ok) => ok || handler(req, res));
        else handler(req, res);
      });
      server.keepAliveTimeout = limits.keepAliveTimeoutMs;
      server.headersTimeout = HEADERS_TIMEOUT_MS;
      server.requestTimeout = 120_000;
      server.on('connection', (socket: Socket) => {
        if (ctx.connections.open >= limits.maxConnections) {
          overCap.add(socket);
          // closed once the answer is written, without waiting for the client to close its side
          socket.end(OVER_CAPACITY, () => socket.destroy());
          return;
        }
        ctx.connections.open++;
        socket.once('close', () => ctx.connections.open--);
      });
      // While draining, idle keep-alive connections stay open as long as holdIdleConnections says;
      // server.close() would close them at once.
      server.closeIdleConnections = () => {
        if (!ctx.holdIdleConnections()) Server.prototype.closeIdleConnections.call(server);
      };
      return server;
    },
    // Requests the HTTP parser refuses (malformed, headers too large) in the API's error shape.
    clientErrorHandler: (err: NodeJS.ErrnoException, socket: Socket) => {
      if (err.code === 'ECONNRESET' || socket.destroyed) return;
      if (socket.writable && socket.bytesWritten === 0)
        socket.end(rawErrorResponse(clientErrorResponse(err.code)));
      else socket.destroy();
    },
    routerOptions: { maxParamLength: 128, caseSensitive: true },
    ajv: {
      customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false },
    },
    // Router-level refusals in the API's error shape. The only route parameter is a log id, and one
    // longer than the router allows cannot name a log.
    frameworkErrors: (err, _req, reply) => {
      if (err.code === 'FST_ERR_MAX_PARAM_LENGTH') sendError(reply, notFound('no such log'));
      else sendError(reply, new HttpError(400, 'BAD_REQUEST', 'malformed URL'));
    },
  });

  const getLog = (id: string): ServedLog => {
    const sl = ctx.logs.get(id);
    if (!sl) throw notFound(`no log ${JSON.stringify(id)}`);
    if (sl.closed) throw unavailable(sl.closedReason ?? 'server is shutting down');
    return sl;
  };

  // Routes by method, to answer 405 with `Allow` for a known path asked with another method.
  const routes: Array<{ path: RegExp; methods: string[] }> = [];
  app.addHook('onRoute', (r) => {
    const methods = Array.isArray(r.method) ? r.method : [r.method];
    const path = new RegExp(
      `^${r.url
        .replace(/[.+?^${}()|[\]\\]/g, '\\$&')
        .replace(/:[a-z]+/g, '[^/]+')
        .replace(/\*/g, '.*')}$`,
    );
    routes.push({ path, methods });
  });

  app.setErrorHandler((err, _req, reply) => sendError(reply, toHttpError(err)));
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0];
    const allow = new Set<string>();
    for (const r of routes) if (r.path.test(path)) for (const m of r.methods) allow.add(m);
    if (allow.size > 0) {
      const methods = [...allow].sort().join(', ');
      sendError(
        reply,
        new HttpError(
          405,
          'METHOD_NOT_ALLOWED',
          `${req.method} is not allowed on ${path} (allowed: ${methods})`,
          {
            allow: methods,
          },
        ),
      );
    } else sendError(reply, notFound(`no route for ${req.method} ${path}`));
  });

  // Counting per (route, status) with bound children: prom-client's label hashing is not free.
  const counters = new Map<string, Counter.Internal>();
  app.addHook('onSend', (req, reply, payload, done) => {
    if (ctx.draining()) reply.header('connection', 'close');
    else if (!req.raw.complete && reply.getHeader('connection') === 'close')
      drainBeforeClosing(req.raw, reply);
    done(null, payload);
  });
  app.addHook('onResponse', (req, reply, done) => {
    const route = req.routeOptions.url ?? 'unmatched';
    const k = `${route} ${reply.statusCode}`;
    let c = counters.get(k);
    if (!c) {
      c = ctx.metrics.httpRequests.labels(listener.name, route, String(reply.statusCode));
      counters.set(k, c);
    }
    c.inc();
    done();
  });

  app.get('/healthz', (_req, reply) => {
    if (ctx.draining()) sendError(reply, unavailable('draining'));
    else reply.header('content-type', TEXT_TYPE).header('cache-control', NO_STORE).send('ok');
  });

  if (listener.api.has('metrics')) {
    app.get('/metrics', async (_req, reply) => {
      const m = await ctx.metrics.text();
      reply.header('content-type', m.contentType).header('cache-control', NO_STORE).send(m.body);
    });
  }

  if (listener.api.has('read') || listener.api.has('write')) jsonBodies(app, limits.maxBodyBytes);
  if (listener.api.has('read')) {
    registerReadRoutes(app, ctx, getLog);
    fast = fastReads(ctx, listener.name);
  }
  if (listener.api.has('write')) registerWriteRoutes(app, ctx, getLog);
  return app;
}

/** How long the rest of a refused upload is read (and dropped) before the connection is closed. */
const REFUSED_UPLOAD_DRAIN_MS = 2_000;

/**
 * A body refused before it was read (over the cap, or a parser error): Fastify answers with
 * `connection: close`, and closing a socket whose receive buffer still holds the client's upload
 * makes the kernel send a reset, which can discard the answer before the client reads it. So the
 * answer goes out without `connection: close`; Node then reads and drops the rest of the body, and
 * the connection is cut only if the client has not finished sending within a short time.
 */
function drainBeforeClosing(req: IncomingMessage, reply: FastifyReply): void {
  reply.removeHeader('connection');
  const socket = req.socket;
  const timer = setTimeout(() => {
    if (!req.complete) socket.destroy();
  }, REFUSED_UPLOAD_DRAIN_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
  req.once('end', () => clearTimeout(timer));
}

/** Only JSON bodies; everything else is 415. The raw bytes are kept for signed requests. */
function jsonBodies(app: FastifyInstance, bodyLimit: number): void {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit }, (req, body, done) => {
    const raw = body as Buffer;
    req.rawBody = raw;
    // decoding would turn each invalid byte into U+FFFD, so a key that is not UTF-8 would become another
    if (!isUtf8(raw)) {
      done(new HttpError(400, 'BAD_JSON', 'request body is not valid UTF-8'), undefined);
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw.toString('utf8'));
    } catch {
      done(new HttpError(400, 'BAD_JSON', 'request body is not valid JSON'), undefined);
      return;
    }
    done(null, parsed);
  });
}

/** true: answered; false: not answered (Fastify answers); a promise: answered once it resolves to true. */
type FastRead = (req: IncomingMessage, res: ServerResponse) => boolean | Promise<boolean>;

/**
 * The hottest GETs (lookups, tiles, checkpoints) answered straight from node:http, without the
 * router, hooks and reply objects; the answers are built by the same functions as the Fastify
 * routes. Only successes are answered here: anything else (unknown log, bad path, an error,
 * draining) falls through to Fastify, which gives the same answer or the error.
 */
function fastReads(ctx: AppContext, listener: string): FastRead {
  const counter = (route: string) => ctx.metrics.httpRequests.labels(listener, route, '200');
  const counts = {
    lookups: counter('/logs/:id/lookup/*'),
    tiles: counter('/logs/:id/tile/*'),
    checkpoints: counter('/logs/:id/checkpoint'),
  };
  return (req, res) => {
    const url = req.url;
    if (req.method !== 'GET' || url === undefined || !url.startsWith(LOGS_PREFIX) || ctx.draining())
      return false;
    const slash = url.indexOf('/', LOGS_PREFIX.length);
    if (slash < 0) return false;
    const sl = ctx.logs.get(url.slice(LOGS_PREFIX.length, slash));
    if (sl === undefined || sl.closed) return false;
    const rest = pathInLog(url);
    if (sl.log.readsAsync) return fastReadAsync(sl, rest, req, res, counts);
    let body: string | Buffer;
    let type: string;
    let cache: string;
    let count: Counter.Internal;
    let extra: readonly string[] = [];
    try {
      if (rest.startsWith('lookup/')) {
        // an answer waits for the cosignatures of the checkpoint it carries (the routes below)
        if (sl.cosign?.pending()) return false;
        body = answerLookup(sl, rest);
        type = JSON_TYPE;
        cache = NO_STORE;
        count = counts.lookups;
      } else if (rest.startsWith('tile/')) {
        ({ body, extra } = answerTile(sl, rest, req.headers['accept-encoding']));
        type = 'application/octet-stream';
        cache = IMMUTABLE;
        count = counts.tiles;
      } else if (rest === 'checkpoint') {
        body = servedCheckpoint(sl);
        type = TEXT_TYPE;
        cache = NO_STORE;
        count = counts.checkpoints;
      } else return false;
    } catch {
      return false;
    }
    writeFastAnswer(res, type, cache, body, extra);
    count.inc();
    return true;
  };
}

/**
 * fastReads for a log whose store reads asynchronously (a networked driver): the same answers,
 * through the reads that share round trips between concurrent requests.
 */
async function fastReadAsync(
  sl: ServedLog,
  rest: string,
  req: IncomingMessage,
  res: ServerResponse,
  counts: Record<'lookups' | 'tiles' | 'checkpoints', Counter.Internal>,
): Promise<boolean> {
  try {
    if (rest.startsWith('lookup/')) {
      if (sl.cosign?.pending()) return false;
      writeFastAnswer(res, JSON_TYPE, NO_STORE, await answerLookupAsync(sl, rest), []);
      counts.lookups.inc();
    } else if (rest.startsWith('tile/')) {
      const { body, extra } = await answerTileAsync(sl, rest, req.headers['accept-encoding']);
      writeFastAnswer(res, 'application/octet-stream', IMMUTABLE, body, extra);
      counts.tiles.inc();
    } else if (rest === 'checkpoint') {
      const note = sl.cosign?.checkpoint() ?? (await sl.log.headAsync()).checkpoint;
      writeFastAnswer(res, TEXT_TYPE, NO_STORE, note, []);
      counts.checkpoints.inc();
    } else return false;
    return true;
  } catch {
    return false;
  }
}

function writeFastAnswer(
  res: ServerResponse,
  type: string,
  cache: string,
  body: string | Buffer,
  extra: readonly string[],
): void {
  res.writeHead(200, [
    'content-type',
    type,
    'cache-control',
    cache,
    CORS,
    '*',
    'content-length',
    String(typeof body === 'string' ? Buffer.byteLength(body) : body.length),
    ...extra,
  ]);
  res.end(body);
}

function registerReadRoutes(app: FastifyInstance, ctx: AppContext, getLog: (id: string) => ServedLog): void {
  app.get('/logs', (_req, reply) => {
    const logs = [...ctx.logs.values()].map((sl) => ({
      id: sl.id,
      origin: sl.log.origin,
      vkey: sl.log.vkey,
      prefix: `/logs/${sl.id}/`,
      protocols: PROTOCOLS,
    }));
    reply.header('content-type', JSON_TYPE).header('cache-control', NO_STORE).send(JSON.stringify({ logs }));
  });

  app.get<{ Params: { id: string } }>('/logs/:id/checkpoint', (req, reply) => {
    reply.headers(CHECKPOINT_HEADERS).send(servedCheckpoint(getLog(req.params.id)));
  });

  app.get<{ Params: { id: string } }>('/logs/:id/tile/*', (req, reply) => {
    const { body, extra } = answerTile(
      getLog(req.params.id),
      pathInLog(req.raw.url ?? ''),
      req.headers['accept-encoding'],
    );
    reply.headers(TILE_HEADERS);
    for (let i = 0; i < extra.length; i += 2) reply.header(extra[i], extra[i + 1]);
    reply.send(body);
  });

  app.get<{ Params: { id: string } }>('/logs/:id/lookup/*', async (req, reply) => {
    const sl = getLog(req.params.id);
    await sl.cosign?.ready();
    const body = answerLookup(sl, pathInLog(req.raw.url ?? ''));
    return reply.headers(LOOKUP_HEADERS).send(body);
  });

  app.post<{ Params: { id: string }; Body: { protocol: string; keys: string[] } }>(
    '/logs/:id/lookup',
    {
      schema: { body: lookupManySchema },
      bodyLimit: Math.min(ctx.limits.maxBodyBytes, LOOKUP_BODY_LIMIT),
      // counted before the schema check, so a huge list is refused without validating every key
      preValidation: (req, _reply, done) => {
        const keys = (req.body as { keys?: unknown } | undefined)?.keys;
        if (Array.isArray(keys) && keys.length > MAX_LOOKUP_KEYS) {
          throw new HttpError(
            413,
            'TOO_MANY_KEYS',
            `at most ${MAX_LOOKUP_KEYS} keys per request, got ${keys.length}`,
          );
        }
        done();
      },
    },
    async (req, reply) => {
      const sl = getLog(req.params.id);
      await sl.cosign?.ready();
      const body = answerLookupMany(sl, req.body.protocol, req.body.keys);
      return reply.headers(LOOKUP_HEADERS).send(body);
    },
  );

  app.get<{ Params: { id: string }; Querystring: { index?: string; size?: string } }>(
    '/logs/:id/proof/inclusion',
    {
      schema: {
        querystring: {
          type: 'object',
          required: ['index'],
          additionalProperties: false,
          properties: { index: countPattern, size: countPattern },
        },
      },
    },
    (req, reply) => {
      const sl = getLog(req.params.id);
      const index = parseCount(req.query.index, 'index')!;
      const current = sl.log.head().size;
      const size = parseCount(req.query.size, 'size') ?? current;
      if (size > current) throw notFound(`size ${size} is beyond the current tree size ${current}`);
      if (index >= size) throw notFound(`index ${index} is not below tree size ${size}`);
      const proof = sl.log.inclusionProof(index, size);
      reply
        .header('content-type', JSON_TYPE)
        .header('cache-control', req.query.size !== undefined ? IMMUTABLE : NO_STORE)
        .header('access-control-allow-origin', '*')
        .send(JSON.stringify({ index, size, proof: proof.map(toBase64) }));
    },
  );

  app.get<{ Params: { id: string }; Querystring: { old?: string; new?: string } }>(
    '/logs/:id/proof/consistency',
    {
      schema: {
        querystring: {
          type: 'object',
          required: ['old'],
          additionalProperties: false,
          properties: { old: countPattern, new: countPattern },
        },
      },
    },
    (req, reply) => {
      const sl = getLog(req.params.id);
      const oldSize = parseCount(req.query.old, 'old')!;
      const current = sl.log.head().size;
      const newSize = parseCount(req.query.new, 'new') ?? current;
      if (oldSize < 1) throw new HttpError(400, 'BAD_REQUEST', 'old must be at least 1');
      if (oldSize > newSize) throw new HttpError(400, 'BAD_REQUEST', 'old must not exceed new');
      if (newSize > current) throw notFound(`size ${newSize} is beyond the current tree size ${current}`);
      const proof = sl.log.consistencyProof(oldSize, newSize);
      reply
        .header('content-type', JSON_TYPE)
        .header('cache-control', req.query.new !== undefined ? IMMUTABLE : NO_STORE)
        .header('access-control-allow-origin', '*')
        .send(JSON.stringify({ old: oldSize, new: newSize, proof: proof.map(toBase64) }));
    },
  );
}

function registerWriteRoutes(app: FastifyInstance, ctx: AppContext, getLog: (id: string) => ServedLog): void {
  const { limits } = ctx;
  app.post<{ Params: { id: string }; Body: { entries: SubmitEntryJson[] } }>(
    '/logs/:id/submit',
    {
      schema: { body: submitBodySchema },
      // Credentials are checked before the body is read, when they can be (bearer tokens).
      onRequest: (req, reply, done) => {
        const sl = getLog(req.params.id);
        if (ctx.draining()) throw unavailable('server is shutting down');
        // refused before the body is read: the client sends it to the sequencer instead
        if (sl.role !== undefined && !sl.log.sequencing) throw notSequencing(sl.role);
        const authz = req.headers.authorization;
        const sig = req.headers[SIGNATURE_HEADER];
        if (authz !== undefined) {
          const m = /^Bearer ([\x21-\x7e]+)$/i.exec(authz);
          if (!m) throw new AuthError(401, 'UNAUTHORIZED', 'Authorization must be "Bearer <token>"');
          req.writer = ctx.auth.bearer(m[1]);
        } else if (sig === undefined) {
          throw new AuthError(
            401,
            'UNAUTHORIZED',
            'missing credentials (Authorization: Bearer or Trustix-Signature)',
          );
        } else if (typeof sig !== 'string') {
          throw new AuthError(401, 'UNAUTHORIZED', 'one Trustix-Signature header expected');
        } else {
          // all but the signature, which covers the body: the writer, the time and the nonce
          ctx.auth.preflight(sig);
          // A writer's name is no secret, so anyone can get this far: the bodies read before their
          // signature can be checked share one budget.
          const length = Number(req.headers['content-length'] ?? limits.maxBodyBytes);
          const reserve = Math.min(
            Number.isSafeInteger(length) ? length : limits.maxBodyBytes,
            limits.maxBodyBytes,
          );
          if (ctx.unverifiedBytes.reserved + reserve > unverifiedBudget(limits)) {
            throw unavailable('too many signed request bodies are being read; retry later');
          }
          ctx.unverifiedBytes.reserved += reserve;
          req.unverified = reserve;
          reply.raw.once('close', () => releaseUnverified(ctx, req));
        }
        if (req.writer && !WriterAuth.mayWrite(req.writer, sl.id)) {
          throw new AuthError(403, 'FORBIDDEN', `writer ${req.writer.name} may not submit to log ${sl.id}`);
        }
        done();
      },
      preValidation: (req, _reply, done) => {
        const h = req.headers[SIGNATURE_HEADER];
        if (req.headers.authorization === undefined && typeof h === 'string') {
          const target = sentTargets.get(req.raw) ?? req.raw.url ?? '';
          releaseUnverified(ctx, req);
          req.signed = ctx.auth.signed(h, req.method, target, req.rawBody ?? Buffer.alloc(0));
          req.writer = req.signed.writer;
          if (!WriterAuth.mayWrite(req.writer, req.params.id)) {
            throw new AuthError(
              403,
              'FORBIDDEN',
              `writer ${req.writer.name} may not submit to log ${req.params.id}`,
            );
          }
        }
        // Counting before the schema check so a huge batch is refused without validating every item.
        const entries = (req.body as { entries?: unknown } | undefined)?.entries;
        if (Array.isArray(entries) && entries.length > limits.maxEntriesPerRequest) {
          throw new HttpError(
            413,
            'TOO_MANY_ENTRIES',
            `at most ${limits.maxEntriesPerRequest} entries per request, got ${entries.length}`,
          );
        }
        done();
      },
    },
    async (req, reply) => {
      const sl = getLog(req.params.id);
      const t0 = performance.now();
      const queued = await queueSubmission(ctx, sl, req);
      let receipts: SubmitReceipt[];
      try {
        receipts = await queued.receipts;
      } catch (err) {
        ctx.metrics.submitRequests.labels(sl.id, String(toHttpErrorStatus(err))).inc();
        if (err instanceof NotSequencingError && sl.role !== undefined) throw notSequencing(sl.role);
        throw err;
      }
      sl.metrics.submitSeconds.observe((performance.now() - t0) / 1000);
      sl.metrics.requestEntries.observe(queued.count);
      let dup = 0;
      for (const r of receipts) if (r.duplicate) dup++;
      sl.metrics.appended.inc(receipts.length - dup);
      if (dup > 0) sl.metrics.duplicates.inc(dup);
      ctx.metrics.submitRequests.labels(sl.id, '200').inc();
      reply.header('content-type', JSON_TYPE).header('cache-control', NO_STORE).send(receiptsJson(receipts));
    },
  );
}

/**
 * Queues a submit request's entries. Nothing of the request body outlives this call (a request
 * waits hundreds of milliseconds for its commit; its parsed JSON, raw bytes and intermediate
 * entries would otherwise survive young-generation collections and be copied into the old one).
 */
async function queueSubmission(
  ctx: AppContext,
  sl: ServedLog,
  req: FastifyRequest<{ Body: { entries: SubmitEntryJson[] } }>,
): Promise<{ count: number; receipts: Promise<SubmitReceipt[]> }> {
  const entries = entriesFromJson(req.body.entries);
  req.body = undefined as never;
  req.rawBody = undefined;
  // A signed request's nonce is durable before anything of it is queued, so the request stays
  // refused as a replay after a restart, whether it was acknowledged or refused.
  const signed = req.signed;
  if (signed !== undefined) {
    await sl.log.storage.recordNonce(signed.nonce.id, signed.nonce.expires, Math.floor(Date.now() / 1000));
  }
  if (ctx.draining()) throw unavailable('server is shutting down');
  return { count: entries.length, receipts: ctx.trackSubmit(sl.log.submit(entries)) };
}

function toHttpErrorStatus(err: unknown): number {
  if (err instanceof PoolFullError || err instanceof StateError || err instanceof StorageUnavailableError)
    return 503;
  if (err instanceof StorageFullError) return 507;
  if (err instanceof TrustixError && err.code === 'FORMAT') return 400;
  return 500;
}
