/** A script's failure, with the check a decision reports (see sandbox.ts). */
export class ScriptError extends Error {
  constructor(
    readonly check: string,
    message: string,
  ) {
    super(message);
  }
}
