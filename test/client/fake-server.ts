/**
 * A small HTTP server speaking the Trustix HTTP API from a real `Log`, for client tests. It can
 * swap the log it serves (to fake rollbacks and forks) and pass every answer through a `tamper`
 * hook that may rewrite it, delay it, or never answer at all.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { decodePathSegment, encodePathSegment } from '../../src/client/http.js';
import { toBase64 } from '../../src/core/bytes.js';
import type { Entry } from '../../src/core/entry.js';
import { FormatError } from '../../src/core/errors.js';
import { receiptsJson } from '../../src/core/receipts.js';
import { encodeEntryBundle, parseTilePath, TILE_WIDTH } from '../../src/core/tiles.js';
import type { Log } from '../../src/log/log.js';

export interface FakeAnswer {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/** `path` is relative to the log prefix (e.g. `checkpoint`, `lookup/nix/abc`), with its query. */
export type Tamper = (
  req: { method: string; path: string },
  answer: FakeAnswer,
) => FakeAnswer | 'hang' | undefined | Promise<FakeAnswer | 'hang' | undefined>;

export interface FakeServer {
  /** The log prefix URL, `http://127.0.0.1:<port>/logs/default/`. */
  url: string;
  /** The server root, `http://127.0.0.1:<port>/`. */
  root: string;
  log: Log;
  tamper: Tamper | undefined;
  token: string;
  /** Paths requested, relative to the log prefix, in order. */
  requests: string[];
  /** When true, `POST lookup` is unknown (404), as on a server that predates it. */
  noLookupBatch: boolean;
  close(): Promise<void>;
}

export async function startFakeServer(log: Log, opts: { token?: string } = {}): Promise<FakeServer> {
  const state: FakeServer = {
    url: '',
    root: '',
    log,
    tamper: undefined,
    token: opts.token ?? 'secret-token',
    requests: [],
    noLookupBatch: false,
    close: async () => {},
  };
  const server = createServer((req, res) => {
    handle(state, req, res).catch((err) => {
      res.statusCode = 500;
      res.end(JSON.stringify({ error: String(err), code: 'INTERNAL' }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  state.root = `http://127.0.0.1:${port}/`;
  state.url = `${state.root}logs/default/`;
  state.close = () =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return state;
}

async function handle(s: FakeServer, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const body = Buffer.concat(chunks);
  const u = new URL(req.url ?? '/', 'http://x');
  const method = req.method ?? 'GET';
  let answer: FakeAnswer;
  let rel = '';
  if (u.pathname === '/logs') {
    answer = json(200, {
      logs: [
        {
          id: 'default',
          origin: s.log.origin,
          vkey: s.log.vkey,
          prefix: '/logs/default/',
          protocols: ['tlog-tiles', 'trustix-lookup/v1', 'trustix-submit/v1'],
        },
      ],
    });
  } else if (u.pathname.startsWith('/logs/default/')) {
    rel = u.pathname.slice('/logs/default/'.length) + u.search;
    s.requests.push(rel);
    if (method === 'POST' && rel === 'lookup' && !s.noLookupBatch) {
      // each key is answered as its own GET, through the tamper hook, so every lie told to single
      // lookups is told in batches too
      const j = JSON.parse(body.toString('utf8')) as { protocol: string; keys: string[] };
      const answers: unknown[] = [];
      for (const k of j.keys) {
        const path = `lookup/${encodePathSegment(Buffer.from(j.protocol))}/${encodePathSegment(Buffer.from(k))}`;
        const single = await route(s, 'GET', new URL(path, 'http://x/'), path, req, Buffer.alloc(0));
        const t = s.tamper ? await s.tamper({ method: 'GET', path }, single) : undefined;
        if (t === 'hang') return;
        const a = t ?? single;
        if (a.status !== 200) {
          res.writeHead(a.status, a.headers);
          res.end(a.body);
          return;
        }
        answers.push(JSON.parse(a.body.toString('utf8')));
      }
      answer = json(200, { answers });
    } else {
      answer = await route(s, method, u, u.pathname.slice('/logs/default/'.length), req, body);
    }
  } else {
    answer = json(404, { error: 'unknown log', code: 'NOT_FOUND' });
  }
  const t = s.tamper ? await s.tamper({ method, path: rel }, answer) : undefined;
  if (t === 'hang') return; // the socket stays open until the client gives up or the server closes
  const a = t ?? answer;
  res.writeHead(a.status, a.headers);
  res.end(a.body);
}

async function route(
  s: FakeServer,
  method: string,
  u: URL,
  path: string,
  req: IncomingMessage,
  body: Buffer,
): Promise<FakeAnswer> {
  const log = s.log;
  try {
    if (method === 'POST' && path === 'submit') {
      if (req.headers.authorization !== `Bearer ${s.token}`) {
        return json(401, { error: 'invalid bearer token', code: 'UNAUTHORIZED' });
      }
      const j = JSON.parse(body.toString('utf8')) as {
        entries: Array<{ protocol: string; key: string; value: string; metadata?: string }>;
      };
      const entries: Entry[] = j.entries.map((e) => ({
        protocol: e.protocol,
        key: Buffer.from(e.key, 'utf8'),
        value: Buffer.from(e.value, 'hex'),
        metadata: Buffer.from(e.metadata ?? '', 'base64'),
      }));
      const receipts = await log.submit(entries);
      return {
        status: 200,
        headers: { 'content-type': 'application/json' },
        body: receiptsJson(receipts),
      };
    }
    if (method !== 'GET')
      return json(s.noLookupBatch && path === 'lookup' ? 404 : 405, {
        error: 'method not allowed',
        code: 'METHOD',
      });
    if (path === 'checkpoint') {
      return {
        status: 200,
        headers: { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' },
        body: Buffer.from(log.head().checkpoint, 'utf8'),
      };
    }
    if (path.startsWith('lookup/')) {
      const parts = path.split('/');
      if (parts.length !== 3) return json(400, { error: 'bad lookup path', code: 'BAD_REQUEST' });
      const protocol = decodePathSegment(parts[1]).toString('utf8');
      const key = decodePathSegment(parts[2]);
      return json(200, log.lookup(protocol, key));
    }
    if (path === 'proof/inclusion') {
      const index = Number(u.searchParams.get('index'));
      const size = u.searchParams.has('size') ? Number(u.searchParams.get('size')) : log.head().size;
      return json(200, { index, size, proof: log.inclusionProof(index, size).map(toBase64) });
    }
    if (path === 'proof/consistency') {
      const oldSize = Number(u.searchParams.get('old'));
      const newSize = Number(u.searchParams.get('new'));
      return json(200, {
        old: oldSize,
        new: newSize,
        proof: log.consistencyProof(oldSize, newSize).map(toBase64),
      });
    }
    if (path.startsWith('tile/')) {
      const t = parseTilePath(path);
      const size = log.head().size;
      if (t.kind === 'entries') {
        const first = t.index * TILE_WIDTH;
        if (first + t.width > size) return json(404, { error: 'no such tile', code: 'NOT_FOUND' });
        const entries: Buffer[] = [];
        for (let i = first; i < first + t.width; i++) entries.push(log.entry(i));
        return bytes(encodeEntryBundle(entries));
      }
      const stored = log.storage.read((snap) => snap.tile(t.level, t.index));
      if (!stored || stored.width < t.width) return json(404, { error: 'no such tile', code: 'NOT_FOUND' });
      return bytes(Buffer.from(stored.expanded.subarray(0, t.width * 32)));
    }
    return json(404, { error: 'not found', code: 'NOT_FOUND' });
  } catch (err) {
    if (err instanceof FormatError) return json(400, { error: err.message, code: 'BAD_REQUEST' });
    throw err;
  }
}

export function json(status: number, value: unknown): FakeAnswer {
  return {
    status,
    headers: { 'content-type': 'application/json' },
    body: Buffer.from(JSON.stringify(value), 'utf8'),
  };
}

function bytes(b: Buffer): FakeAnswer {
  return { status: 200, headers: { 'content-type': 'application/octet-stream' }, body: b };
}

/** Parses a JSON answer body (for tampering). */
export function bodyJson<T = Record<string, unknown>>(a: FakeAnswer): T {
  return JSON.parse(a.body.toString('utf8')) as T;
}
