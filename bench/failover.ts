// Failover of a log in PostgreSQL: two `trustix serve` nodes over one database (throwaway cluster,
// test/fixtures/postgres.ts) with the default 5 s lease. The sequencer is SIGKILLed three times
// (the killed node comes back as a standby), then stopped with SIGTERM; each figure is the time
// from the signal to the other node sequencing (its trustix_sequencing gauge, polled every 20 ms).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_LEASE_MS } from '../src/server/config.js';
import { startPostgres } from '../test/fixtures/postgres.js';
import type { RunningServer } from '../test/fixtures/server-helpers.js';
import {
  sequencing,
  sharedStates,
  sleep,
  startNode,
  waitForSequencer,
} from '../test/fixtures/shared-nodes.js';
import { emit } from './common.js';

const KILLS = 3;

const cluster = await startPostgres();
const base = mkdtempSync(join(tmpdir(), 'trustix-failover-'));
const nodes: RunningServer[] = [];
try {
  const url = await cluster.createDatabase();
  const states = sharedStates(base, url, 2, DEFAULT_LEASE_MS);
  nodes.push(...(await Promise.all(states.dirs.map((d) => startNode(d)))));
  /** Sends `signal` to the sequencer; ms until the other node sequences. */
  const handOver = async (signal: NodeJS.Signals): Promise<number> => {
    const seq = await waitForSequencer(nodes);
    const slot = nodes.indexOf(seq);
    const other = nodes[1 - slot];
    // a lease renewed some time ago, as in a running node
    await sleep(1000);
    const t0 = Date.now();
    seq.proc.kill(signal);
    while (!(await sequencing(other.url))) await sleep(20);
    const ms = Date.now() - t0;
    await seq.exited;
    nodes[slot] = await startNode(states.dirs[slot]);
    return ms;
  };
  for (let k = 0; k < KILLS; k++) {
    emit('failover_sigkill_ms', await handOver('SIGKILL'), 'ms', { lease_ms: DEFAULT_LEASE_MS, kill: k + 1 });
  }
  emit('failover_sigterm_ms', await handOver('SIGTERM'), 'ms', { lease_ms: DEFAULT_LEASE_MS });
} finally {
  for (const n of nodes) n.proc.kill('SIGKILL');
  cluster.stop();
  rmSync(base, { recursive: true, force: true });
}
