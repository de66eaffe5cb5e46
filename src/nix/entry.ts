/**
 * The log entry of a Nix store path (docs/nix.md, "Publishing"): protocol `nix`, key = the store
 * path's 32-character hash part (what a narinfo request carries), value = the 32-byte NAR sha256,
 * metadata = canonical JSON with fixed key order:
 *
 *   {"name":"<name>","narSize":<n>,"references":["<base name>",...],"deriver":"<base name>"}
 *
 * References are base names sorted by code unit (no duplicates); `deriver` is omitted when Nix
 * knows none. One info has exactly one encoding, so builders that agree produce the same leaf.
 */
import type { Entry } from '../core/entry.js';
import { MAX_METADATA_LENGTH } from '../core/entry.js';
import { FormatError } from '../core/errors.js';
import {
  checkStorePathName,
  NIX_STORE_DIR,
  parseStorePath,
  parseStorePathBaseName,
  type StorePath,
} from './store-path.js';

export const NIX_PROTOCOL = 'nix';

export interface NixPathInfo {
  /** `/nix/store/<hash>-<name>`. */
  storePath: string;
  /** The NAR sha256 (32 bytes). */
  narHash: Buffer;
  narSize: number;
  /** Full store paths or base names; order and duplicates do not matter. */
  references: readonly string[];
  /** The deriver's full path or base name, if Nix knows one. */
  deriver?: string | undefined;
}

export interface NixMetadata {
  name: string;
  narSize: number;
  /** Base names, sorted. */
  references: string[];
  deriver?: string;
}

function baseNameOf(p: string, what: string): string {
  try {
    return (p.startsWith(`${NIX_STORE_DIR}/`) ? parseStorePath(p) : parseStorePathBaseName(p)).baseName;
  } catch (err) {
    throw new FormatError(`${what}: ${(err as Error).message}`, { cause: err });
  }
}

function checkNarSize(n: unknown, what: string): number {
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
    throw new FormatError(`${what} must be a non-negative integer`);
  }
  return n;
}

/** The canonical metadata bytes. References must already be sorted, unique base names. */
export function formatNixMetadata(m: NixMetadata): Buffer {
  // Every string here is a validated store path name or base name (no quotes, backslashes or
  // control characters), so JSON.stringify of each part is the only encoding.
  let s = `{"name":${JSON.stringify(m.name)},"narSize":${m.narSize},"references":[`;
  for (let i = 0; i < m.references.length; i++) {
    if (i > 0) s += ',';
    s += JSON.stringify(m.references[i]);
  }
  s += ']';
  if (m.deriver !== undefined) s += `,"deriver":${JSON.stringify(m.deriver)}`;
  s += '}';
  return Buffer.from(s, 'utf8');
}

/** The entry that publishes `info`. FormatError on a malformed path, hash or size. */
export function nixEntry(info: NixPathInfo): Entry {
  let sp: StorePath;
  try {
    sp = parseStorePath(info.storePath);
  } catch (err) {
    throw new FormatError(`store path: ${(err as Error).message}`, { cause: err });
  }
  if (!Buffer.isBuffer(info.narHash) || info.narHash.length !== 32) {
    throw new FormatError(`${sp.path}: NAR hash must be 32 bytes (sha256)`);
  }
  const narSize = checkNarSize(info.narSize, `${sp.path}: NAR size`);
  const refs = [...new Set(info.references.map((r) => baseNameOf(r, `${sp.path}: reference`)))].sort(
    compareCodeUnits,
  );
  const meta: NixMetadata = { name: sp.name, narSize, references: refs };
  if (info.deriver !== undefined && info.deriver !== '') {
    meta.deriver = baseNameOf(info.deriver, `${sp.path}: deriver`);
  }
  const metadata = formatNixMetadata(meta);
  if (metadata.length > MAX_METADATA_LENGTH) {
    throw new FormatError(
      `${sp.path}: its metadata (${refs.length} references) is ${metadata.length} bytes, more than an entry holds (${MAX_METADATA_LENGTH})`,
    );
  }
  return {
    protocol: NIX_PROTOCOL,
    key: Buffer.from(sp.hashPart, 'latin1'),
    value: Buffer.from(info.narHash),
    metadata,
  };
}

/**
 * Parses metadata strictly: it must be exactly what `formatNixMetadata` writes for the values it
 * holds (field order, sorting, no whitespace), so two encodings of one info cannot exist.
 */
export function parseNixMetadata(buf: Uint8Array): NixMetadata {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const text = b.toString('utf8');
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch {
    throw new FormatError('nix metadata: not JSON');
  }
  if (typeof j !== 'object' || j === null || Array.isArray(j)) {
    throw new FormatError('nix metadata: must be a JSON object');
  }
  const o = j as Record<string, unknown>;
  const keys = Object.keys(o);
  const expected = o.deriver === undefined ? 3 : 4;
  for (const k of keys) {
    if (k !== 'name' && k !== 'narSize' && k !== 'references' && k !== 'deriver') {
      throw new FormatError(`nix metadata: unknown field ${JSON.stringify(k)}`);
    }
  }
  if (keys.length !== expected) throw new FormatError('nix metadata: needs name, narSize and references');
  if (typeof o.name !== 'string') throw new FormatError('nix metadata: name must be a string');
  try {
    checkStorePathName(o.name);
  } catch (err) {
    throw new FormatError(`nix metadata: name: ${(err as Error).message}`, { cause: err });
  }
  const narSize = checkNarSize(o.narSize, 'nix metadata: narSize');
  if (!Array.isArray(o.references)) throw new FormatError('nix metadata: references must be an array');
  const references: string[] = [];
  for (const r of o.references) {
    if (typeof r !== 'string') throw new FormatError('nix metadata: references must be strings');
    parseBaseName(r, 'reference');
    if (references.length > 0 && compareCodeUnits(references[references.length - 1], r) >= 0) {
      throw new FormatError('nix metadata: references must be sorted and unique');
    }
    references.push(r);
  }
  const m: NixMetadata = { name: o.name, narSize, references };
  if (o.deriver !== undefined) {
    if (typeof o.deriver !== 'string') throw new FormatError('nix metadata: deriver must be a string');
    parseBaseName(o.deriver, 'deriver');
    m.deriver = o.deriver;
  }
  if (!formatNixMetadata(m).equals(b)) {
    throw new FormatError('nix metadata: not in canonical form (field order, spacing or number format)');
  }
  return m;
}

function parseBaseName(s: string, what: string): void {
  try {
    parseStorePathBaseName(s);
  } catch (err) {
    throw new FormatError(`nix metadata: ${what}: ${(err as Error).message}`, { cause: err });
  }
}

function compareCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
