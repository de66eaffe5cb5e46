// The trust configuration: what it refuses, and exact round trips of what evidence bundles carry.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { cosignerFromSkey, generateKey, keyId } from '../../src/core/note.js';
import {
  parseDecideConfig,
  parseProcedureJson,
  procedureJson,
  scriptSha256,
} from '../../src/decide/config.js';
import { tempDir } from '../client/helpers.js';

const MAIN = new URL('../../src/cli/main.ts', import.meta.url).pathname;

const one = generateKey('one.test/log').vkey;
const two = generateKey('two.test/log').vkey;
const block = (name: string, vkey: string) =>
  `[[log]]\nname = "${name}"\nurl = "http://127.0.0.1:9/logs/default/"\nvkey = "${vkey}"\n\n`;

test('one log (one verifier key) under several names is refused, naming both entries', async () => {
  const text = `${block('log1', one)}${block('log2', two)}${block('log1-again', one)}${block('log1-third', one)}[procedure.default]\ntype = "percentage"\nmin = "60%"\n`;
  assert.throws(
    () => parseDecideConfig(text),
    /log\[2\] \("log1-again"\) has the same verifier key as log\[0\] \("log1"\)/,
  );
  // the same key material under another key name is the same signer too
  const raw = one.split('+').slice(2).join('+');
  const pub = Buffer.from(raw, 'base64').subarray(1);
  const renamed = `other.test/log+${keyId('other.test/log', pub).toString(16).padStart(8, '0')}+${raw}`;
  assert.throws(
    () => parseDecideConfig(`${block('a', one)}${block('b', renamed)}`),
    /log\[1\] \("b"\) has the same verifier key as log\[0\] \("a"\)/,
  );
  // the CLI: a config error, exit 2, one line
  const dir = tempDir();
  const file = join(dir, 'decide.toml');
  writeFileSync(file, text);
  const r = await cli(['decide', 'somekey', '--config', file]);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /log\[2\] \("log1-again"\) has the same verifier key as log\[0\] \("log1"\)/);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
});

test('procedures round-trip exactly through their bundle form; a script can be pinned by SHA-256', () => {
  const text = `${block('a', one)}${block('b', two)}[procedure.default]
type = "chain"
steps = [
  { type = "weighted", min_weight = 5.5 },
  { type = "percentage", min = "66.67%", of = "responding" },
  { type = "log", log = "b" },
  { type = "js", source = "function decide() { return null; }", timeout_ms = 20 },
]
`;
  const cfg = parseDecideConfig(text);
  const spec = cfg.procedures.get('default')!;
  const json = procedureJson(spec);
  const back = parseProcedureJson(JSON.parse(JSON.stringify(json)), new Set(['a', 'b']));
  assert.deepEqual(procedureJson(back), json);
  assert.equal((json.steps as Array<Record<string, unknown>>)[0].min_weight, '11/2');
  // a bundle's procedure may not read files
  assert.throws(() => parseProcedureJson({ type: 'lua', file: '/etc/passwd' }, new Set()), /must be inline/);
  const src = 'function decide() { return null; }';
  const pinned = (sha: string) =>
    `${block('a', one)}[procedure.default]\ntype = "js"\nsource = "${src}"\nsha256 = "${sha}"\n`;
  parseDecideConfig(pinned(scriptSha256(src)));
  assert.throws(() => parseDecideConfig(pinned('00'.repeat(32))), /procedure\.default\.sha256/);
});

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', MAIN, ...args], (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

test('witness_policy: global for every log, a log of its own overrides it, bad files name the line', () => {
  const dir = tempDir();
  const wkey = cosignerFromSkey(generateKey('w.test/witness').skey).vkey;
  writeFileSync(join(dir, 'global.txt'), `witness W ${wkey}\nquorum W\n`);
  writeFileSync(join(dir, 'none.txt'), 'quorum none\n');
  writeFileSync(join(dir, 'only-two.txt'), `log ${two}\nquorum none\n`);
  writeFileSync(join(dir, 'bad.txt'), '# fine\ngroup g any X\nquorum g\n');
  const c = parseDecideConfig(
    `witness_policy = "global.txt"\n${block('a', one)}[[log]]\nname = "b"\nurl = "http://127.0.0.1:9/"\nvkey = "${two}"\nwitness_policy = "none.txt"\n`,
    dir,
  );
  assert.equal(c.logs[0].witnessPolicy?.quorum, 'W');
  assert.equal(c.logs[0].witnessPolicyFile, join(dir, 'global.txt'));
  assert.equal(c.logs[1].witnessPolicy?.quorum, undefined);
  assert.equal(c.logs[1].witnessPolicyFile, join(dir, 'none.txt'));
  assert.equal(parseDecideConfig(block('a', one)).logs[0].witnessPolicy, undefined);
  assert.throws(
    () => parseDecideConfig(`witness_policy = "bad.txt"\n${block('a', one)}`, dir),
    /witness_policy: .*bad\.txt: line 2: member "X" is not a witness or group defined on an earlier line/,
  );
  assert.throws(
    () => parseDecideConfig(`witness_policy = "missing.txt"\n${block('a', one)}`, dir),
    /witness_policy: cannot read .*missing\.txt/,
  );
  assert.throws(
    () => parseDecideConfig(`witness_policy = "only-two.txt"\n${block('a', one)}`, dir),
    /log\[0\] \("a"\): its witness policy .*only-two\.txt lists logs, and this log's key is not one of them/,
  );
});
