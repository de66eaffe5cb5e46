/**
 * NAR (Nix ARchive) serialisation of a filesystem tree, streamed.
 *
 * Every token is a little-endian u64 length, the bytes, and zero padding to a multiple of 8.
 * Only what Nix records survives: node type, the owner-executable bit of regular files, symlink
 * targets and directory entries sorted by name as bytes. Times, owners and other modes do not.
 */
import { createHash } from 'node:crypto';
import { constants as fsc, type Stats } from 'node:fs';
import { lstat, open, readdir, readlink } from 'node:fs/promises';
import { FormatError } from '../core/errors.js';

export const NAR_MAGIC = 'nix-archive-1';

/** Output is coalesced into chunks of about this size (file contents may arrive in larger ones). */
const CHUNK = 64 * 1024;
/** Read size for file contents. */
const READ = 256 * 1024;

const PAD = Buffer.alloc(8);

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

/** A complete string token: length, bytes, padding. */
function token(s: string | Buffer): Buffer {
  const bytes = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
  const pad = (8 - (bytes.length % 8)) % 8;
  const out = Buffer.alloc(8 + bytes.length + pad);
  out.writeBigUInt64LE(BigInt(bytes.length));
  bytes.copy(out, 8);
  return out;
}

// Tokens that every archive repeats, built once.
const T = {
  magic: token(NAR_MAGIC),
  open: token('('),
  close: token(')'),
  type: token('type'),
  regular: token('regular'),
  executable: Buffer.concat([token('executable'), token('')]),
  contents: token('contents'),
  symlink: token('symlink'),
  target: token('target'),
  directory: token('directory'),
  entry: token('entry'),
  name: token('name'),
  node: token('node'),
};

const SLASH = Buffer.from('/');

function unsupported(path: Buffer, st: Stats): FormatError {
  const kind = st.isSocket()
    ? 'a socket'
    : st.isFIFO()
      ? 'a FIFO'
      : st.isCharacterDevice()
        ? 'a character device'
        : st.isBlockDevice()
          ? 'a block device'
          : 'of an unknown type';
  return new FormatError(
    `cannot archive ${path.toString()}: it is ${kind} (NAR holds files, symlinks, directories)`,
  );
}

/** Yields the raw pieces of the archive of `path` (which is already known to have `st`). */
async function* node(path: Buffer, st: Stats): AsyncGenerator<Buffer> {
  yield T.open;
  yield T.type;
  if (st.isFile()) {
    yield T.regular;
    // Nix looks only at the owner's execute bit.
    if (st.mode & fsc.S_IXUSR) yield T.executable;
    yield T.contents;
    yield* contents(path, st.size);
  } else if (st.isSymbolicLink()) {
    yield T.symlink;
    yield T.target;
    yield token(await readlink(path, { encoding: 'buffer' }));
  } else if (st.isDirectory()) {
    yield T.directory;
    const names = await readdir(path, { encoding: 'buffer' });
    names.sort(Buffer.compare);
    const prefix = Buffer.concat([path, SLASH]);
    for (const name of names) {
      const child = Buffer.concat([prefix, name]);
      const cst = await lstat(child);
      yield T.entry;
      yield T.open;
      yield T.name;
      yield token(name);
      yield T.node;
      yield* node(child, cst);
      yield T.close;
    }
  } else {
    throw unsupported(path, st);
  }
  yield T.close;
}

/**
 * File contents as one token, read in bounded pieces. The length (from the caller's lstat) goes
 * out before the bytes, so a file that grows or shrinks while being read would make a corrupt
 * archive: that is an error. The last read asks for one byte more to notice growth without an
 * extra call; O_NOFOLLOW refuses a file swapped for a symlink after the lstat.
 */
async function* contents(path: Buffer, size: number): AsyncGenerator<Buffer> {
  yield u64(size);
  const fh = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  try {
    let done = 0;
    for (;;) {
      const last = size - done <= READ;
      const want = last ? size - done + 1 : READ;
      const buf = Buffer.allocUnsafe(want);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await fh.read(buf, got, want - got, done + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      if (last) {
        if (got < want - 1) throw new FormatError(`${path.toString()} shrank while being archived`);
        if (got === want) throw new FormatError(`${path.toString()} grew while being archived`);
        if (got > 0) yield buf.subarray(0, got);
        break;
      }
      if (got < want) throw new FormatError(`${path.toString()} shrank while being archived`);
      done += got;
      yield buf;
    }
    const pad = (8 - (size % 8)) % 8;
    if (pad > 0) yield PAD.subarray(0, pad);
  } finally {
    await fh.close();
  }
}

/**
 * The NAR of the file, symlink or directory at `path` (not followed if it is a symlink), as a
 * stream of chunks. Small tokens are gathered into chunks of about 64 KiB; chunks are never
 * reused, so a consumer may keep them. Sockets, FIFOs and devices throw FormatError.
 */
export async function* narStream(path: string): AsyncGenerator<Buffer> {
  const root = Buffer.from(path);
  const st = await lstat(root);
  let pending: Buffer[] = [T.magic];
  let pendingLen = T.magic.length;
  for await (const piece of node(root, st)) {
    if (piece.length >= CHUNK) {
      if (pendingLen > 0) {
        yield Buffer.concat(pending, pendingLen);
        pending = [];
        pendingLen = 0;
      }
      yield piece;
      continue;
    }
    pending.push(piece);
    pendingLen += piece.length;
    if (pendingLen >= CHUNK) {
      yield Buffer.concat(pending, pendingLen);
      pending = [];
      pendingLen = 0;
    }
  }
  if (pendingLen > 0) yield Buffer.concat(pending, pendingLen);
}

/** The whole NAR of `path` in memory: for small trees and tests; prefer `narStream`. */
export async function narBytes(path: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of narStream(path)) parts.push(chunk);
  return Buffer.concat(parts);
}

export interface NarHash {
  /** SHA-256 of the NAR (32 bytes). */
  hash: Buffer;
  /** NAR length in bytes. */
  size: number;
}

/** SHA-256 and size of the NAR of `path`, streamed: what `nix-store -q --hash` reports. */
export async function narHash(path: string): Promise<NarHash> {
  const h = createHash('sha256');
  let size = 0;
  for await (const chunk of narStream(path)) {
    h.update(chunk);
    size += chunk.length;
  }
  return { hash: h.digest(), size };
}
