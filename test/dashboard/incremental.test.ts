// The agreement figures kept as chunks are indexed (shapes, disagreeing keys, script decisions)
// equal a scan of the whole index, whatever the order of the chunks and their values.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { generateKey } from '../../src/core/note.js';
import { computeAgreement, indexAgreement } from '../../src/dashboard/agreement.js';
import type { LogStatus } from '../../src/dashboard/follow.js';
import { ScriptDecisions } from '../../src/dashboard/scripted.js';
import { DashboardStore } from '../../src/dashboard/store.js';
import { parseDecideConfig } from '../../src/decide/config.js';
import { Decider } from '../../src/decide/decide.js';
import { cleanup, tempDir } from '../fixtures/server-helpers.js';

const LOGS = ['a', 'b', 'c', 'd'].map((name) => ({ name, vkey: generateKey(`${name}.test/log`).vkey }));
// decides by the key and the values: never for keys ending in 1, else the last present value
const SCRIPT = `function decide(answers, query) {
  if (query.key.endsWith('1')) return null;
  const present = answers.filter((a) => a.status === 'present');
  return present.length > 2 ? present[present.length - 1].value : null;
}`;
const CONFIG = parseDecideConfig(
  `[procedure.scr]\ntype = "js"\nsource = '''\n${SCRIPT}\n'''\n\n${LOGS.map(
    (l) => `[[log]]\nname = "${l.name}"\nurl = "http://127.0.0.1:9/${l.name}/"\nvkey = "${l.vkey}"\n`,
  ).join('\n')}`,
);

const op = fc.record({
  log: fc.nat(LOGS.length - 1),
  entries: fc.array(
    fc.record({
      protocol: fc.constantFrom('nix', 'scr'),
      key: fc.constantFrom('k0', 'k1', 'k2', 'k3', 'k4', 'k5'),
      value: fc.constantFrom(1, 2, 3),
    }),
    { minLength: 1, maxLength: 6 },
  ),
  /** Script decisions taken after this chunk. */
  steps: fc.nat(2),
});

test('incremental figures equal a scan of the index, over random chunks (fast-check)', async () => {
  const dir = tempDir('trustix-dash-inc-');
  const decider = new Decider(CONFIG);
  let run = 0;
  try {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 14 }), fc.boolean(), async (ops, rederive) => {
        const state = join(dir, String(run++));
        let store = DashboardStore.open(state, { trackChanged: true });
        const statuses: LogStatus[] = LOGS.map((l) => ({
          name: l.name,
          id: `id-${l.name}`,
          origin: `${l.name}.test/log`,
          state: 'ok',
          size: 0,
          target: 0,
          history: [],
        }));
        const scriptsOf = (s: DashboardStore) => new ScriptDecisions(s, decider, () => statuses);
        let scripts = scriptsOf(store);
        const check = async (when: string) => {
          await scripts.settle();
          assert.equal(scripts.pending(), 0);
          const ours = await indexAgreement(store, statuses, decider, scripts);
          const scan = await computeAgreement(store, statuses, decider);
          assert.deepEqual(ours, scan, when);
        };
        try {
          for (const o of ops) {
            const s = statuses[o.log];
            const entries = o.entries.map((e, i) => ({
              protocol: e.protocol,
              key: Buffer.from(e.key),
              value: Buffer.alloc(32, e.value),
              index: s.size + i,
            }));
            s.size += entries.length;
            await store.append(s.id, entries, { ...store.log(s.id), size: s.size });
            for (let i = 0; i < o.steps; i++) await scripts.step();
          }
          await check('as indexed');
          // a restart reads the kept figures; an index from before them derives them once
          await store.close();
          if (rederive) {
            const raw = DashboardStore.open(state);
            await raw.write(() => raw.meta.put('derived', 0));
            await raw.close();
          }
          store = DashboardStore.open(state, { trackChanged: true });
          scripts = scriptsOf(store);
          await check('after a restart');
        } finally {
          await store.close();
        }
      }),
      { numRuns: 40 },
    );
  } finally {
    await decider.close();
    cleanup(dir);
  }
});

test('set files: store paths stand for their hash parts, other lines are keys; errors name the line', async () => {
  const { parseSetFile } = await import('../../src/dashboard/sets.js');
  const h1 = '0c6kzph7l0dcbfmjap64f0czdafn3b7x';
  const h2 = '1b9p07z77phvv2hf6gm9f28syp39f1ag';
  assert.deepEqual(
    parseSetFile(
      `/nix/store/${h2}-glibc-2.39\n\n# comment\n/nix/store/${h1}-hello/bin/hello\n${h1}\n  other-key  \n`,
      'nix',
    ),
    [h1, h2, 'other-key'].sort(),
  );
  assert.deepEqual(parseSetFile('/nix/store/x\n', 'git'), ['/nix/store/x']);
  assert.throws(() => parseSetFile(`${h1}\n/nix/store/${h2}\n`, 'nix'), /^FormatError: line 2: /);
  assert.throws(() => parseSetFile(`${h1}\n${h2} 1234\n`, 'nix'), /line 2: .*spaces/);
  assert.throws(() => parseSetFile('#only\n', 'nix'), /lists no store path/);
});
