/**
 * The server configuration (TOML): logs, writers, listeners and limits. Parsing is strict: an
 * unknown key, a wrong type or a value out of range is an error naming the key at fault, e.g.
 * `config /etc/trustix.toml: log[1].origin: must be a valid note key name`. See docs/server.md.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { readFileSync, realpathSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { loadWitnessPolicy } from '../config/witness-policy.js';
import { decodeBase64Strict } from '../core/bytes.js';
import { FormatError, TrustixError } from '../core/errors.js';
import { isValidKeyName, verifierFromVkey } from '../core/note.js';
import type { WitnessPolicy } from '../core/policy.js';

export class ConfigError extends TrustixError {
  constructor(message: string) {
    super('CONFIG', message);
  }
}

export type ApiName = 'read' | 'write' | 'metrics';
export const API_NAMES: readonly ApiName[] = ['read', 'write', 'metrics'];

export interface LogConfig {
  id: string;
  origin: string;
  /** Absolute path of the log directory. */
  dir: string;
  /** Absolute path of the signing key file; undefined means `<dir>/signing.key`. */
  keyFile?: string;
  /** The C2SP tlog-policy whose witnesses cosign its checkpoints (server/cosign.ts). */
  witnessPolicy?: { file: string; policy: WitnessPolicy };
  /**
   * A postgresql:// URL: the log lives in that database, which other nodes may share (one of them
   * sequencing at a time, docs/scale-out.md); `dir` then holds only the signing key. Default: LMDB in `dir`.
   */
  storage?: string;
  /** How long the sequencer lease of a shared log lasts without renewal. */
  leaseMs?: number;
}

export interface WriterConfig {
  name: string;
  /** SHA-256 of the writer's bearer token. */
  tokenSha256?: Buffer;
  /** Ed25519 public key for signed requests. */
  publicKey?: KeyObject;
  /** Log ids this writer may submit to; '*' = every log. */
  logs: readonly string[] | '*';
}

export type ListenConfig =
  | { kind: 'tcp'; host: string; port: number; api: ReadonlySet<ApiName> }
  | { kind: 'unix'; path: string; mode: number; api: ReadonlySet<ApiName> };

export interface Limits {
  /** Largest request body accepted (413 beyond). */
  maxBodyBytes: number;
  /** Most entries in one submit request (413 beyond). */
  maxEntriesPerRequest: number;
  /** Most entries waiting to be sequenced per log (503 beyond). */
  maxPending: number;
  /** How long the sequencer waits for more entries before it seals a batch. */
  batchDelayMs: number;
  /** Most entries sequenced in one batch (one commit, one signature). */
  maxBatch: number;
  /** On SIGTERM, how long to wait for in-flight requests before closing connections. */
  drainTimeoutMs: number;
  /** Lookup answers kept per log for the current checkpoint (0 disables the cache). */
  lookupCacheEntries: number;
  /** Open connections over every listener; one more is answered 503 and closed. */
  maxConnections: number;
  /** How long an idle keep-alive connection stays open. */
  keepAliveTimeoutMs: number;
  /** How long receipts and lookups wait for a checkpoint's witness quorum (and each witness request). */
  witnessTimeoutMs: number;
}

export const DEFAULT_LIMITS: Limits = {
  maxBodyBytes: 16 * 1024 * 1024,
  maxEntriesPerRequest: 10_000,
  maxPending: 200_000,
  batchDelayMs: 20,
  maxBatch: 10_000,
  drainTimeoutMs: 30_000,
  lookupCacheEntries: 4096,
  maxConnections: defaultMaxConnections(),
  keepAliveTimeoutMs: 5000,
  witnessTimeoutMs: 5000,
};

/**
 * 512 connections, or half the process's open-file limit when that is lower (read from
 * /proc/self/limits on Linux), so the rest stays for the stores, the listeners and the refusals.
 */
function defaultMaxConnections(): number {
  let limit = Number.POSITIVE_INFINITY;
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (m) limit = Number(m[1]);
  } catch {
    // not Linux: the fixed default
  }
  return Math.max(16, Math.min(512, Math.floor(limit / 2)));
}

export interface ServerConfig {
  logs: LogConfig[];
  writers: WriterConfig[];
  listeners: ListenConfig[];
  limits: Limits;
  /**
   * The URL where clients reach this node (http[s]://host:port), recorded with the sequencer lease
   * of shared logs so other nodes can send writers here. Default: the first TCP listener's.
   */
  advertise?: string;
}

export const LOG_ID_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
export const WRITER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

type Table = Record<string, unknown>;

// DER SubjectPublicKeyInfo header of a raw Ed25519 public key (RFC 8410).
const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

function isTable(v: unknown): v is Table {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/** Accumulates the path of the key being checked so every error can name it. */
class Checker {
  constructor(private readonly source: string) {}

  fail(key: string, message: string): never {
    throw new ConfigError(`config ${this.source}: ${key}: ${message}`);
  }

  onlyKeys(t: Table, where: string, allowed: readonly string[]): void {
    for (const k of Object.keys(t)) {
      if (!allowed.includes(k)) {
        this.fail(where === '' ? k : `${where}.${k}`, `unknown key (expected one of: ${allowed.join(', ')})`);
      }
    }
  }

  string(t: Table, key: string, where: string, required: true): string;
  string(t: Table, key: string, where: string, required: false): string | undefined;
  string(t: Table, key: string, where: string, required: boolean): string | undefined {
    const v = t[key];
    const name = `${where}.${key}`;
    if (v === undefined) {
      if (required) this.fail(name, 'is required');
      return undefined;
    }
    if (typeof v !== 'string') this.fail(name, `must be a string, got ${describe(v)}`);
    if (v.length === 0) this.fail(name, 'must not be empty');
    return v;
  }

  integer(t: Table, key: string, where: string, min: number, max: number, dflt: number): number {
    const v = t[key];
    const name = where === '' ? key : `${where}.${key}`;
    if (v === undefined) return dflt;
    // smol-toml gives bigint only for integers beyond 2^53; those are out of every range here.
    if (typeof v === 'bigint' || (typeof v === 'number' && !Number.isInteger(v))) {
      this.fail(name, `must be an integer between ${min} and ${max}`);
    }
    if (typeof v !== 'number') this.fail(name, `must be an integer, got ${describe(v)}`);
    if (v < min || v > max) this.fail(name, `must be between ${min} and ${max}, got ${v}`);
    return v;
  }

  stringArray(t: Table, key: string, where: string): string[] | undefined {
    const v = t[key];
    const name = `${where}.${key}`;
    if (v === undefined) return undefined;
    if (!Array.isArray(v)) this.fail(name, `must be an array of strings, got ${describe(v)}`);
    v.forEach((x, i) => {
      if (typeof x !== 'string') this.fail(`${name}[${i}]`, `must be a string, got ${describe(x)}`);
    });
    return v as string[];
  }

  tables(root: Table, key: string): Table[] {
    const v = root[key];
    if (v === undefined) return [];
    if (!Array.isArray(v)) this.fail(key, `must be an array of tables ([[${key}]]), got ${describe(v)}`);
    return v.map((x, i) => {
      if (!isTable(x)) this.fail(`${key}[${i}]`, `must be a table, got ${describe(x)}`);
      return x;
    });
  }
}

function describe(v: unknown): string {
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Date) return 'a date';
  if (typeof v === 'bigint') return 'a (huge) integer';
  if (isTable(v)) return 'a table';
  return `a ${typeof v}`;
}

/**
 * `host:port` or `[v6]:port`. Port 0 asks the system for a free port (the server prints the one it got).
 */
export function parseAddress(text: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(0|[1-9][0-9]{0,4})$/.exec(text);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  return { host: m[1] ?? m[2], port };
}

/**
 * Accepts a note verifier key (`name+keyid+base64(0x01 || key)`) or the plain base64 of the 32-byte
 * Ed25519 public key.
 */
export function parseWriterPublicKey(text: string): KeyObject | undefined {
  let raw = decodeBase64Strict(text);
  if (raw?.length !== 32) {
    raw = undefined;
    try {
      // verifierFromVkey checks the name, the key id and the key type; the key is after the second '+'.
      verifierFromVkey(text);
      const material = decodeBase64Strict(text.slice(text.indexOf('+', text.indexOf('+') + 1) + 1));
      raw = material?.subarray(1);
    } catch {
      return undefined;
    }
  }
  if (raw?.length !== 32) return undefined;
  return createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, raw]), format: 'der', type: 'spki' });
}

/**
 * Parses config text. Relative paths are resolved against `baseDir` (the config file's directory);
 * a log without `dir` lives in `<stateDir>/logs/<id>`.
 */
export function parseConfig(
  text: string,
  opts: { source: string; baseDir: string; stateDir: string },
): ServerConfig {
  const c: Checker = new Checker(opts.source);
  let root: Table;
  try {
    root = parseToml(text, { integersAsBigInt: 'asNeeded', unsafeKeyBehaviour: 'throw' }) as Table;
  } catch (err) {
    if (err instanceof TomlError) {
      const first = err.message.split('\n')[0];
      throw new ConfigError(
        `config ${opts.source}: TOML syntax error at line ${err.line}, column ${err.column}: ${first}`,
      );
    }
    throw new ConfigError(`config ${opts.source}: ${(err as Error).message}`);
  }
  c.onlyKeys(root, '', ['log', 'writer', 'listen', 'limits', 'advertise']);
  const path = (p: string) => (isAbsolute(p) ? p : resolve(opts.baseDir, p));

  const logs: LogConfig[] = [];
  const ids = new Set<string>();
  /** Each log directory's identities (see dirIdentities) -> the log that has it. */
  const dirs = new Map<string, string>();
  c.tables(root, 'log').forEach((t, i) => {
    const w = `log[${i}]`;
    c.onlyKeys(t, w, ['id', 'origin', 'dir', 'key_file', 'witness_policy', 'storage', 'lease_ms']);
    const id = c.string(t, 'id', w, true);
    if (!LOG_ID_RE.test(id)) c.fail(`${w}.id`, 'must match [a-z0-9][a-z0-9._-]{0,63}');
    if (ids.has(id)) c.fail(`${w}.id`, `duplicate log id ${JSON.stringify(id)}`);
    ids.add(id);
    const origin = c.string(t, 'origin', w, true);
    if (!isValidKeyName(origin) || origin.length > 255) {
      c.fail(`${w}.origin`, 'must be a valid note key name (no spaces, no "+", at most 255 characters)');
    }
    const dirText = c.string(t, 'dir', w, false);
    const dir = dirText === undefined ? resolve(opts.stateDir, 'logs', id) : path(dirText);
    for (const key of dirIdentities(dir)) {
      const other = dirs.get(key);
      if (other !== undefined)
        c.fail(`${w}.dir`, `directory ${dir} is used by another log (${other}: ${key})`);
      dirs.set(key, `log[${i}] ${dir}`);
    }
    const keyFile = c.string(t, 'key_file', w, false);
    const policyFile = c.string(t, 'witness_policy', w, false);
    let witnessPolicy: LogConfig['witnessPolicy'];
    if (policyFile !== undefined) {
      try {
        witnessPolicy = readPolicy(path(policyFile), 'policy file');
      } catch (err) {
        if (err instanceof ConfigError) c.fail(`${w}.witness_policy`, err.message);
        throw err;
      }
    }
    const storageText = t.storage;
    const storage =
      storageText === undefined
        ? undefined
        : checkStorage(storageText, `config ${opts.source}: ${w}.storage`);
    if (t.lease_ms !== undefined && storage === undefined) {
      c.fail(`${w}.lease_ms`, 'only applies to a log with storage = "postgresql://..."');
    }
    const leaseMs = c.integer(t, 'lease_ms', w, 200, 600_000, DEFAULT_LEASE_MS);
    logs.push({
      id,
      origin,
      dir,
      ...(storage !== undefined ? { storage, leaseMs } : {}),
      ...(keyFile !== undefined ? { keyFile: path(keyFile) } : {}),
      ...(witnessPolicy !== undefined ? { witnessPolicy } : {}),
    });
  });
  if (logs.length === 0) c.fail('log', 'at least one [[log]] is required');

  const writers: WriterConfig[] = [];
  const names = new Set<string>();
  c.tables(root, 'writer').forEach((t, i) => {
    const w = `writer[${i}]`;
    c.onlyKeys(t, w, ['name', 'token_sha256', 'public_key', 'logs']);
    const name = c.string(t, 'name', w, true);
    if (!WRITER_NAME_RE.test(name)) c.fail(`${w}.name`, 'must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}');
    if (names.has(name)) c.fail(`${w}.name`, `duplicate writer name ${JSON.stringify(name)}`);
    names.add(name);
    const tokenHex = c.string(t, 'token_sha256', w, false);
    let tokenSha256: Buffer | undefined;
    if (tokenHex !== undefined) {
      if (!/^[0-9a-f]{64}$/.test(tokenHex)) c.fail(`${w}.token_sha256`, 'must be 64 lowercase hex digits');
      tokenSha256 = Buffer.from(tokenHex, 'hex');
    }
    const pkText = c.string(t, 'public_key', w, false);
    let publicKey: KeyObject | undefined;
    if (pkText !== undefined) {
      publicKey = parseWriterPublicKey(pkText);
      if (!publicKey) {
        c.fail(
          `${w}.public_key`,
          'must be a note verifier key (name+id+base64) or the base64 of a 32-byte Ed25519 key',
        );
      }
    }
    if (!tokenSha256 && !publicKey) c.fail(w, 'needs token_sha256 or public_key (or both)');
    const logList = c.stringArray(t, 'logs', w);
    if (logList === undefined) c.fail(`${w}.logs`, 'is required (log ids, or ["*"] for every log)');
    let allowed: readonly string[] | '*';
    if (logList.length === 1 && logList[0] === '*') allowed = '*';
    else {
      if (logList.length === 0) c.fail(`${w}.logs`, 'must name at least one log');
      logList.forEach((id, j) => {
        if (!ids.has(id)) c.fail(`${w}.logs[${j}]`, `no [[log]] has id ${JSON.stringify(id)}`);
      });
      allowed = logList;
    }
    writers.push({
      name,
      logs: allowed,
      ...(tokenSha256 ? { tokenSha256 } : {}),
      ...(publicKey ? { publicKey } : {}),
    });
  });

  const listeners: ListenConfig[] = [];
  const seen = new Set<string>();
  c.tables(root, 'listen').forEach((t, i) => {
    const w = `listen[${i}]`;
    c.onlyKeys(t, w, ['address', 'unix', 'mode', 'api']);
    const address = c.string(t, 'address', w, false);
    const unix = c.string(t, 'unix', w, false);
    if ((address === undefined) === (unix === undefined)) c.fail(w, 'needs exactly one of address or unix');
    const apiList = c.stringArray(t, 'api', w) ?? [...API_NAMES];
    if (apiList.length === 0) c.fail(`${w}.api`, 'must name at least one of read, write, metrics');
    const api = new Set<ApiName>();
    apiList.forEach((a, j) => {
      if (!(API_NAMES as readonly string[]).includes(a)) {
        c.fail(`${w}.api[${j}]`, `unknown API ${JSON.stringify(a)} (expected read, write or metrics)`);
      }
      api.add(a as ApiName);
    });
    if (address !== undefined) {
      if (t.mode !== undefined) c.fail(`${w}.mode`, 'only applies to unix sockets');
      const a = parseAddress(address);
      if (!a) c.fail(`${w}.address`, `must be HOST:PORT or [IPv6]:PORT, got ${JSON.stringify(address)}`);
      const k = `${a.host}:${a.port}`;
      if (a.port !== 0 && seen.has(k))
        c.fail(`${w}.address`, `${address} is already used by another listener`);
      seen.add(k);
      listeners.push({ kind: 'tcp', host: a.host, port: a.port, api });
    } else {
      const p = path(unix!);
      if (seen.has(p)) c.fail(`${w}.unix`, `${p} is already used by another listener`);
      seen.add(p);
      const mode = c.integer(t, 'mode', w, 0, 0o777, 0o600);
      listeners.push({ kind: 'unix', path: p, mode, api });
    }
  });

  let limits = DEFAULT_LIMITS;
  if (root.limits !== undefined) {
    if (!isTable(root.limits)) c.fail('limits', `must be a table, got ${describe(root.limits)}`);
    const t = root.limits;
    c.onlyKeys(t, 'limits', [
      'max_body_bytes',
      'max_entries_per_request',
      'max_pending',
      'batch_delay_ms',
      'max_batch',
      'drain_timeout_ms',
      'lookup_cache_entries',
      'max_connections',
      'keep_alive_timeout_ms',
      'witness_timeout_ms',
    ]);
    const d = DEFAULT_LIMITS;
    limits = {
      maxBodyBytes: c.integer(t, 'max_body_bytes', 'limits', 1024, 1 << 30, d.maxBodyBytes),
      maxEntriesPerRequest: c.integer(
        t,
        'max_entries_per_request',
        'limits',
        1,
        100_000,
        d.maxEntriesPerRequest,
      ),
      maxPending: c.integer(t, 'max_pending', 'limits', 1, 10_000_000, d.maxPending),
      batchDelayMs: c.integer(t, 'batch_delay_ms', 'limits', 0, 60_000, d.batchDelayMs),
      maxBatch: c.integer(t, 'max_batch', 'limits', 1, 1_000_000, d.maxBatch),
      drainTimeoutMs: c.integer(t, 'drain_timeout_ms', 'limits', 0, 3_600_000, d.drainTimeoutMs),
      lookupCacheEntries: c.integer(t, 'lookup_cache_entries', 'limits', 0, 1_000_000, d.lookupCacheEntries),
      maxConnections: c.integer(t, 'max_connections', 'limits', 1, 1_000_000, d.maxConnections),
      keepAliveTimeoutMs: c.integer(t, 'keep_alive_timeout_ms', 'limits', 1, 600_000, d.keepAliveTimeoutMs),
      witnessTimeoutMs: c.integer(t, 'witness_timeout_ms', 'limits', 100, 600_000, d.witnessTimeoutMs),
    };
    if (limits.maxEntriesPerRequest > limits.maxPending) {
      c.fail('limits.max_entries_per_request', `must not exceed limits.max_pending (${limits.maxPending})`);
    }
  }

  const advertiseText = root.advertise;
  const advertise =
    advertiseText === undefined
      ? undefined
      : checkAdvertise(advertiseText, `config ${opts.source}: advertise`);
  return { logs, writers, listeners, limits, ...(advertise !== undefined ? { advertise } : {}) };
}

/** How long a shared log's sequencer lease lasts without renewal, unless lease_ms says. */
export const DEFAULT_LEASE_MS = 5000;

/**
 * A log's storage: a postgresql:// (or postgres://) URL with a host and a database name. The
 * error, prefixed with `where`, never shows the password.
 */
export function checkStorage(v: unknown, where: string): string {
  if (typeof v !== 'string' || v.length === 0) {
    throw new ConfigError(`${where}: must be a postgresql://USER@HOST:PORT/DATABASE URL`);
  }
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    throw new ConfigError(`${where}: not a URL; expected postgresql://USER@HOST:PORT/DATABASE`);
  }
  if (u.protocol !== 'postgresql:' && u.protocol !== 'postgres:') {
    throw new ConfigError(
      `${where}: only PostgreSQL is supported (postgresql://USER@HOST:PORT/DATABASE), got a ${u.protocol}// URL`,
    );
  }
  if (u.hostname === '' || u.pathname.length <= 1) {
    throw new ConfigError(`${where}: needs a host and a database: postgresql://USER@HOST:PORT/DATABASE`);
  }
  return v;
}

/** An advertised URL: http or https, with a host. */
export function checkAdvertise(v: unknown, where: string): string {
  let u: URL | undefined;
  try {
    if (typeof v === 'string') u = new URL(v);
  } catch {
    // answered below
  }
  if (u === undefined || (u.protocol !== 'http:' && u.protocol !== 'https:') || u.hostname === '') {
    throw new ConfigError(`${where}: must be an http:// or https:// URL, e.g. http://node1.example:8080`);
  }
  return u.toString().replace(/\/$/, '');
}

/**
 * What makes two log directories one: the real path (symbolic links resolved, for a directory not
 * created yet those of its nearest existing parent) and, once it exists, its device and inode (a
 * bind mount). Two logs in one directory would be two writers of one store.
 */
function dirIdentities(dir: string): string[] {
  const rest: string[] = [];
  let head = dir;
  let real: string | undefined;
  while (real === undefined) {
    try {
      real = realpathSync(head);
    } catch {
      const up = dirname(head);
      if (up === head) real = head;
      else {
        rest.unshift(basename(head));
        head = up;
      }
    }
  }
  const ids = [`real path ${join(real, ...rest)}`];
  try {
    const st = statSync(dir);
    ids.push(`device ${st.dev} inode ${st.ino}`);
  } catch {
    // not created yet: its real path says it all
  }
  return ids;
}

export function loadConfig(file: string, stateDir?: string): ServerConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config ${file}: ${(err as Error).message}`);
  }
  const baseDir = dirname(resolve(file));
  return parseConfig(text, { source: file, baseDir, stateDir: stateDir ? resolve(stateDir) : baseDir });
}

/** A witness policy file for a node: ConfigError naming `where` when it cannot be used. */
export function readPolicy(file: string, where: string): { file: string; policy: WitnessPolicy } {
  try {
    return { file, policy: loadWitnessPolicy(file, where) };
  } catch (err) {
    if (err instanceof FormatError) throw new ConfigError(err.message);
    throw err;
  }
}

/** TOML string literal (basic string with escapes). */
export function tomlString(s: string): string {
  return JSON.stringify(s);
}
