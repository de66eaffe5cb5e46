/**
 * C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint) bodies:
 *   <origin>\n<tree size>\n<base64 root hash>\n[<extension line>\n]...
 * Trustix puts one extension line first, `map <base64 map root>`, so the log's signature also binds the
 * root of the sparse index at the same size.
 */
import { decodeBase64Strict } from './bytes.js';
import { FormatError, VerificationError } from './errors.js';
import { HASH_SIZE } from './hash.js';
import { type NoteSigner, type NoteVerifier, openNote, signNote } from './note.js';

export interface Checkpoint {
  origin: string;
  size: number;
  rootHash: Buffer;
  mapRoot?: Buffer;
  /** Every extension line other than the map line, verbatim and in order. */
  extensions: string[];
}

const MAP_PREFIX = 'map ';
const SIZE_RE = /^(?:0|[1-9][0-9]*)$/;

/** Non-empty, and nothing a note forbids: no control character (so no newline), no lone surrogate. */
function checkLine(line: string, what: string): void {
  if (line.length === 0) throw new FormatError(`checkpoint ${what} is empty`);
  for (let i = 0; i < line.length; i++) {
    const c = line.charCodeAt(i);
    if (c < 0x20) throw new FormatError(`checkpoint ${what} contains a control character`);
    if (c >= 0xd800 && c <= 0xdfff) {
      const d = line.charCodeAt(i + 1);
      if (c >= 0xdc00 || !(d >= 0xdc00 && d <= 0xdfff)) {
        throw new FormatError(`checkpoint ${what} is not valid UTF-8`);
      }
      i++;
    }
  }
}

function checkHash(h: Uint8Array | undefined, what: string): void {
  if (!(h instanceof Uint8Array) || h.length !== HASH_SIZE) {
    throw new FormatError(`checkpoint ${what} must be ${HASH_SIZE} bytes`);
  }
}

/** The checkpoint's note text (ends with "\n"). The map line, if any, is the first extension line. */
export function formatCheckpoint(cp: Checkpoint): string {
  checkLine(cp.origin, 'origin');
  if (!Number.isSafeInteger(cp.size) || cp.size < 0) {
    throw new FormatError(`checkpoint size must be an integer in [0, 2^53-1], got ${cp.size}`);
  }
  checkHash(cp.rootHash, 'root hash');
  let out = `${cp.origin}\n${cp.size}\n${Buffer.from(cp.rootHash).toString('base64')}\n`;
  if (cp.mapRoot !== undefined) {
    checkHash(cp.mapRoot, 'map root');
    out += `${MAP_PREFIX}${Buffer.from(cp.mapRoot).toString('base64')}\n`;
  }
  for (const ext of cp.extensions) {
    checkLine(ext, 'extension line');
    if (ext.startsWith(MAP_PREFIX))
      throw new FormatError('checkpoint extension lines must not start with "map "');
    out += `${ext}\n`;
  }
  return out;
}

/**
 * Parses a checkpoint body strictly: at least three lines, all non-empty and newline-terminated; size in
 * decimal without leading zeros and at most 2^53-1; a 32-byte root hash in canonical base64. A line
 * starting with "map " is the map root: only as the first extension line, once, 32 bytes. So
 * `formatCheckpoint(parseCheckpoint(t)) === t` for every accepted `t`.
 */
export function parseCheckpoint(text: string): Checkpoint {
  if (text.length === 0 || text.charCodeAt(text.length - 1) !== 0x0a) {
    throw new FormatError('checkpoint must end with a newline');
  }
  const lines = text.slice(0, -1).split('\n');
  if (lines.length < 3) throw new FormatError('checkpoint needs an origin, a size and a root hash');
  const [origin, sizeText, rootText] = lines;
  checkLine(origin, 'origin');
  if (!SIZE_RE.test(sizeText))
    throw new FormatError(`checkpoint size ${JSON.stringify(sizeText)} is not decimal`);
  const size = Number(sizeText);
  if (!Number.isSafeInteger(size)) throw new FormatError(`checkpoint size ${sizeText} exceeds 2^53-1`);
  const rootHash = decodeBase64Strict(rootText);
  if (rootHash === undefined || rootHash.length !== HASH_SIZE) {
    throw new FormatError('checkpoint root hash must be 32 bytes in base64');
  }
  const cp: Checkpoint = { origin, size, rootHash, extensions: [] };
  for (let i = 3; i < lines.length; i++) {
    const line = lines[i];
    checkLine(line, 'extension line');
    if (!line.startsWith(MAP_PREFIX)) {
      cp.extensions.push(line);
      continue;
    }
    if (i !== 3) {
      throw new FormatError(
        cp.mapRoot === undefined
          ? 'checkpoint map line must be the first extension line'
          : 'duplicate map line',
      );
    }
    const mapRoot = decodeBase64Strict(line.slice(MAP_PREFIX.length));
    if (mapRoot === undefined || mapRoot.length !== HASH_SIZE) {
      throw new FormatError('checkpoint map root must be 32 bytes in base64');
    }
    cp.mapRoot = mapRoot;
  }
  return cp;
}

/** The full signed note of `cp`. */
export function signCheckpoint(cp: Checkpoint, signer: NoteSigner): string {
  return signNote(formatCheckpoint(cp), [signer]);
}

/**
 * Verifies a signed checkpoint: a valid signature by `verifier` (other signers are ignored, see openNote),
 * a well-formed body, and an origin equal to `opts.origin` or else to the verifier's name. Failures are
 * VerificationErrors: 'note.*' from openNote, 'checkpoint.malformed', 'checkpoint.origin-mismatch'.
 */
export function openCheckpoint(
  note: string | Uint8Array,
  verifier: NoteVerifier,
  opts?: { origin?: string },
): { checkpoint: Checkpoint; note: string } {
  const { text } = openNote(note, [verifier]);
  let checkpoint: Checkpoint;
  try {
    checkpoint = parseCheckpoint(text);
  } catch (err) {
    throw new VerificationError('checkpoint.malformed', `malformed checkpoint: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const origin = opts?.origin ?? verifier.name;
  if (checkpoint.origin !== origin) {
    throw new VerificationError(
      'checkpoint.origin-mismatch',
      `checkpoint origin ${JSON.stringify(checkpoint.origin)} is not ${JSON.stringify(origin)}`,
    );
  }
  return { checkpoint, note: typeof note === 'string' ? note : Buffer.from(note).toString('utf8') };
}
