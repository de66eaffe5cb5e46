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
  recordBuild,
  resolvePublishConfig,
  runPublisher,
  spoolBuilds,
} from '../../src/nix/publish.js';
import { parseBuildRecord, Spool, storeOfNixConfig } from '../../src/nix/spool.js';
import { type RunningServer, startServer, token } from '../fixtures/server-helpers.js';
import { nixSetup, runProgram, trustix, writeDerivations, writeHookWrapper } from './publish-helpers.js';

// absolute, so a build can run with a PATH that holds nothing
const NIX_BUILD = execFileSync('sh', ['-c', 'command -v nix-build'], { encoding: 'utf8' }).trim();
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

  test('a file the log refuses for good (400, 413) is set aside with its reason and does not hold up the rest', async () => {
    for (const status of [400, 413]) {
      const dir = join(root, `spool-refused-${status}`);
      const warnings: string[] = [];
      const spool = new Spool(dir, { warn: (m) => warnings.push(m) });
      const poison = nixEntry({
        ...HELLO_A,
        storePath: '/nix/store/0000000000000000000000000000000a-poison',
      });
      const a = await spool.add([entries[0]], 1_000);
      const b = await spool.add([poison, entries[1]], 2_000);
      const c = await spool.add([entries[1]], 3_000);
      const requests: number[] = [];
      const why = status === 400 ? 'entries[0].value is bad' : 'request body is too large';
      const picky = (fail?: unknown) =>
        ({
          async submit(es: Array<{ key: Buffer }>): Promise<VerifiedReceipt[]> {
            requests.push(es.length);
            if (fail) throw fail;
            if (es.some((e) => e.key.equals(poison.key))) {
              throw new RemoteError(status, 'REFUSED', `POST /submit answered ${status}: ${why}`);
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
      assert.deepEqual([r.files, r.entries, r.rejected, r.remaining], [2, 2, 1, 0]);
      assert.deepEqual(readdirSync(dir), ['rejected']);
      assert.deepEqual(readdirSync(join(dir, 'rejected')).sort(), [b, `${b}.reason`]);
      assert.equal(
        readFileSync(join(dir, 'rejected', `${b}.reason`), 'utf8'),
        `refused by the log: http.status: POST /submit answered ${status}: ${why}\n`,
      );
      assert.equal(warnings.length, 1);
      assert.match(
        warnings[0],
        new RegExp(`spool file ${b} set aside as .*rejected/${b}: refused by the log`),
      );
      assert.deepEqual(await spool.status(), { pending: 0, builds: 0, claimed: 0, rejected: 1 });
    }
  });

  test('a corrupt file is set aside with its reason; claims are exclusive; dead claims recover', async () => {
    const dir = join(root, 'spool2');
    const warnings: string[] = [];
    const spool = new Spool(dir, { warn: (m) => warnings.push(m) });
    const good = await spool.add(entries, 1_000);
    const corrupt = '0000000002000-1-deadbeef.entries';
    writeFileSync(join(dir, corrupt), '{"version":1,"entries":["AAAA"]}');
    const r = await flushSpool(spool, fakeClient(), { token: 't' });
    assert.equal(r.files, 1);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /deadbeef\.entries set aside .*: unreadable/);
    assert.match(readFileSync(join(dir, 'rejected', `${corrupt}.reason`), 'utf8'), /^unreadable: entry 0/);
    assert.deepEqual(await spool.status(), { pending: 0, builds: 0, claimed: 0, rejected: 1 });
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
    // a build record claimed by a dead publisher comes back too
    const w = await spool.addBuild({
      drv: '/nix/store/0000000000000000000000000000000a-x.drv',
      outputs: [],
      store: '',
    });
    writeFileSync(join(dir, `${w}.claim-${dead}`), readFileSync(join(dir, w)));
    rmSync(join(dir, w));
    assert.equal(await spool.recover(), 3);
    assert.deepEqual(await spool.pending(), [y, z].sort());
    assert.deepEqual(await spool.pendingBuilds(), [w]);
    await spool.release((c1 ?? c2)!);
    assert.equal((await spool.pending()).length, 3);
  });

  test('build records: the hook records DRV_PATH, OUT_PATHS and the store of NIX_CONFIG; nothing else', async () => {
    const dir = join(root, 'spool-builds');
    const spool = new Spool(dir);
    const nixConfig = 'accept-flake-config = false\nstore = /tmp/x y/store\nsubstituters = \n';
    assert.equal(storeOfNixConfig(nixConfig), '/tmp/x y/store');
    assert.equal(storeOfNixConfig('store = daemon'), 'daemon');
    assert.equal(storeOfNixConfig('restore = x\n'), '');
    const drv = '/nix/store/0000000000000000000000000000000a-x.drv';
    const name = await recordBuild({ DRV_PATH: drv, OUT_PATHS: '', NIX_CONFIG: nixConfig }, spool);
    assert.match(name, /^[0-9]{19}-[0-9]+\.build$/);
    assert.deepEqual(await spool.pendingBuilds(), [name]);
    const text = readFileSync(join(dir, name), 'utf8');
    assert.equal(text, `trustix-build 1\ndrv=${drv}\nout=\nstore=/tmp/x y/store\n`);
    assert.deepEqual(parseBuildRecord(text), { drv, outputs: [], store: '/tmp/x y/store' });
    await assert.rejects(recordBuild({}, spool), FormatError);
    assert.throws(() => parseBuildRecord('trustix-build 1\ndrv=\nout=\nstore=\n'), /neither/);
    assert.throws(() => parseBuildRecord('{"version":1}'), /not a build record/);
    assert.throws(
      () => parseBuildRecord('trustix-build 1\ndrv=/nix/store/x.drv\nout=\nstore=\n'),
      /not a store path: "\/nix\/store\/x\.drv"/,
    );
    // such a record is set aside with the reason, before any store query, and holds up nothing
    rmSync(join(dir, name));
    const bad = '1796672978621866000-1.build';
    writeFileSync(join(dir, bad), 'trustix-build 1\ndrv=/nix/store/x.drv\nout=\nstore=\n');
    const r = await spoolBuilds(new Spool(dir, { warn: () => {} }));
    assert.deepEqual([r.builds, r.rejected, r.error], [0, 0, undefined]);
    assert.match(
      readFileSync(join(dir, 'rejected', `${bad}.reason`), 'utf8'),
      /^unreadable: not a store path/,
    );
    assert.deepEqual(await spool.pendingBuilds(), []);
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
  const nixBuild = (file: string, attr: string, hookPath: string | '', extraEnv: NodeJS.ProcessEnv = {}) =>
    runProgram(
      NIX_BUILD,
      [
        '--store',
        store,
        '--no-out-link',
        '--option',
        'post-build-hook',
        hookPath,
        file,
        ...(attr ? ['-A', attr] : []),
      ],
      { ...env, ...extraEnv },
    );
  const lookup = (hashPart: string) => new LogClient({ url: logUrl, vkey }).lookup('nix', hashPart);
  const inSpool = (suffix: string) =>
    existsSync(spoolDir) ? readdirSync(spoolDir).filter((f) => f.endsWith(suffix)) : [];
  const pending = () => inSpool('.entries');
  const builds = () => inSpool('.build');
  const hookLog = join(root, 'hook.log');

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
    hook = join(root, 'post-build-hook');
  });
  after(async () => {
    await srv?.stop();
  });

  /**
   * Runs the publisher (its periodic scan every 10 minutes: only its first scan and file system
   * events can wake it), runs `during`, then waits up to 30 s for `done`.
   */
  const publishUntil = async (
    cfgFile: string,
    done: () => Promise<boolean>,
    during: () => Promise<void> = async () => {},
  ) => {
    const cfg = resolvePublishConfig(readPublishConfig(cfgFile));
    const stop = new AbortController();
    const said: string[] = [];
    const running = runPublisher({
      spool: new Spool(cfg.spool, { warn: (l) => said.push(l) }),
      client: new LogClient({ url: cfg.log, vkey: cfg.vkey }),
      auth: cfg.auth,
      say: (l) => said.push(l),
      intervalMs: 600_000,
      signal: stop.signal,
    });
    try {
      await during();
      for (let i = 0; i < 300 && !(await done()); i++) await new Promise((r) => setTimeout(r, 100));
    } finally {
      stop.abort();
      await running;
    }
    return said;
  };

  test('the installed hook, with a PATH holding neither node nor trustix, records the build; the publisher delivers it as Nix has it', async () => {
    const inst = await trustix(
      ['nix', 'install-hook', '--config', config, '--out', hook, '--log', hookLog],
      env,
    );
    assert.equal(inst.code, 0, inst.stderr);
    assert.match(inst.stdout, new RegExp(`post-build-hook = ${hook}`));
    const file = writeDerivations(root, 'first');
    const b = await nixBuild(file, 'top', hook, { PATH: '/nonexistent' });
    assert.equal(b.code, 0, b.stderr);
    assert.doesNotMatch(b.stderr, /trustix post-build-hook:|trustix: /);
    // two builds (dep, then top): two records, and nothing delivered yet
    assert.equal(builds().length, 2);
    const top = b.stdout.trim();
    const dep = nixStore(['-q', '--references', top]);
    assert.match(dep, /-first-dep$/);
    assert.equal((await lookup(basename(top).slice(0, 32))).status, 'absent');

    await publishUntil(config, async () => builds().length === 0 && pending().length === 0);
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
    assert.equal(existsSync(hookLog), false, 'nothing to complain about');
  });

  test('a running publisher delivers a build as soon as the hook records it', async () => {
    let built = '';
    const present = async () =>
      built !== '' && (await lookup(basename(built).slice(0, 32))).status === 'present';
    const said = await publishUntil(config, present, async () => {
      // let the first scan find the spool empty
      await new Promise((r) => setTimeout(r, 500));
      const b = await nixBuild(writeDerivations(root, 'watched'), 'dep', hook);
      assert.equal(b.code, 0, b.stderr);
      built = b.stdout.trim();
    });
    assert.ok(await present(), said.join('\n'));
    assert.deepEqual([builds(), pending()], [[], []]);
    assert.ok(
      said.some((l) => /^1 build\(s\) read from the store; delivered 1 entries/.test(l)),
      said.join('\n'),
    );
  });

  test('the wrapper run by hand with an empty environment, or with a spool it cannot write: exit 0, and why in its log', async () => {
    const drv = '/nix/store/0000000000000000000000000000000a-x.drv';
    // no PATH at all: the record is still written
    const r0 = await runProgram(hook, [], { DRV_PATH: drv });
    assert.equal(r0.code, 0, r0.stderr);
    assert.equal(r0.stderr, '');
    const [rec] = builds();
    assert.deepEqual(parseBuildRecord(readFileSync(join(spoolDir, rec), 'utf8')), {
      drv,
      outputs: [],
      store: '',
    });
    rmSync(join(spoolDir, rec));
    // not run by Nix
    const r1 = await runProgram(hook, [], {});
    assert.equal(r1.code, 0);
    assert.match(
      readFileSync(hookLog, 'utf8'),
      /trustix post-build-hook: \?: neither DRV_PATH nor OUT_PATHS/,
    );
    // a spool under a file
    const blocker = join(root, 'not-a-dir');
    writeFileSync(blocker, '');
    const blocked = join(root, 'blocked-hook');
    const script = readFileSync(hook, 'utf8').replace(/^spool=.*$/m, `spool='${blocker}/spool'`);
    writeFileSync(blocked, script, { mode: 0o755 });
    const r2 = await runProgram(blocked, [], { DRV_PATH: drv });
    assert.equal(r2.code, 0);
    assert.match(r2.stderr, /cannot create the spool .*not-a-dir\/spool/);
    assert.match(
      readFileSync(hookLog, 'utf8'),
      new RegExp(`[0-9]{19} trustix post-build-hook: ${drv}: cannot create the spool`),
    );
    assert.deepEqual(builds(), []);
  });

  test('log down: the build does not wait for it; flush exits 1 and keeps the spool; with the log back it delivers', async () => {
    await srv.stop();
    const file = writeDerivations(root, 'offline');
    const b = await nixBuild(file, 'dep', hook);
    assert.equal(b.code, 0, b.stderr);
    assert.equal(builds().length, 1);
    const dep = b.stdout.trim();
    const f1 = await trustix(['nix', 'flush', '--config', config], env);
    assert.equal(f1.code, 1);
    assert.match(
      f1.stderr,
      /\ntrustix: 1 build\(s\) read from the store; delivered 0 entries from 0 file\(s\): 0 new, 0 already present; 1 file\(s\) wait; then failed: http\.network: .*; 1 file\(s\) wait in /,
    );
    assert.deepEqual([builds().length, pending().length], [0, 1]);

    srv = await startServer(['--state', state, '--listen', `127.0.0.1:${port}`]);
    const f = await trustix(['nix', 'flush', '--config', config], env);
    assert.equal(f.code, 0, f.stderr);
    assert.match(
      f.stdout,
      /^delivered 1 entries from 1 file\(s\): 1 new, 0 already present; spool is empty\n$/,
    );
    assert.deepEqual(pending(), []);
    assert.equal((await lookup(basename(dep).slice(0, 32))).status, 'present');
  });

  test('a recorded build whose paths are gone from the store is set aside with the reason; the rest goes on', async () => {
    const spool = new Spool(spoolDir, { warn: () => {} });
    const gone = await spool.addBuild({
      drv: '/nix/store/0000000000000000000000000000000a-gone.drv',
      outputs: [],
      store,
    });
    const file = writeDerivations(root, 'after-gone');
    const b = await nixBuild(file, 'dep', hook);
    assert.equal(b.code, 0, b.stderr);
    const r = await spoolBuilds(spool, { query: { env } });
    assert.equal(r.error, undefined);
    assert.deepEqual([r.builds, r.rejected], [1, 1]);
    assert.match(
      readFileSync(join(spoolDir, 'rejected', `${gone}.reason`), 'utf8'),
      /^build \/nix\/store\/0+a-gone\.drv: nix-store -q --outputs .*does not exist/,
    );
    assert.equal(pending().length, 1);
    const f = await trustix(['nix', 'flush', '--config', config], env);
    assert.equal(f.code, 0, f.stderr);
    assert.match(
      f.stdout,
      /; spool is empty; 1 file\(s\) set aside for good in .*rejected \(see their \.reason files\)\n$/,
    );
    rmSync(join(spoolDir, 'rejected'), { recursive: true });
  });

  test('rebuilding a non-reproducible path replaces the logged value; lookup --history shows every value', async () => {
    const file = join(root, 'unrepro.nix');
    writeFileSync(
      file,
      'derivation { name = "unrepro"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "/bin/date +%s%N > $out" ]; }\n',
    );
    const values: string[] = [];
    let out = '';
    for (let i = 0; i < 2; i++) {
      if (out !== '') nixStore(['--delete', out]);
      const b = await nixBuild(file, '', hook);
      assert.equal(b.code, 0, b.stderr);
      out = b.stdout.trim();
      values.push(parseNixSha256(nixStore(['-q', '--hash', out])).toString('hex'));
      const f = await trustix(['nix', 'flush', '--config', config], env);
      assert.equal(f.code, 0, f.stderr);
    }
    assert.notEqual(values[0], values[1], 'the rebuild gave other bytes');
    const hashPart = basename(out).slice(0, 32);
    const latest = await lookup(hashPart);
    assert.ok(latest.status === 'present' && latest.entry.value.toString('hex') === values[1]);
    const logDir = join(state, 'logs', 'default');
    for (const where of [
      ['--state', logDir],
      ['--url', logUrl, '--vkey', vkey, '--trust-dir', join(root, 'history-trust')],
    ]) {
      const h = await trustix(['lookup', ...where, '--history', hashPart], env);
      assert.equal(h.code, 0, h.stderr);
      const lines = h.stdout.trim().split('\n');
      assert.match(lines[0], new RegExp(`^present: ${hashPart} -> ${values[1]} \\(entry ([0-9]+),`));
      assert.equal(lines[1], `history: 2 entries for ${hashPart}, oldest first`);
      assert.match(lines[2], new RegExp(`^  entry [0-9]+: ${values[0]}$`));
      assert.match(lines[3], new RegExp(`^  entry [0-9]+: ${values[1]} \\(latest\\)$`));
      const j = await trustix(['lookup', ...where, '--history', '--json', hashPart], env);
      assert.deepEqual(
        (JSON.parse(j.stdout) as { history: Array<{ value: string }> }).history.map((x) => x.value),
        values,
      );
    }
  });

  test('a bad config: the node hook command says why on stderr and the build still succeeds', async () => {
    const bad = join(root, 'bad.toml');
    writeFileSync(bad, `log = "${logUrl}"\nvkey = "${vkey}"\ntokenfile = "x"\n`);
    const badHook = writeHookWrapper(root, bad, 'bad-hook.sh');
    const b = await nixBuild(writeDerivations(root, 'badconfig'), 'dep', badHook);
    assert.equal(b.code, 0, b.stderr);
    assert.match(
      b.stderr,
      /trustix: post-build-hook: nothing recorded for \/nix\/store\/.*: publish config .*bad\.toml: unknown field "tokenfile"/,
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
