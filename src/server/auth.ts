/**
 * Writer authentication: a bearer token (only its SHA-256 is configured) or a request signed with the
 * writer's Ed25519 key over method, path, time, nonce and body hash. Signed requests are accepted
 * within ±300 s of the server clock, and each (writer, nonce) only once in that window. The server
 * records each used nonce durably before it acts on the request and loads them at start (see
 * `remember`), so a restart does not open the window again.
 */
import { createHash, timingSafeEqual, verify } from 'node:crypto';
import { decodeBase64Strict } from '../core/bytes.js';
import type { WriterConfig } from './config.js';

export const SIGNATURE_HEADER = 'trustix-signature';
export const SIGNATURE_CONTEXT = 'trustix-submit/v1';
export const SIGNATURE_WINDOW_SECONDS = 300;
const MAX_NONCES = 1_000_000;
const NONCE_RE = /^[0-9a-fA-F]{16,128}$/;
const TS_RE = /^(?:0|[1-9][0-9]{0,15})$/;

/** Why a request was refused: `status` 401 (who are you?), 403 (not for this log) or 503 (nonce store full). */
export class AuthError extends Error {
  constructor(
    readonly status: 401 | 403 | 503,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export type Writer = WriterConfig;

/** A verified signed request: its writer, and its nonce as recorded against replays. */
export interface SignedRequest {
  writer: Writer;
  nonce: { id: string; expires: number };
}

function nonceId(writer: Writer, nonce: string): string {
  return `${writer.name}\n${nonce.toLowerCase()}`;
}

export interface SignatureParams {
  keyid: string;
  ts: number;
  nonce: string;
  sig: Buffer;
}

/** The exact bytes a writer signs. */
export function signedMessage(
  method: string,
  path: string,
  ts: number,
  nonce: string,
  bodySha256Hex: string,
): Buffer {
  return Buffer.from(`${SIGNATURE_CONTEXT}\n${method} ${path}\n${ts}\n${nonce}\n${bodySha256Hex}`, 'utf8');
}

/** Parses `keyid=<name>,ts=<unix seconds>,nonce=<hex>,sig=<base64>` (each once, in any order). */
export function parseSignatureHeader(h: string): SignatureParams | undefined {
  if (h.length > 1024) return undefined;
  const fields = new Map<string, string>();
  for (const part of h.split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) return undefined;
    const k = part.slice(0, eq).trim();
    const v = part.slice(eq + 1).trim();
    if (fields.has(k)) return undefined;
    fields.set(k, v);
  }
  if (fields.size !== 4) return undefined;
  const keyid = fields.get('keyid');
  const tsText = fields.get('ts');
  const nonce = fields.get('nonce');
  const sigText = fields.get('sig');
  if (!keyid || !tsText || !nonce || !sigText) return undefined;
  if (!TS_RE.test(tsText) || !NONCE_RE.test(nonce)) return undefined;
  const sig = decodeBase64Strict(sigText);
  if (sig?.length !== 64) return undefined;
  return { keyid, ts: Number(tsText), nonce, sig };
}

export class WriterAuth {
  private readonly byName = new Map<string, Writer>();
  private readonly withToken: Writer[];
  // (writer \n nonce) -> unix second after which the request would be refused as stale anyway
  private readonly nonces = new Map<string, number>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(
    writers: readonly Writer[],
    private readonly now: () => number = () => Math.floor(Date.now() / 1000),
  ) {
    for (const w of writers) this.byName.set(w.name, w);
    this.withToken = writers.filter((w) => w.tokenSha256 !== undefined);
    this.sweeper = setInterval(() => this.sweep(), 30_000);
    this.sweeper.unref();
  }

  close(): void {
    clearInterval(this.sweeper);
  }

  /**
   * The writer owning `token`. Every configured token hash is compared, each in constant time, so the
   * time taken says nothing about which writer (if any) came close.
   */
  bearer(token: string): Writer {
    if (token.length === 0 || token.length > 512)
      throw new AuthError(401, 'UNAUTHORIZED', 'invalid bearer token');
    const h = createHash('sha256').update(token, 'utf8').digest();
    let found: Writer | undefined;
    for (const w of this.withToken) {
      if (timingSafeEqual(h, w.tokenSha256!) && !found) found = w;
    }
    if (!found) throw new AuthError(401, 'UNAUTHORIZED', 'invalid bearer token');
    return found;
  }

  /**
   * What a signed request's header alone shows, checked before its body is read: a well-formed
   * header, a writer with a key, a time within the window and a nonce not used yet.
   */
  preflight(header: string): { writer: Writer; params: SignatureParams } {
    const p = parseSignatureHeader(header);
    if (!p) {
      throw new AuthError(
        401,
        'UNAUTHORIZED',
        'malformed Trustix-Signature header (want keyid=<writer>,ts=<unix seconds>,nonce=<hex>,sig=<base64>)',
      );
    }
    const writer = this.byName.get(p.keyid);
    if (!writer?.publicKey) throw new AuthError(401, 'UNAUTHORIZED', 'unknown signing writer');
    const now = this.now();
    if (Math.abs(now - p.ts) > SIGNATURE_WINDOW_SECONDS) {
      throw new AuthError(
        401,
        'UNAUTHORIZED',
        `signature time is more than ${SIGNATURE_WINDOW_SECONDS}s from the server clock`,
      );
    }
    const seen = this.nonces.get(nonceId(writer, p.nonce));
    if (seen !== undefined && seen >= now)
      throw new AuthError(401, 'REPLAYED', 'request nonce was already used');
    return { writer, params: p };
  }

  /**
   * Checks a signed request; `path` is the request target exactly as sent (path and query). Its
   * nonce is used from then on; `nonce` is what a store must keep (until `expires`) for the request
   * to stay refused after a restart (see remember).
   */
  signed(header: string, method: string, path: string, body: Buffer): SignedRequest {
    const { writer, params: p } = this.preflight(header);
    const bodyHash = createHash('sha256').update(body).digest('hex');
    const msg = signedMessage(method, path, p.ts, p.nonce, bodyHash);
    let ok = false;
    try {
      ok = verify(null, msg, writer.publicKey!, p.sig);
    } catch {
      ok = false;
    }
    if (!ok) throw new AuthError(401, 'UNAUTHORIZED', 'bad request signature');
    // Only verified requests reach the nonce store, so its size is bounded by what real writers send.
    const id = nonceId(writer, p.nonce);
    // checked again: another request with this nonce may have been verified while this body arrived
    const seen = this.nonces.get(id);
    if (seen !== undefined && seen >= this.now())
      throw new AuthError(401, 'REPLAYED', 'request nonce was already used');
    if (this.nonces.size >= MAX_NONCES) {
      this.sweep();
      if (this.nonces.size >= MAX_NONCES)
        throw new AuthError(503, 'BUSY', 'too many signed requests in flight');
    }
    const expires = p.ts + SIGNATURE_WINDOW_SECONDS;
    this.nonces.set(id, expires);
    return { writer, nonce: { id, expires } };
  }

  /** Marks a nonce recorded before a restart (`id` as `signed` gave it) as used until `expires`. */
  remember(id: string, expires: number): void {
    const seen = this.nonces.get(id);
    if (expires >= this.now() && (seen === undefined || seen < expires)) this.nonces.set(id, expires);
  }

  /** Whether `writer` may submit to `logId`. */
  static mayWrite(writer: Writer, logId: string): boolean {
    return writer.logs === '*' || writer.logs.includes(logId);
  }

  private sweep(): void {
    const now = this.now();
    for (const [k, until] of this.nonces) if (until < now) this.nonces.delete(k);
  }
}
