/**
 * The part of a C2SP tlog-checkpoint a witness reads: origin, tree size and root hash. Extension
 * lines are opaque here (only non-empty), unlike core/checkpoint.ts, which also reads Trustix's
 * `map` line strictly: a witness cosigns any log's checkpoints, whatever its extension lines say.
 */
import { decodeBase64Strict } from '../core/bytes.js';
import { FormatError } from '../core/errors.js';
import { HASH_SIZE } from '../core/hash.js';

export interface CheckpointHead {
  origin: string;
  size: number;
  rootHash: Buffer;
}

const SIZE_RE = /^(?:0|[1-9][0-9]*)$/;

/** `text` is a note's text (no control characters but newlines, ends with one: see parseNote). */
export function parseCheckpointHead(text: string): CheckpointHead {
  const lines = text.slice(0, -1).split('\n');
  if (lines.length < 3) throw new FormatError('checkpoint needs an origin, a size and a root hash');
  const i = lines.indexOf('');
  if (i >= 0) throw new FormatError(`checkpoint line ${i + 1} is empty`);
  const [origin, sizeText, rootText] = lines;
  if (!SIZE_RE.test(sizeText))
    throw new FormatError(`checkpoint size ${JSON.stringify(sizeText)} is not decimal`);
  const size = Number(sizeText);
  if (!Number.isSafeInteger(size)) throw new FormatError(`checkpoint size ${sizeText} exceeds 2^53-1`);
  const rootHash = decodeBase64Strict(rootText);
  if (rootHash?.length !== HASH_SIZE)
    throw new FormatError('checkpoint root hash must be 32 bytes in base64');
  return { origin, size, rootHash };
}
