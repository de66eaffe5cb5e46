// The witness's log declarations (TOML and --log). Its misbehaviour records: test/core/misbehaviour.test.ts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseWitnessConfig, witnessedLogs } from '../../src/witness/config.js';
import { SpecLog } from './spec-log.js';

test('log declarations: origin from the key name, merged keys, clear errors', () => {
  const a = new SpecLog('example.com/a');
  const b2 = new SpecLog('example.com/b', 'b-key-2');
  const decls = parseWitnessConfig(
    `[[log]]\nvkey = "${a.key.vkey}"\n\n[[log]]\norigin = "example.com/b"\nvkey = ["${b2.key.vkey}"]\n`,
  );
  const b1 = new SpecLog('example.com/b');
  const logs = witnessedLogs([
    ...decls,
    { vkeys: [b1.key.vkey], where: '--log #1' },
    { vkeys: [a.key.vkey], where: '--log #2' },
  ]);
  assert.deepEqual([...logs.keys()], ['example.com/a', 'example.com/b']);
  assert.equal(logs.get('example.com/a')?.verifiers.length, 1);
  assert.deepEqual(
    logs.get('example.com/b')?.verifiers.map((v) => v.name),
    ['b-key-2', 'example.com/b'],
  );
  assert.throws(
    () => parseWitnessConfig('[[log]]\norigin = "x"\n'),
    /log\[0\]\.vkey: must be a non-empty string/,
  );
  assert.throws(
    () => parseWitnessConfig(`[[log]]\nvkey = "${a.key.vkey}"\nurl = "x"\n`),
    /unknown field "url"/,
  );
  assert.throws(() => parseWitnessConfig('listen = 1\n'), /unknown field "listen"/);
  assert.throws(() => witnessedLogs([{ vkeys: ['nope'], where: 'log[3]' }]), /log\[3\]: verifier key/);
});
