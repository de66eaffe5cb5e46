/**
 * Misbehaviour proofs (docs/misbehaviour.md): self-contained records showing that one log signed
 * two things that cannot both be true. Anyone checks one offline with nothing but the log's vkey
 * (`verifyProof`); whoever holds such a pair (a witness, a verifying client, a decider, an
 * auditing mirror) writes one. Kinds:
 *
 * - `same-size-different-root`: two signed checkpoints of one size whose root hashes (or `map`
 *   lines) differ. A log has one tree per size, so this alone proves a fork or a split view.
 * - `consistency-proof-failed`: an older and a newer signed checkpoint and consistency proof
 *   hashes (as the log gave them) that lead to the newer checkpoint's root but, by the same
 *   RFC 9162 fold, to an older root other than the signed one. Hashes that reproduce a signed
 *   root are that tree's own nodes (SHA-256 is collision resistant), so the newer tree's prefix is
 *   not the older tree: the log forked. When the older size is a power of two the RFC proof leaves
 *   out the older root; the record then carries the newer tree's root at that size first. A proof
 *   that leads to neither root shows only a bad proof (anyone can write one): not proven.
 * - `map-mismatch`: one signed checkpoint with a `map` line and every entry of its tree, in order.
 *   The entries reproduce the signed log root (so they are the log's), and replaying them into the
 *   sparse index gives a root other than the signed map line: the index lies about its entries.
 *
 * Record: JSON with `type` "trustix-misbehaviour/v2", `kind`, `origin`, `vkeys` (the keys the
 * observer trusted; informational, verification uses the key it is given), `checkpoints` (the
 * signed notes: two for the first two kinds, older first for consistency; one for map-mismatch),
 * `proof` (base64 hashes; consistency only), `entries` (map-mismatch only: base64 of the entries
 * each prefixed by its uint16 big-endian length, the tlog-tiles entry bundle encoding),
 * `observer` and `observed` (who saw it and when, for people; not checked). Records of the v1
 * layout that witnesses wrote (`accepted`, `refused`) are read too.
 */
import { decodeBase64Strict, equalBytes, toBase64 } from './bytes.js';
import { type Checkpoint, parseCheckpoint } from './checkpoint.js';
import { decodeEntry, indexPath, indexValue } from './entry.js';
import { FormatError, TrustixError } from './errors.js';
import { sha256 } from './hash.js';
import { EMPTY_ROOT, leafHash, nodeHash, rootsFromConsistencyProof } from './merkle.js';
import { type NoteVerifier, openNote, verifierFromVkey } from './note.js';
import { SMT_EMPTY, smtApplyBatch } from './smt.js';
import { decodeEntryBundle, encodeEntryBundle } from './tiles.js';

export const PROOF_TYPE = 'trustix-misbehaviour/v2';
/** The layout witnesses wrote before the other kinds existed; still read. */
export const PROOF_TYPE_V1 = 'trustix-misbehaviour/v1';

export type MisbehaviourKind = 'same-size-different-root' | 'consistency-proof-failed' | 'map-mismatch';
export const MISBEHAVIOUR_KINDS: readonly MisbehaviourKind[] = [
  'same-size-different-root',
  'consistency-proof-failed',
  'map-mismatch',
];

interface ProofCommon {
  origin: string;
  /** The log's verifier keys the observer trusted (informational). */
  vkeys: string[];
  /** Who observed it and when (RFC 3339), for people; not checked. */
  observer: string;
  observed: string;
}

export type MisbehaviourProof =
  | (ProofCommon & { kind: 'same-size-different-root'; checkpoints: [string, string] })
  | (ProofCommon & {
      kind: 'consistency-proof-failed';
      /** Older first. */
      checkpoints: [string, string];
      /** base64 SHA-256 hashes. */
      proof: string[];
    })
  | (ProofCommon & {
      kind: 'map-mismatch';
      checkpoints: [string];
      /** base64 of the entries, each prefixed by its uint16 BE length. */
      entries: string;
    });

export type ProofVerdict = { proven: true; what: string } | { proven: false; reason: string };

export interface ObservedBy {
  observer?: string;
  /** RFC 3339; default: now. */
  observed?: string;
}

/** `note` must be signed by one of the keys: the origin is read from it. */
function common(vkey: string | readonly string[], note: string, by: ObservedBy): ProofCommon {
  const vkeys = typeof vkey === 'string' ? [vkey] : [...vkey];
  return {
    origin: openNote(
      note,
      vkeys.map((k) => verifierFromVkey(k)),
    ).text.split('\n', 1)[0],
    vkeys,
    observer: by.observer ?? '',
    observed: by.observed ?? new Date().toISOString(),
  };
}

/** A same-size-different-root proof from two signed notes of one size (not checked here). */
export function sameSizeProof(
  vkey: string | readonly string[],
  a: string,
  b: string,
  by: ObservedBy = {},
): MisbehaviourProof {
  return { ...common(vkey, a, by), kind: 'same-size-different-root', checkpoints: [a, b] };
}

/** A consistency-proof-failed proof: `older`, `newer` and the log's proof hashes between them. */
export function consistencyProof(
  vkey: string | readonly string[],
  older: string,
  newer: string,
  proof: readonly Uint8Array[],
  by: ObservedBy = {},
): MisbehaviourProof {
  return {
    ...common(vkey, older, by),
    kind: 'consistency-proof-failed',
    checkpoints: [older, newer],
    proof: proof.map((h) => toBase64(h)),
  };
}

/** A map-mismatch proof: a signed checkpoint and every entry of its tree, in order. */
export function mapMismatchProof(
  vkey: string | readonly string[],
  checkpointNote: string,
  entries: readonly Uint8Array[],
  by: ObservedBy = {},
): MisbehaviourProof {
  return {
    ...common(vkey, checkpointNote, by),
    kind: 'map-mismatch',
    checkpoints: [checkpointNote],
    entries: toBase64(encodeEntryBundle(entries)),
  };
}

export function formatProof(p: MisbehaviourProof): string {
  const { kind, origin, vkeys, checkpoints, observer, observed } = p;
  const body: Record<string, unknown> = { type: PROOF_TYPE, kind, origin, vkeys, checkpoints };
  if (p.kind === 'consistency-proof-failed') body.proof = p.proof;
  if (p.kind === 'map-mismatch') body.entries = p.entries;
  body.observer = observer;
  body.observed = observed;
  return `${JSON.stringify(body, null, 2)}\n`;
}

/**
 * A content-addressed file name: `<kind>-<24 hex of SHA-256 over the kind and the checkpoint
 * bodies>.json` (two bodies of one size in either order). Signature lines are left out, so the
 * same contradiction is one file whoever saw it, whoever cosigned the notes, and whenever. Proof
 * hashes and entries are not part of the name: they follow from the checkpoints.
 */
export function proofFileName(p: MisbehaviourProof): string {
  const bodies = p.checkpoints.map((n) => {
    const end = n.indexOf('\n\n');
    return end < 0 ? n : n.slice(0, end + 1);
  });
  if (p.kind === 'same-size-different-root') bodies.sort();
  const material = `${p.kind}\n${bodies.join('\0')}`;
  return `${p.kind}-${sha256(Buffer.from(material, 'utf8')).toString('hex').slice(0, 24)}.json`;
}

function field(o: Record<string, unknown>, k: string, fallback?: string): string {
  const v = o[k] ?? fallback;
  if (typeof v !== 'string') throw new FormatError(`misbehaviour proof: ${k} must be a string`);
  return v;
}

function strings(o: Record<string, unknown>, k: string, fallback?: string[]): string[] {
  const v = o[k] ?? fallback;
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
    throw new FormatError(`misbehaviour proof: ${k} must be an array of strings`);
  }
  return v as string[];
}

/** Parses a record (v2, or a v1 witness record); FormatError on anything else. */
export function parseProof(text: string): MisbehaviourProof {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch (err) {
    throw new FormatError(`misbehaviour proof: not JSON: ${(err as Error).message}`);
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o))
    throw new FormatError('misbehaviour proof: not a JSON object');
  const r = o as Record<string, unknown>;
  const legacy = r.type === PROOF_TYPE_V1;
  if (!legacy && r.type !== PROOF_TYPE) {
    throw new FormatError(`misbehaviour proof: type must be ${PROOF_TYPE} (or ${PROOF_TYPE_V1})`);
  }
  const kind = field(r, 'kind') as MisbehaviourKind;
  if (!MISBEHAVIOUR_KINDS.includes(kind) || (legacy && kind === 'map-mismatch')) {
    throw new FormatError(`misbehaviour proof: unknown kind ${JSON.stringify(kind)}`);
  }
  const base = {
    origin: field(r, 'origin'),
    vkeys: strings(r, 'vkeys', []),
    observer: field(r, 'observer', ''),
    observed: field(r, 'observed', ''),
  };
  const checkpoints = legacy ? [field(r, 'accepted'), field(r, 'refused')] : strings(r, 'checkpoints');
  const want = kind === 'map-mismatch' ? 1 : 2;
  if (checkpoints.length !== want) {
    throw new FormatError(
      `misbehaviour proof: ${kind} needs ${want} checkpoint(s), got ${checkpoints.length}`,
    );
  }
  if (kind === 'map-mismatch') {
    return { ...base, kind, checkpoints: [checkpoints[0]], entries: field(r, 'entries') };
  }
  const pair: [string, string] = [checkpoints[0], checkpoints[1]];
  if (kind === 'same-size-different-root') return { ...base, kind, checkpoints: pair };
  return { ...base, kind, checkpoints: pair, proof: strings(r, 'proof') };
}

class NotProven extends Error {}

function fail(reason: string): never {
  throw new NotProven(reason);
}

function open(note: string, verifiers: readonly NoteVerifier[], origin: string, what: string): Checkpoint {
  let text: string;
  try {
    text = openNote(note, verifiers).text;
  } catch (err) {
    fail(`the ${what} is not signed by the log's key: ${(err as Error).message}`);
  }
  let cp: Checkpoint;
  try {
    cp = parseCheckpoint(text);
  } catch (err) {
    // a log other than Trustix (witnesses cosign any C2SP log) may use extension lines that
    // Trustix reads otherwise: its origin, size and root still say what it signed
    try {
      cp = parseCheckpoint(`${text.split('\n', 3).join('\n')}\n`);
    } catch {
      fail(`the ${what} is not a checkpoint: ${(err as Error).message}`);
    }
  }
  if (cp.origin !== origin) fail(`the ${what} is for ${cp.origin}, not ${origin}`);
  return cp;
}

function hashes(list: readonly string[]): Buffer[] {
  return list.map((h, i) => {
    const b = decodeBase64Strict(h);
    if (b === undefined || b.length !== 32) fail(`proof hash ${i} is not a base64 SHA-256 hash`);
    return b;
  });
}

function mapLine(cp: Checkpoint): string {
  return cp.mapRoot ? toBase64(cp.mapRoot) : 'none';
}

/**
 * The roots of a tree of `entries`: its RFC 6962 log root (kept as a stack of perfect subtree
 * roots, so memory is O(log n) for it) and the sparse index root after replaying them in order.
 * FormatError when an entry does not decode.
 */
export function rootsOfEntries(entries: readonly Uint8Array[]): { logRoot: Buffer; mapRoot: Buffer } {
  // perfect subtrees of the leaves so far, largest first, with their sizes
  const stack: Buffer[] = [];
  const sizes: number[] = [];
  const strata = new Map<string, Buffer>();
  let mapRoot = SMT_EMPTY;
  const CHUNK = 10_000;
  for (let start = 0; start < entries.length; start += CHUNK) {
    const updates: { path: Buffer; value: Buffer }[] = [];
    for (let i = start; i < Math.min(entries.length, start + CHUNK); i++) {
      const e = decodeEntry(entries[i]);
      const leaf = leafHash(entries[i]);
      updates.push({ path: indexPath(e.protocol, e.key), value: indexValue(i, leaf) });
      let h = leaf;
      let n = 1;
      while (sizes.length > 0 && sizes[sizes.length - 1] === n) {
        h = nodeHash(stack.pop() as Buffer, h);
        n += sizes.pop() as number;
      }
      stack.push(h);
      sizes.push(n);
    }
    const r = smtApplyBatch(mapRoot, updates, (id) => strata.get(id.toString('hex')));
    for (const [k, w] of r.writes) strata.set(k, Buffer.from(w.data));
    mapRoot = Buffer.from(r.root);
  }
  let logRoot = stack.length === 0 ? Buffer.from(EMPTY_ROOT) : (stack[stack.length - 1] as Buffer);
  for (let i = stack.length - 2; i >= 0; i--) logRoot = nodeHash(stack[i], logRoot);
  return { logRoot, mapRoot };
}

function check(p: MisbehaviourProof, verifiers: readonly NoteVerifier[]): string {
  const origin = p.origin;
  if (p.kind === 'map-mismatch') {
    const cp = open(p.checkpoints[0], verifiers, origin, 'checkpoint');
    if (!cp.mapRoot) fail('the checkpoint has no map line');
    const bundle = decodeBase64Strict(p.entries);
    if (bundle === undefined) fail('entries is not base64');
    let entries: Buffer[];
    try {
      entries = decodeEntryBundle(bundle);
    } catch (err) {
      fail(`entries: ${(err as Error).message}`);
    }
    if (entries.length !== cp.size)
      fail(`the record has ${entries.length} entries, the checkpoint ${cp.size}`);
    let roots: { logRoot: Buffer; mapRoot: Buffer };
    try {
      roots = rootsOfEntries(entries);
    } catch (err) {
      if (err instanceof TrustixError) fail(`an entry does not decode: ${err.message}`);
      throw err;
    }
    if (!equalBytes(roots.logRoot, cp.rootHash)) {
      fail(
        `the entries give the log root ${toBase64(roots.logRoot)}, not the signed ${toBase64(cp.rootHash)}`,
      );
    }
    if (equalBytes(roots.mapRoot, cp.mapRoot)) fail('the entries give the signed map line: no contradiction');
    return `${origin} signed a checkpoint of size ${cp.size} whose map line ${mapLine(cp)} is not the index of its entries (their index root is ${toBase64(roots.mapRoot)})`;
  }
  const a = open(p.checkpoints[0], verifiers, origin, 'first checkpoint');
  const b = open(p.checkpoints[1], verifiers, origin, 'second checkpoint');
  if (p.kind === 'same-size-different-root') {
    if (a.size !== b.size) fail(`the checkpoints have sizes ${a.size} and ${b.size}, not one size`);
    const rootsDiffer = !equalBytes(a.rootHash, b.rootHash);
    if (!rootsDiffer && mapLine(a) === mapLine(b)) fail('the two checkpoints have the same roots');
    const what = rootsDiffer
      ? `roots ${toBase64(a.rootHash)} and ${toBase64(b.rootHash)}`
      : `one root and map lines ${mapLine(a)} and ${mapLine(b)}`;
    return `${origin} signed two different trees of size ${a.size} (${what}): a fork or a split view`;
  }
  if (!(a.size > 0 && a.size < b.size)) {
    fail(`a consistency proof needs 0 < older size < newer size, got ${a.size} and ${b.size}`);
  }
  const proof = hashes(p.proof);
  let roots: { oldRoot: Buffer; newRoot: Buffer };
  try {
    roots = rootsFromConsistencyProof(a.size, b.size, proof, a.rootHash);
  } catch (err) {
    fail((err as Error).message);
  }
  if (!equalBytes(roots.newRoot, b.rootHash)) {
    fail(
      `the proof does not lead to the signed root of size ${b.size}, so it shows a bad proof, not a fork (ask the log for a consistency proof from ${a.size} to ${b.size})`,
    );
  }
  if (equalBytes(roots.oldRoot, a.rootHash))
    fail(`the proof shows that size ${b.size} extends size ${a.size}`);
  return `${origin} signed a tree of size ${b.size} that does not extend its tree of size ${a.size}: the newer tree's first ${a.size} entries have root ${toBase64(roots.oldRoot)}, the signed one is ${toBase64(a.rootHash)} (a fork or a split view)`;
}

/**
 * Checks a record offline with only the log's `vkey` (or its keys, when it has several): every
 * checkpoint signed by it, all for the record's origin, and the contradiction the kind states
 * recomputed. The record's own `vkeys` are never used. Never throws for a bad record; a bad `vkey`
 * is a FormatError.
 */
export function verifyProof(p: MisbehaviourProof, vkey: string | readonly string[]): ProofVerdict {
  const keys = typeof vkey === 'string' ? [vkey] : vkey;
  if (keys.length === 0) throw new FormatError('no log key to check the proof with');
  const verifiers = keys.map((k) => verifierFromVkey(k));
  try {
    return { proven: true, what: check(p, verifiers) };
  } catch (err) {
    if (err instanceof NotProven) return { proven: false, reason: err.message };
    throw err;
  }
}
