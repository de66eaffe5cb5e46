// C2SP tlog-policy parsing and quorum evaluation, with vectors written from the spec text. Keys and
// cosignatures are made here with node:crypto only (the spec's formats), not with Trustix's signer.
import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyObject, sign } from 'node:crypto';
import { describe, test } from 'node:test';
import { FormatError, VerificationError } from '../../src/core/errors.js';
import { verifierFromVkey } from '../../src/core/note.js';
import { evaluateQuorum, parsePolicy, policyCoversLog, requireQuorum } from '../../src/core/policy.js';
import { NoteKey, noteKeyId } from '../witness/spec-log.js';

/** A tlog-cosignature v1 Ed25519 cosigner: vkey `name+id+base64(0x04 || pub)`. */
class Witness {
  readonly priv: KeyObject;
  readonly pub: Buffer;
  readonly id: Buffer;
  readonly vkey: string;
  constructor(readonly name: string) {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    this.priv = privateKey;
    this.pub = Buffer.from(publicKey.export({ format: 'jwk' }).x as string, 'base64url');
    this.id = noteKeyId(name, 0x04, this.pub);
    this.vkey = `${name}+${this.id.toString('hex')}+${Buffer.concat([Buffer.from([4]), this.pub]).toString('base64')}`;
  }
  /** `— name base64(key id || u64 time || Ed25519("cosignature/v1\ntime T\n" || body))`. */
  line(body: string, time = 1679315147, tamper = false): string {
    const msg = Buffer.from(`cosignature/v1\ntime ${time}\n${body}`);
    const sig = sign(null, msg, this.priv);
    if (tamper) sig[0] ^= 1;
    const t = Buffer.alloc(8);
    t.writeBigUInt64BE(BigInt(time));
    return `\u2014 ${this.name} ${Buffer.concat([this.id, t, sig]).toString('base64')}\n`;
  }
}

const log = new NoteKey('example.com/behind-the-sofa');
const body = 'example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n';
const note = (...cosigs: string[]) => `${body}\n${log.line(body)}${cosigs.join('')}`;

const X = [1, 2, 3].map((i) => new Witness(`x${i}.example/w`));
const Y = [1, 2, 3].map((i) => new Witness(`y${i}.example/w`));

/** The spec's example policy ("Example policy"), with real keys. */
const example = `log ${log.vkey}

witness X1 ${X[0].vkey}
witness X2 ${X[1].vkey}
witness X3 ${X[2].vkey}
group X-witnesses 2 X1 X2 X3

witness Y1 ${Y[0].vkey}
witness Y2 ${Y[1].vkey}
witness Y3 ${Y[2].vkey}
group Y-witnesses any Y1 Y2 Y3

group X-and-Y all X-witnesses Y-witnesses
quorum X-and-Y
`;

function refuses(text: string, pattern: RegExp): void {
  assert.throws(
    () => parsePolicy(text, 'p.txt'),
    (err: unknown) => {
      assert.ok(err instanceof FormatError, String(err));
      assert.match(err.message, pattern);
      return true;
    },
  );
}

describe('parsePolicy', () => {
  test('the spec example: one log, six witnesses, two-level groups', () => {
    const p = parsePolicy(example);
    assert.equal(p.logs.length, 1);
    assert.equal(p.logs[0].verifier.name, 'example.com/behind-the-sofa');
    assert.deepEqual([...p.witnesses.keys()], ['X1', 'X2', 'X3', 'Y1', 'Y2', 'Y3']);
    assert.deepEqual(p.groups.get('X-witnesses'), {
      name: 'X-witnesses',
      threshold: 2,
      members: ['X1', 'X2', 'X3'],
    });
    assert.equal(p.groups.get('Y-witnesses')?.threshold, 1);
    assert.equal(p.groups.get('X-and-Y')?.threshold, 2);
    assert.equal(p.quorum, 'X-and-Y');
  });

  test('whitespace is spaces and tabs, comments and empty lines are ignored, URLs are optional', () => {
    const p = parsePolicy(
      `  # a comment\n\t\n \tlog\t${log.vkey}  https://log.example/ \nwitness W ${X[0].vkey} https://w.example/\t\n# quorum none\nquorum W`,
    );
    assert.equal(p.logs[0].url, 'https://log.example/');
    assert.equal(p.witnesses.get('W')?.url, 'https://w.example/');
    assert.equal(p.quorum, 'W');
  });

  test('quorum none needs no witness and no log', () => {
    const p = parsePolicy('quorum none\n');
    assert.equal(p.quorum, undefined);
    assert.equal(p.logs.length, 0);
    assert.ok(evaluateQuorum(p, note()).met);
  });

  test('non-ASCII names are opaque octets: K and the Kelvin sign are two names', () => {
    const p = parsePolicy(
      `witness K ${X[0].vkey}\nwitness \u212a ${X[1].vkey}\ngroup g all K \u212a\nquorum g\n`,
    );
    assert.equal(p.witnesses.size, 2);
    assert.equal(p.groups.get('g')?.members.length, 2);
  });

  test('refuses what the spec does not allow, naming the line', () => {
    refuses('', /no quorum line/);
    refuses(`witness A ${X[0].vkey}\n`, /no quorum line/);
    refuses('quorum none\nquorum none\n', /line 2: a second quorum line \(the first is line 1\)/);
    refuses('quorum A\n', /line 1: quorum "A" is not a witness or group defined on an earlier line/);
    refuses(`quorum A\nwitness A ${X[0].vkey}\n`, /line 1: quorum "A"/);
    refuses(`group g any A\nwitness A ${X[0].vkey}\nquorum g\n`, /line 1: member "A" is not/);
    refuses('quorum none\r\n', /line 1: control character 0x0d/);
    refuses('quorum\u0000 none\n', /control character 0x00/);
    refuses('quorum none\nfoo bar\n', /line 2: unknown line type "foo"/);
    refuses('log\nquorum none\n', /line 1: expected "log <vkey> \[<url>\]"/);
    refuses(`log ${log.vkey} u extra\nquorum none\n`, /line 1: expected "log/);
    refuses(`witness A\nquorum none\n`, /line 1: expected "witness <name> <vkey> \[<url>\]"/);
    refuses(`witness A ${X[0].vkey} u x\nquorum none\n`, /line 1: expected "witness/);
    refuses('quorum none extra\n', /line 1: expected "quorum <name>"/);
    refuses(
      `witness A ${X[0].vkey}\ngroup g 1\nquorum g\n`,
      /line 2: expected "group .* at least one member/,
    );
  });

  test('refuses bad keys and keys of the wrong type', () => {
    refuses('log notakey\nquorum none\n', /line 1: log key: verifier key/);
    refuses(`log ${X[0].vkey}\nquorum none\n`, /line 1: log key: a log key must have signature type 0x01/);
    refuses(
      `witness A ${log.vkey}\nquorum A\n`,
      /line 1: key of witness "A": a witness key must have signature type 0x04/,
    );
    const bad = X[0].vkey.replace(/\+[0-9a-f]{8}\+/, '+00000000+');
    refuses(`witness A ${bad}\nquorum A\n`, /line 1: .*key id does not match/);
  });

  test('refuses duplicate keys (same public key under another name) and duplicate names', () => {
    const other = new NoteKey('other.example/log');
    const sameKey = `renamed+${noteKeyId('renamed', 4, X[0].pub).toString('hex')}+${Buffer.concat([Buffer.from([4]), X[0].pub]).toString('base64')}`;
    refuses(
      `witness A ${X[0].vkey}\nwitness B ${sameKey}\nquorum A\n`,
      /line 2: witness "B" has the same public key as witness "A" \(line 1\)/,
    );
    refuses(`log ${log.vkey}\nlog ${log.vkey}\nquorum none\n`, /line 2: log .* has the same public key/);
    assert.equal(parsePolicy(`log ${log.vkey}\nlog ${other.vkey}\nquorum none\n`).logs.length, 2);
    refuses(
      `witness A ${X[0].vkey}\nwitness A ${X[1].vkey}\nquorum A\n`,
      /line 2: name "A" is already defined/,
    );
    refuses(`witness A ${X[0].vkey}\ngroup A any A\nquorum A\n`, /line 2: name "A" is already defined/);
    refuses(`witness none ${X[0].vkey}\nquorum none\n`, /line 1: "none" is predefined/);
  });

  test('groups: thresholds 1..n in decimal, none is no member, each name a member once', () => {
    const ws = `witness A ${X[0].vkey}\nwitness B ${X[1].vkey}\n`;
    refuses(`${ws}group g 0 A B\nquorum g\n`, /line 3: threshold 0 is not between 1 and the 2 member/);
    refuses(`${ws}group g 3 A B\nquorum g\n`, /line 3: threshold 3/);
    refuses(`${ws}group g -1 A B\nquorum g\n`, /line 3: threshold must be all, any or a decimal number/);
    refuses(`${ws}group g 0x1 A B\nquorum g\n`, /threshold must be/);
    refuses(`${ws}group g any A none\nquorum g\n`, /line 3: "none" cannot be a group member/);
    refuses(`${ws}group g any A A\nquorum g\n`, /line 3: member "A" is listed twice/);
    refuses(
      `${ws}group g any A\ngroup h any A B\nquorum h\n`,
      /line 4: "A" is already a member of group "g"/,
    );
    assert.equal(parsePolicy(`${ws}group g 2 A B\nquorum g\n`).groups.get('g')?.threshold, 2);
  });
});

describe('evaluateQuorum', () => {
  const p = parsePolicy(example);

  test('the spec example: two X witnesses and one Y witness meet the quorum', () => {
    const r = evaluateQuorum(p, note(X[0].line(body), X[2].line(body), Y[1].line(body)));
    assert.equal(r.met, true);
    assert.deepEqual(r.signed, ['X1', 'X3', 'Y2']);
    assert.deepEqual(r.invalid, []);
  });

  test('one X witness short, or no Y witness, is not enough', () => {
    const r = evaluateQuorum(p, note(X[0].line(body), Y[0].line(body), Y[1].line(body)));
    assert.equal(r.met, false);
    assert.deepEqual(r.signed, ['X1', 'Y1', 'Y2']);
    assert.equal(
      r.required,
      'X-and-Y = all of (X-witnesses = 2 of (X1, X2, X3), Y-witnesses = any of (Y1, Y2, Y3))',
    );
    assert.equal(evaluateQuorum(p, note(X[0].line(body), X[1].line(body))).met, false);
    assert.equal(evaluateQuorum(p, note()).met, false);
  });

  test('cosignatures by unknown keys are ignored, including one that reuses a witness name', () => {
    const stranger = new Witness('x2.example/w'); // same name as X2, another key (another key id)
    const r = evaluateQuorum(
      p,
      note(X[0].line(body), stranger.line(body), new Witness('z').line(body), Y[0].line(body)),
    );
    assert.equal(r.met, false);
    assert.deepEqual(r.signed, ['X1', 'Y1']);
    assert.deepEqual(r.invalid, []);
  });

  test('a forged cosignature (matching name and key id, bad signature) does not count', () => {
    const r = evaluateQuorum(p, note(X[0].line(body), X[1].line(body, 1679315147, true), Y[0].line(body)));
    assert.equal(r.met, false);
    assert.deepEqual(r.signed, ['X1', 'Y1']);
    assert.deepEqual(r.invalid, ['X2']);
  });

  test('a cosignature of another checkpoint body does not count', () => {
    const other = body.replace('20852163', '20852164');
    const r = evaluateQuorum(p, note(X[0].line(body), X[1].line(other), Y[0].line(body)));
    assert.equal(r.met, false);
    assert.deepEqual(r.invalid, ['X2']);
  });

  test('a cosignature counts once however often it is repeated', () => {
    const l = X[0].line(body);
    assert.equal(evaluateQuorum(p, note(l, l, Y[0].line(body))).met, false);
  });

  test('requireQuorum throws witness.quorum naming who signed and what is needed', () => {
    assert.throws(
      () => requireQuorum(p, note(X[0].line(body), X[1].line(body, 5, true)), 'checkpoint 20852163'),
      (err: unknown) => {
        assert.ok(err instanceof VerificationError);
        assert.equal(err.check, 'witness.quorum');
        assert.match(
          err.message,
          /checkpoint 20852163 lacks the witness quorum: signed by X1; cosignatures that do not verify: X2; the policy needs X-and-Y = all of/,
        );
        return true;
      },
    );
    assert.equal(requireQuorum(p, note(X[0].line(body), X[1].line(body), Y[2].line(body)), 'c').met, true);
  });

  test('policyCoversLog: a policy with logs accepts only those (name and key)', () => {
    assert.ok(policyCoversLog(p, verifierFromVkey(log.vkey)));
    assert.ok(!policyCoversLog(p, verifierFromVkey(new NoteKey('example.com/behind-the-sofa').vkey)));
    assert.ok(policyCoversLog(parsePolicy('quorum none'), verifierFromVkey(log.vkey)));
  });
});
