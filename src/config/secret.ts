/**
 * Reading a secret file (a log's signing key, a writer key or token, the cache proxy's Nix signing
 * key). As ssh refuses a private key that others can read, a secret file that grants its group or
 * other users any access is refused, with the command that fixes it: a key that others could read
 * may already be someone else's, and a silent start would hide that.
 */
import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { TrustixError } from '../core/errors.js';

/** A secret file that its group or other users may read or write. */
export class InsecureSecretError extends TrustixError {
  constructor(
    readonly file: string,
    readonly mode: number,
    what: string,
  ) {
    super(
      'INSECURE_SECRET',
      `${what} ${file} is accessible by other users (mode ${(mode & 0o777).toString(8).padStart(4, '0')}); ` +
        `a secret must be readable by its owner only; fix it with: chmod 600 ${file}`,
    );
  }
}

/**
 * The text of secret file `file` (trimmed), after checking on the opened file that no group or
 * other permission bit is set. `what` names the secret in the error (e.g. "signing key").
 * Errors of the file system (ENOENT...) are thrown as they are.
 */
export function readSecretFile(file: string, what: string): string {
  const fd = openSync(file, 'r');
  try {
    // Windows has no such bits (Node reports 0o666 for every writable file)
    const { mode } = fstatSync(fd);
    if (process.platform !== 'win32' && (mode & 0o077) !== 0) throw new InsecureSecretError(file, mode, what);
    return readFileSync(fd, 'utf8').trim();
  } finally {
    closeSync(fd);
  }
}
