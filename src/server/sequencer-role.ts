/**
 * The sequencer role of a node whose log lives in a store that several nodes share (PostgreSQL):
 * every node that holds the signing key tries to take the sequencer lease; the one that holds it
 * sequences, the others (standbys) serve reads and try again as soon as the lease may have run out.
 * A sequencer whose commit failed stops taking submissions, and sequences again only once it holds
 * the lease again, from the head the database holds then (a commit that broke off may have been
 * applied, or another node may have taken over meanwhile). A reader (no signing key) never takes
 * the lease; it only follows who holds it, to send writers there. docs/scale-out.md has the timings.
 */
import type { Log } from '../log/log.js';
import { FencedError } from '../storage/postgres/postgres.js';

/** The lease of a shared store (PgLogStore). */
export interface SequencerLease {
  readonly leaseMs: number;
  /** Undefined while this node does not hold the lease (it never took it, or it lost it). */
  readonly leaseEpoch: number | undefined;
  /** Takes the lease or fails: FencedError while another node holds it. */
  takeLease(): Promise<number>;
  /** Who holds the lease now (for a node that never takes it). */
  leaseHolder(): Promise<{ url: string | undefined; expiresInMs: number } | undefined>;
}

export class SequencerRole {
  /** The advertised URL of the node that held the lease when this one last tried to take it. */
  private seenSequencer: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** The check under way (a tick, or a step down after a failed commit). */
  private busy: Promise<void> = Promise.resolve();
  private closed = false;
  /** The last problem told to the operator, so a lasting one is told once. */
  private lastWarning = '';

  constructor(
    private readonly id: string,
    private readonly log: Log,
    private readonly lease: SequencerLease,
    /** Where this node takes writes, as other nodes tell clients. */
    readonly advertise: string,
    private readonly say: (line: string) => void,
    private readonly warn: (line: string) => void,
    /** False for a reader (no signing key): it only follows who sequences, to tell writers. */
    private readonly candidate = true,
  ) {}

  /** Where writes go now: this node's URL when it sequences, else the sequencer's (if known). */
  get sequencerUrl(): string | undefined {
    return this.log.sequencing ? this.advertise : this.seenSequencer;
  }

  /** How often the lease is checked: a fifth of it, so a standby takes over soon after it runs out. */
  private get pollMs(): number {
    return Math.max(50, Math.floor(this.lease.leaseMs / 5));
  }

  /** Takes the role if it can (resolves after the first attempt), then keeps checking. */
  async start(): Promise<void> {
    await this.check();
  }

  /**
   * A commit failed (the appender refused its batch): stop taking submissions, and take the role
   * again, from the database's head, once the lease is this node's.
   */
  commitFailed(err: unknown): void {
    if (this.closed) return;
    this.busy = this.busy.then(async () => {
      if (!this.log.sequencing) return;
      this.say(`log ${this.id}: stopped sequencing: ${(err as Error).message}`);
      await this.log.stopSequencing(err);
    });
    void this.check();
  }

  private check(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.busy = this.busy.then(async () => {
      if (this.closed) return;
      const next = await this.tick();
      // one timer at a time, however many checks were queued
      if (this.timer) clearTimeout(this.timer);
      if (!this.closed) this.timer = setTimeout(() => void this.check(), next);
    });
    return this.busy;
  }

  /** One check of the lease; returns when to check next (ms). */
  private async tick(): Promise<number> {
    if (this.log.sequencing) {
      // the store renews the lease while it holds it, and forgets its epoch once it lost it
      if (this.lease.leaseEpoch !== undefined) return this.pollMs;
      this.say(`log ${this.id}: lost the sequencer lease; standing by`);
      await this.log.stopSequencing(new FencedError('this node lost the sequencer lease; retry'));
    }
    try {
      if (!this.candidate) {
        const holder = await this.lease.leaseHolder();
        this.seenSequencer = holder !== undefined && holder.expiresInMs > 0 ? holder.url : undefined;
        return this.pollMs;
      }
      const epoch = await this.lease.takeLease();
      const head = this.log.startSequencing();
      this.lastWarning = '';
      this.say(`log ${this.id}: sequencing (lease epoch ${epoch}, size ${head.size})`);
      return this.pollMs;
    } catch (err) {
      if (err instanceof FencedError) {
        this.seenSequencer = err.holderUrl;
        this.lastWarning = '';
        // try again the moment the holder's lease would run out unless renewed
        return Math.min(this.pollMs, Math.max(10, Math.ceil((err.expiresInMs ?? this.pollMs) + 10)));
      }
      const line = `log ${this.id}: cannot take the sequencer role: ${(err as Error).message}`;
      if (line !== this.lastWarning) this.warn(line);
      this.lastWarning = line;
      return this.pollMs;
    }
  }

  /** Stops checking; the log's close then gives the lease up. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.busy;
  }
}
