/** Small byte helpers shared by the core. All values are Node Buffers (Uint8Array subclass). */

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  return Buffer.compare(a, b) === 0;
}

/**
 * Strict standard base64 (padded, no whitespace, zero padding bits). Node's decoder skips
 * anything it does not understand, so the canonical re-encoding must equal the input: that one
 * comparison rejects stray characters, missing padding, base64url and non-zero padding bits.
 */
export function decodeBase64Strict(text: string): Buffer | undefined {
  if (text.length % 4 !== 0) return undefined;
  const out = Buffer.from(text, 'base64');
  if (out.toString('base64') !== text) return undefined;
  return out;
}

/** A Buffer is encoded as it is: a view made for it would be one more object per key, entry or hash. */
export function toBase64(b: Uint8Array): string {
  return (Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength)).toString('base64');
}

export function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

export function fromHexStrict(text: string): Buffer | undefined {
  if (text.length % 2 !== 0 || !/^[0-9a-f]*$/.test(text)) return undefined;
  return Buffer.from(text, 'hex');
}
