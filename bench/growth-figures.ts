// The figures of bench/growth.ts that need no log: reading /proc, one million's row, the ratios.
import { readFileSync } from 'node:fs';

/** Bytes this process (all its threads) had the kernel read from and write to storage. */
export interface DiskIo {
  readBytes: number;
  writeBytes: number;
}

/** Parses the text of /proc/<pid>/io; undefined if either field is missing. */
export function parseProcIo(text: string): DiskIo | undefined {
  const field = (name: string) => {
    const m = new RegExp(`^${name}:\\s*(\\d+)$`, 'm').exec(text);
    return m ? Number(m[1]) : undefined;
  };
  const readBytes = field('read_bytes');
  const writeBytes = field('write_bytes');
  return readBytes === undefined || writeBytes === undefined ? undefined : { readBytes, writeBytes };
}

/** /proc/self/io, or zeros where it cannot be read (not Linux, or no task I/O accounting). */
export function diskIo(): DiskIo {
  try {
    return parseProcIo(readFileSync('/proc/self/io', 'utf8')) ?? { readBytes: 0, writeBytes: 0 };
  } catch {
    return { readBytes: 0, writeBytes: 0 };
  }
}

/** One row of the curve: what the last step of entries cost, and lookups at the size reached. */
export interface GrowthRow {
  size: number;
  entries_per_s: number;
  cpu_us_per_entry: number;
  /** The part of cpu_us_per_entry spent in the kernel (page faults, writeback, fsync). */
  sys_us_per_entry: number;
  written_bytes_per_entry: number;
  written_mib_per_batch: number;
  /** Bytes of sparse index rows committed per entry (rows are rewritten whole when they change). */
  strata_bytes_per_entry: number;
  read_bytes_per_entry: number;
  major_faults_per_entry: number;
  minor_faults_per_entry: number;
  lookups_per_s: number;
  cpu_us_per_op: number;
  minor_faults_per_op: number;
  major_faults_per_op: number;
  rss_mib: number;
  anon_mib: number;
  peak_anon_mib: number;
  store_bytes: number;
  store_bytes_per_entry: number;
  /** Share of present-key lookups whose leaf tile came from the log's tile cache. */
  leaf_tile_hit_rate: number;
  /** Reads from the store per lookup: tiles above the leaves. */
  upper_tile_reads_per_op: number;
  /** Reads from the store per lookup, by strata level (tops at depths 0, 8, 16, 20, 24, ...). */
  strata_reads_per_op: number[];
  load_1m: number;
}

export interface GrowthRatios {
  cpu_us_per_entry: number;
  cpu_us_per_op: number;
}

/** Cost at the larger size over cost at the smaller one (1 = flat). */
export function growthRatios(small: GrowthRow, large: GrowthRow): GrowthRatios {
  const r = (a: number, b: number) => Math.round((b / a) * 100) / 100;
  return {
    cpu_us_per_entry: r(small.cpu_us_per_entry, large.cpu_us_per_entry),
    cpu_us_per_op: r(small.cpu_us_per_op, large.cpu_us_per_op),
  };
}

/** The ratios above `limit`, as sentences; empty when both are within it. */
export function ratiosOver(ratios: GrowthRatios, limit: number): string[] {
  return Object.entries(ratios)
    .filter(([, v]) => !(v <= limit))
    .map(([k, v]) =>
      Number.isFinite(v) ? `${k} grew ${v}x, above the ${limit}x limit` : `${k} could not be compared (${v})`,
    );
}

const int = (n: number) => Math.round(n).toLocaleString('en-US');

/** The row as one line for people. */
export function formatRow(row: GrowthRow): string {
  return [
    `${int(row.size)}:`,
    `ingest ${int(row.entries_per_s)}/s, ${row.cpu_us_per_entry} us CPU/entry (${row.sys_us_per_entry} kernel),`,
    `${int(row.written_bytes_per_entry)} B written/entry (${int(row.written_mib_per_batch)} MiB/batch),`,
    `index rows ${int(row.strata_bytes_per_entry)} B/entry,`,
    `faults/entry ${row.minor_faults_per_entry} minor ${row.major_faults_per_entry} major;`,
    `lookups ${int(row.lookups_per_s)}/s, ${row.cpu_us_per_op} us CPU/op,`,
    `leaf tile hits ${Math.round(row.leaf_tile_hit_rate * 100)}%;`,
    `RSS ${int(row.rss_mib)} MiB (anon ${int(row.anon_mib)}, peak ${int(row.peak_anon_mib)});`,
    `store ${int(row.store_bytes / 2 ** 20)} MiB (${int(row.store_bytes_per_entry)} B/entry);`,
    `load ${row.load_1m}`,
  ].join(' ');
}
