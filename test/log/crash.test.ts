import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { openCheckpoint } from '../../src/core/checkpoint.js';
import { decodeEntry } from '../../src/core/entry.js';
import { verifyLookup } from '../../src/core/lookup.js';
import { verifyConsistency } from '../../src/core/merkle.js';
import { verifierFromVkey } from '../../src/core/note.js';
import { auditStore } from '../../src/log/audit.js';
import { Log } from '../../src/log/log.js';

const WRITER = new URL('../fixtures/crash-writer.ts', import.meta.url).pathname;
const KILLS = Number(process.env.TRUSTIX_CRASH_KILLS ?? 24);

interface Ack {
  key: string;
  value: string;
  index: number;
  checkpoint: string;
}

/** Starts the writer, waits until it has acknowledged something (or a random moment), then SIGKILLs it. */
function runAndKill(dir: string, acks: Ack[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', WRITER, dir], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let buf = '';
    let stderr = '';
    let timer: NodeJS.Timeout | undefined;
    // decode as a stream: a chunk boundary can fall inside a multi-byte character (the note's em dash)
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      buf += d;
      const lines = buf.split('\n');
      buf = lines.pop()!;
      for (const line of lines) {
        if (line === '') continue;
        const j = JSON.parse(line);
        if ('ready' in j) {
          // kill at a random moment after the log is open: mid-batch, mid-commit, mid-print
          timer = setTimeout(() => child.kill('SIGKILL'), 20 + Math.random() * 400);
        } else acks.push(j as Ack);
      }
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('exit', (code, signal) => {
      if (timer) clearTimeout(timer);
      if (signal === 'SIGKILL') resolve();
      else reject(new Error(`writer exited on its own (code ${code}): ${stderr}`));
    });
  });
}

test(`log survives ${KILLS} SIGKILLs of a real writer process`, { timeout: 900_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'trustix-crash-'));
  try {
    const acks: Ack[] = [];
    for (let i = 0; i < KILLS; i++) await runAndKill(dir, acks);
    assert.ok(acks.length > 0, 'the writer acknowledged nothing before being killed');

    const log = await Log.open(dir);
    const verifier = verifierFromVkey(log.vkey);
    const head = log.head();
    const current = openCheckpoint(head.checkpoint, verifier).checkpoint;

    // every acknowledged submission is in the log, at its index, with valid proofs
    for (const a of acks) {
      assert.ok(a.index < head.size, `acknowledged index ${a.index} beyond size ${head.size}`);
      const entry = decodeEntry(log.entry(a.index));
      assert.equal(entry.key.toString(), a.key, `entry ${a.index} is not the acknowledged one`);
      assert.equal(entry.value.toString('hex'), a.value, `entry ${a.index} has another value`);
    }
    // the latest acknowledged value per key is what lookups return (acks are in order per key
    // because a later batch always gets higher indexes)
    const latest = new Map<string, Ack>();
    for (const a of acks) {
      const prev = latest.get(a.key);
      if (!prev || a.index >= prev.index) latest.set(a.key, a);
    }
    for (const a of latest.values()) {
      const key = Buffer.from(a.key);
      const v = verifyLookup(log.lookup('nix', key), verifier, { protocol: 'nix', key });
      assert.equal(v.status, 'present', `${a.key}: ${JSON.stringify(v)}`);
      if (v.status === 'present')
        assert.ok(v.index >= a.index, `${a.key} points to an older entry than acknowledged`);
    }

    // every checkpoint ever published (acknowledged or stored) is consistent with the current tree
    const published = new Set<string>(acks.map((a) => a.checkpoint));
    for (const { checkpoint } of log.storage.checkpoints()) published.add(checkpoint);
    for (const note of published) {
      const cp = openCheckpoint(note, verifier).checkpoint;
      assert.ok(cp.size <= current.size, 'a published checkpoint is ahead of the store');
      if (cp.size === 0) continue;
      verifyConsistency(cp.size, current.size, log.consistencyProof(cp.size), cp.rootHash, current.rootHash);
    }

    const report = await auditStore(log.storage, verifier);
    assert.ok(report.ok, JSON.stringify(report.divergence));

    // writing continues after the crashes
    const r = await log.submit([
      {
        protocol: 'nix',
        key: Buffer.from('after-crash'),
        value: Buffer.alloc(32, 1),
        metadata: Buffer.alloc(0),
      },
    ]);
    assert.equal(r[0].index, head.size);
    await log.close();
    console.log(
      `# crash test: ${KILLS} kills, ${acks.length} acknowledged submissions, final size ${head.size + 1}`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
