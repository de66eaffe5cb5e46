// Config parsing: a full example, defaults, and one error per kind of mistake, each naming its key.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { cosignerFromSkey, generateKey } from '../../src/core/note.js';
import { ConfigError, DEFAULT_LIMITS, parseAddress, parseConfig } from '../../src/server/config.js';

const opts = { source: 'test.toml', baseDir: '/etc/trustix', stateDir: '/var/lib/trustix' };
const LOG = '[[log]]\nid = "a"\norigin = "x.test/a"\n';
const TOKEN = '0'.repeat(64);

function fails(text: string, re: RegExp): void {
  assert.throws(
    () => parseConfig(text, opts),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, String(err));
      assert.match(err.message, /^config test\.toml: /);
      assert.match(err.message, re);
      return true;
    },
  );
}

describe('server config', () => {
  test('the example in docs/server.md parses', () => {
    const doc = readFileSync(new URL('../../docs/server.md', import.meta.url), 'utf8');
    const m = /```toml\n([\s\S]*?)```/.exec(doc);
    assert.ok(m, 'docs/server.md has a toml example');
    const c = parseConfig(m[1], opts);
    assert.ok(c.logs.length >= 2);
    assert.ok(c.writers.length >= 2);
    assert.ok(c.listeners.some((l) => l.kind === 'unix'));
  });

  test('defaults and path resolution', () => {
    const vk = generateKey('writer.test/w').vkey;
    const c = parseConfig(
      `${LOG}[[log]]\nid = "b"\norigin = "x.test/b"\ndir = "data/b"\nkey_file = "/keys/b"\n` +
        `[[writer]]\nname = "w"\npublic_key = "${vk}"\nlogs = ["b"]\n` +
        `[[writer]]\nname = "v"\ntoken_sha256 = "${TOKEN}"\nlogs = ["*"]\n` +
        `[[listen]]\naddress = "[::1]:0"\n[[listen]]\nunix = "w.sock"\napi = ["write"]\nmode = 0o660\n`,
      opts,
    );
    assert.equal(c.logs[0].dir, '/var/lib/trustix/logs/a');
    assert.equal(c.logs[1].dir, '/etc/trustix/data/b');
    assert.equal(c.logs[1].keyFile, '/keys/b');
    assert.ok(c.writers[0].publicKey);
    assert.deepEqual(c.writers[0].logs, ['b']);
    assert.equal(c.writers[1].logs, '*');
    assert.deepEqual(c.listeners[0], {
      kind: 'tcp',
      host: '::1',
      port: 0,
      api: new Set(['read', 'write', 'metrics']),
    });
    assert.deepEqual(c.listeners[1], {
      kind: 'unix',
      path: '/etc/trustix/w.sock',
      mode: 0o660,
      api: new Set(['write']),
    });
    assert.deepEqual(c.limits, DEFAULT_LIMITS);
  });

  test('a raw base64 Ed25519 key is accepted as a writer public key', () => {
    const c = parseConfig(
      `${LOG}[[writer]]\nname = "w"\npublic_key = "${Buffer.alloc(32, 7).toString('base64')}"\nlogs = ["a"]\n`,
      opts,
    );
    assert.ok(c.writers[0].publicKey);
  });

  test('storage: a PostgreSQL URL with its lease; errors never show the password', () => {
    const c = parseConfig(`${LOG}storage = "postgresql://u:pw@db.test:5432/log"\nlease_ms = 2000\n`, opts);
    assert.equal(c.logs[0].storage, 'postgresql://u:pw@db.test:5432/log');
    assert.equal(c.logs[0].leaseMs, 2000);
    assert.equal(parseConfig(`${LOG}storage = "postgres://db.test/log"\n`, opts).logs[0].leaseMs, 5000);
    assert.equal(parseConfig(LOG, opts).logs[0].storage, undefined);
    for (const bad of ['mysql://u:s3cret@db/x', 'postgresql://u:s3cret@db.test', 'nonsense s3cret']) {
      assert.throws(
        () => parseConfig(`${LOG}storage = ${JSON.stringify(bad)}\n`, opts),
        (err: unknown) => {
          assert.ok(err instanceof ConfigError);
          assert.match(err.message, /log\[0\]\.storage: /);
          assert.doesNotMatch(err.message, /s3cret/);
          return true;
        },
      );
    }
    fails(`${LOG}lease_ms = 2000\n`, /log\[0\]\.lease_ms: only applies to a log with storage/);
    fails(`${LOG}storage = "postgresql://db/x"\nlease_ms = 10\n`, /log\[0\]\.lease_ms: must be between 200/);
    assert.equal(
      parseConfig(`advertise = "http://n1.test:8080/"\n${LOG}`, opts).advertise,
      'http://n1.test:8080',
    );
    fails(`advertise = "n1.test:8080"\n${LOG}`, /advertise: must be an http:\/\/ or https:\/\/ URL/);
  });

  test('each mistake names the key at fault', () => {
    fails('', /^config test\.toml: log: at least one \[\[log\]\] is required$/);
    fails('[log\nid = 3', /TOML syntax error at line 1, column \d+/);
    fails('stray = 1\n', /: stray: unknown key \(expected one of: log, writer, listen, limits, advertise\)/);
    fails('log = 3\n', /: log: must be an array of tables/);
    fails('[[log]]\norigin = "x/y"\n', /log\[0\]\.id: is required/);
    fails('[[log]]\nid = 5\norigin = "x/y"\n', /log\[0\]\.id: must be a string, got a number/);
    fails(`${LOG}[[log]]\nid = "B!"\norigin = "x/z"\n`, /log\[1\]\.id: must match/);
    fails(`${LOG}[[log]]\nid = "a"\norigin = "x/z"\n`, /log\[1\]\.id: duplicate log id "a"/);
    fails('[[log]]\nid = "a"\norigin = "has space"\n', /log\[0\]\.origin: must be a valid note key name/);
    fails('[[log]]\nid = "a"\norigin = "a+b"\n', /log\[0\]\.origin: must be a valid note key name/);
    fails(
      `${LOG}[[log]]\nid = "b"\norigin = "x/z"\ndir = "/var/lib/trustix/logs/a"\n`,
      /log\[1\]\.dir: directory .* is used by another log/,
    );
    fails(`${LOG}stray = true\n`, /log\[0\]\.stray: unknown key/);
    fails(`${LOG}[[writer]]\nname = "w"\nlogs = ["a"]\n`, /writer\[0\]: needs token_sha256 or public_key/);
    fails(
      `${LOG}[[writer]]\nname = "w"\ntoken_sha256 = "00"\nlogs = ["a"]\n`,
      /writer\[0\]\.token_sha256: must be 64/,
    );
    fails(
      `${LOG}[[writer]]\nname = "w"\npublic_key = "nope"\nlogs = ["a"]\n`,
      /writer\[0\]\.public_key: must be/,
    );
    fails(`${LOG}[[writer]]\nname = "w"\ntoken_sha256 = "${TOKEN}"\n`, /writer\[0\]\.logs: is required/);
    fails(
      `${LOG}[[writer]]\nname = "w"\ntoken_sha256 = "${TOKEN}"\nlogs = []\n`,
      /writer\[0\]\.logs: must name at least one/,
    );
    fails(
      `${LOG}[[writer]]\nname = "w"\ntoken_sha256 = "${TOKEN}"\nlogs = ["b"]\n`,
      /writer\[0\]\.logs\[0\]: no \[\[log\]\] has id "b"/,
    );
    fails(
      `${LOG}[[writer]]\nname = "w"\ntoken_sha256 = "${TOKEN}"\nlogs = [1]\n`,
      /writer\[0\]\.logs\[0\]: must be a string/,
    );
    fails(
      `${LOG}[[writer]]\nname = "w"\ntoken_sha256 = "${TOKEN}"\nlogs = ["a"]\n[[writer]]\nname = "w"\ntoken_sha256 = "${TOKEN}"\nlogs = ["a"]\n`,
      /writer\[1\]\.name: duplicate writer name "w"/,
    );
    fails(`${LOG}[[listen]]\napi = ["read"]\n`, /listen\[0\]: needs exactly one of address or unix/);
    fails(
      `${LOG}[[listen]]\naddress = "h:1"\nunix = "/s"\n`,
      /listen\[0\]: needs exactly one of address or unix/,
    );
    fails(`${LOG}[[listen]]\naddress = "nowhere"\n`, /listen\[0\]\.address: must be HOST:PORT/);
    fails(`${LOG}[[listen]]\naddress = "h:70000"\n`, /listen\[0\]\.address: must be HOST:PORT/);
    fails(
      `${LOG}[[listen]]\naddress = "h:1"\n[[listen]]\naddress = "h:1"\n`,
      /listen\[1\]\.address: h:1 is already used/,
    );
    fails(
      `${LOG}[[listen]]\naddress = "h:1"\napi = ["admin"]\n`,
      /listen\[0\]\.api\[0\]: unknown API "admin"/,
    );
    fails(`${LOG}[[listen]]\naddress = "h:1"\napi = []\n`, /listen\[0\]\.api: must name at least one/);
    fails(
      `${LOG}[[listen]]\naddress = "h:1"\nmode = 0o600\n`,
      /listen\[0\]\.mode: only applies to unix sockets/,
    );
    fails(`${LOG}[[listen]]\nunix = "/s"\nmode = 0o1777\n`, /listen\[0\]\.mode: must be between 0 and 511/);
    fails(`${LOG}[limits]\nmax_batch = 0\n`, /limits\.max_batch: must be between 1 and 1000000, got 0/);
    fails(`${LOG}[limits]\nmax_batch = 1.5\n`, /limits\.max_batch: must be an integer/);
    fails(`${LOG}[limits]\nmax_batch = "10"\n`, /limits\.max_batch: must be an integer, got a string/);
    fails(
      `${LOG}[limits]\nmax_body_bytes = 99999999999999999999\n`,
      /limits\.max_body_bytes: must be an integer/,
    );
    fails(
      `${LOG}[limits]\nmax_bach = 5\n`,
      /limits\.max_bach: unknown key \(expected one of: max_body_bytes/,
    );
    fails(
      `${LOG}[limits]\nmax_pending = 10\nmax_entries_per_request = 11\n`,
      /limits\.max_entries_per_request: must not exceed/,
    );
    fails(`${LOG}limits = 3\n`, /log\[0\]\.limits: unknown key/);
    fails(`limits = 3\n${LOG}`, /^config test\.toml: limits: must be a table, got a number$/);
  });

  test('witness_policy: read relative to the config, its errors name the key and the line', () => {
    const dir = mkdtempSync(join(tmpdir(), 'trustix-config-'));
    const w = cosignerFromSkey(generateKey('w.test/witness').skey);
    writeFileSync(join(dir, 'policy.txt'), `witness W ${w.vkey} http://127.0.0.1:1\nquorum W\n`);
    writeFileSync(join(dir, 'bad.txt'), `witness W ${w.vkey}\nquorum X\n`);
    const at = { ...opts, baseDir: dir };
    const c = parseConfig(`${LOG}witness_policy = "policy.txt"\n[limits]\nwitness_timeout_ms = 250\n`, at);
    assert.equal(c.logs[0].witnessPolicy?.file, join(dir, 'policy.txt'));
    assert.equal(c.logs[0].witnessPolicy?.policy.quorum, 'W');
    assert.equal(c.limits.witnessTimeoutMs, 250);
    assert.equal(parseConfig(LOG, opts).limits.witnessTimeoutMs, 5000);
    for (const [file, re] of [
      [
        'bad.txt',
        /log\[0\]\.witness_policy: policy file: .*bad\.txt: line 2: quorum "X" is not a witness or group/,
      ],
      ['none.txt', /log\[0\]\.witness_policy: policy file: cannot read .*none\.txt/],
    ] as const) {
      assert.throws(
        () => parseConfig(`${LOG}witness_policy = "${file}"\n`, at),
        (err: unknown) => err instanceof ConfigError && re.test(err.message),
      );
    }
    fails(`${LOG}[limits]\nwitness_timeout_ms = 10\n`, /limits\.witness_timeout_ms/);
    rmSync(dir, { recursive: true, force: true });
  });

  test('addresses', () => {
    assert.deepEqual(parseAddress('127.0.0.1:8080'), { host: '127.0.0.1', port: 8080 });
    assert.deepEqual(parseAddress('[::]:0'), { host: '::', port: 0 });
    assert.deepEqual(parseAddress('localhost:1'), { host: 'localhost', port: 1 });
    for (const bad of ['', ':80', 'h:', 'h:080', 'h:65536', 'h:1:2', 'a b:1', '[zz]:1', 'h:-1']) {
      assert.equal(parseAddress(bad), undefined, bad);
    }
  });
});
