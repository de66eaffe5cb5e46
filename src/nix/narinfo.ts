/**
 * Narinfo files of a Nix binary cache: strict parsing, writing in Nix 2.8's exact layout, and the
 * fingerprint that `Sig:` lines sign.
 */
import { FormatError } from '../core/errors.js';
import { decodeNix32, encodeNix32 } from './base32.js';
import { NIX_STORE_DIR, parseStorePath, parseStorePathBaseName } from './store-path.js';

export interface NarInfo {
  /** Full store path, `/nix/store/<hash>-<name>`. */
  storePath: string;
  /** Where the (possibly compressed) NAR is, relative to the cache root. */
  url: string;
  /** `none`, `xz`, `bzip2`, `zstd`... Nix treats a missing field as `bzip2`; we require it. */
  compression: string;
  /** SHA-256 of the file at `url` (32 bytes), when given. */
  fileHash?: Buffer;
  fileSize?: number;
  /** SHA-256 of the uncompressed NAR (32 bytes). */
  narHash: Buffer;
  narSize: number;
  /** Base names (`<hash>-<name>`) of the references, in the file's order. */
  references: string[];
  /** Base name of the deriver, or Nix's `unknown-deriver` placeholder, when given. */
  deriver?: string;
  system?: string;
  /** `Sig:` values, `<key name>:<base64 signature>`, in order. */
  sigs: string[];
  /** Content address (`CA:`), kept as written. */
  ca?: string;
  /** Fields this code does not know, in their order; written after the known ones. */
  extra: Array<[key: string, value: string]>;
}

const DECIMAL = /^(0|[1-9][0-9]*)$/;

function parseSize(field: string, value: string): number {
  if (!DECIMAL.test(value)) throw new FormatError(`narinfo: ${field} is not a decimal number: ${value}`);
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new FormatError(`narinfo: ${field} is too large: ${value}`);
  return n;
}

function parseSha256(field: string, value: string): Buffer {
  if (!value.startsWith('sha256:')) throw new FormatError(`narinfo: ${field} must be sha256:<nix32>`);
  try {
    return decodeNix32(value.slice(7), 32);
  } catch (err) {
    throw new FormatError(`narinfo: ${field}: ${(err as Error).message}`, { cause: err });
  }
}

export function formatSha256(hash: Uint8Array): string {
  return 'sha256:' + encodeNix32(hash);
}

const SINGLE = new Set([
  'StorePath',
  'URL',
  'Compression',
  'FileHash',
  'FileSize',
  'NarHash',
  'NarSize',
  'References',
  'Deriver',
  'System',
  'CA',
]);

/**
 * Parses a narinfo. Every line must be `Key: value\n` (the last one too); known fields may appear
 * once (Sig any number of times); StorePath, URL, Compression, NarHash and NarSize are required;
 * values are validated. Unknown fields are kept in order in `extra`.
 */
export function parseNarInfo(text: string | Uint8Array): NarInfo {
  const s = typeof text === 'string' ? text : Buffer.from(text).toString('utf8');
  if (typeof text !== 'string' && !Buffer.from(s, 'utf8').equals(Buffer.from(text))) {
    throw new FormatError('narinfo: not valid UTF-8');
  }
  if (s.length === 0) throw new FormatError('narinfo: empty');
  if (!s.endsWith('\n')) throw new FormatError('narinfo: last line does not end in a newline');
  const lines = s.slice(0, -1).split('\n');
  const seen = new Set<string>();
  const info: Partial<NarInfo> & { sigs: string[]; extra: Array<[string, string]> } = { sigs: [], extra: [] };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const colon = line.indexOf(': ');
    // `References: ` with no references is the one value that may be empty.
    if (colon <= 0) throw new FormatError(`narinfo: line ${i + 1} is not "Key: value"`);
    const key = line.slice(0, colon);
    const value = line.slice(colon + 2);
    if (key.includes(':') || /\s/.test(key)) throw new FormatError(`narinfo: line ${i + 1} has a bad key`);
    if (line.includes('\r')) throw new FormatError(`narinfo: line ${i + 1} contains a carriage return`);
    if (SINGLE.has(key)) {
      if (seen.has(key)) throw new FormatError(`narinfo: ${key} appears more than once`);
      seen.add(key);
    }
    switch (key) {
      case 'StorePath':
        info.storePath = parseStorePath(value).path;
        break;
      case 'URL':
        if (value.length === 0) throw new FormatError('narinfo: URL is empty');
        info.url = value;
        break;
      case 'Compression':
        if (value.length === 0) throw new FormatError('narinfo: Compression is empty');
        info.compression = value;
        break;
      case 'FileHash':
        info.fileHash = parseSha256(key, value);
        break;
      case 'FileSize':
        info.fileSize = parseSize(key, value);
        break;
      case 'NarHash':
        info.narHash = parseSha256(key, value);
        break;
      case 'NarSize':
        info.narSize = parseSize(key, value);
        if (info.narSize === 0) throw new FormatError('narinfo: NarSize is 0');
        break;
      case 'References':
        info.references = value === '' ? [] : value.split(' ');
        for (const r of info.references) parseStorePathBaseName(r);
        break;
      case 'Deriver':
        if (value !== 'unknown-deriver') parseStorePathBaseName(value);
        info.deriver = value;
        break;
      case 'System':
        info.system = value;
        break;
      case 'Sig':
        if (value.indexOf(':') <= 0) throw new FormatError('narinfo: Sig is not "<key name>:<signature>"');
        info.sigs.push(value);
        break;
      case 'CA':
        info.ca = value;
        break;
      default:
        info.extra.push([key, value]);
    }
  }
  for (const field of ['StorePath', 'URL', 'Compression', 'NarHash', 'NarSize'] as const) {
    if (!seen.has(field)) throw new FormatError(`narinfo: missing required field ${field}`);
  }
  info.references ??= [];
  return info as NarInfo;
}

/**
 * Writes a narinfo the way Nix 2.8 does (field order, `sha256:<nix32>` hashes, every line ending
 * in `\n`, `References: ` even when empty), then any unknown fields in order. A narinfo written by
 * Nix therefore comes back byte for byte from `formatNarInfo(parseNarInfo(text))`.
 */
export function formatNarInfo(info: NarInfo): string {
  let out = `StorePath: ${info.storePath}\nURL: ${info.url}\nCompression: ${info.compression}\n`;
  if (info.fileHash !== undefined) out += `FileHash: ${formatSha256(info.fileHash)}\n`;
  if (info.fileSize !== undefined) out += `FileSize: ${info.fileSize}\n`;
  out += `NarHash: ${formatSha256(info.narHash)}\nNarSize: ${info.narSize}\n`;
  out += `References: ${info.references.join(' ')}\n`;
  if (info.deriver !== undefined) out += `Deriver: ${info.deriver}\n`;
  if (info.system !== undefined) out += `System: ${info.system}\n`;
  for (const sig of info.sigs) out += `Sig: ${sig}\n`;
  if (info.ca !== undefined) out += `CA: ${info.ca}\n`;
  for (const [k, v] of info.extra) out += `${k}: ${v}\n`;
  return out;
}

/**
 * What a narinfo signature signs:
 * `1;<store path>;sha256:<nix32 NAR hash>;<NAR size>;<full reference paths, sorted, joined by ,>`.
 * Nix keeps references as a sorted set, so order and duplicates in the file do not matter.
 */
export function narInfoFingerprint(
  info: Pick<NarInfo, 'storePath' | 'narHash' | 'narSize' | 'references'>,
): string {
  if (info.narHash.length !== 32) throw new FormatError('narinfo: NarHash must be 32 bytes');
  if (!Number.isSafeInteger(info.narSize) || info.narSize <= 0) {
    throw new FormatError('narinfo: NarSize must be a positive integer');
  }
  const refs = [...new Set(info.references)].sort().map((r) => `${NIX_STORE_DIR}/${r}`);
  return `1;${info.storePath};${formatSha256(info.narHash)};${info.narSize};${refs.join(',')}`;
}
