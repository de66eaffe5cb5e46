// `trustix mirror` as a process: first start (key 0600, vkey line, ready), progress while catching
// up, a SIGKILL in the middle of the catch-up, and a restart that resumes from the committed copy.
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LogClient } from '../../src/client/client.js';
import { parseNote } from '../../src/core/note.js';
import {
  cleanup,
  type RunningServer,
  runExpectingFailure,
  startCommand,
  startServer,
  tempDir,
  writeConfig,
} from '../fixtures/server-helpers.js';
import { entries, honestLog } from './fixtures.js';

const N = 20_000;
/** What the proxy in front of the log adds to each entry bundle (79 of them): a catch-up lasts seconds. */
const BUNDLE_DELAY_MS = 60;

/**
 * Forwards requests to `target`, each entry bundle after a delay: a fast machine copies the whole
 * log within the mirror's first progress second, which leaves no moment to kill it mid-catch-up.
 */
async function slowEntriesProxy(target: string): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    void (async () => {
      if (req.url?.includes('/tile/entries/')) await new Promise((r) => setTimeout(r, BUNDLE_DELAY_MS));
      const upstream = await fetch(`${target}${req.url}`);
      const headers: Record<string, string> = {};
      const type = upstream.headers.get('content-type');
      if (type !== null) headers['content-type'] = type;
      res.writeHead(upstream.status, headers);
      res.end(Buffer.from(await upstream.arrayBuffer()));
    })().catch(() => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

/** Resolves with the first stdout line of `s` (already printed or to come) that matches `re`. */
function lineMatching(s: RunningServer, re: RegExp, timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    // both timers are cleared either way: a poll left running would keep the test file from exiting
    const timer = setTimeout(() => {
      clearInterval(poll);
      reject(new Error(`no line matching ${re} in ${timeoutMs} ms:\n${s.stdout.join('\n')}\n${s.stderr()}`));
    }, timeoutMs);
    const check = () => {
      const hit = s.stdout.find((l) => re.test(l));
      if (hit !== undefined) {
        clearTimeout(timer);
        clearInterval(poll);
        resolve(hit);
      }
    };
    const poll = setInterval(check, 20);
    check();
  });
}

describe('trustix mirror (process)', () => {
  const dir = tempDir('trustix-mirror-cli-');
  let log: RunningServer;
  let proxy: Server;
  let vkey: string;
  let config: string;

  before(async () => {
    const logDir = join(dir, 'log');
    vkey = await honestLog(logDir, 'cli.test/log', [entries(N)]);
    const serve = writeConfig(
      dir,
      `[[log]]\nid = "default"\norigin = "cli.test/log"\ndir = "${logDir}"\n`,
      'serve.toml',
    );
    log = await startServer(['--config', serve, '--listen', '127.0.0.1:0']);
    const slow = await slowEntriesProxy(log.url);
    proxy = slow.server;
    config = join(dir, 'mirror.toml');
    writeFileSync(config, `[[log]]\nname = "cli"\nurl = "${slow.url}/logs/default/"\nvkey = "${vkey}"\n`);
  });

  after(async () => {
    proxy?.closeAllConnections();
    proxy?.close();
    await log?.stop();
    cleanup(dir);
  });

  test('bad input is a usage error, not a stack trace', async () => {
    const r = await runExpectingFailure('mirror', [
      '--state',
      join(dir, 'x'),
      '--listen',
      'nowhere',
      '--config',
      config,
    ]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--listen must be HOST:PORT/);
    assert.doesNotMatch(r.stderr, /at .*\.ts:\d+/);
  });

  test('survives a SIGKILL while catching up and resumes where its copy stopped', async (t) => {
    const state = join(dir, 'state');
    const args = [
      '--state',
      state,
      '--listen',
      '127.0.0.1:0',
      '--config',
      config,
      '--chunk',
      '1',
      '--interval',
      '0.2',
    ];
    const first = await startCommand('mirror', args);
    // a failed assertion must not leave a mirror running, which would hold the test file open
    t.after(() => first.proc.kill('SIGKILL'));
    assert.ok(first.stdout.some((l) => l.startsWith('created the mirror key')));
    const vkeyLine = first.stdout.find((l) => / vkey /.test(l))!;
    assert.match(vkeyLine, /^mirror \S+ vkey \S+\+[0-9a-f]{8}\+/);
    assert.equal(statSync(join(state, 'mirror.key')).mode & 0o777, 0o600);
    // nothing audited yet: the copy is not served, and says why
    const firstPrefix = first.stdout.find((l) => l.startsWith('log cli prefix '))!.split(' ')[3];
    const early = await fetch(`${firstPrefix}checkpoint`);
    assert.equal(early.status, 503);
    assert.match(await early.text(), /catching up with this log/);
    await lineMatching(first, /^log cli: catching up: \d+ of 20000 entries.*, [1-9]\d* committed$/);
    first.proc.kill('SIGKILL');
    await first.exited;

    const second = await startCommand('mirror', args);
    t.after(() => second.proc.kill('SIGKILL'));
    const resumed = second.stdout.find((l) => l.startsWith('log cli: copy at size '))!;
    const at = Number(/copy at size (\d+)/.exec(resumed)![1]);
    assert.ok(at > 0 && at < N, `resumed at ${at}: ${resumed}`);
    assert.ok(!second.stdout.some((l) => l.startsWith('created the mirror key')));
    assert.equal(
      second.stdout.find((l) => / vkey /.test(l)),
      vkeyLine,
      'the same key after a restart',
    );
    await lineMatching(second, /^log cli: audited size 20000: map line matches the index/);
    const prefix = second.stdout.find((l) => l.startsWith('log cli prefix '))!.split(' ')[3];
    const client = new LogClient({ url: prefix, vkey });
    const cp = await client.checkpoint();
    assert.equal(cp.checkpoint.size, N);
    assert.equal(parseNote(cp.note).signatures.length, 2);
    assert.equal((await client.lookup('nix', `m-${N - 1}`)).status, 'present');
    const stopped = await second.stop();
    assert.equal(stopped.code, 0);
    assert.match(readFileSync(join(state, 'mirror.key'), 'utf8'), /^PRIVATE\+KEY\+/);
  });
});
