/**
 * The logs a witness follows, from `--log VKEY` options and a TOML file (docs/witness.md):
 *
 *   [[log]]
 *   origin = "example.com/log"          # optional: the name of the (first) key
 *   vkey = "example.com/log+1234abcd+AQ..."   # or an array of keys, all trusted for the origin
 *
 * A log's origin defaults to its key's name, as tlog-checkpoint asks a log's key name to match the
 * origin line. Keys given for one origin in several places are merged.
 */
import { loadTomlFile, nonEmptyString, onlyFields, parseTomlTable, tableAt } from '../config/toml.js';
import { FormatError } from '../core/errors.js';
import { type NoteVerifier, verifierFromVkey } from '../core/note.js';
import type { WitnessedLog } from './protocol.js';

export interface LogDeclaration {
  origin?: string;
  vkeys: string[];
  /** Where it came from, for messages. */
  where: string;
}

export function parseWitnessConfig(text: string): LogDeclaration[] {
  const doc = parseTomlTable(text);
  onlyFields(doc, ['log'], 'config');
  if (doc.log === undefined) return [];
  if (!Array.isArray(doc.log)) throw new FormatError('config: log must be an array of tables ([[log]])');
  return doc.log.map((l, i): LogDeclaration => {
    const where = `log[${i}]`;
    const o = tableAt(l, where);
    onlyFields(o, ['origin', 'vkey'], where);
    const vkeys = Array.isArray(o.vkey)
      ? o.vkey.map((k, j) => nonEmptyString(k, `${where}.vkey[${j}]`))
      : [nonEmptyString(o.vkey, `${where}.vkey`)];
    if (vkeys.length === 0) throw new FormatError(`${where}.vkey: needs at least one key`);
    return {
      ...(o.origin === undefined ? {} : { origin: nonEmptyString(o.origin, `${where}.origin`) }),
      vkeys,
      where,
    };
  });
}

export function loadWitnessConfig(file: string): LogDeclaration[] {
  return loadTomlFile(file, 'config', (text) => parseWitnessConfig(text));
}

/** Checks every key and merges declarations by origin. A FormatError names the declaration at fault. */
export function witnessedLogs(decls: readonly LogDeclaration[]): Map<string, WitnessedLog> {
  const byOrigin = new Map<string, NoteVerifier[]>();
  for (const d of decls) {
    const verifiers = d.vkeys.map((k, i) => {
      try {
        return verifierFromVkey(k.trim());
      } catch (err) {
        throw new FormatError(
          `${d.where}${d.vkeys.length > 1 ? `.vkey[${i}]` : ''}: ${(err as Error).message}`,
        );
      }
    });
    const origin = d.origin ?? verifiers[0].name;
    // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what is refused
    if (/[\u0000-\u001f]/.test(origin)) {
      throw new FormatError(`${d.where}.origin: ${JSON.stringify(origin)} is not a valid origin line`);
    }
    const list = byOrigin.get(origin) ?? [];
    for (const v of verifiers) {
      const same = list.find((x) => x.name === v.name && x.keyId === v.keyId);
      if (same === undefined) list.push(v);
      else if (same.vkey !== v.vkey) {
        throw new FormatError(`${d.where}: two different keys named ${v.name} share the key id of ${v.vkey}`);
      }
    }
    byOrigin.set(origin, list);
  }
  return new Map([...byOrigin].map(([origin, verifiers]) => [origin, { origin, verifiers }]));
}
