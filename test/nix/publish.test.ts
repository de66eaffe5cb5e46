// Publishing Nix build results: the Nix entry format (fixed vectors), the publish config, the
// spool, and end to end with the real Nix 2.8 (post-build hook in a chroot store) and a real
// `trustix serve` process on loopback, read back with the verifying client.
// Nix must be installed: without it these tests fail (CI installs nix-bin), they never skip.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LogClient, type VerifiedReceipt } from '../../src/client/client.js';
import { RemoteError, UnreachableError } from '../../src/client/errors.js';
import { encodeEntry } from '../../src/core/entry.js';
import { FormatError } from '../../src/core/errors.js';
import { leafHash } from '../../src/core/merkle.js';
import { formatNixMetadata, nixEntry, parseNixMetadata } from '../../src/nix/entry.js';
import { parseDumpDb, parseNixSha256 } from '../../src/nix/nix-query.js';
import {
  defaultPublishConfigPath,
  defaultSpoolDir,
  flushSpool,
  parsePublishConfig,
  readPublishConfig,
  resolvePublishConfig,
  runPostBuildHook,
} from '../../src/nix/publish.js';
import { Spool } from '../../src/nix/spool.js';
import { type RunningServer, startServer, token } from '../fixtures/server-helpers.js';
import { nixSetup, runProgram, trustix, writeDerivations, writeHookWrapper } from './publish-helpers.js';

const root = mkdtempSync(join(tmpdir(), 'trustix-publish-'));
after(() => rmSync(root, { recursive: true, force: true }));

const hex = (s: string) => Buffer.from(s, 'hex');

// Real values from Nix 2.8 (`nix-store --dump-db`) for a path with one reference; the expected
// bytes and leaf hashes were computed independently with Python's hashlib.
const WITH_REF = {
  storePath: '/nix/store/mn7y6lqwvz0x9dmvwqqh8g1ld7ngv9qa-with-ref',
  narHash: hex('7c0332879fa34f96d1babd1bade5f9daab3eeb13d8c0871e89629966ff56c4f1'),
  narSize: 168,
  references: ['/nix/store/1kqkg0227i7br91zw40dqnfgypkbdh0z-hello-a'],
  deriver: '/nix/store/f842rb1szj3p6f867xcq0qgsxg43cyvm-with-ref.drv',
};
const WITH_REF_ENTRY =
  '01036e697800206d6e3779366c7177767a307839646d76777171683867316c64376e6776397161207c0332879fa34f96d1babd1bade5f9daab3eeb13d8c0871e89629966ff56c4f100957b226e616d65223a22776974682d726566222c226e617253697a65223a3136382c227265666572656e636573223a5b22316b716b67303232376937627239317a77343064716e666779706b626468307a2d68656c6c6f2d61225d2c2264657269766572223a2266383432726231737a6a3370366638363778637130716773786734336379766d2d776974682d7265662e647276227d';
const WITH_REF_LEAF = '2b6b081cf439fdc4769bc74a396f7115f2257b26cdeb9e48b39f255567d799f2';
const HELLO_A = {
  storePath: '/nix/store/1kqkg0227i7br91zw40dqnfgypkbdh0z-hello-a',
  narHash: hex('10551daed7fa467d0b58826e7eb9a0f2af7d693de319f2ef775fffcda244b9f6'),
  narSize: 120,
  references: [],
};
const HELLO_A_ENTRY =
  '01036e69780020316b716b67303232376937627239317a77343064716e666779706b626468307a2010551daed7fa467d0b58826e7eb9a0f2af7d693de319f2ef775fffcda244b9f600307b226e616d65223a2268656c6c6f2d61222c226e617253697a65223a3132302c227265666572656e636573223a5b5d7d';
const HELLO_A_LEAF = '37a582499b85ac080757276264466015831f9115328021b509d9cbeb60ad0470';

describe('the Nix entry', () => {
  test('fixed vectors: encoding and leaf hash', () => {
    for (const [info, enc, leaf] of [
      [WITH_REF, WITH_REF_ENTRY, WITH_REF_LEAF],
      [HELLO_A, HELLO_A_ENTRY, HELLO_A_LEAF],
    ] as const) {
      const e = nixEntry(info);
      assert.equal(e.protocol, 'nix');
      assert.equal(e.key.toString(), info.storePath.slice(11, 43));
      assert.equal(encodeEntry(e).toString('hex'), enc);
      assert.equal(leafHash(encodeEntry(e)).toString('hex'), leaf);
    }
    assert.deepEqual(parseNixMetadata(nixEntry(WITH_REF).metadata), {
      name: 'with-ref',
      narSize: 168,
      references: ['1kqkg0227i7br91zw40dqnfgypkbdh0z-hello-a'],
      deriver: 'f842rb1szj3p6f867xcq0qgsxg43cyvm-with-ref.drv',
    });
  });

  test('references: full paths or base names, any order, duplicates: one encoding', () => {
    const refs = [
      '/nix/store/jg3p8m5b3w0jbm1pvb1hkfd891kw1bn3-hello-trivial',
      '1kqkg0227i7br91zw40dqnfgypkbdh0z-hello-a',
      '/nix/store/1kqkg0227i7br91zw40dqnfgypkbdh0z-hello-a',
    ];
    const a = nixEntry({ ...WITH_REF, references: refs });
    const b = nixEntry({
      ...WITH_REF,
      references: [
        'jg3p8m5b3w0jbm1pvb1hkfd891kw1bn3-hello-trivial',
        '1kqkg0227i7br91zw40dqnfgypkbdh0z-hello-a',
      ],
      deriver: 'f842rb1szj3p6f867xcq0qgsxg43cyvm-with-ref.drv',
    });
    assert.deepEqual(a.metadata, b.metadata);
    assert.deepEqual(parseNixMetadata(a.metadata).references, [
      '1kqkg0227i7br91zw40dqnfgypkbdh0z-hello-a',
      'jg3p8m5b3w0jbm1pvb1hkfd891kw1bn3-hello-trivial',
    ]);
    const noDeriver = nixEntry({ ...WITH_REF, deriver: undefined });
    assert.equal(
      noDeriver.metadata.toString(),
      '{"name":"with-ref","narSize":168,"references":["1kqkg0227i7br91zw40dqnfgypkbdh0z-hello-a"]}',
    );
  });

  test('bad inputs are FormatErrors', () => {
    assert.throws(() => nixEntry({ ...WITH_REF, storePath: '/tmp/x' }), FormatError);
    assert.throws(() => nixEntry({ ...WITH_REF, storePath: '/nix/store/short-x' }), FormatError);
    assert.throws(() => nixEntry({ ...WITH_REF, narHash: Buffer.alloc(20) }), FormatError);
    assert.throws(() => nixEntry({ ...WITH_REF, narSize: -1 }), FormatError);
    assert.throws(() => nixEntry({ ...WITH_REF, narSize: 1.5 }), FormatError);
    assert.throws(() => nixEntry({ ...WITH_REF, references: ['not-a-path'] }), FormatError);
    assert.throws(() => nixEntry({ ...WITH_REF, deriver: '/nix/store/x' }), FormatError);
    // more references than 64 KiB of metadata holds
    const many = Array.from(
      { length: 1500 },
      (_, i) => `${String(i).padStart(4, '0')}${'a'.repeat(28)}-some-rather-long-package-name`,
    );
    assert.throws(() => nixEntry({ ...WITH_REF, references: many }), /more than an entry holds/);
  });

  test('parseNixMetadata is strict: only the canonical form', () => {
    const good = nixEntry(WITH_REF).metadata.toString();
    const bad = [
      good.replace('{', '{ '),
      good.replace('"narSize":168', '"narSize":168.0'),
      good.replace('"narSize":168', '"narSize":1.68e2'),
      good.replace('"narSize":168', '"narSize":-1'),
      good.replace('"narSize":168', '"narSize":"168"'),
      '{"narSize":168,"name":"with-ref","references":[]}',
      '{"name":"with-ref","narSize":168}',
      '{"name":"with-ref","narSize":168,"references":[],"extra":1}',
      '{"name":"with-ref","narSize":168,"references":[],"deriver":null}',
      '{"name":"with ref","narSize":168,"references":[]}',
      '{"name":"x","narSize":1,"references":["jg3p8m5b3w0jbm1pvb1hkfd891kw1bn3-b","1kqkg0227i7br91zw40dqnfgypkbdh0z-a"]}',
      '{"name":"x","narSize":1,"references":["1kqkg0227i7br91zw40dqnfgypkbdh0z-a","1kqkg0227i7br91zw40dqnfgypkbdh0z-a"]}',
      '{"name":"x","narSize":1,"references":["/nix/store/1kqkg0227i7br91zw40dqnfgypkbdh0z-a"]}',
      '{"name":"x","narSize":1,"references":[],"deriver":"bad"}',
      '{"name":"\\u0078","narSize":1,"references":[]}',
      '[]',
      'null',
      '',
    ];
    for (const b of bad) assert.throws(() => parseNixMetadata(Buffer.from(b)), FormatError, b);
    assert.equal(
      formatNixMetadata(parseNixMetadata(Buffer.from('{"name":"x","narSize":0,"references":[]}'))).toString(),
      '{"name":"x","narSize":0,"references":[]}',
    );
  });

  test('nix-store --dump-db output and sha256:<nix32> hashes', () => {
    const text = `${WITH_REF.storePath}\n${WITH_REF.narHash.toString('hex')}\n168\n${WITH_REF.deriver}\n1\n${WITH_REF.references[0]}\n${HELLO_A.storePath}\n${HELLO_A.narHash.toString('hex')}\n120\n\n0\n`;
    const infos = parseDumpDb(text);
    assert.deepEqual(infos, [WITH_REF, HELLO_A]);
    assert.throws(() => parseDumpDb(text.slice(0, -3)), /truncated/);
    assert.throws(() => parseDumpDb(text.replace('168', 'x')), /NAR size/);
    assert.deepEqual(
      parseNixSha256('sha256:1wf4avznd6b2i4g8gh6q2gmkxaysz7jss6xxpb8rckx3ky3k40vw'),
      WITH_REF.narHash,
    );
    assert.throws(() => parseNixSha256('md5:abc'));
  });
});

describe('publish config', () => {
  const dir = join(root, 'cfg');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'token'), 'sekrit\n', { mode: 0o600 });
  const vkey = 'PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW';

  test('fields, relative paths, defaults', () => {
    const s = parsePublishConfig(
      `log = "http://127.0.0.1:8080/logs/default"\nvkey = "${vkey}"\ntoken_file = "token"\nspool = "sp"\ntimeout = 2\ntrust_dir = "/x/trust"\n`,
      dir,
    );
    assert.deepEqual(s, {
      log: 'http://127.0.0.1:8080/logs/default/',
      vkey,
      auth: { token: 'sekrit' },
      spool: join(dir, 'sp'),
      timeoutMs: 2000,
      trustDir: '/x/trust',
    });
    const c = resolvePublishConfig(
      parsePublishConfig(`log = "http://h/logs/a/"\nvkey = "${vkey}"\ntoken_file = "token"\n`, dir),
      { XDG_STATE_HOME: '/state' },
    );
    assert.equal(c.spool, '/state/trustix/spool');
    assert.equal(c.timeoutMs, 5000);
    assert.equal(
      defaultSpoolDir({ XDG_STATE_HOME: 'relative' }).endsWith('/.local/state/trustix/spool'),
      true,
    );
    assert.equal(defaultPublishConfigPath({ TRUSTIX_PUBLISH_CONFIG: '/a/b.toml' }), '/a/b.toml');
    assert.equal(defaultPublishConfigPath({ XDG_CONFIG_HOME: '/cfg' }), '/cfg/trustix/publish.toml');
  });

  test('errors name the field or the file', () => {
    const bad: Array<[string, RegExp]> = [
      ['lg = "x"', /unknown field "lg"/],
      ['log = "ftp://x/"', /log: not an http/],
      ['vkey = "nope"', /vkey/],
      ['token_file = "missing"', /token_file: cannot read/],
      ['token_file = "token"\nwriter_key = "token"', /either token_file or writer_key/],
      ['writer_key = "token"', /writer_key: not a writer signing key/],
      ['writer = "w"', /writer: only with writer_key/],
      ['timeout = 0', /timeout/],
      ['timeout = "5"', /timeout/],
      ['log = ', /TOML/],
    ];
    for (const [text, re] of bad) assert.throws(() => parsePublishConfig(text, dir), re, text);
    assert.throws(() => resolvePublishConfig(parsePublishConfig('', dir)), /needs log/);
    writeFileSync(join(dir, 'bad.toml'), 'colour = 1\n');
    assert.throws(() => readPublishConfig(join(dir, 'bad.toml')), /bad\.toml: unknown field "colour"/);
  });
});

describe('spool', () => {
  const entries = [nixEntry(WITH_REF), nixEntry(HELLO_A)];
  const fakeClient = (fail?: unknown) => {
    const submitted: number[] = [];
    const client = {
      submitted,
      async submit(es: unknown[]): Promise<VerifiedReceipt[]> {
        if (fail) throw fail;
        submitted.push(es.length);
        return es.map((_, i) => ({ index: i, duplicate: i > 0, checkpoint: '', proof: [], verified: true }));
      },
    };
    return client as unknown as LogClient & { submitted: number[] };
  };

  test('add is durable and atomic; flush delivers oldest first, deletes only after success', async () => {
    const dir = join(root, 'spool1');
    const spool = new Spool(dir);
    const a = await spool.add(entries.slice(0, 1), 1_000);
    const b = await spool.add(entries, 2_000);
    assert.deepEqual(await spool.pending(), [a, b]);
    assert.deepEqual(readdirSync(dir).sort(), [a, b]);

    const down = fakeClient(new UnreachableError('http.network', 'connection refused'));
    const r1 = await flushSpool(spool, down, { token: 't' });
    assert.ok(r1.error instanceof UnreachableError);
    assert.equal(r1.remaining, 2);
    assert.deepEqual(await spool.pending(), [a, b], 'failed claims go back to the queue');

    const up = fakeClient();
    const r2 = await flushSpool(spool, up, { token: 't' }, { batchEntries: 1 });
    assert.equal(r2.error, undefined);
    assert.deepEqual(up.submitted, [1, 2]);
    assert.deepEqual([r2.files, r2.entries, r2.remaining], [2, 3, 0]);
    assert.deepEqual(readdirSync(dir), []);
  });

  test('a file the log refuses as malformed is set aside as .refused and does not hold up the rest', async () => {
    const dir = join(root, 'spool-refused');
    const warnings: string[] = [];
    const spool = new Spool(dir, { warn: (m) => warnings.push(m) });
    const poison = nixEntry({ ...HELLO_A, storePath: '/nix/store/0000000000000000000000000000000a-poison' });
    const a = await spool.add([entries[0]], 1_000);
    const b = await spool.add([poison, entries[1]], 2_000);
    const c = await spool.add([entries[1]], 3_000);
    const requests: number[] = [];
    const picky = (fail?: unknown) =>
      ({
        async submit(es: Array<{ key: Buffer }>): Promise<VerifiedReceipt[]> {
          requests.push(es.length);
          if (fail) throw fail;
          if (es.some((e) => e.key.equals(poison.key))) {
            throw new RemoteError(400, 'BAD_REQUEST', 'POST /submit answered 400: entries[0].value is bad');
          }
          return es.map((_, i) => ({
            index: i,
            duplicate: false,
            checkpoint: '',
            proof: [],
            verified: true,
          }));
        },
      }) as unknown as LogClient;
    // credentials refused: not the file's fault, so nothing is set aside and the flush stops
    const denied = await flushSpool(spool, picky(new RemoteError(401, 'UNAUTHORIZED', 'bad token')), {
      token: 't',
    });
    assert.ok(denied.error instanceof RemoteError);
    assert.deepEqual(await spool.pending(), [a, b, c]);
    requests.length = 0;
    const r = await flushSpool(spool, picky(), { token: 't' });
    assert.equal(r.error, undefined);
    // all three in one request (refused), then one by one: a and c delivered, b set aside
    assert.deepEqual(requests, [4, 1, 2, 1]);
    assert.deepEqual([r.files, r.entries, r.refused, r.remaining], [2, 2, 1, 0]);
    assert.deepEqual(readdirSync(dir), [`${b}.refused`]);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], new RegExp(`refused spool file ${b} .*400.*set aside`));
    assert.deepEqual(await spool.status(), { pending: 0, claimed: 0, bad: 0, refused: 1 });
  });

  test('a corrupt file is set aside as .bad with a warning; claims are exclusive; dead claims recover', async () => {
    const dir = join(root, 'spool2');
    const warnings: string[] = [];
    const spool = new Spool(dir, { warn: (m) => warnings.push(m) });
    const good = await spool.add(entries, 1_000);
    const corrupt = '0000000002000-1-deadbeef.entries';
    writeFileSync(join(dir, corrupt), '{"version":1,"entries":["AAAA"]}');
    const r = await flushSpool(spool, fakeClient(), { token: 't' });
    assert.equal(r.files, 1);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /deadbeef\.entries is unreadable.*set aside/);
    assert.ok(existsSync(join(dir, `${corrupt}.bad`)));
    assert.deepEqual(await spool.status(), { pending: 0, claimed: 0, bad: 1, refused: 0 });
    void good;

    const x = await spool.add(entries);
    const [c1, c2] = await Promise.all([spool.claim(x), spool.claim(x)]);
    assert.ok((c1 === undefined) !== (c2 === undefined), 'exactly one claim wins');
    // a claim held by a live process stays; by a dead one (or too old) it goes back to the queue
    assert.equal(await spool.recover(), 0);
    const dead = execFileSync(process.execPath, ['-p', 'process.pid'], { encoding: 'utf8' }).trim();
    const y = await spool.add(entries);
    writeFileSync(join(dir, `${y}.claim-${dead}`), readFileSync(join(dir, y)));
    rmSync(join(dir, y));
    const z = await spool.add(entries);
    writeFileSync(join(dir, `${z}.claim-1`), readFileSync(join(dir, z)));
    rmSync(join(dir, z));
    const old = new Date(Date.now() - 2 * 3600_000);
    utimesSync(join(dir, `${z}.claim-1`), old, old);
    assert.equal(await spool.recover(), 2);
    assert.deepEqual(await spool.pending(), [y, z].sort());
    await spool.release((c1 ?? c2)!);
    assert.equal((await spool.pending()).length, 3);
  });
});

describe('publishing with the real Nix and a real log', () => {
  let srv: RunningServer;
  let port: number;
  let logUrl: string;
  let vkey: string;
  const state = join(root, 'node');
  const { env } = nixSetup(join(root, 'nix'));
  const store = join(root, 'nix', 'store');
  const spoolDir = join(root, 'publish-spool');
  let config: string;
  let hook: string;

  const writePublishConfig = (name: string, url: string, timeout = 2) => {
    const file = join(root, name);
    writeFileSync(
      file,
      `log = "${url}"\nvkey = "${vkey}"\ntoken_file = "node/writers/default.token"\nspool = "${spoolDir}"\ntrust_dir = "trust"\ntimeout = ${timeout}\n`,
    );
    return file;
  };
  const nixStore = (args: string[]) =>
    execFileSync('nix-store', ['--store', store, ...args], { env, encoding: 'utf8' }).trim();
  const nixBuild = (file: string, attr: string, hookPath: string | '') =>
    runProgram(
      'nix-build',
      ['--store', store, '--no-out-link', '--option', 'post-build-hook', hookPath, file, '-A', attr],
      env,
    );
  const lookup = (hashPart: string) => new LogClient({ url: logUrl, vkey }).lookup('nix', hashPart);
  const pending = () =>
    existsSync(spoolDir) ? readdirSync(spoolDir).filter((f) => f.endsWith('.entries')) : [];

  before(async () => {
    srv = await startServer([
      '--state',
      state,
      '--listen',
      '127.0.0.1:0',
      '--origin',
      'builder.test/publish',
    ]);
    port = Number(new URL(srv.url).port);
    logUrl = `${srv.url}/logs/default/`;
    vkey = srv.vkey;
    assert.ok(token(state));
    config = writePublishConfig('publish.toml', logUrl);
    hook = writeHookWrapper(root, config);
  });
  after(async () => {
    await srv?.stop();
  });

  test('the post-build hook publishes what was built: NAR hash and metadata as Nix has them', async () => {
    const file = writeDerivations(root, 'first');
    const b = await nixBuild(file, 'top', hook);
    assert.equal(b.code, 0, b.stderr);
    const top = b.stdout.trim();
    const dep = nixStore(['-q', '--references', top]);
    assert.match(dep, /-first-dep$/);
    for (const p of [top, dep]) {
      const r = await lookup(basename(p).slice(0, 32));
      assert.equal(r.status, 'present', p);
      if (r.status !== 'present') return;
      assert.deepEqual(r.entry.value, parseNixSha256(nixStore(['-q', '--hash', p])));
      assert.deepEqual(parseNixMetadata(r.entry.metadata), {
        name: basename(p).slice(33),
        narSize: Number(nixStore(['-q', '--size', p])),
        references: p === top ? [basename(dep)] : [],
        deriver: basename(nixStore(['-q', '--deriver', p])),
      });
    }
    assert.deepEqual(pending(), []);
    assert.doesNotMatch(b.stderr, /could not publish/);
  });

  test('a spool that cannot be written: the hook submits directly', async () => {
    const blocker = join(root, 'not-a-dir');
    writeFileSync(blocker, '');
    const cfg = resolvePublishConfig({ ...readPublishConfig(config), spool: join(blocker, 'spool') });
    const top = execFileSync(
      'nix-build',
      ['--store', store, '--no-out-link', join(root, 'first.nix'), '-A', 'top'],
      {
        env,
        encoding: 'utf8',
      },
    ).trim();
    const said: string[] = [];
    const r = await runPostBuildHook({
      env: { ...env, DRV_PATH: nixStore(['-q', '--deriver', top]), NIX_CONFIG: `store = ${store}` },
      config: cfg,
      client: new LogClient({ url: logUrl, vkey }),
      say: (l) => said.push(l),
    });
    assert.deepEqual(r.outputs, [top]);
    assert.equal(r.spooled, 0);
    assert.equal(said.length, 1, said.join('\n'));
    assert.match(said[0], /^cannot write to the spool .*not-a-dir\/spool: ENOTDIR/);
  });

  test('log down: the build still succeeds, entries wait in the spool; the next build delivers them', async () => {
    await srv.stop();
    const file = writeDerivations(root, 'offline');
    const b = await nixBuild(file, 'dep', hook);
    assert.equal(b.code, 0, b.stderr);
    assert.match(
      b.stderr,
      /trustix: could not publish to http:\/\/127\.0\.0\.1:\d+\/logs\/default\/ \(http\.network/,
    );
    assert.equal(pending().length, 1);
    const dep = b.stdout.trim();

    srv = await startServer(['--state', state, '--listen', `127.0.0.1:${port}`]);
    const b2 = await nixBuild(file, 'top', hook);
    assert.equal(b2.code, 0, b2.stderr);
    assert.deepEqual(pending(), []);
    for (const p of [dep, b2.stdout.trim()]) {
      assert.equal((await lookup(basename(p).slice(0, 32))).status, 'present', p);
    }
  });

  test('a log that never answers: the hook gives up after its timeout, the build succeeds; flush delivers later', async () => {
    const sockets: Socket[] = [];
    const hang: Server = createServer((s) => sockets.push(s));
    await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
    const hangPort = (hang.address() as { port: number }).port;
    let built: string;
    try {
      const cfg = writePublishConfig('hang.toml', `http://127.0.0.1:${hangPort}/logs/default/`, 1);
      const hangHook = writeHookWrapper(root, cfg, 'hang-hook.sh');
      const file = writeDerivations(root, 'hanging');
      const b = await nixBuild(file, 'dep', hangHook);
      assert.equal(b.code, 0, b.stderr);
      assert.match(b.stderr, /could not publish .*http\.timeout/);
      assert.ok(b.ms < 15_000, `build took ${b.ms} ms`);
      assert.equal(pending().length, 1);
      built = b.stdout.trim();
    } finally {
      for (const s of sockets) s.destroy();
      hang.close();
    }

    // flush with the log down: exit 1, the spool stays
    const down = writePublishConfig('down.toml', 'http://127.0.0.1:1/logs/default/');
    const f1 = await trustix(['nix', 'flush', '--config', down], env);
    assert.equal(f1.code, 1);
    assert.match(
      f1.stderr,
      /\ntrustix: delivered 0 entries \(0 new\), then failed: http\.network: .*; 1 file\(s\) wait in /,
    );
    assert.equal(pending().length, 1);

    const f = await trustix(['nix', 'flush', '--config', config], env);
    assert.equal(f.code, 0, f.stderr);
    assert.match(f.stderr, /^flushing spool files: /);
    assert.match(
      f.stdout,
      /^delivered 1 entries from 1 file\(s\): 1 new, 0 already present; spool is empty\n$/,
    );
    assert.deepEqual(pending(), []);
    assert.equal((await lookup(basename(built).slice(0, 32))).status, 'present');
  });

  test('a bad config: the hook says why on stderr and the build still succeeds', async () => {
    const bad = join(root, 'bad.toml');
    writeFileSync(bad, `log = "${logUrl}"\nvkey = "${vkey}"\ntokenfile = "x"\n`);
    const badHook = writeHookWrapper(root, bad, 'bad-hook.sh');
    const b = await nixBuild(writeDerivations(root, 'badconfig'), 'dep', badHook);
    assert.equal(b.code, 0, b.stderr);
    assert.match(
      b.stderr,
      /trustix: post-build-hook: nothing published: publish config .*bad\.toml: unknown field "tokenfile"/,
    );
  });

  test('nix submit --closure publishes a path and what it refers to; again: already present', async () => {
    const file = writeDerivations(root, 'manual');
    const b = await nixBuild(file, 'top', '');
    assert.equal(b.code, 0, b.stderr);
    const top = b.stdout.trim();
    const dep = nixStore(['-q', '--references', top]);
    assert.equal((await lookup(basename(top).slice(0, 32))).status, 'absent');
    const link = join(root, 'result');
    execFileSync('ln', ['-sfn', top, link]);
    const args = ['nix', 'submit', '--closure', '--store', store, '--config', config, link];
    const s = await trustix(args, env);
    assert.equal(s.code, 0, s.stderr);
    assert.match(
      s.stdout,
      /^2 store path\(s\) published to http:.*: 2 new, 0 already present; log size \d+\n$/,
    );
    const r = await lookup(basename(top).slice(0, 32));
    assert.equal(r.status, 'present');
    if (r.status === 'present')
      assert.deepEqual(parseNixMetadata(r.entry.metadata).references, [basename(dep)]);
    assert.equal((await lookup(basename(dep).slice(0, 32))).status, 'present');
    // again, with the log named on the command line instead of a config: nothing new
    const again = await trustix(
      [
        'nix',
        'submit',
        '--closure',
        '--store',
        store,
        '--url',
        logUrl,
        '--vkey',
        vkey,
        '--token',
        token(state),
      ].concat(['--trust-dir', join(root, 't2'), top]),
      { ...env, XDG_CONFIG_HOME: join(root, 'no-config') },
    );
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /: 0 new, 2 already present;/);
  });

  test('nix submit: paths not valid in the store, or not store paths, are errors naming them', async () => {
    const missing = `/nix/store/${'0'.repeat(32)}-missing`;
    const [m, notStore] = await Promise.all([
      trustix(['nix', 'submit', '--store', store, '--config', config, missing], env),
      trustix(['nix', 'submit', '--store', store, '--config', config, config], env),
    ]);
    assert.equal(m.code, 1);
    assert.match(m.stderr, new RegExp(`^trustix: .*path '${missing}' is not valid\\n$`));
    assert.equal(notStore.code, 2);
    assert.ok(notStore.stderr.startsWith(`trustix: ${config}: not a store path`), notStore.stderr);
  });
});
