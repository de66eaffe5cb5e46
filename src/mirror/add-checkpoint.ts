/**
 * The mirror's `POST <submission prefix>/add-checkpoint` (C2SP tlog-mirror, "add-checkpoint"): a
 * client tells the mirror of a checkpoint of a log, handled as a witness handles it (tlog-witness
 * v1.0.0: 404 unknown origin, 403 not signed by the log, 400 malformed or old size above the size,
 * 409 stale old size with the mirror's size, 422 a proof that fails or a different root at the same
 * size), against the mirror's pending checkpoint: the latest checkpoint the follower verified or
 * was told of. An accepted one becomes the pending checkpoint, so the log's later checkpoints must
 * extend it; the answer is 200 with an empty body. The mirror does not cosign it: it cosigns a
 * checkpoint only once it has copied and audited its entries.
 */
import type { FastifyInstance } from 'fastify';
import { openCheckpoint } from '../core/checkpoint.js';
import { VerificationError } from '../core/errors.js';
import type { MisbehaviourProof } from '../core/misbehaviour.js';
import type { NoteVerifier } from '../core/note.js';
import { requireQuorum, type WitnessPolicy } from '../core/policy.js';
import type { LogFollower } from '../dashboard/follow.js';
import {
  type CosignedState,
  contradictionProof,
  decide,
  MAX_REQUEST_BYTES,
  openSubmittedCheckpoint,
  parseAddCheckpoint,
  type WitnessedLog,
  WitnessRefusal,
} from '../witness/protocol.js';

/** A mirrored log, as add-checkpoint needs it. */
export interface PendingLog {
  verifier: NoteVerifier;
  follower: LogFollower;
  witnessPolicy?: WitnessPolicy;
}

const SIZE_TYPE = 'text/x.tlog.size';
const TEXT_TYPE = 'text/plain; charset=utf-8';

/**
 * Adds the route at `<prefix>/add-checkpoint`. `keepProof` writes the proof of a checkpoint that
 * contradicts the pending one (a fork of the log) and returns its file; `observer` names the mirror
 * in it.
 */
export function addCheckpointRoute(
  app: FastifyInstance,
  prefix: string,
  logs: readonly PendingLog[],
  keepProof: (p: MisbehaviourProof) => string,
  observer: string,
): void {
  const byOrigin = new Map(logs.map((l) => [l.verifier.name, l]));
  const witnessed = new Map<string, WitnessedLog>(
    logs.map((l) => [l.verifier.name, { origin: l.verifier.name, verifiers: [l.verifier] }]),
  );
  const answer = async (body: Buffer): Promise<{ status: number; body: string; type: string }> => {
    try {
      const req = parseAddCheckpoint(body);
      const signed = openSubmittedCheckpoint(req.note, witnessed);
      const log = byOrigin.get(signed.log.origin)!;
      if (log.witnessPolicy) {
        try {
          requireQuorum(log.witnessPolicy, req.note, `the checkpoint at size ${signed.checkpoint.size}`);
        } catch (err) {
          if (err instanceof VerificationError) throw new WitnessRefusal(403, err.message);
          throw err;
        }
      }
      const reference = await log.follower.reference();
      const pending = reference === undefined ? undefined : stateOf(reference, log.verifier);
      const d = decide(req, signed, pending);
      if (d.contradiction) {
        try {
          const file = keepProof(contradictionProof(d.contradiction, req, signed, observer));
          process.stderr.write(
            `trustix mirror: ${signed.log.origin}: ${d.contradiction.kind}, proof: ${file}\n`,
          );
        } catch (err) {
          process.stderr.write(`trustix mirror: cannot keep the proof: ${(err as Error).message}\n`);
        }
      }
      if (d.refusal) throw d.refusal;
      if (pending === undefined || signed.checkpoint.size > pending.size) {
        if (!(await log.follower.adopt(reference, req.note))) {
          const now = await log.follower.reference();
          const size = now === undefined ? 0 : stateOf(now, log.verifier).size;
          throw new WitnessRefusal(409, `old size ${req.oldSize} is not the pending size ${size}`, size);
        }
      }
      return { status: 200, body: '', type: TEXT_TYPE };
    } catch (err) {
      if (!(err instanceof WitnessRefusal)) throw err;
      if (err.status === 409) return { status: 409, body: `${err.latestSize}\n`, type: SIZE_TYPE };
      return { status: err.status, body: `${err.message}\n`, type: TEXT_TYPE };
    }
  };
  // in a context of its own: the protocol names no media type, every body is taken as bytes
  void app.register(async (sub) => {
    sub.removeAllContentTypeParsers();
    sub.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: MAX_REQUEST_BYTES }, (_req, body, done) =>
      done(null, body),
    );
    sub.post(`${prefix}/add-checkpoint`, async (request, reply) => {
      const a = await answer(Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0));
      return reply
        .code(a.status)
        .header('content-type', a.type)
        .header('cache-control', 'no-store')
        .send(a.body);
    });
  });
}

function stateOf(note: string, verifier: NoteVerifier): CosignedState {
  const cp = openCheckpoint(note, verifier).checkpoint;
  return { size: cp.size, rootHash: Buffer.from(cp.rootHash), note };
}
