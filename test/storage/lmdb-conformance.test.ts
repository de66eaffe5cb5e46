import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LmdbLogStore } from '../../src/storage/lmdb/lmdb.js';
import { storeConformance } from './conformance.js';

storeConformance({
  name: 'lmdb',
  async create() {
    const dir = mkdtempSync(join(tmpdir(), 'trustix-conformance-'));
    return {
      store: LmdbLogStore.open(dir, { create: true }),
      reopen: async () => LmdbLogStore.open(dir),
      // a reader takes no writer lock (as Log.open with readOnly)
      reader: async () => LmdbLogStore.open(dir, { lock: false }),
      remove: async () => rmSync(dir, { recursive: true, force: true }),
    };
  },
});
