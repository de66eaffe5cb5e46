/**
 * The dashboard's HTTP side (docs/dashboard.md): one page (static HTML, script and style, all
 * served from here) and the JSON API under /api/ that the page and scripts use.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import Fastify, { type FastifyInstance } from 'fastify';
import { TrustixError } from '../core/errors.js';
import type { DecideConfig } from '../decide/config.js';
import { Decider } from '../decide/decide.js';
import { decisionBundle } from '../decide/evidence.js';
import {
  type Agreement,
  computeAgreement,
  type DisagreementSort,
  indexAgreement,
  pageOf,
} from './agreement.js';
import { Follower } from './follow.js';
import { hasScripts, ScriptDecisions } from './scripted.js';
import { checkSetName, type PackageSet, PackageSets, parseSetFile, searchKey } from './sets.js';
import { DashboardStore } from './store.js';

const STATIC: Record<string, string> = {
  '/': 'index.html',
  '/dashboard.js': 'dashboard.js',
  '/dashboard.css': 'dashboard.css',
  '/favicon.svg': 'favicon.svg',
};
const TYPES: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
  svg: 'image/svg+xml',
};
const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

/** The page's files: beside this module when run from source, under src/ when run from dist/. */
function readStatic(name: string): string {
  for (const dir of ['./static/', '../../../src/dashboard/static/']) {
    try {
      return readFileSync(fileURLToPath(new URL(dir + name, import.meta.url)), 'utf8');
    } catch {
      // next place
    }
  }
  throw new TrustixError('INTERNAL', `the dashboard's ${name} is missing from the installation`);
}

const SORTS: DisagreementSort[] = ['key', '-key', 'logs', '-logs', 'decided'];

export { searchKey };

/** Most bytes of an uploaded set file. */
const MAX_SET_BYTES = 64 << 20;

export interface DashboardOptions {
  stateDir: string;
  /** Between two polls of a log, and at least between two computations of the agreement figures. Default 5 s. */
  intervalMs?: number;
  /** Entry bundles verified together (see FollowOptions). */
  chunkBundles?: number;
  fetch?: typeof globalThis.fetch;
  /** Package sets given by the dashboard's configuration (`--set NAME=FILE`), of the config's protocol. */
  sets?: ReadonlyArray<{ name: string; keys: string[] }>;
}

/** The API's answer for agreement figures (of every key, or of a set), with one page of disagreeing keys. */
function agreementJson(a: Agreement, at: number, q: { page: number; per: number; sort: DisagreementSort }) {
  const share = (x: number) => (a.keys === 0 ? 0 : x / a.keys);
  return {
    computedAt: at,
    logs: a.logs,
    keys: a.keys,
    agree: a.agree,
    decided: a.decided,
    undecided: a.undecided,
    shares: { agree: share(a.agree), decided: share(a.decided), undecided: share(a.undecided) },
    matrix: a.matrix,
    disagreeing: {
      total: a.disagreeing.length,
      page: q.page,
      per: q.per,
      sort: q.sort,
      rows: pageOf(a.disagreeing, q.sort, q.page, q.per),
    },
  };
}

const pageSchema = {
  querystring: {
    type: 'object',
    additionalProperties: false,
    properties: {
      page: { type: 'integer', minimum: 0, default: 0 },
      per: { type: 'integer', minimum: 1, maximum: 500, default: 50 },
      sort: { type: 'string', enum: SORTS, default: 'key' },
    },
  },
};
type PageQuery = { page: number; per: number; sort: DisagreementSort };

export class Dashboard {
  readonly store: DashboardStore;
  readonly follower: Follower;
  readonly decider: Decider;
  readonly app: FastifyInstance;
  /** Decisions of script procedures, when the config has one. */
  readonly scripts: ScriptDecisions | undefined;
  readonly sets: PackageSets;
  /** The configured sets are in the index. */
  private readonly ready: Promise<void>;
  private setsTimer: NodeJS.Timeout | undefined;
  private setsRecorded = -1;
  private closed = false;
  private recording: Promise<void> | undefined;
  private agreement: { generation: number; at: number; value: Promise<Agreement> } | undefined;
  private readonly agreementEveryMs: number;

  constructor(
    readonly config: DecideConfig,
    opts: DashboardOptions,
  ) {
    this.decider = new Decider(config, opts.fetch ? { fetch: opts.fetch } : {});
    const scripts = hasScripts(this.decider);
    this.store = DashboardStore.open(opts.stateDir, { trackChanged: scripts });
    this.follower = new Follower(config.logs, this.store, {
      timeoutMs: config.timeoutMs,
      ...(opts.intervalMs !== undefined ? { intervalMs: opts.intervalMs } : {}),
      ...(opts.chunkBundles !== undefined ? { chunkBundles: opts.chunkBundles } : {}),
      ...(opts.fetch ? { fetch: opts.fetch } : {}),
    });
    this.scripts = scripts
      ? new ScriptDecisions(this.store, this.decider, () => this.follower.statuses())
      : undefined;
    this.agreementEveryMs = opts.intervalMs ?? 5000;
    const sets = new PackageSets(this.store, (records) =>
      computeAgreement(this.store, this.follower.statuses(), this.decider, records),
    );
    this.sets = sets;
    this.ready = (async () => {
      for (const s of opts.sets ?? []) {
        await sets.put({ name: s.name, protocol: config.protocol, keys: s.keys, source: 'config' });
      }
    })();
    this.ready.catch(() => {});
    this.app = this.routes();
  }

  /**
   * The agreement figures, recomputed when the index changed since, but at most once per poll
   * interval: they are read from what the index keeps as chunks are indexed (figures per shape of
   * key, the disagreeing keys, script decisions), so this costs a read of the disagreeing keys.
   */
  agreementNow(): Promise<{ agreement: Agreement; at: number }> {
    const generation = this.store.generation;
    const now = Date.now();
    const a = this.agreement;
    if (!a || (a.generation !== generation && now - a.at >= this.agreementEveryMs)) {
      const none = { decided: 0, undecided: 0, decisionOf: () => undefined };
      const value = indexAgreement(this.store, this.follower.statuses(), this.decider, this.scripts ?? none);
      value.catch(() => {
        this.agreement = undefined;
      });
      this.agreement = { generation, at: now, value };
    }
    const { at, value } = this.agreement!;
    return value.then((agreement) => ({ agreement, at }));
  }

  private routes(): FastifyInstance {
    const app = Fastify({ logger: false, forceCloseConnections: true });
    const files = Object.fromEntries(Object.values(STATIC).map((f) => [f, readStatic(f)]));
    app.addHook('onSend', async (_req, reply) => {
      reply.headers(SECURITY_HEADERS);
    });
    app.setErrorHandler((err: Error & { statusCode?: number }, _req, reply) => {
      const status =
        err.statusCode && err.statusCode < 500 ? err.statusCode : err instanceof TrustixError ? 400 : 500;
      reply.code(status).send({ error: status === 500 ? 'internal error' : err.message });
    });
    for (const [path, file] of Object.entries(STATIC)) {
      app.get(path, async (_req, reply) => {
        reply.type(TYPES[file.split('.').pop()!]).header('cache-control', 'no-cache');
        return files[file];
      });
    }

    app.get('/api/overview', async () => {
      const now = Date.now();
      return {
        now,
        protocol: this.config.protocol,
        logs: this.follower.statuses().map((s) => ({
          ...s,
          ...(s.seenAt !== undefined ? { age: Math.max(0, Math.round((now - s.seenAt) / 1000)) } : {}),
          catchingUp: s.target > s.size,
        })),
      };
    });

    app.get<{ Querystring: PageQuery }>('/api/agreement', { schema: pageSchema }, async (req) => {
      const { agreement: a, at } = await this.agreementNow();
      return {
        ...agreementJson(a, at, req.query),
        ...(this.scripts ? { pending: this.scripts.pending() } : {}),
      };
    });

    const setSummary = async (set: PackageSet) => {
      const a = await this.sets.figures(set);
      const share = (x: number) => (a.keys === 0 ? 0 : x / a.keys);
      return {
        name: set.name,
        protocol: set.protocol,
        source: set.source,
        size: set.keys.length,
        keys: a.keys,
        unseen: set.keys.length - a.keys,
        agree: a.agree,
        decided: a.decided,
        undecided: a.undecided,
        shares: { agree: share(a.agree), decided: share(a.decided), undecided: share(a.undecided) },
        history: set.history,
      };
    };
    const namedSet = async (name: string) => {
      await this.ready;
      const set = this.sets.get(name);
      if (!set)
        throw Object.assign(new Error(`no package set named ${JSON.stringify(name)}`), { statusCode: 404 });
      return set;
    };
    app.get('/api/sets', async () => {
      await this.ready;
      return { sets: await Promise.all(this.sets.list().map(setSummary)) };
    });
    type SetRoute = { Params: { name: string }; Querystring: PageQuery };
    app.get<SetRoute>('/api/sets/:name', { schema: pageSchema }, async (req) => {
      const set = await namedSet(req.params.name);
      const a = await this.sets.figures(set);
      return { ...agreementJson(a, Date.now(), req.query), ...(await setSummary(set)) };
    });
    app.put<{ Params: { name: string }; Body: string }>(
      '/api/sets/:name',
      { bodyLimit: MAX_SET_BYTES },
      async (req, reply) => {
        await this.ready;
        const { name } = req.params;
        checkSetName(name);
        if (typeof req.body !== 'string') {
          throw Object.assign(new Error('send the set file as text/plain: one store path or key a line'), {
            statusCode: 415,
          });
        }
        if (this.sets.get(name)?.source === 'config') {
          throw Object.assign(
            new Error(`the set ${JSON.stringify(name)} is given by the dashboard's configuration`),
            {
              statusCode: 409,
            },
          );
        }
        const keys = parseSetFile(req.body, this.config.protocol);
        const set = await this.sets.put({ name, protocol: this.config.protocol, keys, source: 'upload' });
        reply.code(201);
        return setSummary(set);
      },
    );
    app.delete<{ Params: { name: string } }>('/api/sets/:name', async (req, reply) => {
      const set = await namedSet(req.params.name);
      if (set.source === 'config') {
        throw Object.assign(
          new Error(`the set ${JSON.stringify(set.name)} is given by the dashboard's configuration`),
          {
            statusCode: 409,
          },
        );
      }
      await this.sets.remove(set.name);
      reply.code(204);
    });

    const searchSchema = {
      querystring: {
        type: 'object',
        additionalProperties: false,
        required: ['q'],
        properties: {
          q: { type: 'string', minLength: 1, maxLength: 2048 },
          protocol: { type: 'string', minLength: 1, maxLength: 64 },
        },
      },
    };
    type SearchQuery = { Querystring: { q: string; protocol?: string } };
    const decide = async (q: SearchQuery['Querystring']) => {
      const protocol = q.protocol ?? this.config.protocol;
      const key = searchKey(protocol, q.q);
      return { protocol, key, ...(await this.decider.decide(key, protocol)) };
    };
    app.get<SearchQuery>('/api/search', { schema: searchSchema }, async (req) => {
      const { protocol, key, decision } = await decide(req.query);
      const params = new URLSearchParams({ q: key, protocol });
      return { query: req.query.q, protocol, key, decision, evidence: `/api/evidence?${params}` };
    });
    app.get<SearchQuery>('/api/evidence', { schema: searchSchema }, async (req, reply) => {
      const { decision, results } = await decide(req.query);
      reply.header('content-disposition', 'attachment; filename="evidence.json"');
      reply.type('application/json; charset=utf-8');
      return `${JSON.stringify(decisionBundle(decision, results, this.config), null, 2)}\n`;
    });
    return app;
  }

  /** Starts following and serving; resolves with the URL it listens on. */
  async listen(host: string, port: number): Promise<string> {
    this.follower.start();
    this.scripts?.start(this.agreementEveryMs);
    await this.ready;
    const recordSets = () => {
      if (this.closed) return;
      const g = this.store.generation;
      const done = g === this.setsRecorded ? Promise.resolve() : this.sets.recordAll();
      this.setsRecorded = g;
      this.recording = done;
      done
        .catch(() => {})
        .then(() => {
          if (!this.closed) this.setsTimer = setTimeout(recordSets, this.agreementEveryMs);
        });
    };
    recordSets();
    return this.app.listen({ host, port });
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.app.close();
    clearTimeout(this.setsTimer);
    await this.recording?.catch(() => {});
    await this.follower.stop();
    await this.scripts?.stop();
    await this.decider.close();
    await this.store.close();
  }
}
