/**
 * Lookup answers (JSON text) for the latest checkpoint, least recently used dropped first. An answer
 * is served from here only while the log's head is still the checkpoint it carries, so a cached
 * answer is byte for byte what a fresh lookup would give, and never older than the head.
 */
export class LookupCache<Body = string> {
  private readonly map = new Map<string, { size: number; body: Body }>();

  constructor(readonly capacity: number) {}

  get(key: string, headSize: number): Body | undefined {
    const e = this.map.get(key);
    if (e === undefined) return undefined;
    this.map.delete(key);
    if (e.size !== headSize) return undefined;
    // re-inserting moves it to the back: Map iteration order is the eviction order
    this.map.set(key, e);
    return e.body;
  }

  set(key: string, size: number, body: Body): void {
    if (this.capacity === 0) return;
    if (this.map.size >= this.capacity) this.map.delete(this.map.keys().next().value!);
    this.map.set(key, { size, body });
  }

  /** Forgets every answer (the note served for the current checkpoint changed). */
  clear(): void {
    this.map.clear();
  }

  get size(): number {
    return this.map.size;
  }
}

/** Tree size of a checkpoint note: its second line. */
export function checkpointSize(note: string): number {
  const a = note.indexOf('\n');
  return Number(note.slice(a + 1, note.indexOf('\n', a + 1)));
}
