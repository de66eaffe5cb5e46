// The part of fs-native-extensions (no types of its own) that src/storage/lock.ts uses.
declare module 'fs-native-extensions' {
  /** An exclusive (or `shared`) lock on the file behind `fd`: true if granted, false if held elsewhere. */
  export function tryLock(fd: number, opts?: { shared?: boolean }): boolean;
  export function unlock(fd: number): void;
}
