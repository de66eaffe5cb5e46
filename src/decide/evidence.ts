/**
 * Evidence of a decision (`trustix-decision/v2`, docs/deciding.md): the trust config it was made
 * under (every configured log's name, key and weight, and the procedure, a script's source
 * included), every log's verified lookup answer (or why it failed), and the decision.
 *
 * Offline, each answer is re-verified against its log's key and must prove the status recorded,
 * no key may stand for two logs, and the procedure is run again on the verified answers: it must
 * reach the recorded decision. The keys and the trust config are the bundle's own unless the
 * caller pins them (`vkeys`, `config`): unpinned, a bundle proves only what its own keys signed.
 * A failure recorded for a log cannot be re-checked offline: it is reported as the decider saw it.
 */
import { toHex } from '../core/bytes.js';
import { TrustixError, VerificationError } from '../core/errors.js';
import { type LookupAnswer, parseLookupAnswer, verifyLookup } from '../core/lookup.js';
import { verifierFromVkey } from '../core/note.js';
import { requireQuorum } from '../core/policy.js';
import {
  buildProcedure,
  type DecideConfig,
  exactFraction,
  type ProcedureSpec,
  parseProcedureJson,
  procedureFor,
  procedureJson,
  publicKeyOf,
} from './config.js';
import { type Decision, decideWith, type LogResult } from './decide.js';
import { cmp, parseWeight, type Rat } from './rational.js';

export const DECISION_BUNDLE = 'trustix-decision/v2';
/** Earlier bundles carry neither procedure nor trust config, so they cannot be re-checked. */
const DECISION_BUNDLE_V1 = 'trustix-decision/v1';

export interface DecisionBundle {
  type: typeof DECISION_BUNDLE;
  protocol: string;
  key: string;
  /** The procedure the decision was made by, as `procedureJson` writes it (scripts inline). */
  procedure: Record<string, unknown>;
  decision: { decided: boolean; value?: string; confidence?: number; procedure: string; reason: string };
  /** Every configured log, in config order: its name, key and weight ("n/d"), and its answer. */
  logs: Array<{
    name: string;
    vkey: string;
    weight: string;
    status: 'present' | 'absent' | 'failed';
    answer?: LookupAnswer;
    check?: string;
    reason?: string;
  }>;
}

/** The evidence of `d`, decided from `results` under `config`. */
export function decisionBundle(
  d: Decision,
  results: readonly LogResult[],
  config: DecideConfig,
): DecisionBundle {
  const weights = new Map(config.logs.map((l) => [l.name, l.weight]));
  return {
    type: DECISION_BUNDLE,
    protocol: d.protocol,
    key: d.key,
    procedure: procedureJson(procedureFor(config, d.protocol).spec),
    decision: {
      decided: d.decided,
      ...(d.value !== undefined ? { value: d.value } : {}),
      ...(d.confidence !== undefined ? { confidence: d.confidence } : {}),
      procedure: d.procedure,
      reason: d.reason,
    },
    logs: results.map((r) => ({
      name: r.name,
      vkey: r.vkey,
      weight: exactFraction(weights.get(r.name) ?? { n: 1n, d: 1n }),
      status: r.status,
      ...(r.answer ? { answer: r.answer } : {}),
      ...(r.check !== undefined ? { check: r.check, reason: r.reason ?? '' } : {}),
    })),
  };
}

export interface DecisionCheck {
  protocol: string;
  key: string;
  decided: boolean;
  value?: string;
  confidence?: number;
  /** The procedure that decided (as re-run offline). */
  procedure: string;
  /** Logs whose answers re-verified, with what they proved. */
  verified: Array<{ name: string; status: 'present' | 'absent'; value?: string; size: number }>;
  /** Failures as recorded (not checkable offline). */
  failed: Array<{ name: string; check: string; reason: string }>;
  /** How many verified answers carry the decided value. */
  support: number;
  /** Logs whose key matched a pinned key (`vkeys` or `config`). */
  pinned: string[];
  /** Logs whose key was taken from the bundle itself: nothing but the bundle vouches for them. */
  unpinned: string[];
  /** Whether the logs, weights and procedure were checked against the caller's trust config. */
  configChecked: boolean;
}

export interface DecisionPins {
  /** Verifier keys the logs must have: every log's key must be one of them. */
  vkeys?: readonly string[];
  /** The caller's trust config: the bundle's logs, keys, weights and procedure must be its own. */
  config?: DecideConfig;
}

function bad(why: string): VerificationError {
  return new VerificationError('bundle.malformed', `malformed decision bundle: ${why}`);
}

const TOP_FIELDS = ['type', 'protocol', 'key', 'procedure', 'decision', 'logs'];
const LOG_FIELDS = ['name', 'vkey', 'weight', 'status', 'answer', 'check', 'reason'];

function onlyFields(o: object, allowed: readonly string[], where: string): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw bad(`${where}: unexpected field ${JSON.stringify(k)}`);
  }
}

/** Reads a bundle's text or parsed JSON as far as its shape; no answer is checked yet. */
function parseBundle(input: unknown): DecisionBundle {
  let b = input;
  if (typeof b === 'string' || b instanceof Uint8Array) {
    try {
      b = JSON.parse(typeof b === 'string' ? b : Buffer.from(b).toString('utf8'));
    } catch {
      throw bad('not JSON');
    }
  }
  const o = b as DecisionBundle;
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw bad('not a JSON object');
  if ((o.type as string) === DECISION_BUNDLE_V1) {
    throw new VerificationError(
      'bundle.unsupported-version',
      `a ${DECISION_BUNDLE_V1} bundle carries neither its procedure nor its trust config, so its decision cannot be re-checked; decide again to get a ${DECISION_BUNDLE} bundle`,
    );
  }
  if (o.type !== DECISION_BUNDLE) throw bad('not a decision bundle');
  onlyFields(o, TOP_FIELDS, 'bundle');
  if (typeof o.protocol !== 'string' || typeof o.key !== 'string' || !Array.isArray(o.logs)) {
    throw bad('protocol, key and logs are required');
  }
  if (typeof o.procedure !== 'object' || o.procedure === null) throw bad('procedure is required');
  const d = o.decision;
  if (typeof d !== 'object' || d === null || typeof d.decided !== 'boolean')
    throw bad('decision is required');
  onlyFields(d, ['decided', 'value', 'confidence', 'procedure', 'reason'], 'decision');
  if (d.decided !== (d.value !== undefined)) throw bad('decision.value is given exactly when decided');
  if (d.value !== undefined && (typeof d.value !== 'string' || !/^[0-9a-f]+$/.test(d.value))) {
    throw bad('decision.value must be lower-case hex');
  }
  if (d.confidence !== undefined && typeof d.confidence !== 'number') throw bad('decision.confidence');
  for (const [i, l] of o.logs.entries()) {
    if (typeof l !== 'object' || l === null || typeof l.name !== 'string' || typeof l.vkey !== 'string') {
      throw bad(`logs[${i}] needs name and vkey`);
    }
    onlyFields(l, LOG_FIELDS, `logs[${i}]`);
    if (l.status !== 'present' && l.status !== 'absent' && l.status !== 'failed') {
      throw bad(`logs[${i}].status`);
    }
  }
  return o;
}

/**
 * Re-checks a decision bundle offline (see the module comment); `pins` binds it to keys and a
 * trust config the caller trusts. Throws a VerificationError on any failed check:
 * 'bundle.malformed', 'bundle.unsupported-version', 'bundle.duplicate-log', 'bundle.vkey-mismatch',
 * 'bundle.config-mismatch', a failed answer's own check, 'witness.quorum' (an answer whose
 * checkpoint lacks the quorum of its log's witness policy in `pins.config`), 'decision.status-mismatch' or
 * 'decision.mismatch' (the procedure, re-run, does not reach the recorded decision).
 */
export async function verifyDecisionBundle(input: unknown, pins: DecisionPins = {}): Promise<DecisionCheck> {
  const o = parseBundle(input);
  const names = new Set<string>();
  const signers = new Map<string, string>();
  const weights = new Map<string, Rat>();
  for (const [i, l] of o.logs.entries()) {
    let vkey: string;
    try {
      vkey = verifierFromVkey(l.vkey).vkey;
      weights.set(l.name, parseWeight(l.weight, `logs[${i}].weight`));
    } catch (err) {
      throw bad(`logs[${i}]: ${(err as Error).message}`);
    }
    if (names.has(l.name)) throw bad(`log name ${JSON.stringify(l.name)} appears twice`);
    names.add(l.name);
    const twin = signers.get(publicKeyOf(vkey));
    if (twin !== undefined) {
      throw new VerificationError(
        'bundle.duplicate-log',
        `logs ${JSON.stringify(twin)} and ${JSON.stringify(l.name)} have the same key: one log cannot count twice`,
      );
    }
    signers.set(publicKeyOf(vkey), l.name);
  }
  let spec: ProcedureSpec;
  try {
    spec = parseProcedureJson(o.procedure, names);
  } catch (err) {
    if (!(err instanceof TrustixError)) throw err;
    throw bad(err.message);
  }
  const pinned = checkPins(o, spec, weights, pins);

  const key = Buffer.from(o.key, 'utf8');
  const verified: DecisionCheck['verified'] = [];
  const failed: DecisionCheck['failed'] = [];
  const results: LogResult[] = [];
  for (const [i, l] of o.logs.entries()) {
    const base = { name: l.name, origin: l.vkey.split('+')[0], vkey: l.vkey, weight: l.weight, ms: 0 };
    if (l.status === 'failed') {
      // a failure is never recorded with an answer: one that proves something is a relabelled answer
      if (l.answer !== undefined) {
        const v = verifyLookup(l.answer, verifierFromVkey(l.vkey), { protocol: o.protocol, key });
        if (v.status !== 'invalid') {
          throw new VerificationError(
            'decision.status-mismatch',
            `log ${l.name}: recorded failed, but its answer proves ${v.status}`,
          );
        }
        throw bad(`logs[${i}]: a failed log carries no answer`);
      }
      const check = String(l.check ?? '');
      const reason = String(l.reason ?? '');
      failed.push({ name: l.name, check, reason });
      results.push({ ...base, status: 'failed', check, reason });
      continue;
    }
    let answer: LookupAnswer;
    try {
      answer = parseLookupAnswer(l.answer);
    } catch (err) {
      throw bad(`logs[${i}].answer: ${(err as Error).message}`);
    }
    const v = verifyLookup(answer, verifierFromVkey(l.vkey), { protocol: o.protocol, key });
    if (v.status === 'invalid') throw new VerificationError(v.check, `log ${l.name}: ${v.reason}`);
    // under the caller's trust config, the log's witness policy holds offline too
    const policy = pins.config?.logs.find((c) => c.name === l.name)?.witnessPolicy;
    if (policy) {
      requireQuorum(policy, answer.checkpoint, `log ${l.name}: the checkpoint at size ${v.checkpoint.size}`);
    }
    if (v.status !== l.status) {
      throw new VerificationError(
        'decision.status-mismatch',
        `log ${l.name}: recorded ${l.status}, proves ${v.status}`,
      );
    }
    const value = v.status === 'present' ? toHex(v.entry.value) : undefined;
    verified.push({
      name: l.name,
      status: v.status,
      ...(value !== undefined ? { value } : {}),
      size: v.checkpoint.size,
    });
    results.push({
      ...base,
      status: v.status,
      ...(value !== undefined ? { value } : {}),
      size: v.checkpoint.size,
    });
  }

  const procedure = buildProcedure(spec);
  let again: Decision;
  try {
    again = await decideWith(procedure, results, weights, o.protocol, o.key);
  } finally {
    await procedure.close?.();
  }
  const d = o.decision;
  if (again.decided !== d.decided || again.value !== d.value || again.confidence !== d.confidence) {
    throw new VerificationError(
      'decision.mismatch',
      `re-run offline on the verified answers, the procedure ${summary(again)}; the bundle says it ${summary(d)}`,
    );
  }
  return {
    protocol: o.protocol,
    key: o.key,
    decided: again.decided,
    ...(again.value !== undefined ? { value: again.value } : {}),
    ...(again.confidence !== undefined ? { confidence: again.confidence } : {}),
    procedure: again.procedure,
    verified,
    failed,
    support: again.value === undefined ? 0 : verified.filter((v) => v.value === again.value).length,
    pinned: o.logs.filter((l) => pinned.has(l.name)).map((l) => l.name),
    unpinned: o.logs.filter((l) => !pinned.has(l.name)).map((l) => l.name),
    configChecked: pins.config !== undefined,
  };
}

function summary(d: { decided: boolean; value?: string; confidence?: number }): string {
  if (!d.decided) return 'decides nothing';
  return `decides ${d.value}${d.confidence !== undefined ? ` with confidence ${d.confidence}` : ''}`;
}

/** Checks the bundle's logs against the caller's pins; returns the names of the pinned logs. */
function checkPins(
  o: DecisionBundle,
  spec: ProcedureSpec,
  weights: ReadonlyMap<string, Rat>,
  pins: DecisionPins,
): Set<string> {
  const pinned = new Set<string>();
  const keys = new Set((pins.vkeys ?? []).map((k) => verifierFromVkey(k).vkey));
  if (keys.size > 0) {
    for (const l of o.logs) {
      if (!keys.has(verifierFromVkey(l.vkey).vkey)) {
        throw new VerificationError(
          'bundle.vkey-mismatch',
          `log ${l.name}: its key ${l.vkey} is not one of the pinned keys`,
        );
      }
      pinned.add(l.name);
    }
  }
  const config = pins.config;
  if (config) {
    const mismatch = (why: string) =>
      new VerificationError('bundle.config-mismatch', `not decided under your trust config: ${why}`);
    const mine = new Map(config.logs.map((l) => [l.name, l]));
    for (const l of o.logs) {
      const c = mine.get(l.name);
      if (!c) throw mismatch(`log ${l.name} is not in it`);
      if (c.vkey !== verifierFromVkey(l.vkey).vkey) {
        throw new VerificationError(
          'bundle.vkey-mismatch',
          `log ${l.name}: bundle key ${l.vkey} is not the configured ${c.vkey}`,
        );
      }
      if (cmp(c.weight, weights.get(l.name)!) !== 0) {
        throw mismatch(
          `log ${l.name} weighs ${l.weight} in the bundle, ${exactFraction(c.weight)} in the config`,
        );
      }
      pinned.add(l.name);
    }
    for (const c of config.logs) {
      if (!o.logs.some((l) => l.name === c.name))
        throw mismatch(`its log ${c.name} is missing from the bundle`);
    }
    const want = JSON.stringify(procedureJson(procedureFor(config, o.protocol).spec));
    if (JSON.stringify(procedureJson(spec)) !== want) {
      throw mismatch(`the bundle's procedure for ${o.protocol} is not the configured one`);
    }
  }
  return pinned;
}
