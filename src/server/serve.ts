/**
 * A running node: its logs, its listeners and an orderly shutdown. Shutdown (SIGTERM) never loses an
 * accepted submission: new submissions get 503 from the first moment, listeners stop accepting
 * connections, every entry already queued is sequenced, committed and acknowledged (Log.close
 * drains), and only then do the stores close.
 */
import { chmodSync, existsSync, lstatSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { InsecureSecretError, readSecretFile } from '../config/secret.js';
import { StateError } from '../core/errors.js';
import { verifierFromVkey } from '../core/note.js';
import { policyCoversLog } from '../core/policy.js';
import { type BatchInfo, Log, type LogOptions } from '../log/log.js';
import type { PgLogStore } from '../storage/postgres/postgres.js';
import { type AppContext, buildApp, type ServedLog } from './app.js';
import { WriterAuth } from './auth.js';
import { ConfigError, type ListenConfig, type ServerConfig } from './config.js';
import { Cosigning } from './cosign.js';
import { LookupCache } from './lookup-cache.js';
import { Metrics } from './metrics.js';
import type { SequencerRole } from './sequencer-role.js';

/** Gzipped full entry bundles cached per log (about 30 KB each for 32-byte keys and values). */
const GZIP_BUNDLES_CACHED = 256;

export interface Listening {
  /** `http://host:port` or `unix:/path`. */
  url: string;
  api: string[];
}

export class TrustixServer {
  private draining = false;
  /** From the start of a drain until the logs are closed and no request is in flight (AppContext.holdIdleConnections). */
  private holdingIdle = false;
  private inFlight = 0;
  private shutdownPromise: Promise<void> | undefined;

  private constructor(
    private readonly logs: Map<string, ServedLog>,
    private readonly apps: FastifyInstance[],
    private readonly auth: WriterAuth,
    private readonly sockets: string[],
    readonly listening: Listening[],
    private readonly drainTimeoutMs: number,
    private readonly requests: AppContext['requests'],
  ) {}

  /**
   * Opens (or creates) every configured log and starts every listener. `say` receives one line per
   * event worth telling the operator (log created/opened, listening on...).
   */
  static async start(config: ServerConfig, say: (line: string) => void = () => {}): Promise<TrustixServer> {
    const opts: LogOptions = {
      maxBatch: config.limits.maxBatch,
      batchDelayMs: config.limits.batchDelayMs,
      maxPending: config.limits.maxPending,
    };
    const logs = new Map<string, ServedLog>();
    const batchObservers = new Map<string, (b: BatchInfo) => void>();
    /** Shared logs: each gets a SequencerRole once listening (a reader's only follows the lease). */
    const shared = new Map<string, { store: PgLogStore; candidate: boolean }>();
    const apps: FastifyInstance[] = [];
    const sockets: string[] = [];
    const listening: Listening[] = [];
    let auth: WriterAuth | undefined;
    try {
      for (const [i, lc] of config.logs.entries()) {
        const skey = lc.keyFile !== undefined ? readKeyFile(lc.keyFile, `log[${i}].key_file`) : undefined;
        // metrics exist only once every log is open, so the batch hook looks its observer up late
        const logOpts: LogOptions = {
          ...opts,
          onBatch: (b) => batchObservers.get(lc.id)?.(b),
          onCommitError: (err) => logs.get(lc.id)?.role?.commitFailed(err),
        };
        const withKey = skey !== undefined ? { ...logOpts, skey } : logOpts;
        let log: Log;
        if (lc.storage !== undefined) {
          // the PostgreSQL client is loaded only by a node that has a log there
          const { openSharedLog } = await import('./shared-log.js');
          const opened = await openSharedLog({ ...lc, storage: lc.storage }, i, logOpts, say);
          log = opened.log;
          shared.set(lc.id, { store: opened.store, candidate: opened.canSequence });
        } else if (existsSync(join(lc.dir, 'log.mdb'))) {
          log = await Log.open(lc.dir, withKey);
          if (log.origin !== lc.origin) {
            await log.close();
            throw new ConfigError(
              `log[${i}].origin: the config says ${lc.origin} but the log in ${lc.dir} has origin ${log.origin}`,
            );
          }
          say(`log ${lc.id}: opened ${lc.dir} (size ${log.head().size})`);
        } else {
          log = await Log.create(lc.dir, lc.origin, withKey);
          say(
            `log ${lc.id}: created in ${lc.dir} with a new signing key (${join(lc.dir, 'signing.key')}, mode 0600)`,
          );
        }
        logs.set(lc.id, {
          id: lc.id,
          log,
          metrics: undefined!,
          closed: false,
          lookupCache: new LookupCache<Buffer>(config.limits.lookupCacheEntries),
          gzipBundles: new LookupCache<Buffer>(GZIP_BUNDLES_CACHED),
        });
        say(`log ${lc.id}: origin ${log.origin}`);
        say(`log ${lc.id}: vkey ${log.vkey}`);
      }
      const metrics = new Metrics(new Map([...logs].map(([id, sl]) => [id, sl.log])));
      for (const [i, lc] of config.logs.entries()) {
        const sl = logs.get(lc.id)!;
        if (lc.witnessPolicy === undefined) continue;
        const { file, policy } = lc.witnessPolicy;
        if (!policyCoversLog(policy, verifierFromVkey(sl.log.vkey))) {
          throw new ConfigError(
            `log[${i}]: the witness policy ${file} lists logs, and this log's key ${sl.log.vkey} is not one of them`,
          );
        }
        sl.cosign = new Cosigning({
          log: sl.log,
          id: lc.id,
          policy,
          timeoutMs: config.limits.witnessTimeoutMs,
          metrics: metrics.cosign,
          warn: (line) => process.stderr.write(`trustix serve: ${line}\n`),
          onChange: () => sl.lookupCache.clear(),
        });
        sl.log.attachPublisher(sl.cosign);
        say(
          `log ${lc.id}: witnesses of ${file}: ${[...policy.witnesses.keys()].length}, quorum ${policy.quorum ?? 'none'}`,
        );
      }
      for (const sl of logs.values()) {
        sl.metrics = metrics.forLog(sl.id);
        batchObservers.set(sl.id, (b) => {
          if (b.appended > 0) sl.metrics.checkpointEntries.observe(b.appended);
          sl.metrics.batchSeconds.observe(b.seconds);
        });
      }
      auth = new WriterAuth(config.writers);
      // nonces of signed requests used before a restart stay used until they expire
      const now = Math.floor(Date.now() / 1000);
      for (const sl of logs.values())
        for (const n of sl.log.storage.nonces(now)) auth.remember(n.id, n.expires);

      let server: TrustixServer | undefined;
      const requests = { open: 0, idle: () => {} };
      const ctx: AppContext = {
        logs,
        auth,
        metrics,
        limits: config.limits,
        draining: () => server?.draining ?? false,
        trackSubmit: (p) => server!.track(p),
        holdIdleConnections: () => server?.holdingIdle ?? false,
        connections: { open: 0 },
        requests,
        unverifiedBytes: { reserved: 0 },
      };
      for (const [i, l] of config.listeners.entries()) {
        const name = l.kind === 'tcp' ? `${l.host}:${l.port}` : `unix:${l.path}`;
        const app = buildApp(ctx, { name, api: l.api });
        apps.push(app);
        const url = await listen(app, l, i);
        if (l.kind === 'unix') sockets.push(l.path);
        const api = [...l.api];
        listening.push({ url, api });
      }
      server = new TrustixServer(
        logs,
        apps,
        auth,
        sockets,
        listening,
        config.limits.drainTimeoutMs,
        requests,
      );
      for (const l of listening) say(`listening ${l.url} api=${l.api.join(',')}`);
      if (shared.size > 0) {
        const advertise = config.advertise ?? listening.find((l) => l.url.startsWith('http'))?.url;
        if (advertise === undefined) {
          throw new ConfigError(
            'advertise: a node with a shared log and no TCP listener needs advertise = "http://..."',
          );
        }
        const warn = (line: string) => process.stderr.write(`trustix serve: ${line}\n`);
        for (const [id, { store, candidate }] of shared) {
          const sl = logs.get(id)!;
          store.advertise = advertise;
          const { SequencerRole } = await import('./sequencer-role.js');
          sl.role = new SequencerRole(id, sl.log, store, advertise, say, warn, candidate);
          await sl.role.start();
        }
      }
      say('ready');
      return server;
    } catch (err) {
      await Promise.allSettled(apps.map((a) => a.close()));
      await Promise.allSettled([...logs.values()].map((sl) => sl.role?.close()));
      await Promise.allSettled([...logs.values()].map((sl) => sl.log.close()));
      auth?.close();
      throw err;
    }
  }

  private async track<T>(p: Promise<T>): Promise<T> {
    this.inFlight++;
    try {
      return await p;
    } finally {
      this.inFlight--;
    }
  }

  get submissionsInFlight(): number {
    return this.inFlight;
  }

  /**
   * Drains and stops. Submissions already queued are acknowledged (or, if their connection is
   * gone, still committed); new ones get 503; listeners close; then the logs.
   */
  shutdown(): Promise<void> {
    this.shutdownPromise ??= this.doShutdown();
    return this.shutdownPromise;
  }

  private async doShutdown(): Promise<void> {
    this.draining = true;
    this.holdingIdle = true;
    // Stop accepting connections; requests still arriving on open ones get 503.
    const closing = Promise.allSettled(this.apps.map((a) => a.close()));
    // Log.close stops new submissions (they get 503), then sequences and acknowledges the queue.
    await Promise.allSettled(
      [...this.logs.values()].map(async (sl) => {
        sl.closed = true;
        await sl.role?.close();
        await sl.log.close();
      }),
    );
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((r) => {
      timer = setTimeout(() => r('timeout'), this.drainTimeoutMs);
    });
    // Answers sent while draining carry `Connection: close`. Keep-alive connections that were idle
    // stay open until every request in flight is answered, so a request sent on one meanwhile gets
    // 503 instead of a reset; then they are closed, and the listeners finish closing.
    if (this.requests.open > 0) {
      await Promise.race([new Promise<void>((r) => (this.requests.idle = r)), timeout]);
    }
    this.holdingIdle = false;
    for (const a of this.apps) a.server.closeIdleConnections();
    if ((await Promise.race([closing, timeout])) === 'timeout') {
      for (const a of this.apps) a.server.closeAllConnections();
      await closing;
    }
    clearTimeout(timer);
    this.auth.close();
    for (const s of this.sockets) removeSocket(s);
  }
}

function readKeyFile(file: string, key: string): string {
  try {
    return readSecretFile(file, 'signing key');
  } catch (err) {
    if (err instanceof InsecureSecretError) throw err;
    throw new ConfigError(`${key}: cannot read ${file}: ${(err as Error).message}`);
  }
}

function removeSocket(path: string): void {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
  } catch {
    // already gone
  }
}

export async function listen(app: FastifyInstance, l: ListenConfig, i: number): Promise<string> {
  try {
    if (l.kind === 'tcp') {
      await app.listen({ host: l.host, port: l.port });
      const a = app.server.address();
      if (a === null || typeof a === 'string') throw new StateError('listener has no TCP address');
      const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
      return `http://${host}:${a.port}`;
    }
    // A socket file left by a previous run that was killed would make listen fail.
    if (existsSync(l.path)) {
      if (!lstatSync(l.path).isSocket())
        throw new ConfigError(`listen[${i}].unix: ${l.path} exists and is not a socket`);
      unlinkSync(l.path);
    }
    // The socket is created with the process umask; narrow it so the file is never more open than `mode`.
    const old = process.umask(0o777 & ~l.mode);
    try {
      await app.listen({ path: l.path });
    } finally {
      process.umask(old);
    }
    chmodSync(l.path, l.mode);
    return `unix:${l.path}`;
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    const where = l.kind === 'tcp' ? `${l.host}:${l.port}` : l.path;
    throw new ConfigError(`listen[${i}]: cannot listen on ${where}: ${(err as Error).message}`);
  }
}
