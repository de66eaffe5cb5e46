/**
 * C2SP tlog-policy (https://c2sp.org/tlog-policy): the logs, witnesses and quorum a client trusts,
 * and whether a checkpoint note's tlog-cosignature v1 (Ed25519) cosignatures meet that quorum.
 * Pure: parsing takes the file's bytes, evaluation takes the note text.
 *
 * The file is octets: names are opaque (kept as latin1 strings, one character per octet); vkeys
 * and URLs are read as UTF-8.
 */
import { isUtf8 } from 'node:buffer';
import { decodeBase64Strict } from './bytes.js';
import { FormatError, VerificationError } from './errors.js';
import {
  ALG_COSIGNATURE_V1,
  ALG_ED25519,
  cosignatureVerifierFromVkey,
  type NoteVerifier,
  parseNote,
  verifierFromVkey,
} from './note.js';

export interface PolicyLog {
  /** The vkey as written (its name is the log's origin). */
  vkey: string;
  url?: string;
  verifier: NoteVerifier;
}

export interface PolicyWitness {
  /** The name in the policy file (opaque octets as latin1). */
  name: string;
  vkey: string;
  url?: string;
  /** Verifies the witness's cosignatures (key name and type 0x04 key id). */
  verifier: NoteVerifier;
}

export interface PolicyGroup {
  name: string;
  /** At least this many members must have witnessed. */
  threshold: number;
  members: string[];
}

export interface WitnessPolicy {
  logs: PolicyLog[];
  /** By policy name, in file order. */
  witnesses: Map<string, PolicyWitness>;
  /** By policy name, in file order. */
  groups: Map<string, PolicyGroup>;
  /** The witness or group that must witness a checkpoint; undefined for `quorum none`. */
  quorum: string | undefined;
}

export interface QuorumResult {
  met: boolean;
  /** Policy names of the witnesses whose cosignature verified, in policy order. */
  signed: string[];
  /** Policy names of witnesses with a cosignature line (their name and key id) that does not verify. */
  invalid: string[];
  /** What the quorum requires, for a person: e.g. `X-and-Y = all of (X = 2 of (X1, X2, X3), Y1)`. */
  required: string;
}

/** The special quorum name that requires no cosignature. */
const NONE = 'none';
const KEYWORDS = new Set(['log', 'witness', 'group', 'quorum']);

/** A name as a person reads it (the octets as UTF-8 when they are, else escaped). */
export function displayName(name: string): string {
  const b = Buffer.from(name, 'latin1');
  return isUtf8(b) ? b.toString('utf8') : JSON.stringify(name).slice(1, -1);
}

/** The raw public key a vkey wraps (after its type byte), for duplicate detection. */
function wrappedKey(vkey: string): string {
  const p2 = vkey.indexOf('+', vkey.indexOf('+') + 1);
  const material = decodeBase64Strict(vkey.slice(p2 + 1));
  return material ? material.subarray(1).toString('hex') : vkey;
}

function keyType(vkey: string): number | undefined {
  const p2 = vkey.indexOf('+', vkey.indexOf('+') + 1);
  return decodeBase64Strict(vkey.slice(p2 + 1))?.[0];
}

/**
 * Parses a policy file. FormatError naming `source` and the line for anything the spec does not
 * allow: bad characters, unknown keywords, wrong field counts, bad or unsupported keys, duplicate
 * keys or names, forward references, a member listed twice, thresholds out of 1..n, not exactly
 * one quorum line.
 */
export function parsePolicy(file: string | Uint8Array, source = 'witness policy'): WitnessPolicy {
  const bytes = typeof file === 'string' ? Buffer.from(file, 'utf8') : Buffer.from(file);
  const text = bytes.toString('latin1');
  const logs: PolicyLog[] = [];
  const witnesses = new Map<string, PolicyWitness>();
  const groups = new Map<string, PolicyGroup>();
  const keys = new Map<string, string>();
  const memberOf = new Map<string, string>();
  let quorum: string | undefined;
  let quorumLine = 0;
  const lines = text.split('\n');
  if (lines.length > 1 && lines[lines.length - 1] === '') lines.pop();
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const where = `${source}: line ${i + 1}`;
    const fail = (msg: string): never => {
      throw new FormatError(`${where}: ${msg}`);
    };
    for (let j = 0; j < line.length; j++) {
      const c = line.charCodeAt(j);
      if ((c < 0x20 && c !== 0x09) || c === 0x7f) {
        fail(`control character 0x${c.toString(16).padStart(2, '0')} (only tab and newline are allowed)`);
      }
    }
    const fields = line.split(/[ \t]+/).filter((f) => f !== '');
    if (fields.length === 0 || fields[0].startsWith('#')) continue;
    const [keyword, ...args] = fields;
    const utf8 = (s: string, what: string): string => {
      const b = Buffer.from(s, 'latin1');
      if (!isUtf8(b)) fail(`${what} is not valid UTF-8`);
      return b.toString('utf8');
    };
    const parseKey = (vkeyText: string, alg: number, what: string): NoteVerifier => {
      const vkey = utf8(vkeyText, what);
      const type = keyType(vkey);
      try {
        if (alg === ALG_ED25519) {
          if (type !== undefined && type !== ALG_ED25519) {
            fail(`${what}: a log key must have signature type 0x01 (Ed25519), not 0x${hex2(type)}`);
          }
          return verifierFromVkey(vkey);
        }
        if (type !== undefined && type !== ALG_COSIGNATURE_V1) {
          fail(
            `${what}: a witness key must have signature type 0x04 (Ed25519 cosignature v1), not 0x${hex2(type)}`,
          );
        }
        return cosignatureVerifierFromVkey(vkey);
      } catch (err) {
        if (err instanceof FormatError && !err.message.startsWith(where)) fail(`${what}: ${err.message}`);
        throw err;
      }
    };
    const uniqueKey = (v: NoteVerifier, what: string): void => {
      const k = wrappedKey(v.vkey);
      const prev = keys.get(k);
      if (prev !== undefined) fail(`${what} has the same public key as ${prev}`);
      keys.set(k, `${what} (line ${i + 1})`);
    };
    const newName = (name: string): void => {
      if (name === NONE) fail(`"${NONE}" is predefined and cannot be redefined`);
      if (witnesses.has(name) || groups.has(name)) fail(`name "${displayName(name)}" is already defined`);
    };
    switch (keyword) {
      case 'log': {
        if (args.length < 1 || args.length > 2) fail('expected "log <vkey> [<url>]"');
        const verifier = parseKey(args[0], ALG_ED25519, 'log key');
        uniqueKey(verifier, `log ${verifier.name}`);
        logs.push({
          vkey: verifier.vkey,
          verifier,
          ...(args[1] !== undefined ? { url: utf8(args[1], 'URL') } : {}),
        });
        break;
      }
      case 'witness': {
        if (args.length < 2 || args.length > 3) fail('expected "witness <name> <vkey> [<url>]"');
        const name = args[0];
        newName(name);
        const verifier = parseKey(args[1], ALG_COSIGNATURE_V1, `key of witness "${displayName(name)}"`);
        uniqueKey(verifier, `witness "${displayName(name)}"`);
        witnesses.set(name, {
          name,
          vkey: verifier.vkey,
          verifier,
          ...(args[2] !== undefined ? { url: utf8(args[2], 'URL') } : {}),
        });
        break;
      }
      case 'group': {
        if (args.length < 3) fail('expected "group <name> all|any|<k> <member>..." with at least one member');
        const [name, k, ...members] = args;
        newName(name);
        const seen = new Set<string>();
        for (const m of members) {
          const shown = displayName(m);
          if (m === NONE) fail(`"${NONE}" cannot be a group member`);
          if (!witnesses.has(m) && !groups.has(m)) {
            fail(`member "${shown}" is not a witness or group defined on an earlier line`);
          }
          if (seen.has(m)) fail(`member "${shown}" is listed twice`);
          const other = memberOf.get(m);
          if (other !== undefined) fail(`"${shown}" is already a member of group "${displayName(other)}"`);
          seen.add(m);
        }
        for (const m of members) memberOf.set(m, name);
        let threshold: number;
        if (k === 'all') threshold = members.length;
        else if (k === 'any') threshold = 1;
        else {
          if (!/^[0-9]+$/.test(k))
            fail(`threshold must be all, any or a decimal number, got "${displayName(k)}"`);
          threshold = Number(k);
          if (!(threshold >= 1 && threshold <= members.length)) {
            fail(`threshold ${k} is not between 1 and the ${members.length} member(s)`);
          }
        }
        groups.set(name, { name, threshold, members });
        break;
      }
      case 'quorum': {
        if (args.length !== 1) fail('expected "quorum <name>"');
        if (quorumLine !== 0) fail(`a second quorum line (the first is line ${quorumLine})`);
        const name = args[0];
        if (name !== NONE && !witnesses.has(name) && !groups.has(name)) {
          fail(`quorum "${displayName(name)}" is not a witness or group defined on an earlier line`);
        }
        quorum = name === NONE ? undefined : name;
        quorumLine = i + 1;
        break;
      }
      default:
        fail(
          `unknown line type "${displayName(keyword)}" (expected ${[...KEYWORDS].join(', ')}, or a # comment)`,
        );
    }
  }
  if (quorumLine === 0)
    throw new FormatError(`${source}: no quorum line (use "quorum none" to require none)`);
  return { logs, witnesses, groups, quorum };
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

/** Describes what `name` requires, groups expanded. */
function describe(policy: WitnessPolicy, name: string): string {
  const g = policy.groups.get(name);
  if (!g) return displayName(name);
  const k = g.threshold === g.members.length ? 'all' : g.threshold === 1 ? 'any' : `${g.threshold}`;
  return `${displayName(name)} = ${k} of (${g.members.map((m) => describe(policy, m)).join(', ')})`;
}

/** What the policy's quorum requires, for a person (see QuorumResult.required). */
export function quorumDescription(policy: WitnessPolicy): string {
  return policy.quorum === undefined ? NONE : describe(policy, policy.quorum);
}

/** Whether cosignatures by the witnesses named in `signed` (policy names) meet the policy's quorum. */
export function meetsQuorum(policy: WitnessPolicy, signed: ReadonlySet<string>): boolean {
  const witnessed = (name: string): boolean => {
    const g = policy.groups.get(name);
    if (!g) return signed.has(name);
    let n = 0;
    for (const m of g.members) if (witnessed(m)) n++;
    return n >= g.threshold;
  };
  return policy.quorum === undefined || witnessed(policy.quorum);
}

/**
 * Which of the policy's witnesses cosigned the checkpoint note, and whether that meets the quorum.
 * Signature lines are matched to witnesses by key name and key id; lines of unknown keys are
 * ignored, and a matching line whose cosignature does not verify does not count. Throws a
 * VerificationError ('note.malformed') only for a note that does not parse.
 */
export function evaluateQuorum(policy: WitnessPolicy, note: string | Uint8Array): QuorumResult {
  let parsed: ReturnType<typeof parseNote>;
  try {
    parsed = parseNote(note);
  } catch (err) {
    throw new VerificationError('note.malformed', `malformed note: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const message = Buffer.from(parsed.text, 'utf8');
  const signed = new Set<string>();
  const invalid: string[] = [];
  for (const w of policy.witnesses.values()) {
    let bad = false;
    for (const sig of parsed.signatures) {
      if (sig.name !== w.verifier.name || sig.keyId !== w.verifier.keyId) continue;
      if (w.verifier.verify(message, sig.signature)) signed.add(w.name);
      else bad = true;
    }
    if (bad && !signed.has(w.name)) invalid.push(w.name);
  }
  return {
    met: meetsQuorum(policy, signed),
    signed: [...signed],
    invalid,
    required: quorumDescription(policy),
  };
}

/**
 * Throws VerificationError 'witness.quorum' unless the note's cosignatures meet the quorum; the
 * message names the witnesses that signed and what the quorum needs. `what` names the checkpoint.
 */
export function requireQuorum(policy: WitnessPolicy, note: string | Uint8Array, what: string): QuorumResult {
  const r = evaluateQuorum(policy, note);
  if (r.met) return r;
  const signed = r.signed.length > 0 ? r.signed.map(displayName).join(', ') : 'no witness of the policy';
  const bad =
    r.invalid.length > 0 ? `; cosignatures that do not verify: ${r.invalid.map(displayName).join(', ')}` : '';
  throw new VerificationError(
    'witness.quorum',
    `${what} lacks the witness quorum: signed by ${signed}${bad}; the policy needs ${r.required}`,
  );
}

/**
 * Whether the policy accepts checkpoints of the log with verifier `log`: true when it lists no
 * logs, else when one of its logs has the same name and public key.
 */
export function policyCoversLog(policy: WitnessPolicy, log: NoteVerifier): boolean {
  if (policy.logs.length === 0) return true;
  return policy.logs.some((l) => l.verifier.name === log.name && wrappedKey(l.vkey) === wrappedKey(log.vkey));
}
