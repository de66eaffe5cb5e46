/**
 * Configuration of the voting binary cache proxy (`trustix nix cache`, docs/nix-howto.md): where it
 * listens, its own Nix signing key, the trust configuration it decides with, and the upstream caches
 * it fetches narinfos and NARs from.
 */
import { isAbsolute, resolve } from 'node:path';
import { loadTomlFile, nonEmptyString, onlyFields, parseTomlTable, tableAt } from '../config/toml.js';
import { FormatError } from '../core/errors.js';
import { parseAddress } from '../server/config.js';
import { NIX_STORE_DIR } from './store-path.js';

export interface UpstreamConfig {
  /**
   * Base URL of a binary cache (the directory holding `nix-cache-info`), ending in `/`: `http:`,
   * `https:` or `file:` (a local directory).
   */
  url: string;
  /** Deadline for a narinfo answer, and for the first byte of a NAR, in ms. */
  timeoutMs: number;
  /** Most requests open to this upstream at once; more wait their turn. */
  maxConnections: number;
}

export interface CacheConfig {
  listen: { host: string; port: number };
  /** Nix secret key file (`name:base64`), created on first start when missing. */
  secretKeyFile: string;
  /** Name given to a key created on first start. */
  keyName: string;
  /** The trust configuration (docs/deciding.md) that decides NAR hashes. */
  decideConfig: string;
  /** Overrides the trust configuration's `trust_dir`. */
  trustDir?: string;
  /** Entry protocol to decide under. */
  protocol: string;
  priority: number;
  wantMassQuery: boolean;
  /** How long a decision (and its upstream narinfo) is reused, in ms. */
  decisionTtlMs: number;
  /** How long "no decision" is reused, in ms. */
  negativeTtlMs: number;
  /** A NAR stream that stalls this long is aborted, in ms. */
  narIdleTimeoutMs: number;
  /** NARs up to this many bytes are fetched and checked whole before the first byte is sent. */
  verifyFirstMax: number;
  /** How long an upstream that served bad bytes is tried last, in ms. */
  badUpstreamTtlMs: number;
  /**
   * Serve each NAR as the upstream compressed it (Nix decompresses it) while checking it beside;
   * false: serve it decompressed, so any upstream can stand in for another whatever its compression.
   */
  serveCompressed: boolean;
  upstreams: UpstreamConfig[];
}

const TOP = [
  'listen',
  'secret_key_file',
  'key_name',
  'decide_config',
  'trust_dir',
  'protocol',
  'priority',
  'want_mass_query',
  'decision_ttl',
  'negative_ttl',
  'nar_idle_timeout',
  'verify_first_max',
  'bad_upstream_ttl',
  'serve_compressed',
  'upstream',
];

function seconds(x: unknown, where: string, dflt: number, allowZero = false): number {
  if (x === undefined) return dflt * 1000;
  if (typeof x !== 'number' || !Number.isFinite(x) || x < 0 || (x === 0 && !allowZero) || x > 86_400) {
    throw new FormatError(
      `${where}: must be a number of seconds${allowZero ? '' : ' above 0'}, at most 86400`,
    );
  }
  return Math.round(x * 1000);
}

function integer(x: unknown, where: string, dflt: number, min: number, max: number): number {
  if (x === undefined) return dflt;
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < min || x > max) {
    throw new FormatError(`${where}: must be an integer from ${min} to ${max}`);
  }
  return x;
}

/** `defaults.decideConfig` is used when the file names none (the CLI passes the decide default). */
export function parseCacheConfig(text: string, dir: string, defaults: { decideConfig: string }): CacheConfig {
  const doc = parseTomlTable(text);
  onlyFields(doc, TOP, 'config');
  const path = (x: unknown, where: string) => {
    const s = nonEmptyString(x, where);
    return isAbsolute(s) ? s : resolve(dir, s);
  };
  const listenText = doc.listen === undefined ? '127.0.0.1:37515' : nonEmptyString(doc.listen, 'listen');
  const listen = parseAddress(listenText);
  if (!listen)
    throw new FormatError(`listen: must be HOST:PORT or [IPv6]:PORT, got ${JSON.stringify(listenText)}`);
  if (!Array.isArray(doc.upstream) || doc.upstream.length === 0) {
    throw new FormatError('config: needs at least one [[upstream]] binary cache');
  }
  const upstreams = doc.upstream.map((u, i): UpstreamConfig => {
    const where = `upstream[${i}]`;
    const o = tableAt(u, where);
    onlyFields(o, ['url', 'timeout', 'max_connections'], where);
    const text = nonEmptyString(o.url, `${where}.url`);
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new FormatError(`${where}.url: not a URL: ${text}`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:' && url.protocol !== 'file:') {
      throw new FormatError(`${where}.url: only http, https and file upstreams are supported, got ${text}`);
    }
    if (url.protocol === 'file:' && url.host !== '') {
      throw new FormatError(`${where}.url: a file URL names a local directory: file:///path, got ${text}`);
    }
    if (url.search !== '' || url.hash !== '')
      throw new FormatError(`${where}.url: must not have ?query or #fragment`);
    if (!url.pathname.endsWith('/')) url.pathname += '/';
    return {
      url: url.href,
      timeoutMs: seconds(o.timeout, `${where}.timeout`, 10),
      maxConnections: integer(o.max_connections, `${where}.max_connections`, 16, 1, 1024),
    };
  });
  const protocol = doc.protocol === undefined ? 'nix' : nonEmptyString(doc.protocol, 'protocol');
  const keyName = doc.key_name === undefined ? 'trustix-cache-1' : nonEmptyString(doc.key_name, 'key_name');
  if (!/^[A-Za-z0-9._-]+$/.test(keyName)) {
    throw new FormatError('key_name: letters, digits, ".", "_" and "-" only');
  }
  return {
    listen,
    secretKeyFile: path(doc.secret_key_file ?? 'cache-key.sec', 'secret_key_file'),
    keyName,
    decideConfig:
      doc.decide_config === undefined ? defaults.decideConfig : path(doc.decide_config, 'decide_config'),
    ...(doc.trust_dir !== undefined ? { trustDir: path(doc.trust_dir, 'trust_dir') } : {}),
    protocol,
    priority: integer(doc.priority, 'priority', 40, 0, 1_000_000),
    wantMassQuery: doc.want_mass_query === undefined ? true : bool(doc.want_mass_query, 'want_mass_query'),
    decisionTtlMs: seconds(doc.decision_ttl, 'decision_ttl', 30, true),
    negativeTtlMs: seconds(doc.negative_ttl, 'negative_ttl', 5, true),
    narIdleTimeoutMs: seconds(doc.nar_idle_timeout, 'nar_idle_timeout', 30),
    verifyFirstMax: integer(doc.verify_first_max, 'verify_first_max', 4 << 20, 0, 1 << 30),
    badUpstreamTtlMs: seconds(doc.bad_upstream_ttl, 'bad_upstream_ttl', 600, true),
    serveCompressed:
      doc.serve_compressed === undefined ? true : bool(doc.serve_compressed, 'serve_compressed'),
    upstreams,
  };
}

function bool(x: unknown, where: string): boolean {
  if (typeof x !== 'boolean') throw new FormatError(`${where}: must be true or false`);
  return x;
}

export function loadCacheConfig(file: string, defaults: { decideConfig: string }): CacheConfig {
  return loadTomlFile(file, 'config', (text, dir) => parseCacheConfig(text, dir, defaults));
}

/** The `nix-cache-info` file the proxy serves. */
export function cacheInfo(cfg: Pick<CacheConfig, 'priority' | 'wantMassQuery'>): string {
  return `StoreDir: ${NIX_STORE_DIR}\nWantMassQuery: ${cfg.wantMassQuery ? 1 : 0}\nPriority: ${cfg.priority}\n`;
}
