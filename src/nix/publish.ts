/**
 * Publishing a builder's results to its own Trustix log (docs/nix.md, "Publishing"): the
 * publisher's configuration, delivering the spool, the post-build hook and publishing existing
 * store paths. The CLI (src/cli/commands/nix.ts) is a thin layer over this.
 */
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import type { LogClient, SubmitAuth, VerifiedReceipt } from '../client/client.js';
import { RemoteError } from '../client/errors.js';
import { InsecureSecretError, readSecretFile } from '../config/secret.js';
import { loadTomlFile, nonEmptyString, onlyFields, parseTomlTable } from '../config/toml.js';
import type { Entry } from '../core/entry.js';
import { FormatError, TrustixError } from '../core/errors.js';
import { signerFromSkey, verifierFromVkey } from '../core/note.js';
import { type NixPathInfo, nixEntry } from './entry.js';
import { closure, drvOutputs, type NixQueryOptions, pathInfos } from './nix-query.js';
import { type Claim, Spool } from './spool.js';

// ---------------------------------------------------------------------------------------------
// Configuration.

/** Every field of a publish config, each optional until `resolvePublishConfig`. */
export interface PublishSettings {
  /** The config file these came from, if any. */
  file?: string;
  log?: string;
  vkey?: string;
  auth?: SubmitAuth;
  spool?: string;
  /** Network deadline of the hook, ms. */
  timeoutMs?: number;
  trustDir?: string;
}

export interface PublishConfig {
  file?: string;
  /** The builder's log, e.g. `http://127.0.0.1:8080/logs/default/`. */
  log: URL;
  vkey: string;
  auth: SubmitAuth;
  spool: string;
  timeoutMs: number;
  /** Where trusted checkpoints are remembered; undefined: the client's default. */
  trustDir?: string;
}

export const DEFAULT_HOOK_TIMEOUT_S = 5;
const FIELDS = ['log', 'vkey', 'token_file', 'writer_key', 'writer', 'spool', 'timeout', 'trust_dir'];

/** `$TRUSTIX_PUBLISH_CONFIG`, else `$XDG_CONFIG_HOME/trustix/publish.toml` (or ~/.config/...). */
export function defaultPublishConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.TRUSTIX_PUBLISH_CONFIG) return env.TRUSTIX_PUBLISH_CONFIG;
  const xdg = env.XDG_CONFIG_HOME;
  const base = xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.config');
  return join(base, 'trustix', 'publish.toml');
}

/** `$XDG_STATE_HOME/trustix/spool`, or `~/.local/state/trustix/spool`. */
export function defaultSpoolDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_STATE_HOME;
  const base = xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.local', 'state');
  return join(base, 'trustix', 'spool');
}

function readSmallFile(file: string, where: string): string {
  try {
    return readSecretFile(file, where);
  } catch (err) {
    if (err instanceof InsecureSecretError) throw err;
    throw new FormatError(`${where}: cannot read ${file}: ${(err as Error).message}`);
  }
}

/** Checks the fields of a publish config; file names are relative to `dir`; key files are read. */
export function parsePublishConfig(text: string, dir: string): PublishSettings {
  const doc = parseTomlTable(text);
  onlyFields(doc, FIELDS);
  const at = (p: string) => (isAbsolute(p) ? p : resolve(dir, p));
  const out: PublishSettings = {};
  if (doc.log !== undefined) out.log = checkLogUrl(nonEmptyString(doc.log, 'log'), 'log').href;
  if (doc.vkey !== undefined) out.vkey = checkVkey(nonEmptyString(doc.vkey, 'vkey'), 'vkey');
  if (doc.token_file !== undefined && doc.writer_key !== undefined) {
    throw new FormatError('give either token_file or writer_key, not both');
  }
  if (doc.writer !== undefined && doc.writer_key === undefined) {
    throw new FormatError('writer: only with writer_key');
  }
  if (doc.token_file !== undefined) {
    const token = readSmallFile(at(nonEmptyString(doc.token_file, 'token_file')), 'token_file');
    if (token === '') throw new FormatError('token_file: the file is empty');
    out.auth = { token };
  }
  if (doc.writer_key !== undefined) {
    out.auth = checkWriterKey(
      readSmallFile(at(nonEmptyString(doc.writer_key, 'writer_key')), 'writer_key'),
      'writer_key',
    );
    if (doc.writer !== undefined) out.auth.writer = nonEmptyString(doc.writer, 'writer');
  }
  if (doc.spool !== undefined) out.spool = at(nonEmptyString(doc.spool, 'spool'));
  if (doc.timeout !== undefined) {
    const n = typeof doc.timeout === 'bigint' ? Number(doc.timeout) : doc.timeout;
    if (typeof n !== 'number' || !Number.isFinite(n) || n <= 0 || n > 3600) {
      throw new FormatError('timeout: must be a number of seconds, more than 0 and at most 3600');
    }
    out.timeoutMs = n * 1000;
  }
  if (doc.trust_dir !== undefined) out.trustDir = at(nonEmptyString(doc.trust_dir, 'trust_dir'));
  return out;
}

export function checkLogUrl(text: string, where: string): URL {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new FormatError(`${where}: not a URL: ${text}`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new FormatError(`${where}: not an http(s) URL: ${text}`);
  }
  // a log prefix without its slash would lose its last segment when `submit` is resolved against it
  if (!u.pathname.endsWith('/')) u.pathname += '/';
  return u;
}

function checkVkey(text: string, where: string): string {
  try {
    return verifierFromVkey(text.trim()).vkey;
  } catch (err) {
    throw new FormatError(`${where}: ${(err as Error).message}`);
  }
}

function checkWriterKey(skey: string, where: string): { skey: string; writer?: string } {
  try {
    signerFromSkey(skey);
  } catch (err) {
    throw new FormatError(`${where}: not a writer signing key (PRIVATE+KEY+...): ${(err as Error).message}`);
  }
  return { skey };
}

/** Reads and checks a publish config file; errors name the file. */
export function readPublishConfig(file: string): PublishSettings {
  return { ...loadTomlFile(file, 'publish config', parsePublishConfig), file };
}

/** Requires the log, its key and a way to write to it; fills in the defaults. */
export function resolvePublishConfig(
  s: PublishSettings,
  env: NodeJS.ProcessEnv = process.env,
): PublishConfig {
  const where = s.file ? `publish config ${s.file}` : 'publishing';
  if (!s.log) throw new FormatError(`${where}: needs log (the URL of the builder's log)`);
  if (!s.vkey) throw new FormatError(`${where}: needs vkey (the log's verifier key)`);
  if (!s.auth) throw new FormatError(`${where}: needs token_file or writer_key`);
  return {
    ...(s.file ? { file: s.file } : {}),
    log: new URL(s.log),
    vkey: s.vkey,
    auth: s.auth,
    spool: s.spool ?? defaultSpoolDir(env),
    timeoutMs: s.timeoutMs ?? DEFAULT_HOOK_TIMEOUT_S * 1000,
    ...(s.trustDir ? { trustDir: s.trustDir } : {}),
  };
}

/** `readPublishConfig` + `resolvePublishConfig` for the file given or the default one. */
export function loadPublishConfig(file?: string, env: NodeJS.ProcessEnv = process.env): PublishConfig {
  const path = file ?? defaultPublishConfigPath(env);
  if (!file && !existsSync(path)) {
    throw new FormatError(
      `no publish config: ${path} does not exist (write one, set TRUSTIX_PUBLISH_CONFIG or pass --config)`,
    );
  }
  return resolvePublishConfig(readPublishConfig(path), env);
}

// ---------------------------------------------------------------------------------------------
// Entries of store paths.

export interface PathEntries {
  infos: NixPathInfo[];
  entries: Entry[];
  /** Paths that cannot be published (metadata too large), with the reason. */
  skipped: Array<{ path: string; reason: string }>;
}

/** What Nix recorded for `paths`, as entries. */
export async function entriesForPaths(
  paths: readonly string[],
  opts: NixQueryOptions & { onProgress?: (done: number, total: number) => void } = {},
): Promise<PathEntries> {
  const infos = await pathInfos(paths, opts);
  const out: PathEntries = { infos: [], entries: [], skipped: [] };
  for (const info of infos) {
    try {
      out.entries.push(nixEntry(info));
      out.infos.push(info);
    } catch (err) {
      if (!(err instanceof FormatError)) throw err;
      out.skipped.push({ path: info.storePath, reason: err.message });
    }
  }
  return out;
}

/** The store paths to publish: the paths themselves or, with `withClosure`, their closure. */
export async function pathsToPublish(
  paths: readonly string[],
  withClosure: boolean,
  opts: NixQueryOptions = {},
): Promise<string[]> {
  return withClosure ? closure(paths, opts) : [...new Set(paths)];
}

// ---------------------------------------------------------------------------------------------
// Delivering the spool.

export interface FlushOptions {
  /** Stop starting new requests after this time (ms since the epoch). */
  deadline?: number;
  /** 503 retries per request (the client's default is 5). */
  maxRetries?: number;
  /** Entries per request, at most. Default 5,000. */
  batchEntries?: number;
  /** Files handled so far, of the files pending when the flush started. */
  onProgress?: (doneFiles: number, totalFiles: number) => void;
}

export interface FlushResult {
  /** Files delivered and removed. */
  files: number;
  entries: number;
  appended: number;
  duplicates: number;
  /** Pending files left behind (not attempted, or put back after a failure). */
  remaining: number;
  /** Files the log refused as malformed (400), set aside as `.refused`. */
  refused: number;
  /** Why the flush stopped early, if it did. */
  error?: unknown;
  /** It stopped because the deadline passed. */
  timedOut?: boolean;
}

const DEFAULT_BATCH_ENTRIES = 5_000;
const MAX_FILES_PER_BATCH = 1_000;

/**
 * Delivers pending spool files oldest first, several per request, deleting each only after the
 * receipts of all its entries verified. Stops at the first failure (the claimed files go back to
 * the queue) or when the deadline passes, except when the log refuses a request as malformed
 * (400): then its files are tried one by one, and a file refused on its own is set aside as
 * `.refused`, so one bad file never holds up the others.
 */
export async function flushSpool(
  spool: Spool,
  client: LogClient,
  auth: SubmitAuth,
  opts: FlushOptions = {},
): Promise<FlushResult> {
  await spool.recover();
  const queue = await spool.pending();
  const total = queue.length;
  const res: FlushResult = { files: 0, entries: 0, appended: 0, duplicates: 0, remaining: 0, refused: 0 };
  const limit = opts.batchEntries ?? DEFAULT_BATCH_ENTRIES;
  let pos = 0;
  let handled = 0;
  // files of a refused request, to be tried one per request
  let alone: string[] = [];
  opts.onProgress?.(0, total);
  while (pos < queue.length || alone.length > 0) {
    if (opts.deadline !== undefined && Date.now() >= opts.deadline) {
      res.timedOut = true;
      break;
    }
    const batch: Claim[] = [];
    let n = 0;
    if (alone.length > 0) {
      const c = await spool.claim(alone.shift()!);
      if (c) batch.push(c);
    }
    while (alone.length === 0 && pos < queue.length && n < limit && batch.length < MAX_FILES_PER_BATCH) {
      const c = await spool.claim(queue[pos++]);
      handled++;
      if (!c) continue;
      batch.push(c);
      n += c.entries.length;
    }
    if (batch.length === 0) {
      opts.onProgress?.(handled, total);
      continue;
    }
    const entries = batch.length === 1 ? batch[0].entries : batch.flatMap((c) => c.entries);
    let receipts: VerifiedReceipt[];
    try {
      receipts =
        entries.length === 0
          ? []
          : await client.submit(entries, auth, {
              ...(opts.maxRetries !== undefined ? { maxRetries: opts.maxRetries } : {}),
            });
    } catch (err) {
      if (err instanceof RemoteError && err.status === 400) {
        if (batch.length === 1) {
          await spool.refuse(batch[0], describeFailure(err));
          res.refused++;
        } else {
          for (const c of batch) await spool.release(c);
          alone = batch.map((c) => c.name);
        }
        continue;
      }
      for (const c of batch) await spool.release(c);
      res.error = err;
      break;
    }
    for (const r of receipts) {
      if (r.duplicate) res.duplicates++;
      else res.appended++;
    }
    for (const c of batch) await spool.done(c);
    res.files += batch.length;
    res.entries += entries.length;
    opts.onProgress?.(handled, total);
  }
  res.remaining = (await spool.pending()).length;
  return res;
}

/** One line for a failure to deliver: unreachable, refused, or a failed check. */
export function describeFailure(err: unknown): string {
  if (err instanceof TrustixError && 'check' in err && typeof err.check === 'string') {
    return `${err.check}: ${err.message}`;
  }
  return err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------------------------------------
// The post-build hook.

export interface HookOptions {
  /** The hook's environment: DRV_PATH, OUT_PATHS, NIX_CONFIG... */
  env: NodeJS.ProcessEnv;
  config: PublishConfig;
  client: LogClient;
  /** Messages for the user (one line each). */
  say: (line: string) => void;
  query?: NixQueryOptions;
}

export interface HookResult {
  outputs: string[];
  /** Entries this run added to the spool. */
  spooled: number;
  flush?: FlushResult;
}

/**
 * Publishes the outputs of the build that just finished: their entries go to the spool first
 * (durably, so nothing is lost whatever happens next), then the spool is delivered within the
 * configured timeout. Throws only for problems before the entries are spooled (the caller reports
 * them and still exits 0).
 */
export async function runPostBuildHook(opts: HookOptions): Promise<HookResult> {
  const { env, config, client, say } = opts;
  const drv = env.DRV_PATH ?? '';
  // Nix 2.8 leaves OUT_PATHS empty: the derivation tells the outputs
  let outputs = (env.OUT_PATHS ?? '').split(/\s+/).filter((p) => p !== '');
  if (outputs.length === 0) {
    if (drv === '')
      throw new FormatError(
        'neither DRV_PATH nor OUT_PATHS is set: is this run by Nix as its post-build-hook?',
      );
    outputs = await drvOutputs(drv, { env, ...opts.query });
  }
  const { entries, skipped } = await entriesForPaths(outputs, { env, ...opts.query });
  for (const s of skipped) say(`not publishing ${s.path}: ${s.reason}`);
  const spool = new Spool(config.spool, { warn: say });
  let spooled = 0;
  if (entries.length > 0) {
    try {
      await spool.add(entries);
      spooled = entries.length;
    } catch (err) {
      // without a spool the network is the only chance left for these entries
      say(`cannot write to the spool ${config.spool}: ${(err as Error).message}`);
      try {
        await client.submit(entries, config.auth, { maxRetries: 0 });
      } catch (err2) {
        say(
          `could not publish to ${config.log.href} either (${describeFailure(err2)}); publish them later with \`trustix nix submit ${outputs.join(' ')}\``,
        );
        return { outputs, spooled: 0 };
      }
      return { outputs, spooled: 0 };
    }
  }
  const flush = await flushSpool(spool, client, config.auth, {
    deadline: Date.now() + config.timeoutMs,
    maxRetries: 0,
  });
  if (flush.error !== undefined || flush.remaining > 0) {
    const why =
      flush.error !== undefined ? describeFailure(flush.error) : 'out of time for this build (timeout)';
    say(
      `could not publish to ${config.log.href} (${why}); ${flush.remaining} file(s) wait in ${config.spool}, delivered by the next build or \`trustix nix flush\``,
    );
  }
  return { outputs, spooled, flush };
}
