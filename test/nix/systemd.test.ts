// The systemd units in systemd/: each is hardened the same way (no privileges, a read-only system,
// its own state directory) and starts a command the CLI has. `scripts/verify-units.sh` (run by CI)
// checks them with `systemd-analyze verify`.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { REPO, trustix } from './publish-helpers.js';

const DIR = join(REPO, 'systemd');
const HARDENING = [
  'NoNewPrivileges=yes',
  'CapabilityBoundingSet=',
  'AmbientCapabilities=',
  'ProtectSystem=strict',
  'ProtectHome=yes',
  'PrivateTmp=yes',
  'PrivateDevices=yes',
  'RestrictNamespaces=yes',
  'SystemCallFilter=@system-service',
];

/** `Key=value` lines of a unit, keys may repeat. */
function directives(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#') && !l.startsWith('['));
}

test('every unit is hardened, has a state directory and a user of its own, and starts a real command', async () => {
  const units = readdirSync(DIR).filter((f) => f.endsWith('.service'));
  assert.deepEqual(units.sort(), [
    'trustix-cache.service',
    'trustix-publish.service',
    'trustix-serve.service',
  ]);
  for (const u of units) {
    const d = directives(readFileSync(join(DIR, u), 'utf8'));
    for (const h of HARDENING) assert.ok(d.includes(h), `${u}: ${h}`);
    assert.ok(
      d.some((l) => /^StateDirectory=\S/.test(l)),
      `${u}: StateDirectory`,
    );
    assert.ok(
      d.includes('DynamicUser=yes') || d.includes('User=trustix'),
      `${u}: DynamicUser or User=trustix`,
    );
    assert.ok(!d.some((l) => l.startsWith('User=root')), `${u}: not root`);
    const exec = d.filter((l) => l.startsWith('ExecStart='));
    assert.equal(exec.length, 1, u);
    const args = exec[0].slice('ExecStart='.length).split(/\s+/);
    assert.equal(args[0], '/usr/local/bin/trustix', u);
    // the command and its options exist: --help of the same command line (options after the
    // subcommand names) exits 0
    const names = args.slice(1).filter((_, i, a) => !a.slice(0, i + 1).some((x) => x.startsWith('-')));
    const help = await trustix([...names, '--help'], process.env);
    assert.equal(help.code, 0, `${u}: ${help.stderr}`);
    for (const opt of args.filter((a) => a.startsWith('--'))) {
      assert.match(help.stdout, new RegExp(` ${opt}[ ,=<]`), `${u}: ${names.join(' ')} has ${opt}`);
    }
  }
  const users = readFileSync(join(DIR, 'trustix.sysusers.conf'), 'utf8');
  assert.match(users, /^u trustix - /m);
});
