// Local logs (`state = DIR`) in a trust config: read through the same client checks as remote ones.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { toHex } from '../../src/core/bytes.js';
import { generateKey } from '../../src/core/note.js';
import { parseDecideConfig } from '../../src/decide/config.js';
import { Decider } from '../../src/decide/decide.js';
import { Log } from '../../src/log/log.js';
import { entry, tempDir } from '../client/helpers.js';

test('a local log whose directory does not exist fails with local.missing, naming it', async () => {
  const dir = tempDir();
  const { skey, vkey } = generateKey('local.test/log');
  const log = await Log.create(join(dir, 'here'), 'local.test/log', { skey, batchDelayMs: 1 });
  await log.submit([entry('lk')]);
  await log.close();
  const gone = join(dir, 'gone');
  const other = generateKey('gone.test/log').vkey;
  const cfg = parseDecideConfig(
    `[[log]]\nname = "here"\nstate = "here"\nvkey = "${vkey}"\n\n[[log]]\nname = "gone"\nstate = "gone"\nvkey = "${other}"\n\n[procedure.default]\ntype = "log"\nlog = "here"\n`,
    dir,
  );
  const d = new Decider(cfg);
  try {
    const { decision } = await d.decide('lk');
    assert.equal(decision.value, toHex(entry('lk').value));
    const failed = decision.failed.find((f) => f.name === 'gone');
    assert.equal(failed?.check, 'local.missing');
    assert.equal(failed?.reason, `local log ${gone} does not exist`);
    assert.doesNotMatch(JSON.stringify(decision), /local\.invalid|http\.network/);
  } finally {
    await d.close();
  }
});
