/**
 * The trust store of the long-running proxy: the file store (src/client/trust-store.ts) read at
 * most once a second per log instead of on every lookup (an open, stat, read and close per log per
 * cold narinfo was the largest part of the proxy's CPU). Writes go straight to the file store,
 * whose compare-and-set still decides: a value another process wrote meanwhile makes it fail with
 * the current one, which the client reconciles as it would without the cache.
 */
import {
  type CompareAndSetResult,
  type LogIdentity,
  logFileStem,
  type TrustStore,
} from '../client/trust-store.js';

export class CachedTrustStore implements TrustStore {
  private readonly cache = new Map<string, { value: Promise<string | undefined>; at: number }>();

  constructor(
    private readonly inner: TrustStore,
    private readonly maxAgeMs = 1000,
  ) {}

  get(log: LogIdentity): Promise<string | undefined> {
    const key = logFileStem(log);
    const now = Date.now();
    const hit = this.cache.get(key);
    if (hit !== undefined && now - hit.at < this.maxAgeMs) return hit.value;
    const value = this.inner.get(log);
    this.cache.set(key, { value, at: now });
    value.catch(() => this.cache.delete(key));
    return value;
  }

  async compareAndSet(
    log: LogIdentity,
    expected: string | undefined,
    next: string,
    info?: { size?: number; source?: string },
  ): Promise<CompareAndSetResult> {
    const key = logFileStem(log);
    try {
      const r = await this.inner.compareAndSet(log, expected, next, info);
      this.cache.set(key, { value: Promise.resolve(r.ok ? next : r.current), at: Date.now() });
      return r;
    } catch (err) {
      this.cache.delete(key);
      throw err;
    }
  }
}
