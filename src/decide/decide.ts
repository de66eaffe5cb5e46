/**
 * Deciding (DESIGN §3, docs/deciding.md): ask every configured log about one key in parallel with
 * the verifying client, classify each answer, run the protocol's procedure, and explain the result.
 *
 * Classification: present (a verified entry, with its value), absent (verified non-inclusion), or
 * failed: unreachable, timed out, refused, or a failed check (bad signature, bad proof, an answer
 * for another key, rollback, fork). A failed log never counts as absent and never for a value.
 */
import { existsSync } from 'node:fs';
import { LogClient, type VerifiedLookup } from '../client/client.js';
import { RemoteError, UnreachableError } from '../client/errors.js';
import { decodePathSegment } from '../client/http.js';
import { MemoryTrustStore, type TrustStore } from '../client/trust-store.js';
import { toBase64, toHex } from '../core/bytes.js';
import { TrustixError, VerificationError } from '../core/errors.js';
import type { LookupAnswer } from '../core/lookup.js';
import { parseTilePath } from '../core/tiles.js';
import { Log } from '../log/log.js';
import { readEntryBundle, readHashTile } from '../log/serving.js';
import { buildProcedure, type DecideConfig, type LogConfig, procedureFor } from './config.js';
import type { Answer, Outcome, Procedure } from './procedures.js';
import { ONE, type Rat } from './rational.js';

export interface LogResult {
  name: string;
  origin: string;
  vkey: string;
  weight: string;
  status: 'present' | 'absent' | 'failed';
  /** Lower-case hex of the value, when present. */
  value?: string;
  index?: number;
  /** Size of the checkpoint the answer was verified against. */
  size?: number;
  check?: string;
  reason?: string;
  ms: number;
  /** The mirror that answered, when the log itself could not be reached. */
  via?: string;
  /** The verified answer, kept for evidence bundles. */
  answer?: LookupAnswer;
}

export type LogVerdict = 'agrees' | 'disagrees' | 'present' | 'absent' | 'failed';

export interface Decision {
  protocol: string;
  key: string;
  decided: boolean;
  value?: string;
  confidence?: number;
  procedure: string;
  reason: string;
  error?: { check: string; message: string };
  steps?: Array<Pick<Outcome, 'procedure' | 'decided' | 'reason' | 'error'>>;
  agreed: string[];
  disagreed: string[];
  absent: string[];
  failed: Array<{ name: string; check: string; reason: string }>;
  logs: Array<Omit<LogResult, 'answer' | 'status'> & { status: LogVerdict }>;
}

interface Source {
  cfg: LogConfig;
  client: LogClient;
  /** Clients of the log's mirrors, asked in order when the log cannot be reached. */
  mirrors: LogClient[];
  /** A local log: opens it, or throws a LocalLogError saying why it cannot be read. */
  ready?(): Promise<unknown>;
  close(): Promise<void>;
}

/**
 * A local log (`state = DIR`) that cannot be read: the directory does not exist ('local.missing')
 * or does not open as a log ('local.open'). Nothing was asked, so nothing was learned.
 */
export class LocalLogError extends TrustixError {
  constructor(
    readonly check: 'local.missing' | 'local.open',
    message: string,
    options?: { cause?: unknown },
  ) {
    super('LOCAL', message, options);
  }
}

/**
 * Serves the HTTP lookup API and the C2SP tiles and entry bundles from a local log (opened
 * read-only), so local logs get the same client checks as remote ones.
 */
export function localFetch(dir: string): {
  fetch: typeof globalThis.fetch;
  open(): Promise<Log>;
  close(): Promise<void>;
} {
  let opened: Promise<Log> | undefined;
  const open = (): Promise<Log> => {
    opened ??= (async () => {
      if (!existsSync(dir)) throw new LocalLogError('local.missing', `local log ${dir} does not exist`);
      try {
        return await Log.open(dir, { readOnly: true });
      } catch (err) {
        throw new LocalLogError(
          'local.open',
          `local log ${dir} cannot be opened: ${(err as Error).message}`,
          {
            cause: err,
          },
        );
      }
    })();
    // a failed open is tried again on the next decision (the directory may appear)
    opened.catch(() => {
      opened = undefined;
    });
    return opened;
  };
  const json = (v: unknown) =>
    new Response(JSON.stringify(v), { status: 200, headers: { 'content-type': 'application/json' } });
  const f = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const log = await open();
    const u = new URL(input instanceof Request ? input.url : input);
    const path = u.pathname.replace(/^\/+/, '');
    try {
      if (path === 'lookup' && init?.method === 'POST') {
        const { protocol, keys } = JSON.parse(Buffer.from(init.body as Uint8Array).toString('utf8')) as {
          protocol: string;
          keys: string[];
        };
        const body = log.lookupManyJson(
          protocol,
          keys.map((k) => Buffer.from(k, 'utf8')),
        ).body;
        return new Response(body, { status: 200, headers: { 'content-type': 'application/json' } });
      }
      if (path === 'checkpoint') return new Response(log.head().checkpoint, { status: 200 });
      if (path.startsWith('tile/')) {
        const t = parseTilePath(path);
        const size = log.head().size;
        const body =
          t.kind === 'hash'
            ? readHashTile(log.storage, size, t.level, t.index, t.width)
            : readEntryBundle(log.storage, size, t.index, t.width);
        return body
          ? new Response(new Uint8Array(body), { status: 200 })
          : new Response('{}', { status: 404 });
      }
      if (path.startsWith('lookup/')) {
        const [, p, k] = path.split('/');
        return json(log.lookup(decodeURIComponent(p), decodePathSegment(k)));
      }
      if (path === 'proof/consistency') {
        const o = Number(u.searchParams.get('old'));
        const n = Number(u.searchParams.get('new'));
        return json({ old: o, new: n, proof: log.consistencyProof(o, n).map(toBase64) });
      }
    } catch (err) {
      return new Response(JSON.stringify({ error: (err as Error).message }), { status: 400 });
    }
    return new Response('{}', { status: 404 });
  };
  return {
    fetch: f as typeof globalThis.fetch,
    open,
    async close() {
      const log = await opened?.catch(() => undefined);
      await log?.close();
    },
  };
}

export interface DeciderOptions {
  /** Where the last trusted checkpoint of each log is kept. Default: in memory. */
  trustStore?: TrustStore;
  fetch?: typeof globalThis.fetch;
  /** Where to write a misbehaviour proof when a log is caught forking (LogClient's proofDir). */
  proofDir?: string;
}

export class Decider {
  private readonly sources: Source[];
  private readonly procedures = new Map<string, Procedure>();

  constructor(
    readonly config: DecideConfig,
    opts: DeciderOptions = {},
  ) {
    const trustStore = opts.trustStore ?? new MemoryTrustStore();
    this.sources = config.logs.map((cfg) => {
      if (cfg.url !== undefined) {
        // one trust store for the log and its mirrors: a copy must be consistent with the log
        const clientFor = (url: string) =>
          new LogClient({
            url,
            vkey: cfg.vkey,
            trustStore,
            timeoutMs: config.timeoutMs,
            ...(cfg.witnessPolicy ? { witnessPolicy: cfg.witnessPolicy } : {}),
            ...(opts.fetch ? { fetch: opts.fetch } : {}),
            ...(opts.proofDir !== undefined ? { proofDir: opts.proofDir } : {}),
          });
        return {
          cfg,
          client: clientFor(cfg.url),
          mirrors: (cfg.mirrors ?? []).map(clientFor),
          close: async () => {},
        };
      }
      const local = localFetch(cfg.state!);
      const client = new LogClient({
        url: 'http://local.invalid/',
        vkey: cfg.vkey,
        trustStore,
        timeoutMs: config.timeoutMs,
        ...(cfg.witnessPolicy ? { witnessPolicy: cfg.witnessPolicy } : {}),
        ...(opts.proofDir !== undefined ? { proofDir: opts.proofDir } : {}),
        fetch: local.fetch,
      });
      return { cfg, client, mirrors: [], ready: local.open, close: local.close };
    });
  }

  /** The procedure for a protocol (its own, else `default`). */
  procedure(protocol: string): Procedure {
    const { key, spec } = procedureFor(this.config, protocol);
    let p = this.procedures.get(key);
    if (!p) {
      p = buildProcedure(spec);
      this.procedures.set(key, p);
    }
    return p;
  }

  /** Every configured log's classified answer for (protocol, key), in config order. */
  async gather(protocol: string, key: string): Promise<LogResult[]> {
    // the client's own deadline is per request; this one covers each log's whole lookup, and one
    // timer serves all the logs of a decision
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(new TrustixError('TIMEOUT', `no verified answer within ${this.config.timeoutMs / 1000}s`)),
        this.config.timeoutMs,
      );
    });
    // a deadline that fires after every log answered concerns nobody
    deadline.catch(() => {});
    try {
      return await Promise.all(this.sources.map((s) => this.ask(s, protocol, key, deadline)));
    } finally {
      clearTimeout(timer);
    }
  }

  private async ask(s: Source, protocol: string, key: string, deadline: Promise<never>): Promise<LogResult> {
    const t0 = performance.now();
    const base = { name: s.cfg.name, origin: s.client.origin, vkey: s.cfg.vkey, weight: s.cfg.weightText };
    try {
      if (s.ready) await Promise.race([s.ready(), deadline]);
      const { r, via } = await this.lookupWithFallback(s, protocol, key, deadline);
      const ms = performance.now() - t0;
      const from = via !== undefined ? { via } : {};
      if (r.status === 'absent')
        return { ...base, ...from, status: 'absent', size: r.checkpoint.size, ms, answer: r.answer };
      return {
        ...base,
        ...from,
        status: 'present',
        value: toHex(r.entry.value),
        index: r.index,
        size: r.checkpoint.size,
        ms,
        answer: r.answer,
      };
    } catch (err) {
      return { ...base, status: 'failed', ...failure(err), ms: performance.now() - t0 };
    }
  }

  /**
   * The log's verified answer; when the log cannot be reached (unreachable, or an HTTP error), each
   * of its mirrors in turn, whose answer is verified against the log's key just the same. A failed
   * check is never passed over: a log that answers wrongly is reported, not replaced.
   */
  private async lookupWithFallback(
    s: Source,
    protocol: string,
    key: string,
    deadline: Promise<never>,
  ): Promise<{ r: VerifiedLookup; via?: string }> {
    try {
      return { r: await Promise.race([s.client.lookup(protocol, key), deadline]) };
    } catch (err) {
      if (!(err instanceof UnreachableError || err instanceof RemoteError) || s.mirrors.length === 0)
        throw err;
      let last: unknown = err;
      for (const m of s.mirrors) {
        try {
          return { r: await Promise.race([m.lookup(protocol, key), deadline]), via: m.url.href };
        } catch (e) {
          if (!(e instanceof UnreachableError || e instanceof RemoteError)) throw e;
          last = e;
        }
      }
      throw new UnreachableError(
        err instanceof UnreachableError ? err.check : 'http.network',
        `the log and its ${s.mirrors.length} mirror(s) cannot be reached (log: ${(err as Error).message}; last mirror: ${(last as Error).message})`,
      );
    }
  }

  /** Gathers, decides and explains. */
  async decide(
    key: string,
    protocol = this.config.protocol,
  ): Promise<{ decision: Decision; results: LogResult[] }> {
    const results = await this.gather(protocol, key);
    const decision = await this.decideOn(results, protocol, key);
    return { decision, results };
  }

  /** Runs the protocol's procedure over classified answers. */
  decideOn(results: readonly LogResult[], protocol: string, key: string): Promise<Decision> {
    const weights = new Map(this.config.logs.map((l) => [l.name, l.weight]));
    return decideWith(this.procedure(protocol), results, weights, protocol, key);
  }

  async close(): Promise<void> {
    for (const p of this.procedures.values()) await p.close?.();
    for (const s of this.sources) await s.close();
  }
}

/**
 * Runs `procedure` over classified answers, each weighing what `weights` says for its log (1 if
 * not there), and explains the outcome. Evidence bundles are re-checked through it too.
 */
export async function decideWith(
  procedure: Procedure,
  results: readonly LogResult[],
  weights: ReadonlyMap<string, Rat>,
  protocol: string,
  key: string,
): Promise<Decision> {
  const answers: Answer[] = results.map((r) => ({
    name: r.name,
    weight: weights.get(r.name) ?? ONE,
    status: r.status,
    ...(r.value !== undefined ? { value: r.value } : {}),
    ...(r.check !== undefined ? { check: r.check } : {}),
    ...(r.reason !== undefined ? { reason: r.reason } : {}),
  }));
  let outcome: Outcome;
  try {
    outcome = await procedure.run(answers, { protocol, key });
  } catch (err) {
    outcome = {
      decided: false,
      procedure: procedure.name,
      reason: `procedure failed: ${(err as Error).message}`,
      error: { check: 'procedure.error', message: (err as Error).message },
    };
  }
  return explain(outcome, results, protocol, key);
}

/** The check and reason of a log's failure, as a decision reports them. */
export function failure(err: unknown): { check: string; reason: string } {
  if (err instanceof VerificationError) return { check: err.check, reason: err.message };
  const c = (err as { check?: unknown }).check;
  if (err instanceof TrustixError) {
    return {
      check: typeof c === 'string' ? c : err.code === 'TIMEOUT' ? 'http.timeout' : `error.${err.code}`,
      reason: err.message,
    };
  }
  return { check: 'error.internal', reason: err instanceof Error ? err.message : String(err) };
}

/** The decision with every log's part in it. */
export function explain(
  outcome: Outcome,
  results: readonly LogResult[],
  protocol: string,
  key: string,
): Decision {
  const agreed: string[] = [];
  const disagreed: string[] = [];
  const absent: string[] = [];
  const failed: Decision['failed'] = [];
  const logs: Decision['logs'] = [];
  for (const r of results) {
    const { answer: _answer, status, ...rest } = r;
    let verdict: LogVerdict = status;
    if (status === 'present' && outcome.decided) {
      verdict = r.value === outcome.value ? 'agrees' : 'disagrees';
      (verdict === 'agrees' ? agreed : disagreed).push(r.name);
    } else if (status === 'absent') absent.push(r.name);
    else if (status === 'failed') failed.push({ name: r.name, check: r.check ?? '', reason: r.reason ?? '' });
    logs.push({ ...rest, status: verdict });
  }
  return {
    protocol,
    key,
    decided: outcome.decided,
    ...(outcome.value !== undefined ? { value: outcome.value } : {}),
    ...(outcome.confidence !== undefined ? { confidence: outcome.confidence } : {}),
    procedure: outcome.procedure,
    reason: outcome.reason,
    ...(outcome.error ? { error: outcome.error } : {}),
    ...(outcome.steps
      ? {
          steps: outcome.steps.map((s) => ({
            procedure: s.procedure,
            decided: s.decided,
            reason: s.reason,
            ...(s.error ? { error: s.error } : {}),
          })),
        }
      : {}),
    agreed,
    disagreed,
    absent,
    failed,
    logs,
  };
}

/** A human-readable explanation. */
export function formatDecision(d: Decision): string {
  const lines: string[] = [];
  lines.push(
    d.decided
      ? `decided: ${d.protocol} ${d.key} -> ${d.value}${d.confidence !== undefined ? ` (confidence ${(d.confidence * 100).toFixed(1)}%)` : ''}`
      : `undecided: ${d.protocol} ${d.key}`,
  );
  lines.push(`procedure: ${d.procedure}: ${d.reason}`);
  for (const s of d.steps ?? [])
    lines.push(`  step ${s.procedure}: ${s.decided ? 'decided' : 'no decision'}: ${s.reason}`);
  for (const l of d.logs) {
    const what =
      l.status === 'failed'
        ? `FAILED ${l.check}: ${l.reason}`
        : l.status === 'absent'
          ? `absent (non-inclusion verified at size ${l.size})`
          : `${l.status} ${l.value} (entry ${l.index}, size ${l.size})`;
    lines.push(
      `  ${l.name} [weight ${l.weight}]: ${what}${l.via !== undefined ? ` via mirror ${l.via}` : ''}`,
    );
  }
  return `${lines.join('\n')}\n`;
}
