/**
 * Nix's base32 ("nix32"): its own alphabet (no e, o, u, t) and its own bit order. Nix reads the
 * bytes from the end, so a nix32 string is not RFC 4648 base32 of the same bytes.
 */
import { FormatError } from '../core/errors.js';

export const NIX32_ALPHABET = '0123456789abcdfghijklmnpqrsvwxyz';

const DIGIT = new Int8Array(128).fill(-1);
for (let i = 0; i < NIX32_ALPHABET.length; i++) DIGIT[NIX32_ALPHABET.charCodeAt(i)] = i;

/** Characters needed for `byteLength` bytes: 52 for a sha256, 32 for a store path hash. */
export function nix32Length(byteLength: number): number {
  return Math.ceil((byteLength * 8) / 5);
}

export function encodeNix32(bytes: Uint8Array): string {
  const size = bytes.length;
  const len = nix32Length(size);
  let out = '';
  for (let n = len - 1; n >= 0; n--) {
    const b = n * 5;
    const i = b >>> 3;
    const j = b & 7;
    const c = (bytes[i] >>> j) | (i + 1 < size ? bytes[i + 1] << (8 - j) : 0);
    out += NIX32_ALPHABET[c & 0x1f];
  }
  return out;
}

/**
 * Decodes strictly: only alphabet characters, a length that some byte count encodes to (and, when
 * given, exactly that count), and no set bits beyond the last byte, so every accepted string is
 * the one `encodeNix32` writes for its bytes.
 */
export function decodeNix32(text: string, byteLength?: number): Buffer {
  const len = text.length;
  const size = byteLength ?? Math.floor((len * 5) / 8);
  if (nix32Length(size) !== len) {
    throw new FormatError(
      byteLength === undefined
        ? `nix32: ${len} characters is not a valid length`
        : `nix32: expected ${nix32Length(byteLength)} characters for ${byteLength} bytes, got ${len}`,
    );
  }
  const out = Buffer.alloc(size);
  for (let n = 0; n < len; n++) {
    const code = text.charCodeAt(len - n - 1);
    const digit = code < 128 ? DIGIT[code] : -1;
    if (digit < 0) throw new FormatError(`nix32: invalid character ${JSON.stringify(text[len - n - 1])}`);
    const b = n * 5;
    const i = b >>> 3;
    const j = b & 7;
    out[i] |= (digit << j) & 0xff;
    const carry = digit >>> (8 - j);
    if (i + 1 < size) out[i + 1] |= carry;
    else if (carry !== 0) throw new FormatError('nix32: bits set beyond the last byte');
  }
  return out;
}

/** True when `text` is well-formed nix32 of exactly `byteLength` bytes. */
export function isNix32(text: string, byteLength: number): boolean {
  if (text.length !== nix32Length(byteLength)) return false;
  try {
    decodeNix32(text, byteLength);
    return true;
  } catch {
    return false;
  }
}
