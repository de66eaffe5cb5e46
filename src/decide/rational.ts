/**
 * Exact non-negative rationals for thresholds and weights, so that "2/3 of 3 logs" is met by 2
 * agreeing logs and never missed or granted through floating-point rounding or integer division.
 */
import { FormatError } from '../core/errors.js';

export interface Rat {
  n: bigint;
  d: bigint;
}

export const ZERO: Rat = { n: 0n, d: 1n };
export const ONE: Rat = { n: 1n, d: 1n };

function gcd(a: bigint, b: bigint): bigint {
  while (b !== 0n) [a, b] = [b, a % b];
  return a < 0n ? -a : a;
}

export function rat(n: bigint, d = 1n): Rat {
  if (d === 0n) throw new FormatError('division by zero');
  const g = gcd(n, d) || 1n;
  return { n: n / g, d: d / g };
}

export function add(a: Rat, b: Rat): Rat {
  return rat(a.n * b.d + b.n * a.d, a.d * b.d);
}

export function mul(a: Rat, b: Rat): Rat {
  return rat(a.n * b.n, a.d * b.d);
}

/** -1, 0 or 1 as a <, =, > b. */
export function cmp(a: Rat, b: Rat): number {
  const l = a.n * b.d;
  const r = b.n * a.d;
  return l < r ? -1 : l > r ? 1 : 0;
}

export function toNumber(a: Rat): number {
  return Number(a.n) / Number(a.d);
}

export function formatRat(a: Rat): string {
  return a.d === 1n ? a.n.toString() : `${a.n}/${a.d}`;
}

/** A decimal literal ("66.67", "1e-3", "5") exactly. */
export function parseDecimal(text: string, what: string): Rat {
  const m = /^\+?(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(text.trim());
  if (!m) throw new FormatError(`${what}: not a non-negative number: ${JSON.stringify(text)}`);
  const frac = m[2] ?? '';
  const exp = Number(m[3] ?? '0') - frac.length;
  if (Math.abs(exp) > 400) throw new FormatError(`${what}: exponent out of range`);
  const digits = BigInt(m[1] + frac);
  return exp >= 0 ? rat(digits * 10n ** BigInt(exp)) : rat(digits, 10n ** BigInt(-exp));
}

/** "n/d" exactly, or undefined if `text` is not of that form. */
function parseFraction(text: string, what: string): Rat | undefined {
  const frac = /^(\d+)\s*\/\s*(\d+)$/.exec(text);
  if (!frac) return undefined;
  if (BigInt(frac[2]) === 0n) throw new FormatError(`${what}: division by zero`);
  return rat(BigInt(frac[1]), BigInt(frac[2]));
}

/**
 * A share: "2/3" (a fraction), "66.67%" (a percentage), or a bare number, read as a percentage
 * (so `min = 50` is one half). Must be above 0 and at most 1.
 */
export function parseShare(x: unknown, what: string): Rat {
  let r: Rat;
  if (typeof x === 'number' || typeof x === 'bigint') {
    if (typeof x === 'number' && !Number.isFinite(x)) throw new FormatError(`${what}: not a number`);
    r = mul(parseDecimal(String(x), what), rat(1n, 100n));
  } else if (typeof x === 'string') {
    const t = x.trim();
    const frac = parseFraction(t, what);
    if (frac) r = frac;
    else if (t.endsWith('%')) r = mul(parseDecimal(t.slice(0, -1), what), rat(1n, 100n));
    else r = mul(parseDecimal(t, what), rat(1n, 100n));
  } else {
    throw new FormatError(`${what}: expected "2/3", "66.67%" or a percentage number`);
  }
  if (r.n <= 0n || cmp(r, ONE) > 0) throw new FormatError(`${what}: must be above 0 and at most 100%`);
  return r;
}

/** A weight: a non-negative number, or a fraction as a string ("1/3"), kept exactly as written. */
export function parseWeight(x: unknown, what: string): Rat {
  if (x === undefined) return ONE;
  if (typeof x === 'bigint') return rat(x);
  if (typeof x === 'string') {
    const frac = parseFraction(x.trim(), what);
    if (!frac) throw new FormatError(`${what}: a weight given as a string must be a fraction like "1/3"`);
    return frac;
  }
  if (typeof x !== 'number' || !Number.isFinite(x) || x < 0) {
    throw new FormatError(`${what}: must be a non-negative number`);
  }
  return parseDecimal(String(x), what);
}
