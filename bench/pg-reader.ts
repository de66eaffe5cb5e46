// A read-only node over a PostgreSQL log database for bench/postgres.ts, built from the modules
// `trustix serve` is made of (the app, its metrics, a read-only Log over PgLogStore): it answers
// the read API on a free loopback port, prints "listening URL" and "ready", and stops on SIGTERM.
// The answer cache is off (lookup_cache_entries 0), so every lookup is built from the store.
// Usage: node dist/bench/pg-reader.js postgresql://... [read connections]
import { Log } from '../src/log/log.js';
import { type AppContext, buildApp, type ServedLog } from '../src/server/app.js';
import { WriterAuth } from '../src/server/auth.js';
import { DEFAULT_LIMITS } from '../src/server/config.js';
import { LookupCache } from '../src/server/lookup-cache.js';
import { Metrics } from '../src/server/metrics.js';
import { PgLogStore } from '../src/storage/postgres/postgres.js';

const [url, connections] = process.argv.slice(2);
const log = Log.openIn(await PgLogStore.open(url, { readConnections: Number(connections ?? 4) }), {
  readOnly: true,
});
const metrics = new Metrics(new Map([['default', log]]));
const served: ServedLog = {
  id: 'default',
  log,
  metrics: metrics.forLog('default'),
  closed: false,
  lookupCache: new LookupCache<Buffer>(0),
  gzipBundles: new LookupCache<Buffer>(256),
};
const limits = { ...DEFAULT_LIMITS, lookupCacheEntries: 0 };
const ctx: AppContext = {
  logs: new Map([['default', served]]),
  auth: new WriterAuth([]),
  metrics,
  limits,
  draining: () => false,
  trackSubmit: (p) => p,
  holdIdleConnections: () => false,
  connections: { open: 0 },
  requests: { open: 0, idle: () => {} },
  unverifiedBytes: { reserved: 0 },
};
const app = buildApp(ctx, { name: 'bench', api: new Set(['read', 'metrics']) });
const address = await app.listen({ host: '127.0.0.1', port: 0 });
process.stdout.write(`listening ${address}\nready\n`);
process.once('SIGTERM', () => {
  void app
    .close()
    .then(() => log.close())
    .then(() => process.exit(0));
});
