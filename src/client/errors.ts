/**
 * Errors of the verifying client. Each names the check that failed in `check`, so callers (the
 * CLI, deciders, the Nix proxy) can tell "this log lied" (a VerificationError subclass: discard
 * its answer and flag it) from "this log could not be asked" (UnreachableError, RemoteError: no
 * answer, nothing learned).
 */
import { TrustixError, VerificationError } from '../core/errors.js';
import type { MisbehaviourProof } from '../core/misbehaviour.js';

/** The log presented a checkpoint smaller than one this client already trusted. check: 'trust.rollback'. */
export class RollbackError extends VerificationError {
  constructor(
    readonly trustedSize: number,
    readonly presentedSize: number,
    message?: string,
  ) {
    super(
      'trust.rollback',
      message ??
        `log rolled back: it presents a checkpoint of size ${presentedSize}, but size ${trustedSize} was already trusted`,
    );
  }
}

/**
 * The log presented a checkpoint that does not extend the one this client trusted: two different
 * roots for one size ('trust.fork-same-size'), or a new tree that the log's own consistency proof
 * does not connect to the trusted one ('trust.fork-inconsistent').
 */
export class ForkError extends VerificationError {
  /** The two checkpoints (and the log's proof) as a misbehaviour proof, once the client made it. */
  proof?: MisbehaviourProof;
  /** Where that proof was written, if the client writes proofs. */
  proofFile?: string;
  constructor(
    check: 'trust.fork-same-size' | 'trust.fork-inconsistent',
    readonly trustedSize: number,
    readonly presentedSize: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(check, message, options);
  }
}

/**
 * The log presented a checkpoint larger than the trusted one but did not prove that it extends it:
 * it answered the consistency proof request with an error status (404, 500, 503...). A log that
 * shows a newer tree must be able to prove it; refusing is how a fork would hide, so this is a
 * failed check, not an outage. check: 'trust.unproven-growth'. The trusted checkpoint stays.
 */
export class UnprovenGrowthError extends VerificationError {
  constructor(
    readonly trustedSize: number,
    readonly presentedSize: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super('trust.unproven-growth', message, options);
  }
}

/** A checkpoint that does not verify: bad or missing signature, malformed body, wrong origin ('note.*', 'checkpoint.*'). */
export class InvalidCheckpointError extends VerificationError {}

/**
 * A checkpoint whose cosignatures do not meet the client's witness policy (C2SP tlog-policy):
 * 'witness.quorum'. The message names the witnesses that signed and what the quorum needs.
 */
export class WitnessQuorumError extends VerificationError {}

/**
 * A proof that does not verify: inclusion ('inclusion.*'), consistency ('consistency.*'), sparse
 * index ('smt.*') or the lookup answer's binding to the query ('lookup.*').
 */
export class InvalidProofError extends VerificationError {}

/** A response that is not what the API promises (unparsable JSON, wrong shape, too large): 'response.*'. */
export class BadResponseError extends VerificationError {}

/**
 * The log could not be asked: connection refused or reset ('http.network'), no answer in time
 * ('http.timeout'), or the server is overloaded or draining ('http.unavailable', 503).
 */
export class UnreachableError extends TrustixError {
  readonly check: 'http.network' | 'http.timeout' | 'http.unavailable';
  constructor(
    check: 'http.network' | 'http.timeout' | 'http.unavailable',
    message: string,
    readonly retryAfterSeconds?: number,
    options?: { cause?: unknown },
  ) {
    super('UNREACHABLE', message, options);
    this.check = check;
  }
}

/** The server answered with an error status (400, 401, 404, 413...). check: 'http.status'. */
export class RemoteError extends TrustixError {
  readonly check = 'http.status';
  constructor(
    readonly status: number,
    /** The `code` field of the server's JSON error body, if it sent one. */
    readonly remoteCode: string | undefined,
    message: string,
  ) {
    super('REMOTE', message);
  }
}
