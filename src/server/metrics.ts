/**
 * Prometheus metrics (text exposition through prom-client). Per-log children are bound once so the
 * hot paths only bump a number.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { Log } from '../log/log.js';

/** Seconds, 1 ms to 10 s: a witness request and a wait for the quorum (bounded by witness_timeout_ms). */
const COSIGN_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export interface LogMetrics {
  appended: Counter.Internal;
  duplicates: Counter.Internal;
  requestEntries: Histogram.Internal<string>;
  submitSeconds: Histogram.Internal<string>;
  lookupPresent: Counter.Internal;
  lookupAbsent: Counter.Internal;
  lookupCached: Counter.Internal;
  lookupSeconds: Histogram.Internal<string>;
  checkpointEntries: Histogram.Internal<string>;
  batchSeconds: Histogram.Internal<string>;
}

/** Metrics of gathering witness cosignatures (server/cosign.ts), labelled by log and witness name. */
export interface CosignMetrics {
  requests: Counter<'log' | 'witness' | 'outcome'>;
  requestSeconds: Histogram<'log' | 'witness'>;
  witnessSize: Gauge<'log' | 'witness'>;
  witnessUp: Gauge<'log' | 'witness'>;
  waitSeconds: Histogram<'log' | 'quorum'>;
  quorumMet: Gauge<'log'>;
  publishedSize: Gauge<'log'>;
}

export class Metrics {
  readonly registry = new Registry();
  private readonly appended: Counter<'log'>;
  private readonly duplicates: Counter<'log'>;
  private readonly requestEntries: Histogram<'log'>;
  private readonly submitSeconds: Histogram<'log'>;
  private readonly lookups: Counter<'log' | 'result'>;
  private readonly lookupSeconds: Histogram<'log'>;
  private readonly checkpointEntries: Histogram<'log'>;
  private readonly batchSeconds: Histogram<'log'>;
  readonly submitRequests: Counter<'log' | 'status'>;
  readonly httpRequests: Counter<'listener' | 'route' | 'status'>;
  readonly cosign: CosignMetrics;

  constructor(logs: ReadonlyMap<string, Log>) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'trustix_' });
    this.appended = new Counter({
      name: 'trustix_entries_appended_total',
      help: 'Entries appended to the log through the submit API.',
      labelNames: ['log'],
      registers,
    });
    this.duplicates = new Counter({
      name: 'trustix_entries_duplicate_total',
      help: 'Submitted entries that were already in the log with the same value (nothing appended).',
      labelNames: ['log'],
      registers,
    });
    this.submitRequests = new Counter({
      name: 'trustix_submit_requests_total',
      help: 'Submit requests by HTTP status.',
      labelNames: ['log', 'status'],
      registers,
    });
    this.requestEntries = new Histogram({
      name: 'trustix_submit_request_entries',
      help: 'Entries per accepted submit request.',
      labelNames: ['log'],
      buckets: [1, 10, 100, 1000, 5000, 10_000, 50_000],
      registers,
    });
    this.submitSeconds = new Histogram({
      name: 'trustix_submit_duration_seconds',
      help: 'Time from a submit request being parsed to its entries being durable and signed.',
      labelNames: ['log'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.lookups = new Counter({
      name: 'trustix_lookups_total',
      help: 'Lookups answered, by result: present, absent, or cached (answered from the cache for the current checkpoint).',
      labelNames: ['log', 'result'],
      registers,
    });
    this.lookupSeconds = new Histogram({
      name: 'trustix_lookup_duration_seconds',
      help: 'Time to build a lookup answer with its proofs.',
      labelNames: ['log'],
      buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05],
      registers,
    });
    this.checkpointEntries = new Histogram({
      name: 'trustix_checkpoint_entries',
      help: 'Entries appended per published checkpoint (sequencer batch size).',
      labelNames: ['log'],
      buckets: [1, 10, 100, 1000, 2500, 5000, 10_000, 50_000],
      registers,
    });
    this.batchSeconds = new Histogram({
      name: 'trustix_batch_seconds',
      help: 'Time to sequence one batch: index, tiles, signature, durable commit and acknowledgements.',
      labelNames: ['log'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.httpRequests = new Counter({
      name: 'trustix_http_requests_total',
      help: 'HTTP requests by listener, route and status.',
      labelNames: ['listener', 'route', 'status'],
      registers,
    });
    this.cosign = {
      requests: new Counter({
        name: 'trustix_cosign_requests_total',
        help: 'add-checkpoint requests to witnesses by outcome: cosigned, conflict (409, retried), a refusal status (400, 403, 404, 422...), unreachable, timeout, bad-response.',
        labelNames: ['log', 'witness', 'outcome'],
        registers,
      }),
      requestSeconds: new Histogram({
        name: 'trustix_cosign_request_seconds',
        help: 'Time of one add-checkpoint request to a witness.',
        labelNames: ['log', 'witness'],
        buckets: COSIGN_BUCKETS_S,
        registers,
      }),
      witnessSize: new Gauge({
        name: 'trustix_cosign_witness_size',
        help: 'Size of the latest checkpoint the witness cosigned for the log.',
        labelNames: ['log', 'witness'],
        registers,
      }),
      witnessUp: new Gauge({
        name: 'trustix_cosign_witness_up',
        help: '1 when the last add-checkpoint request to the witness succeeded, 0 while it is failing.',
        labelNames: ['log', 'witness'],
        registers,
      }),
      waitSeconds: new Histogram({
        name: 'trustix_cosign_wait_seconds',
        help: 'From a checkpoint being committed to its quorum being met (quorum="met") or given up on (quorum="missed": timeout, or too many witnesses failed).',
        labelNames: ['log', 'quorum'],
        buckets: COSIGN_BUCKETS_S,
        registers,
      }),
      quorumMet: new Gauge({
        name: 'trustix_cosign_quorum_met',
        help: '1 when the latest settled checkpoint met the witness quorum, 0 when it did not.',
        labelNames: ['log'],
        registers,
      }),
      publishedSize: new Gauge({
        name: 'trustix_cosign_published_size',
        help: 'Size of the checkpoint served at <prefix>/checkpoint (the latest that met the quorum).',
        labelNames: ['log'],
        registers,
      }),
    };
    new Gauge({
      name: 'trustix_tree_size',
      help: 'Entries in the latest published checkpoint.',
      labelNames: ['log'],
      registers,
      collect() {
        for (const [id, log] of logs) this.set({ log: id }, log.head().size);
      },
    });
    new Gauge({
      name: 'trustix_pending_entries',
      help: 'Entries accepted and waiting to be sequenced.',
      labelNames: ['log'],
      registers,
      collect() {
        for (const [id, log] of logs) this.set({ log: id }, log.pendingCount);
      },
    });
    new Gauge({
      name: 'trustix_sequencing',
      help: 'Whether this node sequences the log now (1) or not (0: a standby or a reader of a shared log).',
      labelNames: ['log'],
      registers,
      collect() {
        for (const [id, log] of logs) this.set({ log: id }, log.sequencing ? 1 : 0);
      },
    });
  }

  forLog(id: string): LogMetrics {
    return {
      appended: this.appended.labels(id),
      duplicates: this.duplicates.labels(id),
      requestEntries: this.requestEntries.labels(id),
      submitSeconds: this.submitSeconds.labels(id),
      lookupPresent: this.lookups.labels(id, 'present'),
      lookupAbsent: this.lookups.labels(id, 'absent'),
      lookupCached: this.lookups.labels(id, 'cached'),
      lookupSeconds: this.lookupSeconds.labels(id),
      checkpointEntries: this.checkpointEntries.labels(id),
      batchSeconds: this.batchSeconds.labels(id),
    };
  }

  async text(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
