// Logs for the dashboard tests: real `trustix serve` processes holding the same keys, one of them
// with a different value for one key, and a trust config over them with a hostile log name.
import { join } from 'node:path';
import { LogClient } from '../../src/client/client.js';
import { toHex } from '../../src/core/bytes.js';
import type { Entry } from '../../src/core/entry.js';
import { entry } from '../client/helpers.js';
import { type RunningServer, startServer, token } from '../fixtures/server-helpers.js';

export const HOSTILE_NAME = '<img src=x onerror="window.__pwned=1">' + 'L'.repeat(300);
export const SHARED = ['hk-0', 'hk-1', 'hk-2', 'hk-3'];
/** Held by every log; log c holds another value for it. */
export const SPLIT = 'split-key';
/** Held by logs a and b, with different values: no procedure majority. */
export const TIE = 'tie-key';
/** Held by log a only. */
export const ONLY_A = 'only-a';

export const value = (k: string, version = 1) => toHex(entry(k, version).value);

export interface TestLog {
  name: string;
  url: string;
  vkey: string;
  dir: string;
  server: RunningServer;
  client: LogClient;
}

export async function startLogs(dir: string): Promise<TestLog[]> {
  const names = ['alpha', 'beta', HOSTILE_NAME];
  return Promise.all(
    names.map(async (name, i) => {
      const state = join(dir, `node${i}`);
      const server = await startServer(
        ['--state', state, '--listen', '127.0.0.1:0', '--origin', `log${i}.test/log`],
        90_000,
      );
      const url = `${server.url}/logs/default/`;
      const client = new LogClient({ url, vkey: server.vkey });
      const entries: Entry[] = [...SHARED.map((k) => entry(k)), entry(SPLIT, i === 2 ? 2 : 1)];
      if (i === 0) entries.push(entry(ONLY_A), entry(TIE, 1));
      if (i === 1) entries.push(entry(TIE, 2));
      await client.submit(entries, { token: token(state) });
      return { name, url, vkey: server.vkey, dir: state, server, client };
    }),
  );
}

export function trustToml(
  logs: ReadonlyArray<{ name: string; url: string; vkey: string }>,
  extra = '',
): string {
  return `${extra}${logs.map((l) => `[[log]]\nname = ${JSON.stringify(l.name)}\nurl = "${l.url}"\nvkey = "${l.vkey}"\n`).join('\n')}`;
}
