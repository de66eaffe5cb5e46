/**
 * Files that are whole or absent after a crash: written to a temporary name beside their place,
 * fsynced, renamed into place, and the directory fsynced, so a power loss, a SIGKILL or a full disk
 * leaves either the old state or the new one, never an empty or half-written file.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

/** The start of the names of temporary files and directories made here and by a log's creation. */
export const TEMP_MARK = '.tmp-';

/** A fresh temporary name for `path`, in its directory: `.<name>.tmp-<pid>-<random>`. */
export function tempNameFor(path: string): string {
  return join(
    dirname(path),
    `.${basename(path)}${TEMP_MARK}${process.pid}-${randomBytes(4).toString('hex')}`,
  );
}

/** Whether a directory entry is a temporary left by tempNameFor (a writer killed before its rename). */
export function isTempName(name: string): boolean {
  return name.startsWith('.') && name.includes(TEMP_MARK);
}

/** Writes `data` to `file` whole (see above); an existing `file` is replaced. */
export function writeFileDurably(file: string, data: string, mode: number): void {
  const tmp = tempNameFor(file);
  try {
    const fd = openSync(tmp, 'wx', mode);
    try {
      writeSync(fd, data);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
  fsyncPath(dirname(file));
}

/** fsyncs a file or directory by name (a directory: the names in it). */
export function fsyncPath(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
