// Shared by the script sandbox tests.
import { type ScriptOptions, ScriptProcedure } from '../../src/decide/sandbox.js';

/** Runs `body` against a script procedure (default: generous time, for a loaded machine) and closes it. */
export async function withScript(
  opts: Omit<ScriptOptions, 'name'> & { name?: string },
  body: (p: ScriptProcedure) => Promise<void>,
): Promise<void> {
  const p = new ScriptProcedure({ name: 'test', timeoutMs: 5000, ...opts });
  try {
    await body(p);
  } finally {
    await p.close();
  }
}
