/**
 * The witness's key: `<state>/witness.key`, a signed-note signer key (Ed25519) that signs
 * tlog-cosignature v1 cosignatures. Created on first start with mode 0600; a key file that group
 * or others may read is refused, as it is no longer secret.
 */
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { StateError } from '../core/errors.js';
import { type Cosigner, cosignerFromSkey, generateKey, isValidKeyName } from '../core/note.js';

export const KEY_FILE = 'witness.key';
const FALLBACK_NAME = 'trustix-witness';

/** `<hostname>/witness` when the host name makes a valid key name, else `trustix-witness`. */
export function defaultWitnessName(): string {
  const h = hostname().toLowerCase();
  return /^[a-z0-9][a-z0-9.-]*$/.test(h) ? `${h}/witness` : FALLBACK_NAME;
}

/**
 * Loads the key of the state directory `dir`, or creates it (named `name`, default
 * defaultWitnessName()). A `name` that differs from an existing key's is an error. Another kind of
 * cosigner (an auditing mirror) names its own key file, default name and role in `opts`.
 */
export function loadOrCreateWitnessKey(
  dir: string,
  name?: string,
  opts: { file?: string; defaultName?: () => string; role?: string } = {},
): { cosigner: Cosigner; created: boolean; file: string } {
  const role = opts.role ?? 'witness';
  if (name !== undefined && !isValidKeyName(name)) {
    throw new StateError(`${role} name ${JSON.stringify(name)} is not a valid key name (no spaces, no "+")`);
  }
  const file = join(dir, opts.file ?? KEY_FILE);
  let created = false;
  if (!existsSync(file)) {
    const { skey } = generateKey(name ?? (opts.defaultName ?? defaultWitnessName)());
    try {
      writeFileSync(file, `${skey}\n`, { mode: 0o600, flag: 'wx' });
    } catch (err) {
      throw new StateError(`cannot write the ${role} key ${file}: ${(err as Error).message}`);
    }
    created = true;
  }
  const mode = statSync(file).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new StateError(
      `${file} is readable by others (mode ${mode.toString(8).padStart(4, '0')}); refusing to use it: chmod 600 ${file}`,
    );
  }
  let cosigner: Cosigner;
  try {
    cosigner = cosignerFromSkey(readFileSync(file, 'utf8').trim());
  } catch (err) {
    throw new StateError(`${file}: ${(err as Error).message}`);
  }
  if (name !== undefined && name !== cosigner.name) {
    throw new StateError(`--name ${name}: the ${role} key in ${file} is named ${cosigner.name}`);
  }
  return { cosigner, created, file };
}
