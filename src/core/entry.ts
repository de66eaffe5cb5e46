import { FormatError } from './errors.js';
import { sha256, sha256Into } from './hash.js';

/**
 * One log entry: "under `protocol`, `key` built to `value`", plus metadata that the leaf hash
 * covers but votes do not compare. The byte encoding is canonical (one encoding per entry), so
 * the leaf hash of an entry is a function of its fields. See docs/entry-format.md.
 *
 *   u8  version (= 1)
 *   u8  protocol length (1..64), protocol bytes (printable ASCII, no space)
 *   u16 key length (1..1024), key bytes
 *   u8  value length (1..64), value bytes (the digest votes compare, e.g. a NAR sha256)
 *   u16 metadata length, metadata bytes (opaque to the log)
 * Multi-byte integers are big-endian. Nothing may follow the metadata.
 */
export interface Entry {
  protocol: string;
  key: Buffer;
  value: Buffer;
  metadata: Buffer;
}

export const ENTRY_VERSION = 1;
export const MAX_PROTOCOL_LENGTH = 64;
export const MAX_KEY_LENGTH = 1024;
export const MAX_VALUE_LENGTH = 64;
/** Entry bundles (tlog-tiles) prefix each entry with a u16 length. */
export const MAX_ENTRY_SIZE = 65535;
const FIXED_OVERHEAD = 1 + 1 + 2 + 1 + 2;
export const MAX_METADATA_LENGTH = MAX_ENTRY_SIZE - FIXED_OVERHEAD - 1 - 1 - 1;

/** A protocol name: 1-64 printable ASCII characters (as a pattern for JSON schemas too). */
export const PROTOCOL_PATTERN = '^[\\x21-\\x7e]{1,64}$';
export const PROTOCOL_RE = new RegExp(PROTOCOL_PATTERN);

export function validateEntry(e: Entry): void {
  if (typeof e.protocol !== 'string' || !PROTOCOL_RE.test(e.protocol)) {
    throw new FormatError(
      `protocol must be 1-${MAX_PROTOCOL_LENGTH} printable ASCII characters without spaces`,
    );
  }
  if (e.key.length < 1 || e.key.length > MAX_KEY_LENGTH) {
    throw new FormatError(`key must be 1-${MAX_KEY_LENGTH} bytes, got ${e.key.length}`);
  }
  if (e.value.length < 1 || e.value.length > MAX_VALUE_LENGTH) {
    throw new FormatError(`value must be 1-${MAX_VALUE_LENGTH} bytes, got ${e.value.length}`);
  }
  const size = FIXED_OVERHEAD + e.protocol.length + e.key.length + e.value.length + e.metadata.length;
  if (size > MAX_ENTRY_SIZE) {
    throw new FormatError(`entry is ${size} bytes, the limit is ${MAX_ENTRY_SIZE} (metadata too long)`);
  }
}

// A UTF-16 surrogate without its partner: text that no UTF-8 byte sequence encodes.
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/**
 * The UTF-8 bytes of a key given as text (JSON, a URL, the command line). Text holding a lone
 * surrogate (JSON's `"\ud800"`) is refused: UTF-8 cannot encode it, and encoding it anyway would
 * write U+FFFD in its place, which is another key.
 */
export function keyFromText(text: string): Buffer {
  if (LONE_SURROGATE.test(text)) throw new FormatError('key is not valid UTF-8 (it holds a lone surrogate)');
  return Buffer.from(text, 'utf8');
}

/**
 * The canonical bytes of `e`. With `headroom`, the encoding starts that many (unset) bytes into the
 * buffer, so a caller can put a prefix in front of it without copying (the leaf hash's 0x00).
 */
export function encodeEntry(e: Entry, headroom = 0): Buffer {
  const out = Buffer.allocUnsafe(headroom + encodedEntrySize(e));
  encodeEntryInto(e, out, headroom);
  return out;
}

/** The length of `e`'s canonical bytes; validates `e`. */
export function encodedEntrySize(e: Entry): number {
  validateEntry(e);
  return FIXED_OVERHEAD + e.protocol.length + e.key.length + e.value.length + e.metadata.length;
}

/**
 * Writes the canonical bytes of a valid `e` (see encodedEntrySize) to out[at..], and returns the
 * offset of its value in `out`.
 */
export function encodeEntryInto(e: Entry, out: Buffer, at: number): number {
  const p = e.protocol.length;
  let o = at;
  out[o++] = ENTRY_VERSION;
  out[o++] = p;
  o += out.write(e.protocol, o, 'latin1');
  out.writeUInt16BE(e.key.length, o);
  o += 2;
  o += e.key.copy(out, o);
  out[o++] = e.value.length;
  const valueAt = o;
  o += e.value.copy(out, o);
  out.writeUInt16BE(e.metadata.length, o);
  o += 2;
  e.metadata.copy(out, o);
  return valueAt;
}

/** Where the fields of an encoded entry lie in it: each field's offset, and its length. */
export interface EntryLayout {
  protocolAt: number;
  protocolLength: number;
  keyAt: number;
  keyLength: number;
  valueAt: number;
  valueLength: number;
  metadataAt: number;
  metadataLength: number;
}

/**
 * The layout of the canonical encoding `b`, with every check of decodeEntry (FormatError, the same
 * messages) and no decoding: no string or buffer per field, for a reader of many entries that
 * needs only some of their bytes (a mirror's index paths).
 */
export function entryLayout(b: Uint8Array): EntryLayout {
  let o = 0;
  const need = (n: number) => {
    if (o + n > b.length) throw new FormatError('entry is truncated');
  };
  need(2);
  if (b[o] !== ENTRY_VERSION) throw new FormatError(`unknown entry version ${b[o]}`);
  o++;
  const protocolLength = b[o++];
  need(protocolLength);
  const protocolAt = o;
  o += protocolLength;
  need(2);
  const keyLength = (b[o] << 8) | b[o + 1];
  o += 2;
  need(keyLength);
  const keyAt = o;
  o += keyLength;
  need(1);
  const valueLength = b[o++];
  need(valueLength);
  const valueAt = o;
  o += valueLength;
  need(2);
  const metadataLength = (b[o] << 8) | b[o + 1];
  o += 2;
  need(metadataLength);
  const metadataAt = o;
  o += metadataLength;
  if (o !== b.length) throw new FormatError('entry has trailing bytes');
  // validateEntry's checks, in its order, on the bytes (latin1 maps each byte to one character)
  let printable = protocolLength >= 1 && protocolLength <= MAX_PROTOCOL_LENGTH;
  for (let i = protocolAt; printable && i < protocolAt + protocolLength; i++) {
    printable = b[i] >= 0x21 && b[i] <= 0x7e;
  }
  if (!printable) {
    throw new FormatError(
      `protocol must be 1-${MAX_PROTOCOL_LENGTH} printable ASCII characters without spaces`,
    );
  }
  if (keyLength < 1 || keyLength > MAX_KEY_LENGTH) {
    throw new FormatError(`key must be 1-${MAX_KEY_LENGTH} bytes, got ${keyLength}`);
  }
  if (valueLength < 1 || valueLength > MAX_VALUE_LENGTH) {
    throw new FormatError(`value must be 1-${MAX_VALUE_LENGTH} bytes, got ${valueLength}`);
  }
  if (b.length > MAX_ENTRY_SIZE) {
    throw new FormatError(`entry is ${b.length} bytes, the limit is ${MAX_ENTRY_SIZE} (metadata too long)`);
  }
  return {
    protocolAt,
    protocolLength,
    keyAt,
    keyLength,
    valueAt,
    valueLength,
    metadataAt,
    metadataLength,
  };
}

export function decodeEntry(data: Uint8Array): Entry {
  const b = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const l = entryLayout(b);
  return {
    protocol: b.toString('latin1', l.protocolAt, l.protocolAt + l.protocolLength),
    key: b.subarray(l.keyAt, l.keyAt + l.keyLength),
    value: b.subarray(l.valueAt, l.valueAt + l.valueLength),
    metadata: b.subarray(l.metadataAt, l.metadataAt + l.metadataLength),
  };
}

/** The sparse index path of (protocol, key): SHA-256(u8 len(protocol) || protocol || key). */
export function indexPath(protocol: string, key: Uint8Array): Buffer {
  return sha256(indexPathInput(protocol, key));
}

let pathScratch = Buffer.allocUnsafeSlow(256);
/** pathScratch's first bytes as the last input length asked for (keys of one protocol share one). */
let pathInput = pathScratch.subarray(0, 0);

/** pathScratch's first n bytes (pathInput, made anew only when n changes). */
function pathInputOfLength(n: number): Buffer {
  if (pathInput.length !== n) {
    if (pathScratch.length < n) pathScratch = Buffer.allocUnsafeSlow(Math.max(n, 2 * pathScratch.length));
    pathInput = pathScratch.subarray(0, n);
  }
  return pathInput;
}

/** The input of indexPath's hash, in a scratch buffer valid until the next call. */
function indexPathInput(protocol: string, key: Uint8Array): Buffer {
  const pathInput = pathInputOfLength(1 + protocol.length + key.length);
  pathInput[0] = protocol.length;
  pathInput.write(protocol, 1, 'latin1');
  pathInput.set(key, 1 + protocol.length);
  return pathInput;
}

/** Writes indexPath(protocol, key) to out[at..at+32). */
export function indexPathInto(protocol: string, key: Uint8Array, out: Uint8Array, at: number): void {
  sha256Into(indexPathInput(protocol, key), out, at);
}

/**
 * Writes the index path of the encoded entry `b`, whose layout is `l` (entryLayout), to
 * out[at..at+32): its hash input is copied from the encoding, with no protocol string.
 */
export function indexPathOfEncodedInto(b: Uint8Array, l: EntryLayout, out: Uint8Array, at: number): void {
  const pathInput = pathInputOfLength(1 + l.protocolLength + l.keyLength);
  // the protocol's length byte sits right before it in the encoding
  for (let i = 0; i <= l.protocolLength; i++) pathInput[i] = b[l.protocolAt - 1 + i];
  const k = 1 + l.protocolLength;
  for (let i = 0; i < l.keyLength; i++) pathInput[k + i] = b[l.keyAt + i];
  sha256Into(pathInput, out, at);
}

/** The sparse index value for an entry: u64 BE log index || RFC 6962 leaf hash of the entry. */
export function indexValue(logIndex: number, entryLeafHash: Uint8Array): Buffer {
  const v = Buffer.allocUnsafe(40);
  writeIndexValueIndex(logIndex, v, 0);
  v.set(entryLeafHash, 8);
  return v;
}

/** Writes an index value's first part, the u64 BE log index, to out[at..at+8). */
export function writeIndexValueIndex(logIndex: number, out: Buffer, at: number): void {
  // two 32-bit halves: no BigInt per entry (indexes stay below 2^53)
  out.writeUInt32BE(Math.floor(logIndex / 2 ** 32), at);
  out.writeUInt32BE(logIndex >>> 0, at + 4);
}

export function parseIndexValue(v: Uint8Array): { logIndex: number; leafHash: Buffer } {
  const b = Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  return { logIndex: indexValueLogIndex(v), leafHash: b.subarray(8, 40) };
}

/** The log index of an index value, with parseIndexValue's checks (read per lookup: no BigInt). */
export function indexValueLogIndex(v: Uint8Array): number {
  if (v.length !== 40) throw new FormatError(`index value must be 40 bytes, got ${v.length}`);
  const high = ((v[0] << 24) | (v[1] << 16) | (v[2] << 8) | v[3]) >>> 0;
  // above 2^53 - 1 exactly when the high 32 bits reach 2^21
  if (high >= 2 ** 21) throw new FormatError('log index out of range');
  return high * 2 ** 32 + (((v[4] << 24) | (v[5] << 16) | (v[6] << 8) | v[7]) >>> 0);
}
