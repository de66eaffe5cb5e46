/**
 * Every value a log holds for one key, oldest first (`trustix lookup --history`). The sparse
 * index points at the latest entry of a key only; the earlier ones are still in the log, so they
 * are found by reading the entries in order: from the log's own store with `--state`, or as entry
 * bundles from a remote log (a download of the whole log, as `audit` does).
 */
import { decodeEntry, type Entry } from '../core/entry.js';

export interface HistoryItem {
  index: number;
  entry: Entry;
  /** The entry's encoding, as the log holds it. */
  data: Buffer;
}

/**
 * The entries with `protocol` and `key` among `chunks` (the entries from index `start` on, in
 * order, in chunks of any size).
 */
export async function keyHistory(
  chunks: AsyncIterable<readonly Uint8Array[]> | Iterable<readonly Uint8Array[]>,
  protocol: string,
  key: Uint8Array,
  start = 0,
): Promise<HistoryItem[]> {
  const out: HistoryItem[] = [];
  const k = Buffer.from(key);
  let index = start;
  for await (const chunk of chunks) {
    for (const raw of chunk) {
      const data = Buffer.from(raw);
      const e = decodeEntry(data);
      if (e.protocol === protocol && e.key.equals(k)) out.push({ index, entry: e, data });
      index++;
    }
  }
  return out;
}
