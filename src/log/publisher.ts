import type { LogHead } from '../storage/store.js';

/**
 * Publishes committed checkpoints with more signature lines (server/cosign.ts: witness
 * cosignatures). Without one, a checkpoint is served and acknowledged as the log signed it.
 */
export interface CheckpointPublisher {
  /**
   * Called once a batch's checkpoint is committed, before its submissions are acknowledged;
   * resolves (never rejects) to the note the receipts carry. Must not wait forever.
   */
  committed(head: LogHead): Promise<string>;
  /** The note lookup answers carry for `head`: its checkpoint with the lines gathered so far. */
  note(head: LogHead): string;
  /** Called by close() after the last acknowledgement, before the store closes. */
  close(): Promise<void>;
}
