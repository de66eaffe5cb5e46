// A node over PostgreSQL (real `trustix serve` processes) through database faults mid-ingest: the
// server restarted as after a crash (`pg_ctl restart -m immediate`), and the network to it cut
// (a TCP proxy that resets every connection and refuses new ones). The node acknowledges nothing
// while it cannot commit and recovers after; every acknowledged entry is then found by a verified
// lookup at its index and every published checkpoint is consistent with the newest.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import pg from 'pg';
import {
  CuttableProxy,
  checkNothingLost,
  Ingest,
  sequencing,
  sharedLogSuite,
  skipWithoutPostgres,
  sleep,
  waitForSequencer,
} from '../fixtures/shared-nodes.js';

const LEASE_MS = 1000;

async function dbSize(url: string): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const r = await c.query<{ size: string }>('SELECT size FROM trustix.head');
    return Number(r.rows[0].size);
  } finally {
    await c.end();
  }
}

describe('a node through PostgreSQL faults', { skip: skipWithoutPostgres }, () => {
  const suite = sharedLogSuite();

  test('PostgreSQL restarted mid-ingest (immediate): the nodes recover', async () => {
    const { url, states } = await suite.newLog(2, LEASE_MS);
    const nodes = await Promise.all(states.dirs.map((d) => suite.start(d)));
    const ingest = new Ingest(() => nodes.map((n) => n.url), states.vkey, states.token);
    try {
      for (let round = 0; round < 2; round++) {
        await ingest.progress(40);
        await suite.cluster.restart();
        // acknowledged again after the restart, by whichever node sequences now
        await ingest.progress(40, 30_000);
      }
    } finally {
      await ingest.stop();
    }
    assert.ok(ingest.refusals.length > 0, 'the restart refused some submissions');
    await checkNothingLost(ingest, nodes[1].url, url);
    assert.equal((await Promise.all(nodes.map((n) => sequencing(n.url)))).filter(Boolean).length, 1);
    await suite.stop(nodes);
  });

  test('the network to PostgreSQL cut: nothing acknowledged while cut, recovery after', async () => {
    const { url, states } = await suite.newLog(2, LEASE_MS);
    const port = suite.cluster.port;
    const proxy = new CuttableProxy(port);
    await proxy.start();
    const viaProxy = url.replace(`:${port}/`, `:${proxy.port}/`);
    // the sequencer reaches the database through the proxy, the standby directly
    const cutOff = await suite.start(states.dirs[0], viaProxy);
    await waitForSequencer([cutOff]);
    const standby = await suite.start(states.dirs[1]);
    const ingest = new Ingest(() => [cutOff.url, standby.url], states.vkey, states.token);
    try {
      // a cut shorter than the lease (the node keeps it), then one that outlasts it (the standby
      // takes over, and the cut-off node, back, finds itself fenced)
      for (const cutMs of [LEASE_MS / 5, 3 * LEASE_MS]) {
        await ingest.progress(40);
        const wasSequencing = await sequencing(cutOff.url);
        await proxy.cut();
        const cutAt = Date.now();
        const sizeAtCut = await dbSize(url);
        const from = ingest.acked.length;
        if (cutMs > LEASE_MS && wasSequencing) {
          // the sequencer lost its connection: the standby takes over within 10 s
          await waitForSequencer([standby], 10_000);
        }
        await sleep(cutMs - (Date.now() - cutAt));
        if (cutMs > LEASE_MS) {
          // a read the node cannot answer without the database is a 503 to retry, not a node fault
          const r = await fetch(`${cutOff.url}/logs/default/checkpoint`);
          assert.equal(r.status, 503, await r.text());
          assert.ok(r.headers.get('retry-after'));
        }
        const during = ingest.acked.slice(from);
        // the cut-off node's answers that arrive during the cut are for batches committed before it
        for (const a of during.filter((x) => x.node === cutOff.url)) {
          assert.ok(a.index < sizeAtCut, `entry ${a.index} acknowledged while cut off`);
        }
        await proxy.restore();
        await ingest.progress(40, 30_000);
      }
      // the cut-off node works again: it reads, and it is the sequencer or a standby
      await waitForSequencer([cutOff, standby]);
      assert.equal((await fetch(`${cutOff.url}/logs/default/checkpoint`)).status, 200);
    } finally {
      await ingest.stop();
      await proxy.close();
    }
    assert.ok(ingest.refusals.length > 0, 'the cut refused some submissions');
    await checkNothingLost(ingest, standby.url, url);
    await suite.stop([cutOff, standby]);
  });
});
