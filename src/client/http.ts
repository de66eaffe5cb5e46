/**
 * The HTTP layer of the client: one request with a deadline covering headers and body, a cap on
 * the body size, and every failure turned into a typed error (see errors.ts).
 */
import { BadResponseError, RemoteError, UnreachableError } from './errors.js';

export type FetchFn = typeof globalThis.fetch;

export interface HttpOptions {
  fetch: FetchFn;
  timeoutMs: number;
  headers?: Record<string, string>;
}

export interface HttpRequest {
  method?: 'GET' | 'POST';
  headers?: Record<string, string>;
  body?: Buffer;
  /** Largest body accepted; a longer one is 'response.too-large'. */
  maxBytes: number;
  timeoutMs?: number;
}

/** Fetches `url` and returns the body of a 200 answer; anything else throws a typed error. */
export async function httpRequest(url: URL, req: HttpRequest, opts: HttpOptions): Promise<Buffer> {
  const timeoutMs = req.timeoutMs ?? opts.timeoutMs;
  const signal = AbortSignal.timeout(timeoutMs);
  const where = `${req.method ?? 'GET'} ${url.href}`;
  try {
    let res: Response;
    try {
      res = await opts.fetch(url, {
        method: req.method ?? 'GET',
        headers: { 'user-agent': 'trustix-client', ...opts.headers, ...req.headers },
        ...(req.body ? { body: req.body as unknown as BodyInit } : {}),
        signal,
      });
    } catch (err) {
      throw transportError(err, where, timeoutMs);
    }
    if (res.status === 200) return await readBody(res, req.maxBytes, where, timeoutMs);
    const text = await readBody(res, 64 * 1024, where, timeoutMs).catch(() => Buffer.alloc(0));
    let message: string | undefined;
    let code: string | undefined;
    try {
      const j = JSON.parse(text.toString('utf8')) as { error?: unknown; code?: unknown };
      if (typeof j.error === 'string') message = j.error;
      if (typeof j.code === 'string') code = j.code;
    } catch {
      // not our JSON error body (a proxy's HTML page, say): the status says enough
    }
    const said = `${where} answered ${res.status}${message ? `: ${oneLine(message)}` : res.statusText ? ` ${res.statusText}` : ''}`;
    if (res.status === 503) {
      const ra = Number(res.headers.get('retry-after'));
      throw new UnreachableError('http.unavailable', said, Number.isFinite(ra) && ra >= 0 ? ra : undefined);
    }
    throw new RemoteError(res.status, code, said);
  } catch (err) {
    if (err instanceof UnreachableError || err instanceof RemoteError || err instanceof BadResponseError) {
      throw err;
    }
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
  const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
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
  const detail = e?.cause?.code ?? e?.cause?.message ?? e?.message ?? String(err);
  return new UnreachableError('http.network', `${where}: ${oneLine(detail)}`, undefined, { cause: err });
}

function oneLine(s: string): string {
  const t = s.replace(/\s+/g, ' ').trim();
  return t.length > 300 ? `${t.slice(0, 300)}...` : t;
}

/** Parses a JSON body, or 'response.malformed'. */
export function parseJsonBody(body: Buffer, where: string): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    throw new BadResponseError('response.malformed', `${where}: answer is not valid JSON`);
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
  // "." and ".." are path navigation for URL parsers, never a key
  if (out === '.' || out === '..') out = out.replace(/\./g, '%2E');
  return out;
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
