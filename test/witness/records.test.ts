// Misbehaviour records checked offline, and the witness's log declarations (TOML and --log).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FormatError, VerificationError } from '../../src/core/errors.js';
import { parseWitnessConfig, witnessedLogs } from '../../src/witness/config.js';
import {
  EVIDENCE_TYPE,
  evidenceId,
  formatEvidence,
  type MisbehaviourEvidence,
  parseEvidence,
  verifyEvidence,
} from '../../src/witness/evidence.js';
import { mth, SpecLog } from './spec-log.js';

const log = new SpecLog('example.com/evidence').grow(20);
const forkRoot = mth([...log.leaves.slice(0, 9), Buffer.from('other')]);

function record(over: Partial<MisbehaviourEvidence>): MisbehaviourEvidence {
  return {
    type: EVIDENCE_TYPE,
    kind: 'same-size-different-root',
    origin: log.origin,
    vkeys: [log.key.vkey],
    accepted: log.checkpoint(10),
    refused: log.checkpoint(10, { root: forkRoot }),
    proof: [],
    observer: 'test',
    observed: new Date(0).toISOString(),
    ...over,
  };
}

function refusedWith(e: MisbehaviourEvidence, check: string, trusted?: string[]): void {
  assert.throws(
    () => verifyEvidence(parseEvidence(formatEvidence(e)), trusted),
    (err: unknown) => err instanceof VerificationError && err.check.startsWith(check),
  );
}

test('a same-size fork verifies with only the log key, through its file form', () => {
  const e = record({});
  const { accepted, refused } = verifyEvidence(parseEvidence(formatEvidence(e)), [log.key.vkey]);
  assert.equal(accepted.size, refused.size);
  assert.equal(evidenceId(e), evidenceId(record({ observed: 'later' })), 'the id names the two checkpoints');
});

test('records that prove nothing are refused', () => {
  refusedWith(record({ refused: log.checkpoint(10) }), 'evidence.no-conflict');
  refusedWith(record({ refused: log.checkpoint(12) }), 'evidence.no-conflict');
  // Not signed by the trusted key: a record cannot bring its own key.
  const other = new SpecLog(log.origin).grow(20);
  refusedWith(record({ refused: other.checkpoint(10) }), 'note.', [log.key.vkey]);
  // By default the record's own keys are used: checkpoints not signed by them prove nothing.
  refusedWith(record({ vkeys: [other.key.vkey] }), 'note.no-known-signature');
  refusedWith(record({ origin: 'example.com/elsewhere' }), 'evidence.origin');
});

test('a failing consistency proof is kept as such; a proof that verifies is not evidence', () => {
  const bad = log.proof(10, 20).map((h) => h.toString('base64'));
  bad[bad.length - 1] = Buffer.alloc(32).toString('base64');
  const e = record({ kind: 'consistency-proof-failed', refused: log.checkpoint(20), proof: bad });
  verifyEvidence(e);
  const good = log.proof(10, 20).map((h) => h.toString('base64'));
  refusedWith({ ...e, proof: good }, 'evidence.no-conflict');
  refusedWith({ ...e, refused: log.checkpoint(5) }, 'evidence.no-conflict');
});

test('malformed records are FormatErrors', () => {
  for (const text of ['nope', '[]', '{"type":"other"}', JSON.stringify({ ...record({}), kind: 'x' })]) {
    assert.throws(() => parseEvidence(text), FormatError);
  }
});

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
