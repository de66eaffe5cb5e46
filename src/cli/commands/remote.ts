import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { type Command, Option } from 'commander';
import { LogClient } from '../../client/client.js';
import { defaultTrustDir, FileTrustStore } from '../../client/trust-store.js';
import { loadWitnessPolicy } from '../../config/witness-policy.js';
import {
  type Bundle,
  type BundleResult,
  consistencyBundle,
  formatBundle,
  inclusionBundle,
  lookupBundle,
  verifyBundle,
} from '../../core/bundle.js';
import { toHex } from '../../core/bytes.js';
import { openCheckpoint } from '../../core/checkpoint.js';
import { FormatError, VerificationError } from '../../core/errors.js';
import { verifierFromVkey } from '../../core/note.js';
import type { WitnessPolicy } from '../../core/policy.js';
import type { DecideConfig } from '../../decide/config.js';
import { Log } from '../../log/log.js';
import { proofDirOf } from '../../misbehaviour/files.js';
import { KEY_ARG_HELP, lookupKeyArg } from '../lookup-key.js';
import { CliError, EXIT } from '../output.js';
import { loadTrustConfig, verifyDecisionBundleText } from './decide.js';
import { isMisbehaviourText, verifyProofFile } from './misbehaviour.js';

/** Options shared by every command that can work on a remote log. */
export interface RemoteOptions {
  url?: string;
  vkey?: string;
  trustDir?: string;
  timeout?: string;
  token?: string;
  writerKey?: string;
  writer?: string;
  witnessPolicy?: string;
}

/** Adds `--url`, `--vkey`, `--trust-dir`, `--timeout` (and for submit `--token`, `--writer-key`). */
export function addRemoteOptions(cmd: Command, opts: { submit?: boolean } = {}): Command {
  cmd
    .addOption(
      new Option('-u, --url <url>', 'a remote log: its URL prefix, e.g. http://host:8080/logs/default/').env(
        'TRUSTIX_URL',
      ),
    )
    .addOption(
      new Option('-k, --vkey <vkey>', "the remote log's verifier key (or a file holding it)").env(
        'TRUSTIX_VKEY',
      ),
    )
    .addOption(
      new Option(
        '--trust-dir <dir>',
        'where the last trusted checkpoint of each log is remembered (default: $XDG_STATE_HOME/trustix/trusted)',
      )
        .env('TRUSTIX_TRUST_DIR')
        .default(undefined, '$XDG_STATE_HOME/trustix/trusted'),
    )
    .addOption(new Option('--timeout <seconds>', 'deadline for each request to the remote log').default('10'))
    .addOption(
      new Option(
        '--witness-policy <file>',
        'a C2SP tlog-policy file (witness, group, quorum lines): refuse any checkpoint of the log whose witness cosignatures do not meet its quorum (check witness.quorum, exit 4); see docs/witness.md',
      ).env('TRUSTIX_WITNESS_POLICY'),
    );
  if (opts.submit) {
    cmd
      .addOption(new Option('--token <token>', 'bearer token of a writer').env('TRUSTIX_TOKEN'))
      .addOption(
        new Option(
          '--writer-key <file>',
          "sign the request with this writer's key file instead of a token (mode 0600)",
        ),
      )
      .addOption(new Option('--writer <name>', 'writer name for signed requests (default: the key name)'));
  }
  return cmd;
}

/** Whether a command runs on a local log (`--state`) or a remote one (`--url`); the command line beats the environment. */
export function targetOf(cmd: Command): 'local' | 'remote' {
  const o = cmd.opts() as { state?: string; url?: string };
  const hasState = o.state !== undefined;
  const hasUrl = o.url !== undefined;
  if (hasState && hasUrl) {
    const s = cmd.getOptionValueSource('state');
    const u = cmd.getOptionValueSource('url');
    if (s === 'cli' && u !== 'cli') return 'local';
    if (u === 'cli' && s !== 'cli') return 'remote';
    throw new CliError('give either --state (a local log) or --url (a remote log), not both', EXIT.usage);
  }
  if (hasState) return 'local';
  if (hasUrl) return 'remote';
  throw new CliError(
    'need --state DIR (a local log) or --url URL with --vkey KEY (a remote log)',
    EXIT.usage,
  );
}

/** A verifier key given as text or as a file holding it. */
export function readVkey(value: string): string {
  try {
    return verifierFromVkey(value.trim()).vkey;
  } catch (err) {
    if (existsSync(value)) {
      for (const line of readFileSync(value, 'utf8').split('\n')) {
        const t = line.replace(/^verifier key:\s*/, '').trim();
        if (t === '') continue;
        try {
          return verifierFromVkey(t).vkey;
        } catch {
          // keep looking
        }
      }
      throw new CliError(`no verifier key found in ${value}`, EXIT.usage);
    }
    throw new CliError(`--vkey: ${(err as Error).message}`, EXIT.usage);
  }
}

/** `--timeout` in milliseconds. */
export function timeoutMs(o: RemoteOptions): number {
  const s = Number(o.timeout ?? '10');
  if (!Number.isFinite(s) || s <= 0)
    throw new CliError('--timeout must be a positive number of seconds', EXIT.usage);
  return s * 1000;
}

/** A verifying client for `--url`/`--vkey`, remembering trust under `--trust-dir`. */
export function openClient(o: RemoteOptions, opts: { vkey?: string; remember?: boolean } = {}): LogClient {
  if (!o.url) throw new CliError('need --url URL', EXIT.usage);
  const vkey = opts.vkey ?? (o.vkey ? readVkey(o.vkey) : undefined);
  if (!vkey) throw new CliError("need --vkey KEY: the remote log's verifier key", EXIT.usage);
  let url: URL;
  try {
    url = new URL(o.url);
  } catch {
    throw new CliError(`--url: not a URL: ${o.url}`, EXIT.usage);
  }
  const policy = witnessPolicyOf(o);
  try {
    return new LogClient({
      url,
      vkey,
      timeoutMs: timeoutMs(o),
      ...(opts.remember === false
        ? {}
        : {
            trustStore: new FileTrustStore(o.trustDir ?? defaultTrustDir()),
            proofDir: proofDirOf(o.trustDir ?? defaultTrustDir()),
          }),
      ...policy,
    });
  } catch (err) {
    if (err instanceof FormatError) throw new CliError(err.message, EXIT.usage);
    throw err;
  }
}

/** `--witness-policy FILE` read as LogClient options (a bad file is a usage error). */
export function witnessPolicyOf(o: RemoteOptions): { witnessPolicy?: WitnessPolicy } {
  if (!o.witnessPolicy) return {};
  try {
    return { witnessPolicy: loadWitnessPolicy(o.witnessPolicy, '--witness-policy') };
  } catch (err) {
    if (err instanceof FormatError) throw new CliError(err.message, EXIT.usage);
    throw err;
  }
}

/** Turns a failed verification into a one-line error that exits with the "invalid" code. */
export async function invalidExits<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof VerificationError) throw new CliError(`${err.check}: ${err.message}`, EXIT.invalid);
    throw err;
  }
}

function writeOut(text: string, file: string | undefined): void {
  if (file && file !== '-') writeFileSync(file, text);
  else process.stdout.write(text);
}

function parseCount(text: string, what: string): number {
  if (!/^(?:0|[1-9][0-9]*)$/.test(text) || !Number.isSafeInteger(Number(text))) {
    throw new CliError(`${what} must be a non-negative integer, got ${JSON.stringify(text)}`, EXIT.usage);
  }
  return Number(text);
}

/** A signed checkpoint from a file holding either the note or a bundle (its newest checkpoint). */
function readCheckpointFile(file: string): string {
  const text = readFileSync(file === '-' ? 0 : file, 'utf8');
  if (!text.trimStart().startsWith('{')) return text;
  let b: Record<string, unknown>;
  try {
    b = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new CliError(`${file} is neither a checkpoint nor a JSON bundle`, EXIT.usage);
  }
  const note = b.new ?? b.checkpoint ?? (b.answer as { checkpoint?: unknown } | undefined)?.checkpoint;
  if (typeof note !== 'string') throw new CliError(`${file} holds no checkpoint`, EXIT.usage);
  return note;
}

type ProofOptions = RemoteOptions & { state?: string; output?: string };

/** `proof` (bundles from a local or remote log) and `verify` (offline bundle check). */
export function registerRemoteCommands(program: Command): void {
  const proof = program
    .command('proof')
    .description('write a self-contained proof bundle (JSON) that `trustix verify` checks offline')
    .addHelpText(
      'after',
      '\nExamples:\n  trustix proof inclusion 42 --url http://host:8080/logs/default/ --vkey "$VKEY" -o entry42.json\n  trustix proof consistency --state ./mylog --old-size 100 -o grew.json\n  trustix proof lookup 0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k --state ./mylog',
    );

  const proofCommand = (name: string, description: string, example: string) => {
    const cmd = proof
      .command(name)
      .description(description)
      .addOption(new Option('-s, --state <dir>', 'a local log directory').env('TRUSTIX_STATE'))
      .option('-o, --output <file>', 'write the bundle here instead of stdout')
      .addHelpText('after', `\nExample:\n  ${example}`);
    return addRemoteOptions(cmd);
  };

  proofCommand(
    'inclusion',
    'prove that entry INDEX is in the log (latest checkpoint)',
    'trustix proof inclusion 42 --url http://host:8080/logs/default/ --vkey "$VKEY" -o entry42.json',
  )
    .argument('<index>', 'the entry index')
    .action(async (indexText: string, o: ProofOptions, cmd: Command) => {
      const index = parseCount(indexText, 'index');
      let bundle: Bundle;
      if (targetOf(cmd) === 'local') {
        bundle = await withLocalLog(o.state!, (log) => {
          const head = log.head();
          if (index >= head.size)
            throw new CliError(`entry ${index} does not exist: the log has ${head.size} entries`);
          return inclusionBundle(
            log.vkey,
            head.checkpoint,
            index,
            log.entry(index),
            log.inclusionProof(index, head.size),
          );
        });
      } else {
        const client = openClient(o);
        const p = await invalidExits(() => client.proveInclusion(index));
        bundle = inclusionBundle(client.vkey, p.trusted.note, index, p.data, p.proof);
      }
      emit(bundle, o.output, `inclusion proof of entry ${index}`);
    });

  proofCommand(
    'consistency',
    'prove that the log only grew since an older checkpoint: --old FILE (a checkpoint or bundle), --old-size N (local logs), or, for a remote log, the checkpoint last trusted',
    'trustix proof consistency --url http://host:8080/logs/default/ --vkey "$VKEY" --old yesterday.json',
  )
    .option('--old <file>', 'the older signed checkpoint: a note, or a bundle whose newest checkpoint to use')
    .option('--old-size <n>', 'local logs: the published checkpoint of this size')
    .action(async (o: ProofOptions & { old?: string; oldSize?: string }, cmd: Command) => {
      let bundle: Bundle;
      if (targetOf(cmd) === 'local') {
        bundle = await withLocalLog(o.state!, (log) => {
          let oldNote: string | undefined;
          if (o.old) oldNote = readCheckpointFile(o.old);
          else if (o.oldSize) {
            const want = parseCount(o.oldSize, '--old-size');
            for (const c of log.storage.checkpoints()) if (c.size === want) oldNote = c.checkpoint;
            if (!oldNote) throw new CliError(`the log published no checkpoint of size ${want}`);
          } else throw new CliError('need --old FILE or --old-size N', EXIT.usage);
          const head = log.head();
          const old = openCheckpoint(oldNote, verifierFromVkey(log.vkey)).checkpoint;
          if (old.size === 0) throw new CliError('a consistency proof from the empty tree proves nothing');
          if (old.size > head.size)
            throw new CliError(`the old checkpoint (size ${old.size}) is beyond the log (size ${head.size})`);
          const proofHashes = old.size === head.size ? [] : log.consistencyProof(old.size, head.size);
          return consistencyBundle(log.vkey, oldNote, head.checkpoint, proofHashes);
        });
      } else {
        const client = openClient(o);
        const oldNote = o.old ? readCheckpointFile(o.old) : (await client.trusted())?.note;
        if (!oldNote) {
          throw new CliError('no checkpoint of this log was trusted yet; pass --old FILE', EXIT.usage);
        }
        const p = await invalidExits(() => client.proveConsistency(oldNote));
        bundle = consistencyBundle(client.vkey, p.old.note, p.new.note, p.proof);
      }
      // a locally built bundle is checked too, so a damaged store cannot produce a bad bundle silently
      await invalidExits(async () => verifyBundle(bundle));
      emit(bundle, o.output, 'consistency proof');
    });

  proofCommand(
    'lookup',
    'prove that KEY is present (with its entry) or absent',
    'trustix proof lookup 0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k --url http://host:8080/logs/default/ --vkey "$VKEY"',
  )
    .option('--protocol <name>', 'the entry protocol', 'nix')
    .argument('<key>', KEY_ARG_HELP)
    .action(async (arg: string, o: ProofOptions & { protocol: string }, cmd: Command) => {
      const key = await lookupKeyArg(o.protocol, arg);
      let bundle: Bundle;
      if (targetOf(cmd) === 'local') {
        bundle = await withLocalLog(o.state!, (log) =>
          lookupBundle(log.vkey, log.lookup(o.protocol, Buffer.from(key))),
        );
        await invalidExits(async () => verifyBundle(bundle));
      } else {
        const client = openClient(o);
        const r = await invalidExits(() => client.lookup(o.protocol, key));
        bundle = lookupBundle(client.vkey, r.answer);
      }
      emit(bundle, o.output, `lookup proof for ${key}`);
    });

  program
    .command('verify')
    .description(
      "check proof bundles, decision bundles or misbehaviour proofs offline. Bundles: exit 0 if valid, 4 if not; pin the logs with --vkey or --config, else the keys inside the bundle are used (and the output says so). Misbehaviour proofs (written by witnesses, clients, deciders, mirrors): checked with the log's key from --vkey or --config only; exit 0 if proven, 1 if not, 2 on bad input. With several files, the highest exit code",
    )
    .argument('<files...>', 'bundle or proof files, or - for stdin')
    .addOption(
      new Option(
        '-k, --vkey <vkey>',
        "a log's verifier key (or a file holding it); repeat for several logs: every log of the bundle must have one of them",
      )
        .env('TRUSTIX_VKEY')
        .argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), v]),
    )
    .option(
      '-c, --config <file>',
      'a trust config (TOML): its logs pin the keys; a decision bundle must also have its logs, weights and procedure',
    )
    .option('--json', 'JSON output')
    .addHelpText(
      'after',
      '\nExamples:\n  trustix verify entry42.json --vkey "$VKEY"\n  trustix verify evidence.json --config ~/.config/trustix/decide.toml\n  trustix verify evidence.json --vkey "$VKEY1" --vkey "$VKEY2" --vkey "$VKEY3"\n  trustix verify ~/.local/state/trustix/trusted/misbehaviour/*.json --vkey "$VKEY"\n\nA misbehaviour proof is PROVEN when the log\'s own signatures show two things that cannot both\nbe true: two trees of one size, a newer tree whose first entries are not the older tree (by the\nproof hashes the log gave), or a map line that is not the index of the entries (docs/misbehaviour.md).',
    )
    .action(async (files: string[], o: { vkey?: string[]; config?: string; json?: boolean }) => {
      const config = o.config ? loadTrustConfig(o.config) : undefined;
      const vkeys = (o.vkey ?? []).map(readVkey);
      const pinned = [...vkeys, ...(config?.logs.map((l) => l.vkey) ?? [])];
      let worst = 0;
      for (const file of files) {
        const text = readFileSync(file === '-' ? 0 : file);
        let code: number;
        if (isMisbehaviourText(text.toString('utf8'))) {
          code = verifyProofFile(file, text.toString('utf8'), pinned, {
            json: o.json,
            prefix: files.length > 1,
          });
        } else {
          if (files.length > 1 && !o.json) console.log(`${file}:`);
          code = await verifyBundleFile(text, vkeys, config, pinned, o.json);
        }
        worst = Math.max(worst, code);
      }
      process.exitCode = worst;
    });
}

/** `trustix verify` of one proof or decision bundle; returns the exit code. */
async function verifyBundleFile(
  text: Buffer,
  vkeys: string[],
  config: DecideConfig | undefined,
  pinned: string[],
  json: boolean | undefined,
): Promise<number> {
  process.exitCode = 0;
  if (await verifyDecisionBundleText(text, { vkeys, ...(config ? { config } : {}), json }))
    return Number(process.exitCode ?? 0);
  let r: BundleResult;
  try {
    r = verifyBundle(text, pinned.length > 0 ? { vkeys: pinned } : {});
  } catch (err) {
    if (!(err instanceof VerificationError)) {
      if (err instanceof FormatError) throw new CliError(err.message, EXIT.usage);
      throw err;
    }
    if (json) console.log(JSON.stringify({ valid: false, check: err.check, reason: err.message }));
    else console.log(`INVALID: ${err.check}: ${err.message}`);
    return EXIT.invalid;
  }
  if (pinned.length === 0) {
    process.stderr.write(
      `note: checked with the key inside the bundle (${r.vkey}); pass --vkey or --config to pin the log\n`,
    );
  }
  if (json) console.log(JSON.stringify({ valid: true, pinned: pinned.length > 0, ...summary(r) }));
  else console.log(`valid: ${describe(r)}`);
  return 0;
}

function emit(bundle: Bundle, output: string | undefined, what: string): void {
  writeOut(formatBundle(bundle), output);
  if (output && output !== '-') process.stderr.write(`${what} written to ${output}\n`);
}

async function withLocalLog<T>(dir: string, fn: (log: Log) => T): Promise<T> {
  const log = await Log.open(dir, { readOnly: true });
  try {
    return fn(log);
  } finally {
    await log.close();
  }
}

function keyText(b: Buffer): string {
  const s = b.toString('utf8');
  let printable = Buffer.from(s, 'utf8').equals(b);
  for (let i = 0; printable && i < s.length; i++) if (s.charCodeAt(i) < 0x20) printable = false;
  return printable ? s : `0x${toHex(b)}`;
}

function describe(r: BundleResult): string {
  switch (r.type) {
    case 'trustix-inclusion/v1': {
      const what = r.entry ? ` (${r.entry.protocol} ${keyText(r.entry.key)} -> ${toHex(r.entry.value)})` : '';
      return `entry ${r.index}${what} is in ${r.checkpoint.origin} at size ${r.checkpoint.size}`;
    }
    case 'trustix-consistency/v1':
      return `${r.old.origin} at size ${r.old.size} is a prefix of size ${r.new.size}`;
    case 'trustix-lookup/v1':
      return r.status === 'present'
        ? `present: ${r.protocol} ${keyText(r.key)} -> ${toHex(r.entry!.value)} (entry ${r.index}, ${r.checkpoint.origin} at size ${r.checkpoint.size})`
        : `absent: ${r.protocol} ${keyText(r.key)} (${r.checkpoint.origin} at size ${r.checkpoint.size})`;
  }
}

function summary(r: BundleResult): Record<string, unknown> {
  switch (r.type) {
    case 'trustix-inclusion/v1':
      return {
        type: r.type,
        vkey: r.vkey,
        origin: r.checkpoint.origin,
        size: r.checkpoint.size,
        index: r.index,
        ...(r.entry
          ? { protocol: r.entry.protocol, key: keyText(r.entry.key), value: toHex(r.entry.value) }
          : { entry: r.data.toString('base64') }),
      };
    case 'trustix-consistency/v1':
      return { type: r.type, vkey: r.vkey, origin: r.old.origin, oldSize: r.old.size, newSize: r.new.size };
    case 'trustix-lookup/v1':
      return {
        type: r.type,
        vkey: r.vkey,
        origin: r.checkpoint.origin,
        size: r.checkpoint.size,
        status: r.status,
        protocol: r.protocol,
        key: keyText(r.key),
        ...(r.status === 'present' ? { index: r.index, value: toHex(r.entry!.value) } : {}),
      };
  }
}
