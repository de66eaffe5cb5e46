/**
 * What every TOML configuration of ours shares (the trust config, the cache proxy's, the publish
 * config): one-line syntax errors, unknown fields refused by name, and errors that name the file.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { FormatError } from '../core/errors.js';

export type Table = Record<string, unknown>;

/** The document's top table; a syntax error is a FormatError naming its line. */
export function parseTomlTable(text: string): Table {
  try {
    return parseToml(text) as Table;
  } catch (err) {
    if (err instanceof TomlError) {
      throw new FormatError(`TOML: ${err.message.split('\n')[0]} (line ${err.line})`);
    }
    throw err;
  }
}

export function tableAt(x: unknown, where: string): Table {
  if (typeof x !== 'object' || x === null || Array.isArray(x))
    throw new FormatError(`${where}: must be a table`);
  return x as Table;
}

/** Refuses fields outside `allowed`; `where` prefixes the message unless the table is the top one. */
export function onlyFields(o: Table, allowed: readonly string[], where?: string): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) {
      throw new FormatError(`${where === undefined ? '' : `${where}: `}unknown field ${JSON.stringify(k)}`);
    }
  }
}

export function nonEmptyString(x: unknown, where: string): string {
  if (typeof x !== 'string' || x === '') throw new FormatError(`${where}: must be a non-empty string`);
  return x;
}

/**
 * Reads `file` and parses it with `parse(text, directory of the file)`; errors say which file
 * (`cannot read <label> FILE: ...`, `<label> FILE: ...`).
 */
export function loadTomlFile<T>(file: string, label: string, parse: (text: string, dir: string) => T): T {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new FormatError(`cannot read ${label} ${file}: ${(err as Error).message}`);
  }
  try {
    return parse(text, dirname(resolve(file)));
  } catch (err) {
    if (err instanceof FormatError) throw new FormatError(`${label} ${file}: ${err.message}`);
    throw err;
  }
}
