/**
 * `trustix witness`: the HTTP face of a C2SP tlog-witness v1.0.0 witness (docs/witness.md).
 *
 *   POST /add-checkpoint                 the protocol (protocol.ts decides, store.ts persists)
 *   GET  /<sha256 hex of origin>/checkpoint   the latest cosigned checkpoint (monitoring)
 *   GET  /evidence, /evidence/<name>     misbehaviour records kept by this witness
 *   GET  /metrics, /healthz
 */
import { createHash } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { Counter, Gauge, Registry } from 'prom-client';
import { StateError } from '../core/errors.js';
import type { Cosigner } from '../core/note.js';
import { loadOrCreateWitnessKey } from './key.js';
import {
  contradictionProof,
  cosignatureLine,
  cosignatureTime,
  decide,
  MAX_REQUEST_BYTES,
  openSubmittedCheckpoint,
  parseAddCheckpoint,
  type WitnessedLog,
  WitnessRefusal,
} from './protocol.js';
import { WitnessStore } from './store.js';

const TEXT_TYPE = 'text/plain; charset=utf-8';
const SIZE_TYPE = 'text/x.tlog.size';

export interface WitnessOptions {
  stateDir: string;
  host: string;
  port: number;
  logs: ReadonlyMap<string, WitnessedLog>;
  /** The key's name when the key is created (default: from the host name). */
  name?: string;
}

class WitnessMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'origin' | 'status'>;
  readonly size: Gauge<'origin'>;
  readonly evidence: Counter<'origin' | 'kind'>;

  constructor() {
    const registers = [this.registry];
    this.requests = new Counter({
      name: 'trustix_witness_add_checkpoint_total',
      help: 'add-checkpoint requests by answer status (origin empty when unknown).',
      labelNames: ['origin', 'status'],
      registers,
    });
    this.size = new Gauge({
      name: 'trustix_witness_cosigned_size',
      help: 'Size of the latest checkpoint cosigned per log.',
      labelNames: ['origin'],
      registers,
    });
    this.evidence = new Counter({
      name: 'trustix_witness_evidence_total',
      help: 'Validly signed checkpoints that contradict a cosigned one (kept in evidence/).',
      labelNames: ['origin', 'kind'],
      registers,
    });
  }
}

export class WitnessServer {
  private constructor(
    readonly app: FastifyInstance,
    readonly url: string,
    readonly cosigner: Cosigner,
    private readonly store: WitnessStore,
  ) {}

  get vkey(): string {
    return this.cosigner.vkey;
  }

  /** Opens (or creates) the state, then listens. `say` gets lines for the operator. */
  static async start(opts: WitnessOptions, say: (line: string) => void): Promise<WitnessServer> {
    if (opts.logs.size === 0)
      throw new StateError('no logs to witness: give --log VKEY or a --config FILE with [[log]]');
    const store = WitnessStore.open(opts.stateDir);
    let key: ReturnType<typeof loadOrCreateWitnessKey>;
    try {
      key = loadOrCreateWitnessKey(opts.stateDir, opts.name);
    } catch (err) {
      await store.close();
      throw err;
    }
    if (key.created) say(`created witness key ${key.file} (mode 0600)`);
    const metrics = new WitnessMetrics();
    for (const origin of store.origins()) {
      if (opts.logs.has(origin)) metrics.size.set({ origin }, store.get(origin)?.size ?? 0);
    }
    const app = buildApp(opts.logs, store, key.cosigner, metrics);
    let url: string;
    try {
      await app.listen({ host: opts.host, port: opts.port });
      const a = app.server.address();
      if (a === null || typeof a === 'string') throw new StateError('listener has no TCP address');
      url = `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
    } catch (err) {
      await app.close();
      await store.close();
      throw new StateError(`cannot listen on ${opts.host}:${opts.port}: ${(err as Error).message}`);
    }
    return new WitnessServer(app, url, key.cosigner, store);
  }

  async close(): Promise<void> {
    await this.app.close();
    await this.store.close();
  }
}

function buildApp(
  logs: ReadonlyMap<string, WitnessedLog>,
  store: WitnessStore,
  cosigner: Cosigner,
  metrics: WitnessMetrics,
): FastifyInstance {
  const app = Fastify({ logger: false, bodyLimit: MAX_REQUEST_BYTES, return503OnClosing: true });
  const byHash = new Map([...logs.keys()].map((o) => [createHash('sha256').update(o).digest('hex'), o]));
  // The protocol names no request media type: every body is taken as bytes.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  const text = (reply: FastifyReply, status: number, body: string, type = TEXT_TYPE) =>
    reply.code(status).header('content-type', type).header('cache-control', 'no-store').send(body);

  app.post('/add-checkpoint', async (request, reply) => {
    let origin = '';
    try {
      const body = Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0);
      const req = parseAddCheckpoint(body);
      const signed = openSubmittedCheckpoint(req.note, logs);
      origin = signed.log.origin;
      const cp = signed.checkpoint;
      const d = decide(req, signed, store.get(origin));
      if (d.contradiction) {
        try {
          const name = store.saveEvidence(
            contradictionProof(d.contradiction, req, signed, `witness ${cosigner.vkey}`),
          );
          metrics.evidence.inc({ origin, kind: d.contradiction.kind });
          process.stderr.write(
            `trustix witness: ${origin}: ${d.contradiction.kind}, kept as evidence/${name}\n`,
          );
        } catch (err) {
          process.stderr.write(
            `trustix witness: cannot keep evidence for ${origin}: ${(err as Error).message}\n`,
          );
        }
      }
      if (d.refusal) throw d.refusal;
      const line = cosignatureLine(cosigner, signed.text, cosignatureTime());
      const done = await store.compareAndSet(origin, req.oldSize, {
        size: cp.size,
        rootHash: cp.rootHash,
        note: `${signed.text}\n${signed.logSignatures}${line}`,
      });
      if (!done.ok) {
        throw new WitnessRefusal(
          409,
          `old size ${req.oldSize} is not the latest cosigned size ${done.size}`,
          done.size,
        );
      }
      metrics.size.set({ origin }, cp.size);
      metrics.requests.inc({ origin, status: '200' });
      return text(reply, 200, line);
    } catch (err) {
      if (!(err instanceof WitnessRefusal)) throw err;
      metrics.requests.inc({ origin: err.origin ?? origin, status: String(err.status) });
      if (err.status === 409) return text(reply, 409, `${err.latestSize}\n`, SIZE_TYPE);
      return text(reply, err.status, `${err.message}\n`);
    }
  });

  app.route({
    method: ['GET', 'PUT', 'DELETE', 'PATCH'],
    url: '/add-checkpoint',
    handler: async (_request, reply) =>
      text(reply.header('allow', 'POST'), 405, 'add-checkpoint takes a POST\n'),
  });

  app.get<{ Params: { hash: string } }>('/:hash/checkpoint', async (request, reply) => {
    const origin = byHash.get(request.params.hash);
    const state = origin === undefined ? undefined : store.get(origin);
    if (state === undefined) return text(reply, 404, 'no checkpoint cosigned for this origin hash\n');
    return text(reply, 200, state.note);
  });

  app.get('/evidence', async (_request, reply) => {
    const names = store.evidenceNames();
    return text(reply, 200, names.map((n) => `${n}\n`).join(''));
  });

  app.get<{ Params: { name: string } }>('/evidence/:name', async (request, reply) => {
    const body = store.readEvidence(request.params.name);
    if (body === undefined) return text(reply, 404, 'no such evidence\n');
    return text(reply, 200, body, 'application/json; charset=utf-8');
  });

  app.get('/metrics', async (_request, reply) => {
    return text(reply, 200, await metrics.registry.metrics(), metrics.registry.contentType);
  });

  app.get('/healthz', async (_request, reply) => text(reply, 200, 'ok\n'));

  app.setErrorHandler((err: { statusCode?: number; message?: string }, _request, reply) => {
    const status =
      typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500
        ? err.statusCode
        : 500;
    if (status === 500)
      process.stderr.write(`trustix witness: internal error: ${(err as Error).stack ?? String(err)}\n`);
    return text(reply, status, `${status === 500 ? 'internal error' : (err.message ?? 'bad request')}\n`);
  });
  return app;
}
