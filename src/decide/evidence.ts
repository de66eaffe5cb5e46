/**
 * Evidence of a decision (`trustix-decision/v1`): every log's verified lookup answer (or why it
 * failed), the procedure and the decision. Offline, each answer is re-verified against its log's
 * key, its recorded status must be what it proves, and a decided value must be one that verified
 * answers carry (`trustix decide --check` also re-runs the configured procedure on them). A failure
 * recorded for a log cannot be re-checked offline: it is reported as the decider saw it.
 */
import { decodeBase64Strict, toHex } from '../core/bytes.js';
import { VerificationError } from '../core/errors.js';
import { type LookupAnswer, parseLookupAnswer, verifyLookup } from '../core/lookup.js';
import { verifierFromVkey } from '../core/note.js';
import type { Decision, LogResult } from './decide.js';

export const DECISION_BUNDLE = 'trustix-decision/v1';

export interface DecisionBundle {
  type: typeof DECISION_BUNDLE;
  protocol: string;
  key: string;
  procedure: string;
  decision: { decided: boolean; value?: string; confidence?: number; reason: string };
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

export function decisionBundle(d: Decision, results: readonly LogResult[]): DecisionBundle {
  return {
    type: DECISION_BUNDLE,
    protocol: d.protocol,
    key: d.key,
    procedure: d.procedure,
    decision: {
      decided: d.decided,
      ...(d.value !== undefined ? { value: d.value } : {}),
      ...(d.confidence !== undefined ? { confidence: d.confidence } : {}),
      reason: d.reason,
    },
    logs: results.map((r) => ({
      name: r.name,
      vkey: r.vkey,
      weight: r.weight,
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
  procedure: string;
  /** Logs whose answers re-verified, with what they proved. */
  verified: Array<{ name: string; status: 'present' | 'absent'; value?: string; size: number }>;
  /** Failures as recorded (not checkable offline). */
  failed: Array<{ name: string; check: string; reason: string }>;
  /** How many verified answers carry the decided value. */
  support: number;
}

function bad(why: string): VerificationError {
  return new VerificationError('bundle.malformed', `malformed decision bundle: ${why}`);
}

/**
 * Re-checks a decision bundle offline. `vkeys` pins logs by name: a bundle whose key for a pinned
 * log differs is 'bundle.vkey-mismatch'. Throws a VerificationError on any failed check.
 */
export function verifyDecisionBundle(
  input: unknown,
  opts: { vkeys?: Map<string, string> } = {},
): DecisionCheck {
  let b = input;
  if (typeof b === 'string' || b instanceof Uint8Array) {
    try {
      b = JSON.parse(typeof b === 'string' ? b : Buffer.from(b).toString('utf8'));
    } catch {
      throw bad('not JSON');
    }
  }
  const o = b as DecisionBundle;
  if (typeof o !== 'object' || o === null || o.type !== DECISION_BUNDLE) throw bad('not a decision bundle');
  if (typeof o.protocol !== 'string' || typeof o.key !== 'string' || !Array.isArray(o.logs)) {
    throw bad('protocol, key and logs are required');
  }
  if (typeof o.decision !== 'object' || o.decision === null || typeof o.decision.decided !== 'boolean') {
    throw bad('decision is required');
  }
  const key = Buffer.from(o.key, 'utf8');
  const verified: DecisionCheck['verified'] = [];
  const failed: DecisionCheck['failed'] = [];
  for (const [i, l] of o.logs.entries()) {
    if (typeof l !== 'object' || l === null || typeof l.name !== 'string' || typeof l.vkey !== 'string') {
      throw bad(`logs[${i}] needs name and vkey`);
    }
    const pinned = opts.vkeys?.get(l.name);
    if (pinned !== undefined && verifierFromVkey(pinned).vkey !== l.vkey) {
      throw new VerificationError(
        'bundle.vkey-mismatch',
        `log ${l.name}: bundle key ${l.vkey} is not the pinned ${pinned}`,
      );
    }
    if (l.status === 'failed') {
      failed.push({ name: l.name, check: String(l.check ?? ''), reason: String(l.reason ?? '') });
      continue;
    }
    if (l.status !== 'present' && l.status !== 'absent') throw bad(`logs[${i}].status`);
    let answer: LookupAnswer;
    try {
      answer = parseLookupAnswer(l.answer);
    } catch (err) {
      throw bad(`logs[${i}].answer: ${(err as Error).message}`);
    }
    let verifier: ReturnType<typeof verifierFromVkey>;
    try {
      verifier = verifierFromVkey(l.vkey);
    } catch (err) {
      throw bad(`logs[${i}].vkey: ${(err as Error).message}`);
    }
    const v = verifyLookup(answer, verifier, { protocol: o.protocol, key });
    if (v.status === 'invalid') throw new VerificationError(v.check, `log ${l.name}: ${v.reason}`);
    if (v.status !== l.status) {
      throw new VerificationError(
        'decision.status-mismatch',
        `log ${l.name}: recorded ${l.status}, proves ${v.status}`,
      );
    }
    verified.push({
      name: l.name,
      status: v.status,
      ...(v.status === 'present' ? { value: toHex(v.entry.value) } : {}),
      size: v.checkpoint.size,
    });
  }
  let support = 0;
  if (o.decision.decided) {
    const value = o.decision.value;
    if (typeof value !== 'string' || !decodeBase64Strict(Buffer.from(value, 'hex').toString('base64'))) {
      throw bad('decision.value must be hex');
    }
    support = verified.filter((v) => v.value === value).length;
    if (support === 0) {
      throw new VerificationError(
        'decision.unsupported',
        `no verified answer carries the decided value ${value}`,
      );
    }
  }
  return {
    protocol: o.protocol,
    key: o.key,
    decided: o.decision.decided,
    ...(o.decision.value !== undefined ? { value: o.decision.value } : {}),
    procedure: String(o.procedure),
    verified,
    failed,
    support,
  };
}
