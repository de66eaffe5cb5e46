// The memory limit of JavaScript decision scripts bounds everything a script allocates and what a
// call allocated does not outlive it. In its own file (its own process): the checks read the
// process's peak RSS, which other tests would have raised already (hence also the order: the
// smaller figure first).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Answer } from '../../src/decide/procedures.js';
import { ONE } from '../../src/decide/rational.js';
import type { ScriptProcedure } from '../../src/decide/sandbox.js';
import { withScript } from './helpers.js';

const A = 'aa'.repeat(32);
const answers: Answer[] = [{ name: 'a', status: 'present', value: A, weight: ONE }];
const q = { protocol: 'nix', key: 'k' };
const MiB = 1024 * 1024;
/** Peak resident memory of this process (all its threads, so the script workers too). */
const peakRss = () => process.resourceUsage().maxRSS * 1024;
/** Far above a 64 MiB script in its worker, far below what the scripts below ask for. */
const BOUND = 512 * MiB;

const withJs = (source: string, body: (p: ScriptProcedure) => Promise<void>) =>
  withScript({ kind: 'js', source, timeoutMs: 10_000, memoryMb: 64 }, body);

describe('JavaScript memory limit', () => {
  test('32 MiB kept by 20 of 30 calls: every call decides or is script.memory, memory is bounded', async () => {
    const before = peakRss();
    await withJs(
      `const kept = [];
       function decide(a, q) {
         const o = { data: new Uint8Array(32 << 20).fill(7) };
         o.self = o;
         if (q.key === 'keep') kept.push(o);
         return a[0].value;
       }`,
      async (p) => {
        const outs: string[] = [];
        for (let i = 0; i < 30; i++) {
          const o = await p.run(answers, { protocol: 'nix', key: i % 3 === 0 ? 'cycle' : 'keep' });
          outs.push(o.value === A ? 'ok' : (o.error?.check ?? o.reason));
        }
        for (const o of outs) assert.match(o, /^(ok|script\.memory)$/, outs.join(' '));
        assert.ok(outs.filter((o) => o === 'ok').length >= 10, outs.join(' '));
        assert.equal(p.restarts, 0);
      },
    );
    assert.ok(peakRss() - before < BOUND, `peak RSS grew by ${Math.round((peakRss() - before) / MiB)} MiB`);
  });
  test('2 GiB of ArrayBuffers at memory_mb = 64 is script.memory, and the process stays small', async () => {
    const before = peakRss();
    await withJs(
      `function decide(a, q) {
         if (q.key === 'k') return a[0].value;
         const keep = [];
         for (let i = 0; i < 128; i++) keep.push(new Uint8Array(16 << 20).fill(i + 1));
         return keep.length > 0 ? a[0].value : null;
       }`,
      async (p) => {
        const big = await p.run(answers, { protocol: 'nix', key: 'big' });
        assert.equal(big.error?.check, 'script.memory', JSON.stringify(big));
        assert.equal((await p.run(answers, q)).value, A);
      },
    );
    assert.ok(peakRss() - before < BOUND, `peak RSS grew by ${Math.round((peakRss() - before) / MiB)} MiB`);
  });
});
