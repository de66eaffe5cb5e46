/** Small byte helpers shared by the core. All values are Node Buffers (Uint8Array subclass). */

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  return Buffer.compare(a, b) === 0;
}

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict standard base64 (padded, no whitespace). Node's decoder is lenient, so check first. */
export function decodeBase64Strict(text: string): Buffer | undefined {
  if (!BASE64_RE.test(text)) return undefined;
  const out = Buffer.from(text, 'base64');
  // Reject non-canonical encodings (non-zero padding bits) by round-tripping.
  if (out.toString('base64') !== text) return undefined;
  return out;
}

export function toBase64(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');
}

export function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

export function fromHexStrict(text: string): Buffer | undefined {
  if (text.length % 2 !== 0 || !/^[0-9a-f]*$/.test(text)) return undefined;
  return Buffer.from(text, 'hex');
}
