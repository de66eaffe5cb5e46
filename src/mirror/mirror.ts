/**
 * `trustix mirror`: an auditing mirror (docs/mirror.md). For each configured log it follows the
 * log's tlog-tiles with the dashboard's verified follower, replays every entry into a copy of the
 * log with its own sparse index (copy.ts), checks each checkpoint's `map` line against the index it
 * computed, and serves the copy read-only through the node's own HTTP read side, the checkpoint
 * carrying the origin's signature plus the mirror's tlog-cosignature.
 */
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { logFileStem } from '../client/trust-store.js';
import { StateError } from '../core/errors.js';
import { mapMismatchProof } from '../core/misbehaviour.js';
import type { Cosigner } from '../core/note.js';
import { TILE_WIDTH } from '../core/tiles.js';
import { Follower, type FollowOptions, type LogStatus } from '../dashboard/follow.js';
import type { LogConfig } from '../decide/config.js';
import type { Log } from '../log/log.js';
import { writeProofFile } from '../misbehaviour/files.js';
import { type AppContext, buildApp, type ServedLog } from '../server/app.js';
import { WriterAuth } from '../server/auth.js';
import { DEFAULT_LIMITS } from '../server/config.js';
import { LookupCache } from '../server/lookup-cache.js';
import { Metrics } from '../server/metrics.js';
import { listen } from '../server/serve.js';
import { loadOrCreateWitnessKey } from '../witness/key.js';
import { addCheckpointRoute } from './add-checkpoint.js';
import { type CopyProgress, CopySet, LogCopy, type ProofWriter } from './copy.js';

export const MIRROR_KEY_FILE = 'mirror.key';

/** `<hostname>/mirror` when the host name makes a valid key name, else `trustix-mirror`. */
export function defaultMirrorName(): string {
  const h = hostname().toLowerCase();
  return /^[a-z0-9][a-z0-9.-]*$/.test(h) ? `${h}/mirror` : 'trustix-mirror';
}

/**
 * The id a log is served under (`/logs/<id>/`): the tlog-mirror origin hash, SHA-256 of the log's
 * origin in lower-case hex, so that `<mirror>/logs` is a tlog-mirror monitoring prefix (what
 * `trustix gossip` asks a cosigner of the policy for).
 */
export function mirrorLogId(cfg: LogConfig): string {
  return createHash('sha256').update(cfg.vkey.split('+')[0]).digest('hex');
}

export interface MirrorOptions {
  stateDir: string;
  logs: readonly LogConfig[];
  host: string;
  port: number;
  /** Name of the key created on first start (default defaultMirrorName()). */
  name?: string;
  /** Between polls of each log, ms (default 5000). */
  intervalMs?: number;
  /** Entry bundles per verified chunk (default 32: 8,192 entries). */
  chunkBundles?: number;
  /** Parallel entry bundle downloads per log (default: a chunk's, up to 32). */
  concurrency?: number;
  fetch?: FollowOptions['fetch'];
}

interface MirroredLog {
  cfg: LogConfig;
  id: string;
  copy: LogCopy;
  served: ServedLog;
}

export class Mirror {
  private draining = false;
  private constructor(
    readonly cosigner: Cosigner,
    readonly keyCreated: boolean,
    readonly keyFile: string,
    readonly logs: MirroredLog[],
    readonly follower: Follower,
    private readonly app: FastifyInstance,
    readonly url: string,
    private readonly auth: WriterAuth,
  ) {}

  get vkey(): string {
    return this.cosigner.vkey;
  }

  /**
   * Opens the key and every copy, and listens. Following starts with `start()`. `say` gets one line
   * per event worth telling the operator (progress while catching up, audited sizes, failures).
   */
  static async open(opts: MirrorOptions, say: (line: string) => void = () => {}): Promise<Mirror> {
    mkdirSync(opts.stateDir, { recursive: true });
    const key = loadOrCreateWitnessKey(opts.stateDir, opts.name, {
      file: MIRROR_KEY_FILE,
      defaultName: defaultMirrorName,
      role: 'mirror',
    });
    const proofsDir = join(opts.stateDir, 'proofs');
    const writeProof: ProofWriter = (a) =>
      writeProofFile(
        proofsDir,
        mapMismatchProof(a.vkey, a.note, [...a.entries()], { observer: key.cosigner.vkey }),
      );
    const chunkBundles = opts.chunkBundles ?? 32;
    const logs: MirroredLog[] = [];
    const ids = new Set<string>();
    let mirror: Mirror | undefined;
    const draining = () => mirror?.draining ?? false;
    const closeAll = () => Promise.allSettled(logs.map((l) => l.copy.close()));
    try {
      for (const [i, cfg] of opts.logs.entries()) {
        if (cfg.url === undefined) {
          throw new StateError(`log[${i}] (${cfg.name}): a mirror follows logs by url, not local state`);
        }
        const id = mirrorLogId(cfg);
        if (ids.has(id))
          throw new StateError(
            `log[${i}] (${cfg.name}): a mirror serves one log per origin, and another log has the same origin`,
          );
        ids.add(id);
        const origin = cfg.vkey.split('+')[0];
        const stem = logFileStem({ origin, vkey: cfg.vkey });
        const progress = progressReporter(cfg.name, say);
        const served: ServedLog = {
          id,
          log: undefined!,
          metrics: undefined!,
          closed: true,
          lookupCache: new LookupCache<Buffer>(DEFAULT_LIMITS.lookupCacheEntries),
          gzipBundles: new LookupCache<Buffer>(256),
        };
        const copy = await LogCopy.open({
          id: stem,
          dir: join(opts.stateDir, 'logs', stem),
          vkey: cfg.vkey,
          cosigner: key.cosigner,
          writeProof,
          // sixteen chunks per commit: the index is updated once per commit, and a bigger batch
          // rewrites fewer rows per entry (about 2 us of CPU per entry less than eight at a million)
          commitEntries: 16 * TILE_WIDTH * chunkBundles,
          say: (line) => say(`log ${cfg.name}: ${line}`),
          onProgress: (p) => {
            progress(p);
            served.closed = !p.serving || draining();
            served.closedReason = catchingUp(p);
          },
        });
        const at = copy.progress;
        say(
          `log ${cfg.name}: copy at size ${at.size}${at.audited ? ' (audited)' : at.size > 0 ? ' (catching up: resumed)' : ''}`,
        );
        served.log = copy.served;
        served.closed = !copy.audited;
        served.closedReason = catchingUp(copy.progress);
        logs.push({ cfg, id, copy, served });
      }
    } catch (err) {
      await closeAll();
      throw err;
    }
    const copies = new Map(logs.map((l) => [l.copy.id, l.copy]));
    const follower = new Follower(
      logs.map((l) => l.cfg),
      new CopySet(copies),
      {
        chunkBundles,
        // a chunk's bundles all asked for at once, as its tiles are: the log works on them while the
        // mirror hashes the first ones, and the mirror waits less (up to 32 requests)
        concurrency: opts.concurrency ?? Math.min(chunkBundles, 32),
        intervalMs: opts.intervalMs ?? 5000,
        ...(opts.fetch ? { fetch: opts.fetch } : {}),
      },
    );
    const metrics = new Metrics(new Map<string, Log>(logs.map((l) => [l.id, l.copy.served])));
    for (const l of logs) l.served.metrics = metrics.forLog(l.id);
    const auth = new WriterAuth([]);
    const ctx: AppContext = {
      logs: new Map(logs.map((l) => [l.id, l.served])),
      auth,
      metrics,
      limits: DEFAULT_LIMITS,
      draining,
      trackSubmit: (p) => p,
      holdIdleConnections: () => false,
      connections: { open: 0 },
      requests: { open: 0, idle: () => {} },
      unverifiedBytes: { reserved: 0 },
    };
    const api = new Set(['read', 'metrics'] as const);
    const app = buildApp(ctx, { name: `${opts.host}:${opts.port}`, api });
    // tlog-mirror: the submission prefix is the monitoring prefix, `/logs`
    addCheckpointRoute(
      app,
      '/logs',
      logs.map((l, i) => ({
        verifier: l.copy.verifier,
        follower: follower.logs[i],
        ...(l.cfg.witnessPolicy ? { witnessPolicy: l.cfg.witnessPolicy } : {}),
      })),
      (p) => writeProofFile(proofsDir, p),
      key.cosigner.vkey,
    );
    let url: string;
    try {
      url = await listen(app, { kind: 'tcp', host: opts.host, port: opts.port, api }, 0);
    } catch (err) {
      auth.close();
      await app.close();
      await closeAll();
      throw err;
    }
    mirror = new Mirror(key.cosigner, key.created, key.file, logs, follower, app, url, auth);
    return mirror;
  }

  /**
   * Follows every log: now, then every interval after the previous round. `say` is told when a
   * log's state changes (reachable, unreachable, failed and why).
   */
  start(say: (line: string) => void = () => {}): void {
    this.follower.start();
    const told = new Map<string, string>();
    this.watch = setInterval(() => {
      for (const s of this.follower.statuses()) {
        const line =
          s.state === 'ok' ? 'ok' : `${s.state}${s.check ? ` (${s.check})` : ''}: ${s.reason ?? ''}`;
        if (s.state === 'starting' || told.get(s.name) === line) continue;
        told.set(s.name, line);
        say(`log ${s.name}: ${line}`);
      }
    }, 500);
    this.watch.unref();
  }

  private watch: NodeJS.Timeout | undefined;

  /** One round over every log, every commit done (for tests and the bench). */
  async pollAll(): Promise<void> {
    await this.follower.pollAll();
    // a commit still running belongs to a round that failed after it: the next round reports it
    await Promise.allSettled(this.logs.map((l) => l.copy.settle()));
  }

  statuses(): Array<LogStatus & { prefix: string; audited: boolean }> {
    return this.follower.statuses().map((s, i) => ({
      ...s,
      prefix: `${this.url}/logs/${this.logs[i].id}/`,
      audited: this.logs[i].copy.audited,
    }));
  }

  async close(): Promise<void> {
    this.draining = true;
    clearInterval(this.watch);
    for (const l of this.logs) {
      l.served.closed = true;
      delete l.served.closedReason;
      l.copy.stop();
    }
    await this.follower.stop();
    await this.app.close();
    this.auth.close();
    await Promise.allSettled(this.logs.map((l) => l.copy.close()));
  }
}

function catchingUp(p: CopyProgress): string {
  return `the mirror is catching up with this log: ${p.size} of ${p.target} entries copied`;
}

/** Progress lines: at most one a second while catching up, and one per audited checkpoint. */
function progressReporter(name: string, say: (line: string) => void): (p: CopyProgress) => void {
  let last = 0;
  let from: { t: number; size: number } | undefined;
  return (p) => {
    const now = Date.now();
    from ??= { t: now, size: p.size };
    if (p.audited) {
      const secs = (now - from.t) / 1000;
      const rate = secs > 0 ? `, ${Math.round((p.size - from.size) / secs)} entries/s` : '';
      say(`log ${name}: audited size ${p.size}: map line matches the index${rate}`);
      from = undefined;
      last = now;
    } else if (now - last >= 1000) {
      const pct = p.target > 0 ? ` (${((100 * p.size) / p.target).toFixed(1)}%)` : '';
      say(`log ${name}: catching up: ${p.size} of ${p.target} entries${pct}, ${p.committed} committed`);
      last = now;
    }
  };
}
