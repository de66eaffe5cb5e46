import { type Command, Option } from 'commander';
import { LogClient } from '../../client/client.js';
import { defaultTrustDir, FileTrustStore } from '../../client/trust-store.js';
import { FormatError } from '../../core/errors.js';
import { type MisbehaviourProof, parseProof, verifyProof } from '../../core/misbehaviour.js';
import { proofDirOf } from '../../misbehaviour/files.js';
import { type GossipOutcome, type GossipPeer, gossipWith } from '../../misbehaviour/gossip.js';
import { CliError, EXIT } from '../output.js';
import { loadTrustConfig } from './decide.js';
import { timeoutMs } from './remote.js';

/** Whether a file's text is a misbehaviour proof (of any version) rather than a proof bundle. */
export function isMisbehaviourText(text: string): boolean {
  return /^\s*\{[^}]*?"type"\s*:\s*"trustix-misbehaviour\//.test(text.slice(0, 4096));
}

/** Exit codes of `trustix verify` on misbehaviour proofs. */
export const PROOF_EXIT = { proven: 0, notProven: 1, badInput: 2 } as const;

/**
 * Checks one misbehaviour proof file with the pinned log keys, prints the verdict (prefixed by the
 * file name when there are several) and returns its exit code.
 */
export function verifyProofFile(
  file: string,
  text: string,
  vkeys: readonly string[],
  o: { json?: boolean; prefix: boolean },
): number {
  const say = (verdict: Record<string, unknown>, line: string) => {
    if (o.json) console.log(JSON.stringify({ file, ...verdict }));
    else console.log(o.prefix ? `${file}: ${line}` : line);
  };
  let p: MisbehaviourProof;
  try {
    p = parseProof(text);
  } catch (err) {
    if (!(err instanceof FormatError)) throw err;
    say({ proven: false, error: err.message }, `BAD INPUT: ${err.message}`);
    return PROOF_EXIT.badInput;
  }
  if (vkeys.length === 0) {
    throw new CliError(
      "need --vkey KEY or --config FILE: a misbehaviour proof is checked with the log's own key, never with keys it carries",
      EXIT.usage,
    );
  }
  const v = verifyProof(p, vkeys);
  const common = { kind: p.kind, origin: p.origin };
  if (v.proven) {
    say({ proven: true, ...common, what: v.what }, `PROVEN: ${v.what}`);
    return PROOF_EXIT.proven;
  }
  say({ proven: false, ...common, reason: v.reason }, `NOT PROVEN (${p.kind}): ${v.reason}`);
  return PROOF_EXIT.notProven;
}

interface GossipOptions {
  config: string;
  witness?: string[];
  trustDir?: string;
  timeout?: string;
  json?: boolean;
}

function describe(r: GossipOutcome): string {
  const sizes =
    r.yourSize !== undefined
      ? ` (yours: size ${r.yourSize}${r.theirSize !== undefined ? `, theirs: size ${r.theirSize}` : ''})`
      : '';
  const sent = r.sent !== undefined ? `; sent yours: ${r.sent}` : '';
  const label = {
    agree: 'agree',
    'split-view': 'SPLIT VIEW',
    unproven: 'UNPROVEN',
    none: 'none',
    error: 'ERROR',
  }[r.status];
  return `${r.origin} with ${r.peer}: ${label}: ${r.message}${sizes}${sent}`;
}

export function registerMisbehaviourCommands(program: Command): void {
  program
    .command('gossip')
    .description(
      "compare the latest checkpoint you verified of each log in the trust config with the witnesses' (a log showing you another tree than them is caught, with a proof file); exit 0 if all agree, 4 on a split view (or a log that does not prove the link), 1 if some could not be checked",
    )
    .requiredOption(
      '-c, --config <file>',
      'the trust config (TOML) of `trustix decide`: its logs and witness policies',
    )
    .addOption(
      new Option(
        '--witness <url>',
        "also gossip with this witness (its URL prefix), for every log; repeatable. The witnesses of each log's witness_policy that have a URL are always asked",
      ).argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), v]),
    )
    .addOption(
      new Option(
        '--trust-dir <dir>',
        "where the checkpoints you verified are remembered (default: the config's trust_dir, else $XDG_STATE_HOME/trustix/trusted); proofs go to its misbehaviour/ directory",
      ).env('TRUSTIX_TRUST_DIR'),
    )
    .option('--timeout <seconds>', 'deadline for each request', '10')
    .option('--json', 'one JSON object per log and witness')
    .addHelpText(
      'after',
      `
For each log with a url, and each witness: fetch the witness's latest cosigned checkpoint of the
log (GET <witness>/<hex SHA-256 of the origin>/checkpoint, a Trustix witness extension), check it
against yours (one root per size, else the log's own consistency proof between the two sizes), and
send yours to the witness (POST add-checkpoint) when it is not older, so the witness cosigns it or
keeps its own record of the fork. A log without a checkpoint you verified is fetched and verified
first. Proof files: <trust dir>/misbehaviour/*.json, checked with \`trustix verify\`.

Example:
  trustix gossip --config ~/.config/trustix/decide.toml`,
    )
    .action(async (o: GossipOptions) => {
      const config = loadTrustConfig(o.config);
      const trustDir = o.trustDir ?? config.trustDir ?? defaultTrustDir();
      const trustStore = new FileTrustStore(trustDir);
      const timeout = timeoutMs(o);
      const extra: GossipPeer[] = [];
      for (const u of o.witness ?? []) {
        try {
          const url = new URL(u);
          if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('not http');
        } catch {
          throw new CliError(`--witness: not an http(s) URL: ${u}`, EXIT.usage);
        }
        extra.push({ name: u, url: u });
      }
      const results: GossipOutcome[] = [];
      for (const log of config.logs) {
        if (log.url === undefined) {
          process.stderr.write(`${log.name}: a local log (state =) is not gossiped\n`);
          continue;
        }
        const peers = [
          ...[...(log.witnessPolicy?.witnesses.values() ?? [])]
            .filter((w) => w.url !== undefined)
            .map((w) => ({ name: w.name, url: w.url! })),
          ...extra,
        ];
        if (peers.length === 0) {
          process.stderr.write(`${log.name}: no witness with a URL to gossip with\n`);
          continue;
        }
        const client = new LogClient({
          url: log.url,
          vkey: log.vkey,
          trustStore,
          timeoutMs: timeout,
          proofDir: proofDirOf(trustDir),
        });
        for (const peer of peers) {
          const r = await gossipWith(client, peer, { timeoutMs: timeout });
          results.push(r);
          if (o.json) console.log(JSON.stringify(r));
          else console.log(describe(r));
        }
      }
      if (results.length === 0) throw new CliError('nothing to gossip: no log with a url and a witness URL');
      if (results.some((r) => r.status === 'split-view' || r.status === 'unproven'))
        process.exitCode = EXIT.invalid;
      else if (results.some((r) => r.status === 'error')) process.exitCode = EXIT.error;
    });
}
