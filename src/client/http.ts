/**
 * The HTTP layer of the client: one request with a deadline covering headers and body, a cap on
 * the body size, and every failure turned into a typed error (see errors.ts).
 *
 * Requests go over `node:http`/`node:https` with keep-alive agents shared by all clients of the
 * process: undici's `fetch` (WHATWG streams, abort signals, header objects) costs several times the
 * work of the request itself for the small answers a lookup gets. A `fetch` function can still be
 * injected (local logs, tests, custom transports) and is then used for every request.
 */
import { Agent as HttpAgent, request as httpGet, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsGet } from 'node:https';
import { BadResponseError, RemoteError, UnreachableError } from './errors.js';

export type FetchFn = typeof globalThis.fetch;

export interface HttpOptions {
  /** A fetch-compatible transport; default: node:http with keep-alive. */
  fetch?: FetchFn | undefined;
  timeoutMs: number;
  headers?: Record<string, string>;
}

export interface HttpRequest {
  method?: 'GET' | 'POST';
  headers?: Record<string, string>;
  body?: Buffer;
  /** Largest body accepted; a longer one is 'response.too-large'. */
  maxBytes: number;
  /**
   * The request target (path and query) to send instead of `url`'s, when URL parsing would
   * change it: a key segment `%2E%2E` is a dot segment to the URL parser, which removes it. Only
   * the node:http transport can send it; an injected fetch gets `url`.
   */
  rawPath?: string;
  timeoutMs?: number;
}

const USER_AGENT = 'trustix-client';
/** As many as fetch follows. */
const MAX_REDIRECTS = 20;

// idle sockets are unref'd by the agent, so a kept-alive connection never holds a CLI process open
const agents = {
  http: new HttpAgent({ keepAlive: true, scheduling: 'lifo' }),
  https: new HttpsAgent({ keepAlive: true, scheduling: 'lifo' }),
};

/** Fetches `url` and returns the body of a 200 answer; anything else throws a typed error. */
export function httpRequest(url: URL, req: HttpRequest, opts: HttpOptions): Promise<Buffer> {
  return opts.fetch ? fetchRequest(url, req, opts, opts.fetch) : nodeRequest(url, req, opts);
}

/** What a non-200 answer becomes. */
function statusError(
  where: string,
  status: number,
  statusText: string,
  body: Buffer,
  retryAfter: string | null | undefined,
): UnreachableError | RemoteError {
  let message: string | undefined;
  let code: string | undefined;
  try {
    const j = JSON.parse(body.toString('utf8')) as { error?: unknown; code?: unknown };
    if (typeof j.error === 'string') message = j.error;
    if (typeof j.code === 'string') code = j.code;
  } catch {
    // not our JSON error body (a proxy's HTML page, say): the status says enough
  }
  const said = `${where} answered ${status}${message ? `: ${oneLine(message)}` : statusText ? ` ${statusText}` : ''}`;
  if (status === 503) {
    const ra = Number(retryAfter ?? Number.NaN);
    return new UnreachableError(
      'http.unavailable',
      said,
      retryAfter != null && Number.isFinite(ra) && ra >= 0 ? ra : undefined,
    );
  }
  return new RemoteError(status, code, said);
}

function isTyped(err: unknown): boolean {
  return err instanceof UnreachableError || err instanceof RemoteError || err instanceof BadResponseError;
}

// ---------------------------------------------------------------------------------------------
// node:http transport.

class DeadlineError extends Error {
  override name = 'TimeoutError';
}

function nodeRequest(url: URL, req: HttpRequest, opts: HttpOptions): Promise<Buffer> {
  const timeoutMs = req.timeoutMs ?? opts.timeoutMs;
  const method = req.method ?? 'GET';
  const firstWhere = `${method} ${url.href}`;
  const headers: Record<string, string> = { 'user-agent': USER_AGENT, ...opts.headers, ...req.headers };
  if (req.body) headers['content-length'] = String(req.body.length);
  return new Promise<Buffer>((resolve, reject) => {
    let settled = false;
    let current: ReturnType<typeof httpGet> | undefined;
    // one deadline for the whole exchange (redirects, headers and body), as fetch's abort signal
    const timer = setTimeout(() => {
      // settle first: destroying the request makes its response fail with a reset, not a timeout
      const r = current;
      done(new DeadlineError('deadline'));
      r?.destroy();
    }, timeoutMs);
    const done = (err: unknown, body?: Buffer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err === undefined) resolve(body!);
      else reject(isTyped(err) ? err : transportError(err, firstWhere, timeoutMs));
    };
    let retried = false;
    const send = (target: URL, hops: number) => {
      const where = `${method} ${target.href}`;
      const https = target.protocol === 'https:';
      if (!https && target.protocol !== 'http:') {
        done(new UnreachableError('http.network', `${where}: unsupported protocol ${target.protocol}`));
        return;
      }
      let r: ReturnType<typeof httpGet>;
      try {
        r = (https ? httpsGet : httpGet)(target, {
          method,
          headers,
          agent: https ? agents.https : agents.http,
          ...(hops === 0 && req.rawPath !== undefined ? { path: req.rawPath } : {}),
        });
      } catch (err) {
        done(err);
        return;
      }
      current = r;
      let answered = false;
      r.on('error', (err) => {
        // A kept-alive socket the server closed as idle just as this request went out: the
        // request never reached the server, so a GET is sent again once on a new connection.
        const code = (err as NodeJS.ErrnoException).code;
        if (
          !answered &&
          !retried &&
          r.reusedSocket &&
          method === 'GET' &&
          (code === 'ECONNRESET' || code === 'EPIPE')
        ) {
          retried = true;
          send(target, hops);
          return;
        }
        done(err);
      });
      r.on('response', (res) => {
        answered = true;
        const status = res.statusCode ?? 0;
        const location = res.headers.location;
        if (
          location !== undefined &&
          (status === 307 ||
            status === 308 ||
            ((status === 301 || status === 302 || status === 303) && method === 'GET'))
        ) {
          res.resume();
          if (hops >= MAX_REDIRECTS) {
            done(new UnreachableError('http.network', `${where}: too many redirects`));
            return;
          }
          let next: URL;
          try {
            next = new URL(location, target);
          } catch (err) {
            done(err);
            return;
          }
          if (next.origin !== target.origin) {
            // credentials are for the server they were given for
            delete headers.authorization;
            delete headers['trustix-signature'];
          }
          send(next, hops + 1);
          return;
        }
        if (status === 200) {
          readNodeBody(res, req.maxBytes, where, (err, body) => done(err, body));
          return;
        }
        readNodeBody(res, 64 * 1024, where, (_err, body) =>
          done(
            statusError(
              where,
              status,
              res.statusMessage ?? '',
              body ?? Buffer.alloc(0),
              headerText(res, 'retry-after'),
            ),
          ),
        );
      });
      r.end(req.body);
    };
    send(url, 0);
  });
}

function headerText(res: IncomingMessage, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function readNodeBody(
  res: IncomingMessage,
  maxBytes: number,
  where: string,
  cb: (err: unknown, body?: Buffer) => void,
): void {
  const declared = Number(res.headers['content-length']);
  if (Number.isFinite(declared) && declared > maxBytes) {
    res.destroy();
    cb(
      new BadResponseError('response.too-large', `${where}: answer of ${declared} bytes exceeds ${maxBytes}`),
    );
    return;
  }
  const chunks: Buffer[] = [];
  let total = 0;
  let finished = false;
  res.on('data', (chunk: Buffer) => {
    if (finished) return;
    total += chunk.length;
    if (total > maxBytes) {
      finished = true;
      res.destroy();
      cb(new BadResponseError('response.too-large', `${where}: answer exceeds ${maxBytes} bytes`));
      return;
    }
    chunks.push(chunk);
  });
  res.on('end', () => {
    if (finished) return;
    finished = true;
    cb(undefined, chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, total));
  });
  // a connection that breaks mid-body (or the deadline) ends the exchange with this error
  res.on('error', (err) => {
    if (finished) return;
    finished = true;
    cb(err);
  });
  res.on('aborted', () => {
    if (finished) return;
    finished = true;
    cb(new Error('connection closed before the answer was complete'));
  });
}

// ---------------------------------------------------------------------------------------------
// Injected fetch transport.

async function fetchRequest(
  url: URL,
  req: HttpRequest,
  opts: HttpOptions,
  fetchFn: FetchFn,
): Promise<Buffer> {
  const timeoutMs = req.timeoutMs ?? opts.timeoutMs;
  const signal = AbortSignal.timeout(timeoutMs);
  const where = `${req.method ?? 'GET'} ${url.href}`;
  try {
    let res: Response;
    try {
      res = await fetchFn(url, {
        method: req.method ?? 'GET',
        headers: { 'user-agent': USER_AGENT, ...opts.headers, ...req.headers },
        ...(req.body ? { body: req.body as unknown as BodyInit } : {}),
        signal,
      });
    } catch (err) {
      throw transportError(err, where, timeoutMs);
    }
    if (res.status === 200) return await readBody(res, req.maxBytes, where, timeoutMs);
    const text = await readBody(res, 64 * 1024, where, timeoutMs).catch(() => Buffer.alloc(0));
    throw statusError(where, res.status, res.statusText, text, res.headers.get('retry-after'));
  } catch (err) {
    if (isTyped(err)) throw err;
    throw transportError(err, where, timeoutMs);
  }
}

async function readBody(res: Response, maxBytes: number, where: string, timeoutMs: number): Promise<Buffer> {
  const declared = Number(res.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > maxBytes) {
    await res.body?.cancel().catch(() => {});
    throw new BadResponseError(
      'response.too-large',
      `${where}: answer of ${declared} bytes exceeds ${maxBytes}`,
    );
  }
  if (!res.body) return Buffer.alloc(0);
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > maxBytes) {
        await reader.cancel().catch(() => {});
        throw new BadResponseError('response.too-large', `${where}: answer exceeds ${maxBytes} bytes`);
      }
      chunks.push(value);
    }
  } catch (err) {
    if (err instanceof BadResponseError) throw err;
    throw transportError(err, where, timeoutMs);
  }
  return Buffer.concat(chunks, total);
}

function transportError(err: unknown, where: string, timeoutMs: number): UnreachableError {
  const e = err as {
    name?: string;
    code?: string;
    message?: string;
    cause?: { code?: string; message?: string };
  };
  if (e?.name === 'TimeoutError' || (e?.name === 'AbortError' && /timeout/i.test(e.message ?? ''))) {
    return new UnreachableError(
      'http.timeout',
      `${where}: no answer within ${timeoutMs / 1000}s`,
      undefined,
      {
        cause: err,
      },
    );
  }
  const detail = e?.cause?.code ?? e?.code ?? e?.cause?.message ?? e?.message ?? String(err);
  return new UnreachableError('http.network', `${where}: ${oneLine(detail)}`, undefined, { cause: err });
}

function oneLine(s: string): string {
  const t = s.replace(/\s+/g, ' ').trim();
  return t.length > 300 ? `${t.slice(0, 300)}...` : t;
}

/** Parses a JSON body, or 'response.malformed'. */
export function parseJsonBody(body: Buffer, where: string | (() => string)): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    const w = typeof where === 'string' ? where : where();
    throw new BadResponseError('response.malformed', `${w}: answer is not valid JSON`);
  }
}

/** Percent-encodes bytes for one path segment (everything but RFC 3986 unreserved characters). */
export function encodePathSegment(bytes: Uint8Array): string {
  let out = '';
  for (const c of bytes) {
    const unreserved =
      (c >= 0x30 && c <= 0x39) ||
      (c >= 0x41 && c <= 0x5a) ||
      (c >= 0x61 && c <= 0x7a) ||
      c === 0x2d ||
      c === 0x2e ||
      c === 0x5f ||
      c === 0x7e;
    out += unreserved ? String.fromCharCode(c) : `%${c < 16 ? '0' : ''}${c.toString(16).toUpperCase()}`;
  }
  // "." and ".." are path navigation for URL parsers, never a key; URL parsers read "%2E" as "."
  // too, so such a segment must also be sent unparsed (HttpRequest.rawPath)
  if (isDotSegment(bytes)) out = out.replace(/\./g, '%2E');
  return out;
}

/** Whether a path segment is "." or "..", which URL parsing removes even percent-encoded. */
export function isDotSegment(bytes: Uint8Array): boolean {
  return (bytes.length === 1 || bytes.length === 2) && bytes.every((c) => c === 0x2e);
}

/** The inverse of encodePathSegment: percent-decoding to bytes (keys need not be UTF-8). */
export function decodePathSegment(s: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '%') {
      out.push(Number.parseInt(s.slice(i + 1, i + 3), 16));
      i += 2;
    } else out.push(s.charCodeAt(i));
  }
  return Buffer.from(out);
}
