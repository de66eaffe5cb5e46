/**
 * Typed errors. Every failure a user or a peer can cause is one of these, with a
 * stable `code` that programs can switch on and a message a person can read.
 */
export class TrustixError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Input that does not follow a format: wrong lengths, bad encodings, out-of-range numbers. */
export class FormatError extends TrustixError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('FORMAT', message, options);
  }
}

/** A proof, signature or hash that does not check out. `check` names the check that failed. */
export class VerificationError extends TrustixError {
  readonly check: string;
  constructor(check: string, message: string, options?: { cause?: unknown }) {
    super('VERIFY', message, options);
    this.check = check;
  }
}

/** Stored data that is missing or damaged. */
export class StorageError extends TrustixError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('STORAGE', message, options);
  }
}

/**
 * A write the store could not take now (it is unreachable, or this node may no longer write to it);
 * the caller may retry it later, or on another node. A commit refused so was not applied, or, when
 * the connection broke as it finished, may have been: a retried submission is then a duplicate.
 */
export class StorageUnavailableError extends StorageError {}

/** A request that is well formed but not allowed in the current state (wrong key for log, closed log...). */
export class StateError extends TrustixError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('STATE', message, options);
  }
}
