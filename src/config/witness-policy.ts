/** Reading a C2SP tlog-policy file (core/policy.ts) from disk, for clients and nodes alike. */
import { readFileSync } from 'node:fs';
import { FormatError } from '../core/errors.js';
import { parsePolicy, type WitnessPolicy } from '../core/policy.js';

/**
 * Reads a C2SP tlog-policy file (core/policy.ts). FormatError naming `where`, the file and the
 * line when it cannot be read or is not a valid policy.
 */
export function loadWitnessPolicy(path: string, where = 'witness policy'): WitnessPolicy {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    throw new FormatError(`${where}: cannot read ${path}: ${(err as Error).message}`);
  }
  return parsePolicy(bytes, `${where}: ${path}`);
}
