// Nodes of one log over one PostgreSQL database (real `trustix serve` processes): the sequencer is
// SIGKILLed mid-ingest again and again and a standby takes over each time; the sequencer is paused
// past its lease while another node takes over (two nodes racing for the role). After each, every
// acknowledged entry is found by a verified lookup at its index and no published checkpoint forks.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { RunningServer } from '../fixtures/server-helpers.js';
import {
  checkNothingLost,
  Ingest,
  sequencing,
  sharedLogSuite,
  skipWithoutPostgres,
  sleep,
  waitForSequencer,
} from '../fixtures/shared-nodes.js';

/** Short, so that ten takeovers fit in a moderate test; the default is 5 s. */
const LEASE_MS = 1000;
const KILLS = 10;
/** The promise of issue #14: a standby sequences within 10 s of the sequencer's death. */
const TAKEOVER_LIMIT_MS = 10_000;

describe('one sequencer with standbys over PostgreSQL', { skip: skipWithoutPostgres }, () => {
  const suite = sharedLogSuite();
  const start = (dir: string) => suite.start(dir);

  test(`SIGKILL of the sequencer mid-ingest, ${KILLS} times: a standby takes over each time`, async () => {
    const { url, states } = await suite.newLog(3, LEASE_MS);
    const nodes: Array<RunningServer | undefined> = await Promise.all(states.dirs.map(start));
    const ingest = new Ingest(
      () => nodes.filter((n): n is RunningServer => n !== undefined).map((n) => n.url),
      states.vkey,
      states.token,
    );
    try {
      const restarts: Array<Promise<void>> = [];
      for (let k = 0; k < KILLS; k++) {
        await ingest.progress(1);
        const seq = await waitForSequencer(nodes.filter((n): n is RunningServer => n !== undefined));
        // at least one other node is up to take over
        while (nodes.filter((n) => n !== undefined && n !== seq).length === 0) await sleep(50);
        await ingest.progress(1);
        const slot = nodes.indexOf(seq);
        const killedAt = ingest.elapsed;
        seq.proc.kill('SIGKILL');
        await seq.exited;
        suite.killed(seq);
        nodes[slot] = undefined;
        const next = await ingest.progress(1, 2 * TAKEOVER_LIMIT_MS);
        assert.notEqual(next.node, seq.url);
        assert.ok(
          next.at - killedAt < TAKEOVER_LIMIT_MS,
          `kill ${k + 1}: acknowledged again ${next.at - killedAt} ms after the kill`,
        );
        // the killed node comes back as a standby while the ingest goes on
        restarts.push(
          start(states.dirs[slot]).then((n) => {
            nodes[slot] = n;
          }),
        );
      }
      await Promise.all(restarts);
    } finally {
      await ingest.stop();
    }
    const live = nodes.filter((n): n is RunningServer => n !== undefined);
    await checkNothingLost(ingest, live[0].url, url);
    // exactly one node sequences
    const roles = await Promise.all(live.map((n) => sequencing(n.url)));
    assert.equal(roles.filter(Boolean).length, 1);
    await suite.stop(live);
  });

  test('two nodes racing for the role: a sequencer paused past its lease never commits again', async () => {
    const { url, states } = await suite.newLog(2, LEASE_MS);
    const nodes = await Promise.all(states.dirs.map(start));
    const urls = nodes.map((n) => n.url);
    // two writers, one sending to each node first: both nodes take submissions at every moment
    const writers = [
      new Ingest(() => urls, states.vkey, states.token),
      new Ingest(() => [...urls].reverse(), states.vkey, states.token),
    ];
    try {
      for (let round = 0; round < 3; round++) {
        await writers[0].progress(1);
        const seq = await waitForSequencer(nodes);
        const other = nodes.find((n) => n !== seq)!;
        seq.proc.kill('SIGSTOP');
        // the other node takes the lease over while this one is paused with batches in flight
        await waitForSequencer([other], TAKEOVER_LIMIT_MS);
        await writers[0].progress(1, 15_000);
        seq.proc.kill('SIGCONT');
        await sleep(LEASE_MS / 2);
      }
    } finally {
      for (const n of nodes) n.proc.kill('SIGCONT');
      await Promise.all(writers.map((w) => w.stop()));
    }
    // both writers' receipts and the database's checkpoints agree: one tree per size
    try {
      for (const w of writers) await checkNothingLost(w, nodes[0].url, url);
    } catch (err) {
      // what the nodes said is the first thing to read when this fails
      for (const n of nodes) process.stderr.write(`--- ${n.url} stderr:\n${n.stderr()}\n`);
      throw err;
    }
    const sizes = new Map<number, string>();
    for (const w of writers)
      for (const note of w.notes) {
        const [, size, root] = note.split('\n');
        assert.equal(sizes.get(Number(size)) ?? root, root, `one tree of size ${size}`);
        sizes.set(Number(size), root);
      }
    await suite.stop(nodes);
  });
});
