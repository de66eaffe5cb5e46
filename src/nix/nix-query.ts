/**
 * Asks the real Nix about store paths through `nix-store` child processes (no shell). The caller's
 * environment is passed on: inside a post-build hook `NIX_CONFIG` already names the store that
 * built the path. Hashes are the ones Nix recorded when it registered each path; recomputing them
 * would read every output again.
 */
import { execFile } from 'node:child_process';
import { readlink } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import { TrustixError } from '../core/errors.js';
import { decodeNix32 } from './base32.js';
import type { NixPathInfo } from './entry.js';
import { isStorePath, NIX_STORE_DIR, parseStorePath } from './store-path.js';

/** `nix-store` is missing, failed, timed out or printed something unexpected. */
export class NixStoreError extends TrustixError {
  constructor(
    message: string,
    readonly stderr = '',
    options?: { cause?: unknown },
  ) {
    super('NIX_STORE', message, options);
  }
}

export interface NixQueryOptions {
  /** `--store S` for every call (a chroot store, `daemon`...); default: whatever Nix is configured with. */
  store?: string | undefined;
  /** Environment of the child processes. Default: this process's. */
  env?: NodeJS.ProcessEnv;
  /** The `nix-store` executable. Default `nix-store` from PATH. */
  nixStore?: string;
  /** Deadline for each call. Default 60 s. */
  timeoutMs?: number;
}

/** Paths per call: keeps argv far below the kernel's limit. */
const CHUNK = 500;
const MAX_OUTPUT = 256 * 1024 * 1024;

/** Runs `nix-store [--store S] ARGS` and returns its stdout. */
export function runNixStore(args: readonly string[], opts: NixQueryOptions = {}): Promise<string> {
  const bin = opts.nixStore ?? 'nix-store';
  const full = opts.store !== undefined ? ['--store', opts.store, ...args] : [...args];
  return new Promise((resolvePromise, reject) => {
    execFile(
      bin,
      full,
      {
        env: opts.env ?? process.env,
        timeout: opts.timeoutMs ?? 60_000,
        killSignal: 'SIGKILL',
        maxBuffer: MAX_OUTPUT,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        if (!err) {
          resolvePromise(stdout);
          return;
        }
        const e = err as NodeJS.ErrnoException & { killed?: boolean; signal?: string | null };
        const what = `${bin} ${args.slice(0, 3).join(' ')}${args.length > 3 ? ' ...' : ''}`;
        if (e.code === 'ENOENT') {
          reject(new NixStoreError(`${bin} not found: is Nix installed and on PATH?`, '', { cause: err }));
          return;
        }
        if (e.killed || e.signal) {
          reject(new NixStoreError(`${what}: stopped (${e.signal ?? 'timeout'})`, stderr, { cause: err }));
          return;
        }
        const msg = lastErrorLine(stderr) ?? e.message;
        reject(new NixStoreError(`${what}: ${msg}`, stderr, { cause: err }));
      },
    );
  });
}

/** The most useful line of Nix's stderr: its `error: ...` line, else the last non-empty one. */
function lastErrorLine(stderr: string): string | undefined {
  const lines = stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
  const err = lines.find((l) => l.startsWith('error:'));
  return (err ?? lines[lines.length - 1])?.replace(/^error:\s*/, '');
}

function lines(stdout: string): string[] {
  return stdout.split('\n').filter((l) => l !== '');
}

function checkStorePaths(paths: readonly string[], what: string): void {
  for (const p of paths) {
    if (!isStorePath(p)) throw new NixStoreError(`${what}: not a store path: ${JSON.stringify(p)}`);
  }
}

/** The output paths of a derivation (`nix-store -q --outputs DRV`). */
export async function drvOutputs(drvPath: string, opts: NixQueryOptions = {}): Promise<string[]> {
  const out = lines(await runNixStore(['-q', '--outputs', drvPath], opts));
  checkStorePaths(out, `nix-store -q --outputs ${drvPath}`);
  return out;
}

/** Every path in the closure of `paths` (`nix-store -qR`), each once, in Nix's order per call. */
export async function closure(paths: readonly string[], opts: NixQueryOptions = {}): Promise<string[]> {
  const seen = new Set<string>();
  for (let i = 0; i < paths.length; i += CHUNK) {
    const out = lines(await runNixStore(['-qR', ...paths.slice(i, i + CHUNK)], opts));
    checkStorePaths(out, 'nix-store -qR');
    for (const p of out) seen.add(p);
  }
  return [...seen];
}

/**
 * What Nix recorded for each path: NAR hash, NAR size, references, deriver. A path that is not
 * valid in the store is a NixStoreError naming it (Nix's own message).
 *
 * Read with `nix-store --dump-db PATHS` (Nix's validity registration: per path its name, NAR
 * sha256 in hex, NAR size, deriver or an empty line, the reference count, the references), one
 * call for many paths; `--references` would merge the references of all the paths it is given.
 */
export async function pathInfos(
  paths: readonly string[],
  opts: NixQueryOptions & { onProgress?: (done: number, total: number) => void } = {},
): Promise<NixPathInfo[]> {
  const unique = [...new Set(paths)];
  checkStorePaths(unique, 'path info');
  const byPath = new Map<string, NixPathInfo>();
  for (let i = 0; i < unique.length; i += CHUNK) {
    const chunk = unique.slice(i, i + CHUNK);
    const stdout = await runNixStore(['--dump-db', ...chunk], opts);
    for (const info of parseDumpDb(stdout)) byPath.set(info.storePath, info);
    for (const p of chunk) {
      if (!byPath.has(p)) throw new NixStoreError(`nix-store --dump-db said nothing about ${p}`);
    }
    opts.onProgress?.(Math.min(unique.length, i + CHUNK), unique.length);
  }
  return paths.map((p) => byPath.get(p)!);
}

/** Parses Nix's validity registration format (see `pathInfos`). */
export function parseDumpDb(text: string): NixPathInfo[] {
  const l = text.split('\n');
  if (l.length > 0 && l[l.length - 1] === '') l.pop();
  const out: NixPathInfo[] = [];
  let i = 0;
  const bad = (why: string) =>
    new NixStoreError(`unexpected output of nix-store --dump-db at line ${i + 1}: ${why}`);
  const next = (): string => {
    if (i >= l.length) throw bad('truncated');
    return l[i++];
  };
  while (i < l.length) {
    const storePath = next();
    if (!isStorePath(storePath)) throw bad(`not a store path: ${JSON.stringify(storePath)}`);
    const hex = next();
    if (!/^[0-9a-f]{64}$/.test(hex)) throw bad('expected a sha256 in hex');
    const size = next();
    if (!/^(?:0|[1-9][0-9]*)$/.test(size) || !Number.isSafeInteger(Number(size))) throw bad('bad NAR size');
    const deriver = next();
    if (deriver !== '' && !isStorePath(deriver)) throw bad('bad deriver');
    const count = next();
    if (!/^(?:0|[1-9][0-9]*)$/.test(count)) throw bad('bad reference count');
    const references: string[] = [];
    for (let k = Number(count); k > 0; k--) {
      const r = next();
      if (!isStorePath(r)) throw bad(`bad reference ${JSON.stringify(r)}`);
      references.push(r);
    }
    out.push({
      storePath,
      narHash: Buffer.from(hex, 'hex'),
      narSize: Number(size),
      references,
      ...(deriver !== '' ? { deriver } : {}),
    });
  }
  return out;
}

/** The NAR hashes Nix reports with `nix-store -q --hash` (`sha256:<nix32>`), in order. */
export async function narHashes(paths: readonly string[], opts: NixQueryOptions = {}): Promise<Buffer[]> {
  checkStorePaths(paths, 'nix-store -q --hash');
  const out: Buffer[] = [];
  for (let i = 0; i < paths.length; i += CHUNK) {
    const chunk = paths.slice(i, i + CHUNK);
    const got = lines(await runNixStore(['-q', '--hash', ...chunk], opts));
    if (got.length !== chunk.length)
      throw new NixStoreError('nix-store -q --hash: one line per path expected');
    for (const h of got) out.push(parseNixSha256(h));
  }
  return out;
}

/** `sha256:<52 nix32 characters>` as 32 bytes. */
export function parseNixSha256(text: string): Buffer {
  if (!text.startsWith('sha256:')) throw new NixStoreError(`not a sha256 hash: ${JSON.stringify(text)}`);
  try {
    return decodeNix32(text.slice(7), 32);
  } catch (err) {
    throw new NixStoreError(`bad hash ${JSON.stringify(text)}: ${(err as Error).message}`, '', {
      cause: err,
    });
  }
}

/**
 * A command-line argument as a store path: a store path itself, or a symlink that leads to one
 * (like `./result`, which points at the logical /nix/store path even for a chroot store).
 * Sub-paths inside a store path are refused.
 */
export async function toStorePath(arg: string): Promise<string> {
  let p = arg;
  for (let hops = 0; hops < 40; hops++) {
    if (p.startsWith(`${NIX_STORE_DIR}/`)) {
      const trimmed = p.replace(/\/+$/, '');
      try {
        return parseStorePath(trimmed).path;
      } catch (err) {
        throw new NixStoreError(`${arg}: ${(err as Error).message}`, '', { cause: err });
      }
    }
    let target: string;
    try {
      target = await readlink(p);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? 'no such file' : code === 'EINVAL' ? 'not a store path' : code;
      throw new NixStoreError(`${arg}: ${why} (give a /nix/store path or a link to one)`, '', { cause: err });
    }
    p = isAbsolute(target) ? target : resolve(p, '..', target);
  }
  throw new NixStoreError(`${arg}: too many levels of symbolic links`);
}
