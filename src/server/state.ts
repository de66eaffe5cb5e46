/**
 * The state directory of a node: `trustix.toml` (written on first start), `logs/<id>/` (log
 * directories) and `writers/<name>.token` (bearer tokens, mode 0600; the config keeps only their
 * SHA-256). This module turns the `serve` command line into a ServerConfig, creating a fresh state
 * directory when it is empty.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { readSecretFile } from '../config/secret.js';
import { isValidKeyName } from '../core/note.js';
import { fsyncPath, isTempName, writeFileDurably } from '../storage/durable.js';
import {
  API_NAMES,
  ConfigError,
  checkAdvertise,
  checkStorage,
  DEFAULT_LEASE_MS,
  loadConfig,
  parseAddress,
  readPolicy,
  type ServerConfig,
  tomlString,
} from './config.js';

export const CONFIG_FILE = 'trustix.toml';
export const DEFAULT_LOG_ID = 'default';
export const DEFAULT_WRITER = 'default';
export const DEFAULT_LISTEN = '127.0.0.1:8080';

export interface ServeOptions {
  state?: string;
  config?: string;
  listen?: string;
  origin?: string;
  /** A C2SP tlog-policy file for every log (instead of their witness_policy). */
  witnessPolicy?: string;
  /** A postgresql:// URL for the node's one log (instead of its `storage`, or LMDB). */
  storage?: string;
  /** The URL where clients reach this node (instead of `advertise`). */
  advertise?: string;
}

export interface PreparedState {
  config: ServerConfig;
  /** The config file in effect. */
  configFile: string;
  /** Lines for the operator: what was created and where the secrets are. */
  notes: string[];
}

/** A log origin for a node that was not given one: this host's name, if it makes a valid key name. */
export function defaultOrigin(): string {
  const h = hostname().toLowerCase();
  const o = `${h}/trustix`;
  return /^[a-z0-9][a-z0-9.-]*$/.test(h) && isValidKeyName(o) ? o : 'trustix.local/log';
}

export function prepareState(opts: ServeOptions): PreparedState {
  let listen: { host: string; port: number } | undefined;
  if (opts.listen !== undefined) {
    listen = parseAddress(opts.listen);
    if (!listen)
      throw new ConfigError(`--listen: must be HOST:PORT or [IPv6]:PORT, got ${JSON.stringify(opts.listen)}`);
  }
  if (opts.origin !== undefined && !isValidKeyName(opts.origin)) {
    throw new ConfigError(
      `--origin: ${JSON.stringify(opts.origin)} is not a valid log origin (no spaces, no "+")`,
    );
  }
  const storage = opts.storage === undefined ? undefined : checkStorage(opts.storage, '--storage');
  const advertise = opts.advertise === undefined ? undefined : checkAdvertise(opts.advertise, '--advertise');
  // read before anything is written, so a bad file leaves a new state directory untouched
  const policy =
    opts.witnessPolicy === undefined
      ? undefined
      : readPolicy(resolve(opts.witnessPolicy), '--witness-policy');
  const notes: string[] = [];
  let configFile: string;
  let config: ServerConfig;
  if (opts.config !== undefined) {
    configFile = resolve(opts.config);
    config = loadConfig(configFile, opts.state);
    if (opts.origin !== undefined) {
      throw new ConfigError(
        '--origin: only used when creating a state directory; set origin in the config file instead',
      );
    }
  } else {
    if (opts.state === undefined) throw new ConfigError('--state DIR (or --config FILE) is required');
    const dir = resolve(opts.state);
    configFile = join(dir, CONFIG_FILE);
    if (!existsSync(configFile)) {
      if (existsSync(dir) && !onlyInitLeftovers(dir)) {
        throw new ConfigError(`${dir} is not empty and has no ${CONFIG_FILE}; refusing to initialise it`);
      }
      notes.push(...initState(dir, opts.origin ?? defaultOrigin(), opts.listen ?? DEFAULT_LISTEN, storage));
    }
    config = loadConfig(configFile, dir);
    if (opts.origin !== undefined && !config.logs.some((l) => l.origin === opts.origin)) {
      throw new ConfigError(
        `--origin: no log in ${configFile} has origin ${opts.origin} (a log's origin is fixed when it is created)`,
      );
    }
  }
  checkTokenFiles(join(dirname(configFile), 'writers'));
  if (storage !== undefined) {
    if (config.logs.length !== 1) {
      throw new ConfigError(
        `--storage: ${configFile} declares ${config.logs.length} logs; give each its own storage = "postgresql://..." there instead`,
      );
    }
    config.logs[0].storage = storage;
    config.logs[0].leaseMs ??= DEFAULT_LEASE_MS;
  }
  if (advertise !== undefined) config.advertise = advertise;
  if (policy !== undefined) for (const l of config.logs) l.witnessPolicy = policy;
  if (listen)
    config.listeners = [{ kind: 'tcp', host: listen.host, port: listen.port, api: new Set(API_NAMES) }];
  if (config.listeners.length === 0) {
    const a = parseAddress(DEFAULT_LISTEN)!;
    config.listeners = [{ kind: 'tcp', host: a.host, port: a.port, api: new Set(API_NAMES) }];
  }
  return { config, configFile, notes };
}

/**
 * Whether `dir` holds nothing but what a first start that did not finish (killed, disk full) can
 * leave: writer tokens and temporary files. Its config is written last (writeFileDurably), so such a
 * start never created a log, and its tokens, whose hashes no config holds, are replaced.
 */
function onlyInitLeftovers(dir: string): boolean {
  for (const name of readdirSync(dir)) {
    if (isTempName(name)) continue;
    if (name !== 'writers') return false;
    for (const w of readdirSync(join(dir, name))) if (!isTempName(w) && !w.endsWith('.token')) return false;
  }
  return true;
}

/**
 * Writes a fresh state directory: one writer token and a config declaring one log (created at
 * start). Each file is written whole (writeFileDurably), the config last: a state directory has a
 * config only once its token is on disk.
 */
function initState(dir: string, origin: string, listen: string, storage: string | undefined): string[] {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const writers = join(dir, 'writers');
  mkdirSync(writers, { recursive: true, mode: 0o700 });
  for (const d of [dir, writers]) {
    for (const name of readdirSync(d)) if (isTempName(name)) rmSync(join(d, name), { force: true });
  }
  const token = randomBytes(32).toString('hex');
  const tokenFile = join(writers, `${DEFAULT_WRITER}.token`);
  writeFileDurably(tokenFile, `${token}\n`, 0o600);
  const tokenSha256 = createHash('sha256').update(token).digest('hex');
  const text = `# Trustix node configuration, written on first start. Reference: docs/server.md

[[log]]
id = ${tomlString(DEFAULT_LOG_ID)}
origin = ${tomlString(origin)}
# dir = "logs/${DEFAULT_LOG_ID}"   (the default: relative to this file)
${storage === undefined ? '# storage = "postgresql://USER@HOST:PORT/DATABASE"   (default: LMDB in dir; docs/scale-out.md)' : `storage = ${tomlString(storage)}`}

[[writer]]
name = ${tomlString(DEFAULT_WRITER)}
# The token itself is in writers/${DEFAULT_WRITER}.token; only its SHA-256 is kept here.
token_sha256 = ${tomlString(tokenSha256)}
logs = ["*"]

[[listen]]
address = ${tomlString(listen)}
api = ["read", "write", "metrics"]

[limits]
max_body_bytes = 16777216
max_entries_per_request = 10000
max_pending = 200000
batch_delay_ms = 20
max_batch = 10000
`;
  fsyncPath(dir);
  writeFileDurably(join(dir, CONFIG_FILE), text, 0o600);
  return [`initialised ${dir}`, `writer ${DEFAULT_WRITER} token: ${tokenFile}`];
}

/**
 * The writer tokens beside the config (`writers/*.token`): the node keeps only their hashes, but a
 * token that other users can read lets them write to the log, so a node does not start beside one.
 */
function checkTokenFiles(dir: string): void {
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) {
    if (name.endsWith('.token')) readSecretFile(join(dir, name), 'writer token');
  }
}
