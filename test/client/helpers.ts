import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Entry } from '../../src/core/entry.js';
import { sha256 } from '../../src/core/hash.js';
import { Log } from '../../src/log/log.js';

export const ORIGIN = 'test.example/client';

export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'trustix-client-'));
}

export function entry(key: string, version = 1): Entry {
  return {
    protocol: 'nix',
    key: Buffer.from(key),
    value: sha256(Buffer.from(`${key}:${version}`)),
    metadata: Buffer.alloc(0),
  };
}

/** A new log signed by `skey`, filled with `batches` of entries `${prefix}<batch>-<i>`. */
export async function makeLog(skey: string, batches: number[], prefix = 'k'): Promise<Log> {
  const log = await Log.create(tempDir(), ORIGIN, { skey, batchDelayMs: 1 });
  await addBatches(log, batches, prefix);
  return log;
}

export async function addBatches(log: Log, batches: number[], prefix = 'k'): Promise<void> {
  for (const [b, n] of batches.entries()) {
    const base = log.head().size;
    await log.submit(Array.from({ length: n }, (_, i) => entry(`${prefix}${base}-${b}-${i}`)));
  }
}

/** Awaits a rejection of class `cls` whose `check` is `check`. */
export async function rejectsWith(
  p: Promise<unknown>,
  cls: abstract new (...args: never[]) => Error,
  check: string | RegExp,
): Promise<Error> {
  let caught: unknown;
  try {
    await p;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught, `expected a ${cls.name} (${check}), but the call succeeded`);
  assert.ok(
    caught instanceof cls,
    `expected ${cls.name}, got ${(caught as Error).name}: ${(caught as Error).message}`,
  );
  const got = (caught as { check?: string }).check ?? '';
  if (typeof check === 'string') assert.equal(got, check, (caught as Error).message);
  else assert.match(got, check, (caught as Error).message);
  return caught as Error;
}
