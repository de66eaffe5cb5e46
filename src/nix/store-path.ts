/** Nix store paths: `/nix/store/<32 nix32 characters>-<name>`, validated as Nix 2.8 does. */
import { FormatError } from '../core/errors.js';
import { decodeNix32 } from './base32.js';

export const NIX_STORE_DIR = '/nix/store';
/** Characters of the hash part (20 bytes in nix32). */
export const STORE_PATH_HASH_LENGTH = 32;
export const STORE_PATH_HASH_BYTES = 20;
/** Nix refuses longer names so that a base name fits in 255 bytes with room for suffixes. */
export const STORE_PATH_NAME_MAX = 211;

export interface StorePath {
  /** The 32-character nix32 hash part: what a narinfo request is keyed by. */
  readonly hashPart: string;
  readonly name: string;
  /** `<hashPart>-<name>`. */
  readonly baseName: string;
  /** `/nix/store/<baseName>`. */
  readonly path: string;
}

const NAME_RE = /^[0-9A-Za-z+\-._?=]+$/;

/** Throws unless `name` is a store path name Nix accepts. */
export function checkStorePathName(name: string): void {
  if (name.length === 0) throw new FormatError('store path name is empty');
  if (name.length > STORE_PATH_NAME_MAX) {
    throw new FormatError(`store path name is longer than ${STORE_PATH_NAME_MAX} characters`);
  }
  if (!NAME_RE.test(name)) {
    throw new FormatError(`store path name ${JSON.stringify(name)} contains a character Nix does not allow`);
  }
}

/** Throws unless `hashPart` is 32 nix32 characters. */
export function checkHashPart(hashPart: string): void {
  if (hashPart.length !== STORE_PATH_HASH_LENGTH) {
    throw new FormatError(`store path hash part must be ${STORE_PATH_HASH_LENGTH} characters`);
  }
  decodeNix32(hashPart, STORE_PATH_HASH_BYTES);
}

/** Parses a base name `<hash>-<name>` (as narinfo References and Deriver carry them). */
export function parseStorePathBaseName(baseName: string): StorePath {
  if (baseName.length < STORE_PATH_HASH_LENGTH + 2 || baseName[STORE_PATH_HASH_LENGTH] !== '-') {
    throw new FormatError(`not a store path base name: ${JSON.stringify(baseName)}`);
  }
  const hashPart = baseName.slice(0, STORE_PATH_HASH_LENGTH);
  const name = baseName.slice(STORE_PATH_HASH_LENGTH + 1);
  try {
    checkHashPart(hashPart);
    checkStorePathName(name);
  } catch (err) {
    throw new FormatError(`bad store path ${JSON.stringify(baseName)}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return { hashPart, name, baseName, path: `${NIX_STORE_DIR}/${baseName}` };
}

/** Parses a full store path `/nix/store/<hash>-<name>` (no trailing slash, no sub-path). */
export function parseStorePath(path: string): StorePath {
  const prefix = NIX_STORE_DIR + '/';
  if (!path.startsWith(prefix)) {
    throw new FormatError(`store path ${JSON.stringify(path)} is not in ${NIX_STORE_DIR}`);
  }
  return parseStorePathBaseName(path.slice(prefix.length));
}

export function isStorePath(path: string): boolean {
  try {
    parseStorePath(path);
    return true;
  } catch {
    return false;
  }
}
