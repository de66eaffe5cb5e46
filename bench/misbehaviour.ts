// npm run bench:proofs: the cost of a map-mismatch misbehaviour proof (docs/misbehaviour.md), the
// largest kind: a signed checkpoint and every entry of its tree. For N entries (Nix-like, about 110
// bytes each) it builds the proof, writes its file form and checks it as `trustix verify` does
// (parse, recompute the log root and the sparse index from the entries). Prints one JSON line per
// figure, like bench/run.ts. Knob: TRUSTIX_BENCH_PROOF_N (default 1000000).
import { signCheckpoint } from '../src/core/checkpoint.js';
import { encodeEntry } from '../src/core/entry.js';
import {
  formatProof,
  mapMismatchProof,
  parseProof,
  rootsOfEntries,
  verifyProof,
} from '../src/core/misbehaviour.js';
import { generateKey, signerFromSkey } from '../src/core/note.js';
import { emit, makeEntries, PeakMemory } from './common.js';

const N = Number(process.env.TRUSTIX_BENCH_PROOF_N ?? 1_000_000);
const ORIGIN = 'bench.example/log';
const { skey, vkey } = generateKey(ORIGIN);

const entries = makeEntries(N).map((e) => encodeEntry(e));
const { logRoot } = rootsOfEntries(entries);
// the log signs its true tree with the index root of another tree
const note = signCheckpoint(
  { origin: ORIGIN, size: N, rootHash: logRoot, mapRoot: Buffer.alloc(32, 1), extensions: [] },
  signerFromSkey(skey),
);
const text = formatProof(mapMismatchProof(vkey, note, entries));
emit('proof file size', text.length / 1e6, 'MB', { entries: N });

const peak = new PeakMemory().start();
const before = process.memoryUsage().rss;
const t0 = performance.now();
const verdict = verifyProof(parseProof(text), vkey);
const seconds = (performance.now() - t0) / 1000;
peak.stop();
peak.sample();
if (!verdict.proven) throw new Error(`not proven: ${verdict.reason}`);
emit('map-mismatch verify', N / seconds, 'entries/s', { entries: N, seconds: Math.round(seconds * 10) / 10 });
emit('map-mismatch verify peak rss growth', (peak.rss - before) / 1e6, 'MB', { entries: N });
