/**
 * The client's trust configuration (TOML, docs/deciding.md): the logs a user follows and, per
 * protocol, how answers become a decision.
 */
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { loadTomlFile, nonEmptyString, onlyFields, parseTomlTable, tableAt } from '../config/toml.js';
import { loadWitnessPolicy } from '../config/witness-policy.js';
import { toHex } from '../core/bytes.js';
import { FormatError } from '../core/errors.js';
import { sha256 } from '../core/hash.js';
import { verifierFromVkey } from '../core/note.js';
import { policyCoversLog, type WitnessPolicy } from '../core/policy.js';
import { type Base, chain, type Procedure, percentage, trustLog, weighted } from './procedures.js';
import { parseShare, parseWeight, type Rat } from './rational.js';
import { ScriptProcedure } from './sandbox.js';

export interface LogConfig {
  name: string;
  /** A remote log's URL prefix, or... */
  url?: string;
  /** ...a local log directory. */
  state?: string;
  /**
   * URL prefixes of mirrors serving a copy of the log (`trustix mirror`), asked in order when the
   * log itself cannot be reached; their answers must verify against `vkey` all the same.
   */
  mirrors?: string[];
  vkey: string;
  weight: Rat;
  weightText: string;
  /** The C2SP tlog-policy its checkpoints' cosignatures must meet (its own, else the global one). */
  witnessPolicy?: WitnessPolicy;
  /** The file `witnessPolicy` was read from. */
  witnessPolicyFile?: string;
}

export type ProcedureSpec =
  | { type: 'percentage'; min: Rat; of: Base }
  | { type: 'weighted'; min?: Rat; minWeight?: Rat; of: Base }
  | { type: 'log'; log: string }
  | { type: 'chain'; steps: ProcedureSpec[] }
  | { type: 'lua' | 'js'; source: string; name: string; timeoutMs: number; memoryMb: number };

export interface DecideConfig {
  logs: LogConfig[];
  /** Per protocol; `default` for the others. */
  procedures: Map<string, ProcedureSpec>;
  /** Deadline for one log's answer, in ms. */
  timeoutMs: number;
  trustDir?: string;
  protocol: string;
}

const DEFAULT_PROCEDURE: ProcedureSpec = {
  type: 'percentage',
  min: parseShare('2/3', 'default'),
  of: 'configured',
};

function positive(x: unknown, where: string, dflt: number): number {
  if (x === undefined) return dflt;
  const n = typeof x === 'bigint' ? Number(x) : x;
  if (typeof n !== 'number' || !Number.isFinite(n) || n <= 0)
    throw new FormatError(`${where}: must be a positive number`);
  return n;
}

function base(x: unknown, where: string): Base {
  if (x === undefined) return 'configured';
  if (x !== 'configured' && x !== 'responding')
    throw new FormatError(`${where}: must be "configured" or "responding"`);
  return x;
}

/**
 * One `[procedure.*]` table. `dir` resolves script files; undefined (a procedure read from an
 * evidence bundle) allows inline sources only.
 */
function parseProcedure(
  x: unknown,
  where: string,
  dir: string | undefined,
  logs: ReadonlySet<string>,
  depth = 0,
): ProcedureSpec {
  if (depth > 8) throw new FormatError(`${where}: chains nested too deeply`);
  const o = tableAt(x, where);
  switch (o.type) {
    case 'percentage':
      onlyFields(o, ['type', 'min', 'of'], where);
      return { type: 'percentage', min: parseShare(o.min, `${where}.min`), of: base(o.of, `${where}.of`) };
    case 'weighted': {
      onlyFields(o, ['type', 'min', 'min_weight', 'of'], where);
      if ((o.min === undefined) === (o.min_weight === undefined)) {
        throw new FormatError(`${where}: give either min (a share of the total weight) or min_weight`);
      }
      return {
        type: 'weighted',
        ...(o.min !== undefined ? { min: parseShare(o.min, `${where}.min`) } : {}),
        ...(o.min_weight !== undefined
          ? { minWeight: parseWeight(o.min_weight, `${where}.min_weight`) }
          : {}),
        of: base(o.of, `${where}.of`),
      };
    }
    case 'log': {
      onlyFields(o, ['type', 'log'], where);
      const log = nonEmptyString(o.log, `${where}.log`);
      if (!logs.has(log)) throw new FormatError(`${where}.log: no log named ${JSON.stringify(log)}`);
      return { type: 'log', log };
    }
    case 'chain': {
      onlyFields(o, ['type', 'steps'], where);
      if (!Array.isArray(o.steps) || o.steps.length === 0)
        throw new FormatError(`${where}.steps: must be a non-empty array`);
      return {
        type: 'chain',
        steps: o.steps.map((s, i) => parseProcedure(s, `${where}.steps[${i}]`, dir, logs, depth + 1)),
      };
    }
    case 'lua':
    case 'js': {
      onlyFields(o, ['type', 'file', 'source', 'sha256', 'timeout_ms', 'memory_mb'], where);
      if ((o.file === undefined) === (o.source === undefined)) {
        throw new FormatError(`${where}: give either file or source`);
      }
      let source: string;
      let name: string;
      if (o.file !== undefined) {
        if (dir === undefined) throw new FormatError(`${where}: the script source must be inline`);
        const f = nonEmptyString(o.file, `${where}.file`);
        const path = isAbsolute(f) ? f : resolve(dir, f);
        try {
          source = readFileSync(path, 'utf8');
        } catch (err) {
          throw new FormatError(`${where}.file: cannot read ${path}: ${(err as Error).message}`);
        }
        name = f;
      } else {
        source = nonEmptyString(o.source, `${where}.source`);
        name = `${where}.source`;
      }
      if (o.sha256 !== undefined) {
        const want = nonEmptyString(o.sha256, `${where}.sha256`).toLowerCase();
        const got = scriptSha256(source);
        if (want !== got) {
          throw new FormatError(`${where}.sha256: the script's SHA-256 is ${got}, not ${want}`);
        }
      }
      return {
        type: o.type,
        source,
        name,
        timeoutMs: positive(o.timeout_ms, `${where}.timeout_ms`, 50),
        memoryMb: positive(o.memory_mb, `${where}.memory_mb`, 64),
      };
    }
    default:
      throw new FormatError(
        `${where}.type: must be one of percentage, weighted, log, chain, lua, js (got ${JSON.stringify(o.type)})`,
      );
  }
}

/**
 * Parses a trust configuration. Relative file names (scripts, local logs) are relative to `dir`,
 * the config file's directory.
 */
export function parseDecideConfig(text: string, dir = process.cwd()): DecideConfig {
  const doc = parseTomlTable(text);
  onlyFields(doc, ['timeout', 'trust_dir', 'protocol', 'witness_policy', 'log', 'procedure'], 'config');
  const policies = new Map<string, WitnessPolicy>();
  const policyAt = (
    x: unknown,
    where: string,
  ): { witnessPolicy: WitnessPolicy; witnessPolicyFile: string } => {
    const f = nonEmptyString(x, where);
    const path = isAbsolute(f) ? f : resolve(dir, f);
    let p = policies.get(path);
    if (!p) {
      p = loadWitnessPolicy(path, where);
      policies.set(path, p);
    }
    return { witnessPolicy: p, witnessPolicyFile: path };
  };
  const globalPolicy =
    doc.witness_policy === undefined ? undefined : policyAt(doc.witness_policy, 'witness_policy');
  if (!Array.isArray(doc.log) || doc.log.length === 0)
    throw new FormatError('config: needs at least one [[log]]');
  const names = new Set<string>();
  const keys = new Map<string, string>();
  const logs = doc.log.map((l, i): LogConfig => {
    const where = `log[${i}]`;
    const o = tableAt(l, where);
    onlyFields(o, ['name', 'url', 'state', 'vkey', 'weight', 'witness_policy', 'mirrors'], where);
    const vkeyText = nonEmptyString(o.vkey, `${where}.vkey`);
    let vkey: string;
    try {
      vkey = verifierFromVkey(vkeyText.trim()).vkey;
    } catch (err) {
      throw new FormatError(`${where}.vkey: ${(err as Error).message}`);
    }
    const name = o.name === undefined ? vkey.split('+')[0] : nonEmptyString(o.name, `${where}.name`);
    if (names.has(name)) throw new FormatError(`${where}.name: duplicate log name ${JSON.stringify(name)}`);
    names.add(name);
    const entry = `${where} (${JSON.stringify(name)})`;
    const twin = keys.get(publicKeyOf(vkey));
    if (twin !== undefined) {
      throw new FormatError(
        `${entry} has the same verifier key as ${twin}: one log under several names would count as several votes; keep one entry`,
      );
    }
    keys.set(publicKeyOf(vkey), entry);
    if ((o.url === undefined) === (o.state === undefined))
      throw new FormatError(`${where}: give either url or state`);
    const weight = parseWeight(o.weight, `${where}.weight`);
    const policy =
      o.witness_policy === undefined ? globalPolicy : policyAt(o.witness_policy, `${where}.witness_policy`);
    if (policy && !policyCoversLog(policy.witnessPolicy, verifierFromVkey(vkey))) {
      throw new FormatError(
        `${entry}: its witness policy ${policy.witnessPolicyFile} lists logs, and this log's key is not one of them`,
      );
    }
    const out: LogConfig = { name, vkey, weight, weightText: String(o.weight ?? 1), ...policy };
    if (o.url !== undefined) {
      out.url = httpUrl(o.url, `${where}.url`);
      if (o.mirrors !== undefined) {
        if (!Array.isArray(o.mirrors)) throw new FormatError(`${where}.mirrors: must be an array of URLs`);
        out.mirrors = o.mirrors.map((m, j) => httpUrl(m, `${where}.mirrors[${j}]`));
      }
    } else {
      if (o.mirrors !== undefined) {
        throw new FormatError(`${where}.mirrors: only a log given by url has mirrors to fall back on`);
      }
      const s = nonEmptyString(o.state, `${where}.state`);
      out.state = isAbsolute(s) ? s : resolve(dir, s);
    }
    return out;
  });
  const procedures = new Map<string, ProcedureSpec>();
  if (doc.procedure !== undefined) {
    for (const [proto, spec] of Object.entries(tableAt(doc.procedure, 'procedure'))) {
      procedures.set(proto, parseProcedure(spec, `procedure.${proto}`, dir, names));
    }
  }
  if (!procedures.has('default')) procedures.set('default', DEFAULT_PROCEDURE);
  const timeout = positive(doc.timeout, 'timeout', 5);
  return {
    logs,
    procedures,
    timeoutMs: timeout * 1000,
    ...(doc.trust_dir !== undefined
      ? { trustDir: resolve(dir, nonEmptyString(doc.trust_dir, 'trust_dir')) }
      : {}),
    protocol: doc.protocol === undefined ? 'nix' : nonEmptyString(doc.protocol, 'protocol'),
  };
}

/** An http(s) URL, or FormatError naming `where`. */
function httpUrl(x: unknown, where: string): string {
  const u = nonEmptyString(x, where);
  try {
    const parsed = new URL(u);
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new Error('not http');
  } catch {
    throw new FormatError(`${where}: not an http(s) URL: ${u}`);
  }
  return u;
}

/**
 * The key material of a verifier key `name+id+key` (its base64 part, which may hold '+', without
 * name and key id): two entries with the same key are one signer, whatever they are called.
 */
export function publicKeyOf(vkey: string): string {
  return vkey.slice(vkey.indexOf('+', vkey.indexOf('+') + 1) + 1);
}

/** Lower-case hex SHA-256 of a script's source (UTF-8). */
export function scriptSha256(source: string): string {
  return toHex(sha256(Buffer.from(source, 'utf8')));
}

/** The procedure a protocol is decided by: its own, else `default`. */
export function procedureFor(config: DecideConfig, protocol: string): { key: string; spec: ProcedureSpec } {
  const own = config.procedures.get(protocol);
  return own ? { key: protocol, spec: own } : { key: 'default', spec: config.procedures.get('default')! };
}

/**
 * A procedure as the JSON an evidence bundle carries: the TOML table's fields, with exact
 * fractions and a script's source inline with its SHA-256. `parseProcedureJson` reads it back.
 */
export function procedureJson(spec: ProcedureSpec): Record<string, unknown> {
  switch (spec.type) {
    case 'percentage':
      return { type: spec.type, min: exactFraction(spec.min), of: spec.of };
    case 'weighted':
      return {
        type: spec.type,
        ...(spec.min ? { min: exactFraction(spec.min) } : {}),
        ...(spec.minWeight ? { min_weight: exactFraction(spec.minWeight) } : {}),
        of: spec.of,
      };
    case 'log':
      return { type: spec.type, log: spec.log };
    case 'chain':
      return { type: spec.type, steps: spec.steps.map(procedureJson) };
    case 'lua':
    case 'js':
      return {
        type: spec.type,
        source: spec.source,
        sha256: scriptSha256(spec.source),
        timeout_ms: spec.timeoutMs,
        memory_mb: spec.memoryMb,
      };
  }
}

/** A rational as parseShare and parseWeight read it back exactly: always "n/d". */
export function exactFraction(r: Rat): string {
  return `${r.n}/${r.d}`;
}

/** Reads `procedureJson`'s output (FormatError if it is not one); `logs` are the names a `log` step may name. */
export function parseProcedureJson(x: unknown, logs: ReadonlySet<string>): ProcedureSpec {
  return parseProcedure(x, 'procedure', undefined, logs);
}

export function loadDecideConfig(file: string): DecideConfig {
  return loadTomlFile(file, 'config', parseDecideConfig);
}

/** The procedure objects for a spec (scripts start their worker on first use). */
export function buildProcedure(spec: ProcedureSpec): Procedure {
  switch (spec.type) {
    case 'percentage':
      return percentage(spec.min, spec.of);
    case 'weighted':
      return weighted({
        ...(spec.min ? { min: spec.min } : {}),
        ...(spec.minWeight ? { minWeight: spec.minWeight } : {}),
        of: spec.of,
      });
    case 'log':
      return trustLog(spec.log);
    case 'chain':
      return chain(spec.steps.map(buildProcedure));
    case 'lua':
    case 'js':
      return new ScriptProcedure({
        kind: spec.type,
        source: spec.source,
        name: spec.name,
        timeoutMs: spec.timeoutMs,
        memoryMb: spec.memoryMb,
      });
  }
}
