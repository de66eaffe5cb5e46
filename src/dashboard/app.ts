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
import { parseStorePath } from '../nix/store-path.js';
import { type Agreement, type DisagreementSort, indexAgreement, pageOf } from './agreement.js';
import { Follower } from './follow.js';
import { hasScripts, ScriptDecisions } from './scripted.js';
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

/** A search text as a key: under nix a store path stands for its hash part. */
export function searchKey(protocol: string, q: string): string {
  const s = q.trim();
  if (protocol === 'nix' && s.startsWith('/nix/store/')) {
    return parseStorePath(s.split('/').slice(0, 4).join('/')).hashPart;
  }
  return s;
}

export interface DashboardOptions {
  stateDir: string;
  /** Between two polls of a log, and at least between two computations of the agreement figures. Default 5 s. */
  intervalMs?: number;
  /** Entry bundles verified together (see FollowOptions). */
  chunkBundles?: number;
  fetch?: typeof globalThis.fetch;
}

export class Dashboard {
  readonly store: DashboardStore;
  readonly follower: Follower;
  readonly decider: Decider;
  readonly app: FastifyInstance;
  /** Decisions of script procedures, when the config has one. */
  readonly scripts: ScriptDecisions | undefined;
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

    app.get<{ Querystring: { page: number; per: number; sort: DisagreementSort } }>(
      '/api/agreement',
      {
        schema: {
          querystring: {
            type: 'object',
            additionalProperties: false,
            properties: {
              page: { type: 'integer', minimum: 0, default: 0 },
              per: { type: 'integer', minimum: 1, maximum: 500, default: 50 },
              sort: { type: 'string', enum: SORTS, default: 'key' },
            },
          },
        },
      },
      async (req) => {
        const { agreement: a, at } = await this.agreementNow();
        const { page, per, sort } = req.query;
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
          ...(this.scripts ? { pending: this.scripts.pending() } : {}),
          disagreeing: {
            total: a.disagreeing.length,
            page,
            per,
            sort,
            rows: pageOf(a.disagreeing, sort, page, per),
          },
        };
      },
    );

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
    return this.app.listen({ host, port });
  }

  async close(): Promise<void> {
    await this.app.close();
    await this.follower.stop();
    await this.scripts?.stop();
    await this.decider.close();
    await this.store.close();
  }
}
