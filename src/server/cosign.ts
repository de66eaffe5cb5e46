/**
 * A node gathers witness cosignatures for its log's checkpoints (docs/witness.md, "Logs gather
 * cosignatures"). Every committed checkpoint is sent to each witness of a C2SP tlog-policy that has
 * a URL, with POST <url>/add-checkpoint (C2SP tlog-witness v1.0.0): `old <size>`, a consistency
 * proof from the size that witness cosigned last, an empty line and the note. The cosignature lines
 * that come back are appended to the note wherever the node serves it.
 *
 * Publish rule: `<prefix>/checkpoint` serves the latest checkpoint that met the policy's quorum (with
 * every cosignature gathered for it); a newer one replaces it only once it meets the quorum.
 * Receipts and lookup answers must carry the checkpoint their proofs are against, so they wait for
 * its quorum, at most `timeoutMs` after its commit, and then carry it with the cosignatures it got.
 *
 * Each witness has one request in flight at a time, always for the newest checkpoint: a witness
 * slower than the commits skips checkpoints, and one that fails is left alone for a back-off (1 s,
 * doubling up to 30 s). Nothing here runs inside the log's commit: batches go on while witnesses
 * are down.
 */
import { FormatError, VerificationError } from '../core/errors.js';
import { parseNote } from '../core/note.js';
import {
  displayName,
  evaluateQuorum,
  meetsQuorum,
  type PolicyWitness,
  quorumDescription,
  type WitnessPolicy,
} from '../core/policy.js';
import type { CheckpointPublisher, Log } from '../log/log.js';
import type { LogHead } from '../storage/store.js';
import type { CosignMetrics } from './metrics.js';

const MIN_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 30_000;
/** A witness answers a number, a cosignature line or one line of text: more is not read. */
const MAX_ANSWER_BYTES = 16 * 1024;
const SIZE_RE = /^(0|[1-9][0-9]{0,15})\n?$/;
/** Store meta keys: the size each witness (by vkey) last cosigned, and the published note. */
const SIZE_META = 'cosigned-size:';
const PUBLISHED_META = 'witnessed-checkpoint';

export interface CosignOptions {
  log: Log;
  /** The log's id, for metrics and messages. */
  id: string;
  policy: WitnessPolicy;
  /** How long receipts and lookups wait for a checkpoint's quorum; also each request's timeout. */
  timeoutMs: number;
  metrics: CosignMetrics;
  /** One line for the operator (a witness down or back, the quorum missed or met again). */
  warn: (line: string) => void;
  /** Called when the note served for the latest checkpoint changes (new cosignatures). */
  onChange?: () => void;
}

/** One committed checkpoint and what the witnesses said about it. */
interface HeadState {
  head: LogHead;
  /** The checkpoint body (what a cosignature signs). */
  text: Buffer;
  committedAt: number;
  /** Cosignature lines by witness policy name. */
  lines: Map<string, string>;
  /** Witnesses that will not cosign it: failed, down or moved on to a newer checkpoint. */
  out: Set<string>;
  /** The note with the cosignature lines, in policy order. */
  note: string;
  met: boolean;
  settled: boolean;
  done: Promise<void>;
  resolve: () => void;
  timer: NodeJS.Timeout | undefined;
}

/** A witness this node asks. */
interface WitnessLink {
  witness: PolicyWitness;
  name: string;
  endpoint: string;
  /** The size it last cosigned, when known (stored, or learned from a 409 or a 200). */
  size: number | undefined;
  /** The largest checkpoint size it was asked about (or skipped). */
  attempted: number;
  downUntil: number;
  backoffMs: number;
  up: boolean;
  lastProblem: string;
  wake: (() => void) | undefined;
}

export class Cosigning implements CheckpointPublisher {
  private readonly links: WitnessLink[] = [];
  /** Checkpoints not settled yet, and the latest, by size. */
  private readonly heads = new Map<number, HeadState>();
  private latest: HeadState;
  private published: { size: number; note: string } | undefined;
  private closed = false;
  /** Aborts the requests in flight on close. */
  private readonly stop = new AbortController();
  private quorumOk = true;
  private readonly loops: Promise<void>[] = [];
  private readonly dirty = new Map<string, string>();
  /** The writes of `dirty` in progress, if any. */
  private writing: Promise<void> | undefined;
  private readonly labels: { log: string };

  constructor(private readonly opts: CosignOptions) {
    this.labels = { log: opts.id };
    const { log, policy } = opts;
    for (const w of policy.witnesses.values()) {
      const name = displayName(w.name);
      if (w.url === undefined) {
        opts.warn(
          `log ${opts.id}: witness ${name} has no URL in the witness policy; its cosignatures cannot be asked for`,
        );
        continue;
      }
      const stored = log.storage.getMeta(SIZE_META + w.vkey);
      const size = stored !== undefined && SIZE_RE.test(stored) ? Number(stored) : undefined;
      this.links.push({
        witness: w,
        name,
        endpoint: `${w.url.replace(/\/+$/, '')}/add-checkpoint`,
        size,
        attempted: -1,
        downUntil: 0,
        backoffMs: MIN_BACKOFF_MS,
        up: true,
        lastProblem: '',
        wake: undefined,
      });
      if (size !== undefined) opts.metrics.witnessSize.set({ ...this.labels, witness: name }, size);
    }
    const head = log.head();
    const kept = log.storage.getMeta(PUBLISHED_META);
    if (kept !== undefined) {
      try {
        const size = Number(parseNote(kept).text.split('\n')[1]);
        // the policy may have changed since: only a note that meets this one is served
        if (size <= head.size && evaluateQuorum(policy, kept).met) this.published = { size, note: kept };
      } catch {
        // a note that does not parse any more is not served
      }
    }
    this.latest = this.track(head);
    if (this.published) opts.metrics.publishedSize.set(this.labels, this.published.size);
    for (const l of this.links) this.loops.push(this.run(l));
  }

  // -------------------------------------------------------------------------------------------
  // What the node serves.

  committed(head: LogHead): Promise<string> {
    let h = this.heads.get(head.size);
    if (h === undefined || h.head.checkpoint !== head.checkpoint) {
      // a batch that appended nothing answers with a checkpoint already settled and dropped
      if (head.size <= this.latest.head.size) return Promise.resolve(this.note(head));
      h = this.track(head);
      this.latest = h;
      for (const l of this.links) l.wake?.();
    }
    const state = h;
    return state.done.then(() => state.note);
  }

  note(head: LogHead): string {
    const h = this.heads.get(head.size);
    if (h !== undefined && h.head.checkpoint === head.checkpoint) return h.note;
    if (this.published?.size === head.size) return this.published.note;
    return head.checkpoint;
  }

  /** The note served at `<prefix>/checkpoint`: the latest that met the quorum, else the latest. */
  checkpoint(): string {
    return this.published?.note ?? this.latest.note;
  }

  /**
   * Whether a lookup now would carry a checkpoint still waiting for its quorum: the latest one is,
   * or the store already holds a newer one that the log has not handed over yet.
   */
  pending(): boolean {
    return !this.latest.settled || this.opts.log.head().size > this.latest.head.size;
  }

  /**
   * Resolves once the checkpoint a lookup would carry has settled (met its quorum, or given up on),
   * waiting at most the timeout: an answer built then carries that checkpoint's cosignatures.
   */
  async ready(): Promise<void> {
    const deadline = performance.now() + this.opts.timeoutMs;
    while (!this.closed && this.pending()) {
      const left = deadline - performance.now();
      if (left <= 0) return;
      // a commit the log has not handed over yet is a few event-loop turns away
      const ahead = this.opts.log.head().size > this.latest.head.size;
      let timer: NodeJS.Timeout | undefined;
      const sleep = new Promise<void>((r) => {
        timer = setTimeout(r, ahead ? Math.min(2, left) : left);
      });
      await (ahead ? sleep : Promise.race([this.latest.done, sleep]));
      clearTimeout(timer);
    }
  }

  /** Stops asking witnesses; checkpoints still waiting settle with what they have. */
  async close(): Promise<void> {
    this.closed = true;
    this.stop.abort();
    for (const h of this.heads.values()) this.settle(h);
    for (const l of this.links) l.wake?.();
    await Promise.all(this.loops);
    await this.writing;
    // lmdb-js resets its shared read transaction in a 0 ms timer after a read or a commit; the
    // store must not close before that timer has run
    await new Promise<void>((r) => setTimeout(r, 1));
  }

  // -------------------------------------------------------------------------------------------
  // Checkpoints.

  private track(head: LogHead): HeadState {
    let resolve!: () => void;
    const done = new Promise<void>((r) => {
      resolve = r;
    });
    const h: HeadState = {
      head,
      text: Buffer.from(head.checkpoint.slice(0, head.checkpoint.lastIndexOf('\n\n') + 1), 'utf8'),
      committedAt: performance.now(),
      lines: new Map(),
      out: new Set(),
      note: head.checkpoint,
      met: false,
      settled: false,
      done,
      resolve,
      timer: undefined,
    };
    this.heads.set(head.size, h);
    // witnesses not asked (no URL) never cosign; those backing off will not be asked about it
    const now = Date.now();
    for (const w of this.opts.policy.witnesses.keys()) {
      if (!this.links.some((l) => l.witness.name === w)) h.out.add(w);
    }
    for (const l of this.links) if (now < l.downUntil || this.closed) h.out.add(l.witness.name);
    this.update(h);
    if (!h.settled) {
      h.timer = setTimeout(() => this.settle(h), this.opts.timeoutMs);
      h.timer.unref();
    }
    return h;
  }

  /** After a change to `h`'s cosignatures or to who may still cosign it. */
  private update(h: HeadState): void {
    const signed = new Set(h.lines.keys());
    if (!h.met && meetsQuorum(this.opts.policy, signed)) {
      h.met = true;
      this.publish(h);
      this.settle(h);
    } else if (h.met && this.published?.size === h.head.size) {
      this.publish(h);
    }
    // without the quorum, it waits for every witness that may still answer
    if (!h.settled && h.lines.size + h.out.size === this.opts.policy.witnesses.size) this.settle(h);
  }

  private publish(h: HeadState): void {
    if (this.published !== undefined && this.published.size > h.head.size) return;
    this.published = { size: h.head.size, note: h.note };
    this.opts.metrics.publishedSize.set(this.labels, h.head.size);
    this.persist(PUBLISHED_META, h.note);
  }

  /** Stops waiting for `h`'s quorum (met, impossible, timed out or closing). */
  private settle(h: HeadState): void {
    if (h.settled) return;
    h.settled = true;
    clearTimeout(h.timer);
    h.resolve();
    const m = this.opts.metrics;
    const seconds = (performance.now() - h.committedAt) / 1000;
    m.waitSeconds.observe({ ...this.labels, quorum: h.met ? 'met' : 'missed' }, seconds);
    // a checkpoint that appended nothing new (the startup one of an empty log) says little
    if (h === this.latest || h.met) m.quorumMet.set(this.labels, h.met ? 1 : 0);
    if (h.met !== this.quorumOk && !this.closed) {
      this.quorumOk = h.met;
      const signed = [...h.lines.keys()].map(displayName).join(', ') || 'no witness';
      this.opts.warn(
        h.met
          ? `log ${this.opts.id}: witness quorum met again at size ${h.head.size} (signed by ${signed})`
          : `log ${this.opts.id}: checkpoint ${h.head.size} did not meet the witness quorum (gave up after ${seconds.toFixed(1)} s): signed by ${signed}; the policy needs ${quorumDescription(this.opts.policy)}. ${this.published ? `Still serving checkpoint ${this.published.size} at /checkpoint` : 'No checkpoint has met it yet'}`,
      );
    }
    this.forget();
  }

  /** Drops settled checkpoints other than the latest (the published one is kept as a note). */
  private forget(): void {
    for (const [size, h] of this.heads) if (h.settled && h !== this.latest) this.heads.delete(size);
  }

  private addLine(h: HeadState, name: string, line: string): void {
    h.lines.set(name, line);
    h.out.delete(name);
    let note = h.head.checkpoint;
    for (const w of this.opts.policy.witnesses.keys()) {
      const l = h.lines.get(w);
      if (l !== undefined) note += l;
    }
    h.note = note;
    this.update(h);
    if (h === this.latest) this.opts.onChange?.();
  }

  private markOut(h: HeadState, name: string): void {
    if (h.lines.has(name) || h.out.has(name)) return;
    h.out.add(name);
    this.update(h);
  }

  // -------------------------------------------------------------------------------------------
  // Witnesses.

  private async run(l: WitnessLink): Promise<void> {
    while (!this.closed) {
      const target = this.latest;
      const wait = l.downUntil - Date.now();
      if (l.attempted >= target.head.size || wait > 0) {
        await new Promise<void>((r) => {
          const timer = wait > 0 ? setTimeout(r, wait) : undefined;
          l.wake = () => {
            clearTimeout(timer);
            r();
          };
        });
        l.wake = undefined;
        continue;
      }
      // it moves on to the newest checkpoint: those in between are not its to cosign
      for (const h of [...this.heads.values()]) {
        if (h.head.size > l.attempted && h.head.size < target.head.size) this.markOut(h, l.witness.name);
      }
      l.attempted = target.head.size;
      try {
        await this.ask(l, target);
      } catch (err) {
        this.fail(l, 'error', (err as Error).message);
      }
    }
  }

  /** POST add-checkpoint for `h`, from the size the witness cosigned last (retried after a 409). */
  private async ask(l: WitnessLink, h: HeadState): Promise<void> {
    const m = this.opts.metrics;
    const labels = { ...this.labels, witness: l.name };
    const size = h.head.size;
    for (let attempt = 0; attempt < 3; attempt++) {
      const old = l.size ?? 0;
      if (old > size) {
        const current = this.opts.log.head().size;
        if (old > current) {
          this.fail(
            l,
            'ahead',
            `it has cosigned size ${old} of this log, beyond the log's size ${current}: was the log's state rolled back?`,
          );
        } else this.markOut(h, l.witness.name);
        return;
      }
      const proof = old === 0 || old === size ? [] : this.opts.log.consistencyProof(old, size);
      let body = `old ${old}\n`;
      for (const p of proof) body += `${p.toString('base64')}\n`;
      body += `\n${h.head.checkpoint}`;
      const t0 = performance.now();
      let status: number;
      let answer: string;
      try {
        const res = await fetch(l.endpoint, {
          method: 'POST',
          headers: { 'content-type': 'text/plain; charset=utf-8' },
          body,
          signal: AbortSignal.any([AbortSignal.timeout(this.opts.timeoutMs), this.stop.signal]),
        });
        status = res.status;
        answer = await readText(res);
      } catch (err) {
        const e = err as Error;
        const timedOut = e.name === 'TimeoutError' || e.name === 'AbortError';
        const why = timedOut
          ? `no answer within ${this.opts.timeoutMs} ms`
          : ((e.cause as Error | undefined)?.message ?? e.message);
        this.fail(l, timedOut ? 'timeout' : 'unreachable', why);
        return;
      } finally {
        m.requestSeconds.observe(labels, (performance.now() - t0) / 1000);
      }
      if (status === 409) {
        const n = SIZE_RE.exec(answer);
        if (n === null) {
          this.fail(l, 'bad-response', `409 without a size: ${firstLine(answer)}`);
          return;
        }
        m.requests.inc({ ...labels, outcome: 'conflict' });
        l.size = Number(n[1]);
        continue;
      }
      if (status !== 200) {
        this.fail(l, String(status), `${status} ${firstLine(answer)}`);
        return;
      }
      const line = this.cosignatureLine(l.witness, h, answer);
      if (line === undefined) {
        this.fail(l, 'bad-response', `200 without a valid cosignature by ${l.witness.vkey}`);
        return;
      }
      m.requests.inc({ ...labels, outcome: 'cosigned' });
      m.witnessSize.set(labels, size);
      m.witnessUp.set(labels, 1);
      l.size = size;
      l.backoffMs = MIN_BACKOFF_MS;
      if (!l.up) this.opts.warn(`log ${this.opts.id}: witness ${l.name} is back (cosigned size ${size})`);
      l.up = true;
      l.lastProblem = '';
      this.persist(SIZE_META + l.witness.vkey, String(size));
      this.addLine(h, l.witness.name, line);
      return;
    }
    this.fail(l, 'conflict', 'three 409 answers in a row');
  }

  /** The witness's cosignature line in `answer`, if one verifies over `h`'s checkpoint. */
  private cosignatureLine(w: PolicyWitness, h: HeadState, answer: string): string | undefined {
    for (const line of answer.split('\n')) {
      if (line === '') continue;
      let sig: ReturnType<typeof parseNote>['signatures'][number] | undefined;
      try {
        sig = parseNote(`x\n\n${line}\n`).signatures[0];
      } catch (err) {
        if (err instanceof FormatError || err instanceof VerificationError) continue;
        throw err;
      }
      if (sig.name !== w.verifier.name || sig.keyId !== w.verifier.keyId) continue;
      if (w.verifier.verify(h.text, sig.signature)) return `${line}\n`;
    }
    return undefined;
  }

  private fail(l: WitnessLink, outcome: string, why: string): void {
    const labels = { ...this.labels, witness: l.name };
    this.opts.metrics.requests.inc({ ...labels, outcome });
    this.opts.metrics.witnessUp.set(labels, 0);
    l.downUntil = Date.now() + l.backoffMs;
    if ((l.up || why !== l.lastProblem) && !this.closed) {
      this.opts.warn(
        `log ${this.opts.id}: witness ${l.name} (${l.endpoint}) is not cosigning: ${why}; asking again in ${l.backoffMs / 1000} s`,
      );
    }
    l.backoffMs = Math.min(l.backoffMs * 2, MAX_BACKOFF_MS);
    // after the back-off it is asked about the latest checkpoint again, even with no new one
    l.attempted = -1;
    l.up = false;
    l.lastProblem = why;
    for (const h of [...this.heads.values()]) if (!h.settled) this.markOut(h, l.witness.name);
  }

  // -------------------------------------------------------------------------------------------
  // Durable memory: best effort, off the commit path (a lost write costs one 409 or one round).

  private persist(key: string, value: string): void {
    this.dirty.set(key, value);
    this.writing ??= this.flush();
  }

  private async flush(): Promise<void> {
    try {
      while (this.dirty.size > 0) {
        const [key, value] = this.dirty.entries().next().value!;
        this.dirty.delete(key);
        try {
          await this.opts.log.storage.setMeta(key, value);
        } catch (err) {
          if (!this.closed)
            this.opts.warn(`log ${this.opts.id}: cannot remember ${key}: ${(err as Error).message}`);
        }
      }
    } finally {
      this.writing = undefined;
    }
  }
}

async function readText(res: Response): Promise<string> {
  const reader = res.body?.getReader();
  if (reader === undefined) return '';
  const chunks: Buffer[] = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.length;
    if (n > MAX_ANSWER_BYTES) {
      await reader.cancel();
      break;
    }
    chunks.push(Buffer.from(value));
  }
  return Buffer.concat(chunks).toString('utf8');
}

function firstLine(s: string): string {
  const line = s.split('\n', 1)[0];
  return line.length > 200 ? `${line.slice(0, 200)}...` : line;
}
