/**
 * Publishing a builder's results to its own Trustix log (docs/nix.md, "Publishing"): the
 * publisher's configuration, delivering the spool, the post-build hook and publishing existing
 * store paths. The CLI (src/cli/commands/nix.ts) is a thin layer over this.
 */
import { existsSync, type FSWatcher, watch } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import type { LogClient, SubmitAuth, VerifiedReceipt } from '../client/client.js';
import { RemoteError } from '../client/errors.js';
import { InsecureSecretError, readSecretFile } from '../config/secret.js';
import { loadTomlFile, nonEmptyString, onlyFields, parseTomlTable } from '../config/toml.js';
import type { Entry } from '../core/entry.js';
import { FormatError, TrustixError } from '../core/errors.js';
import { signerFromSkey, verifierFromVkey } from '../core/note.js';
import { type NixPathInfo, nixEntry } from './entry.js';
import { closure, drvOutputs, type NixQueryOptions, NixStoreError, pathInfos } from './nix-query.js';
import { type Claim, REJECTED_DIR, type Spool, storeOfNixConfig } from './spool.js';

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
  /** Deadline of each request to the log, ms. */
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

export const DEFAULT_TIMEOUT_S = 5;
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
    timeoutMs: s.timeoutMs ?? DEFAULT_TIMEOUT_S * 1000,
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
  /** How `nix-store` is run to turn recorded builds into entries. */
  query?: NixQueryOptions;
  /** Start no new work once this aborts (what is pending stays pending). */
  signal?: AbortSignal;
}

export interface FlushResult {
  /** Builds recorded by the hook that were turned into entries files. */
  builds: number;
  /** Files delivered and removed. */
  files: number;
  entries: number;
  appended: number;
  duplicates: number;
  /** Pending files left behind (not attempted, or put back after a failure). */
  remaining: number;
  /** Files set aside for good in `rejected/` by this flush (refused by the log, outputs gone). */
  rejected: number;
  /** Why the flush stopped early, if it did. */
  error?: unknown;
  /** It stopped because the deadline passed. */
  timedOut?: boolean;
}

const DEFAULT_BATCH_ENTRIES = 5_000;
const MAX_FILES_PER_BATCH = 1_000;

/**
 * Turns the builds the hook recorded into entries files, oldest first, each dated as its build.
 * A build whose paths are no longer valid in the store (collected before the publisher saw them)
 * is set aside in `rejected/`; any other failure of `nix-store` stops here (the record goes back
 * to the queue) and is returned.
 */
export async function spoolBuilds(
  spool: Spool,
  opts: { query?: NixQueryOptions; say?: (line: string) => void; signal?: AbortSignal } = {},
): Promise<{ builds: number; rejected: number; error?: unknown }> {
  const out: { builds: number; rejected: number; error?: unknown } = { builds: 0, rejected: 0 };
  for (const name of await spool.pendingBuilds()) {
    if (opts.signal?.aborted) break;
    const c = await spool.claimBuild(name);
    if (!c) continue;
    const { drv, outputs, store } = c.record;
    const query: NixQueryOptions = { ...opts.query, ...(store !== '' ? { store } : {}) };
    try {
      const paths = outputs.length > 0 ? outputs : await drvOutputs(drv, query);
      const { entries, skipped } = await entriesForPaths(paths, query);
      for (const s of skipped) opts.say?.(`not publishing ${s.path}: ${s.reason}`);
      if (entries.length > 0) await spool.add(entries, c.recorded);
      await spool.done(c);
      out.builds++;
    } catch (err) {
      if (
        err instanceof NixStoreError &&
        /is not valid|does not exist|said nothing about|not a store path/.test(err.message)
      ) {
        await spool.reject(c, `build ${drv || outputs.join(' ')}: ${err.message}`);
        out.rejected++;
        continue;
      }
      await spool.release(c);
      out.error = err;
      break;
    }
  }
  return out;
}

/** The log refuses this request for good, whatever the moment: malformed (400) or too large (413). */
function refusedForGood(err: unknown): boolean {
  return err instanceof RemoteError && (err.status === 400 || err.status === 413);
}

/**
 * Turns recorded builds into entries (`spoolBuilds`), then delivers pending spool files oldest
 * first, several per request, deleting each only after the receipts of all its entries verified.
 * Stops at the first failure (the claimed files go back to the queue) or when the deadline
 * passes, except when the log refuses a request for good (400 malformed, 413 too large): then its
 * files are tried one by one, and a file refused on its own is set aside in `rejected/` with the
 * reason, so one bad file never holds up the others.
 */
export async function flushSpool(
  spool: Spool,
  client: LogClient,
  auth: SubmitAuth,
  opts: FlushOptions = {},
): Promise<FlushResult> {
  await spool.recover();
  const built = await spoolBuilds(spool, {
    ...(opts.query ? { query: opts.query } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
    say: spool.warn,
  });
  const queue = await spool.pending();
  const total = queue.length;
  const res: FlushResult = {
    builds: built.builds,
    files: 0,
    entries: 0,
    appended: 0,
    duplicates: 0,
    remaining: 0,
    rejected: built.rejected,
  };
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
    if (opts.signal?.aborted) break;
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
      if (refusedForGood(err)) {
        if (batch.length === 1) {
          await spool.reject(batch[0], `refused by the log: ${describeFailure(err)}`);
          res.rejected++;
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
  res.error ??= built.error;
  res.remaining = (await spool.pending()).length + (await spool.pendingBuilds()).length;
  return res;
}

/** One line for a failure to deliver: unreachable, refused, or a failed check. */
export function describeFailure(err: unknown): string {
  if (err instanceof TrustixError && 'check' in err && typeof err.check === 'string') {
    return `${err.check}: ${err.message}`;
  }
  return err instanceof Error ? err.message : String(err);
}

/** One line for what a flush did (the publisher logs it; `nix flush` prints it). */
export function describeFlush(r: FlushResult): string {
  const parts: string[] = [];
  if (r.builds > 0) parts.push(`${r.builds} build(s) read from the store`);
  parts.push(
    `delivered ${r.entries} entries from ${r.files} file(s): ${r.appended} new, ${r.duplicates} already present`,
  );
  if (r.rejected > 0) parts.push(`${r.rejected} file(s) set aside in ${REJECTED_DIR}/`);
  if (r.remaining > 0) parts.push(`${r.remaining} file(s) wait`);
  return parts.join('; ');
}

export interface PublisherOptions {
  spool: Spool;
  client: LogClient;
  auth: SubmitAuth;
  /** Messages for the operator (one line each). */
  say: (line: string) => void;
  /** The periodic scan (a backstop for missed file system events) and the longest retry wait, ms. */
  intervalMs: number;
  /** Stops the publisher: the delivery in progress ends after its current request. */
  signal: AbortSignal;
  query?: NixQueryOptions;
}

/** The first wait after a failed delivery, ms; it doubles up to `intervalMs`. */
const FIRST_RETRY_MS = 1_000;

/**
 * `trustix nix publish`: delivers the spool whenever a file appears in it (`fs.watch`) and every
 * `intervalMs` in any case, one flush at a time; after a failure it waits (1 s, doubling up to
 * `intervalMs`) before the next attempt. Returns when `signal` aborts.
 */
export async function runPublisher(o: PublisherOptions): Promise<void> {
  await mkdir(o.spool.dir, { recursive: true, mode: 0o700 });
  let dirty = true;
  let wake: (() => void) | undefined;
  const poke = () => {
    dirty = true;
    wake?.();
  };
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(o.spool.dir, poke);
    watcher.on('error', (err) => {
      o.say(`watching ${o.spool.dir} failed (${err.message}); scanning every ${o.intervalMs / 1000} s`);
      watcher?.close();
    });
  } catch (err) {
    o.say(`cannot watch ${o.spool.dir} (${(err as Error).message}); scanning every ${o.intervalMs / 1000} s`);
  }
  const timer = setInterval(poke, o.intervalMs);
  o.signal.addEventListener('abort', poke, { once: true });
  // an abort ends the wait early; the loop then sees it
  const sleep = (ms: number) => delay(ms, undefined, { signal: o.signal }).catch(() => {});
  let retryMs = 0;
  try {
    while (!o.signal.aborted) {
      if (!dirty) {
        await new Promise<void>((r) => {
          wake = r;
        });
        wake = undefined;
        continue;
      }
      dirty = false;
      const r = await flushSpool(o.spool, o.client, o.auth, {
        maxRetries: 0,
        signal: o.signal,
        ...(o.query ? { query: o.query } : {}),
      });
      if (r.error !== undefined) {
        retryMs = Math.min(o.intervalMs, retryMs === 0 ? FIRST_RETRY_MS : retryMs * 2);
        o.say(
          `${describeFlush(r)}; then failed: ${describeFailure(r.error)}; next try in ${retryMs / 1000} s`,
        );
        await sleep(retryMs);
        dirty = true;
        continue;
      }
      retryMs = 0;
      if (r.files > 0 || r.builds > 0 || r.rejected > 0) o.say(describeFlush(r));
    }
  } finally {
    clearInterval(timer);
    watcher?.close();
  }
}

// ---------------------------------------------------------------------------------------------
// The post-build hook.

/**
 * What the post-build hook does: records the build that just finished (Nix's `DRV_PATH` and
 * `OUT_PATHS`, and the store named in `NIX_CONFIG`) durably in the spool, and nothing else: no
 * store query and no network, so the build waits for one small fsync'd file. The publisher
 * (`trustix nix publish` or `trustix nix flush`) reads the outputs from the store and delivers
 * them. Returns the record's file name.
 */
export async function recordBuild(env: NodeJS.ProcessEnv, spool: Spool): Promise<string> {
  const drv = env.DRV_PATH ?? '';
  const outputs = (env.OUT_PATHS ?? '').split(/\s+/).filter((p) => p !== '');
  if (drv === '' && outputs.length === 0) {
    throw new FormatError(
      'neither DRV_PATH nor OUT_PATHS is set: is this run by Nix as its post-build-hook?',
    );
  }
  return spool.addBuild({ drv, outputs, store: storeOfNixConfig(env.NIX_CONFIG) });
}

/** `/var/log/trustix-hook.log` for root, else `$XDG_STATE_HOME/trustix/hook.log` (or ~/.local/state/...). */
export function defaultHookLog(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? 0): string {
  if (uid === 0) return '/var/log/trustix-hook.log';
  return join(dirname(defaultSpoolDir(env)), 'hook.log');
}

export interface HookWrapperPaths {
  spool: string;
  log: string;
  /**
   * Absolute paths of the programs the wrapper runs (found when it is installed). With `bash`
   * (5 or later: \`EPOCHREALTIME\`) the wrapper reads the clock without running `date`.
   */
  tools: { bash?: string; date: string; mkdir: string; mv: string; sync: string };
}

/** Single-quoted for sh. */
function shQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/**
 * The post-build hook as a shell script (`trustix nix install-hook` writes it): it writes the same
 * build record as `recordBuild` with shell built-ins and the absolute paths of `mv` and `sync`
 * (and `date` or `mkdir` when needed), so it needs nothing from PATH (Nix runs hooks with its
 * own), starts no Node.js, and exits 0 whatever happens; why a record could not be written goes
 * to `log` and stderr. POSIX sh, run by bash when there is one, whose clock saves running `date`.
 */
export function hookWrapperScript(p: HookWrapperPaths): string {
  const t = p.tools;
  return `#!${t.bash ?? '/bin/sh'}
# Trustix post-build hook, written by \`trustix nix install-hook\`. Nix runs it after every build.
# It records the build in the spool and returns; \`trustix nix publish\` (or \`trustix nix flush\`)
# reads the outputs from the store and delivers them to the log. It always exits 0, so it never
# fails a build; when it cannot record a build it says why in the log file below.
spool=${shQuote(p.spool)}
log=${shQuote(p.log)}
fail() {
  printf '%s trustix post-build-hook: %s: %s\\n' "$now" "\${DRV_PATH:-?}" "$1" >&2
  printf '%s trustix post-build-hook: %s: %s\\n' "$now" "\${DRV_PATH:-?}" "$1" >>"$log" 2>/dev/null
  exit 0
}
# nanoseconds since the epoch: bash's clock (seconds.microseconds), else date
case \${EPOCHREALTIME:-} in
[0-9]*[.,][0-9][0-9][0-9][0-9][0-9][0-9]) now=\${EPOCHREALTIME%[.,]*}\${EPOCHREALTIME#*[.,]}000 ;;
*) now=$(${shQuote(t.date)} +%s%N 2>/dev/null) || now= ;;
esac
case $now in [0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]) ;; *) fail "cannot read the clock with ${t.date}" ;; esac
[ -n "\${DRV_PATH:-}\${OUT_PATHS:-}" ] || fail 'neither DRV_PATH nor OUT_PATHS is set: not run by Nix as its post-build-hook?'
# the store the build ran in: the "store = ..." line of the settings Nix passes in NIX_CONFIG
cfg="
\${NIX_CONFIG:-}"
store=
case $cfg in *"
store = "*) store=\${cfg#*"
store = "}; store=\${store%%"
"*} ;; esac
# records readable by the spool's group (a publisher running as another user, see systemd/)
umask 027
[ -d "$spool" ] || ${shQuote(t.mkdir)} -p "$spool" 2>/dev/null || fail "cannot create the spool $spool"
name="$now-$$.build"
tmp="$spool/.$name.tmp"
printf 'trustix-build 1\\ndrv=%s\\nout=%s\\nstore=%s\\n' "\${DRV_PATH:-}" "\${OUT_PATHS:-}" "$store" >"$tmp" 2>/dev/null || fail "cannot write $tmp"
${shQuote(t.mv)} -f "$tmp" "$spool/$name" 2>/dev/null || fail "cannot rename $tmp"
# one sync for the record and its name; a crash before it returns may leave an empty record,
# which the publisher sets aside as unreadable
${shQuote(t.sync)} "$spool/$name" "$spool" 2>/dev/null || fail "cannot sync the spool $spool (the record $name may not survive a crash)"
exit 0
`;
}
