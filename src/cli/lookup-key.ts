/** The KEY argument of `lookup`, `decide` and `proof lookup`. */
import { lstatSync } from 'node:fs';
import { toStorePath } from '../nix/nix-query.js';
import { checkHashPart, parseStorePath } from '../nix/store-path.js';
import { CliError, EXIT } from './output.js';

export const KEY_ARG_HELP =
  'the key; under the nix protocol also a store path (/nix/store/<hash>-<name>) or a link to one (./result), which stands for its hash part';

/**
 * The key to look up for a command-line argument. Under the nix protocol a key is a store path's
 * hash part, so a store path (`/nix/store/<hash>-<name>`) or a link to one (`./result`) stands for
 * its hash part; a bare hash part, or any key of another protocol, is taken as it is.
 */
export async function lookupKeyArg(protocol: string, arg: string): Promise<string> {
  if (protocol !== 'nix') return arg;
  try {
    checkHashPart(arg);
    return arg;
  } catch {
    // not a hash part: a path, or a link to one?
  }
  // a bare name is a path only if it is a link (`result`); "." and ".." stay keys
  if (!arg.includes('/') && !lstatSync(arg, { throwIfNoEntry: false })?.isSymbolicLink()) return arg;
  try {
    return parseStorePath(await toStorePath(arg)).hashPart;
  } catch (err) {
    throw new CliError((err as Error).message, EXIT.usage);
  }
}
