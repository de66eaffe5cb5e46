import { isUtf8 } from 'node:buffer';
import { readFileSync } from 'node:fs';
import { type Command, Option } from 'commander';
import { listLogs, type SubmitAuth, serverRootOf } from '../../client/client.js';
import { readSecretFile } from '../../config/secret.js';
import { toHex } from '../../core/bytes.js';
import { type Entry, keyFromText } from '../../core/entry.js';
import { VerificationError } from '../../core/errors.js';
import { type LookupAnswer, type LookupVerdict, verifyLookup } from '../../core/lookup.js';
import { generateKey, verifierFromVkey } from '../../core/note.js';
import { type AuditReport, auditEntries, auditStore, storeChunks } from '../../log/audit.js';
import { type HistoryItem, keyHistory } from '../../log/history.js';
import { Log } from '../../log/log.js';
import { KEY_ARG_HELP, lookupKeyArg } from '../lookup-key.js';
import { CliError, EXIT, progress } from '../output.js';
import {
  addRemoteOptions,
  invalidExits,
  openClient,
  type RemoteOptions,
  readVkey,
  targetOf,
  timeoutMs,
} from './remote.js';

/**
 * Commands that work on a log directory on this machine (`--state`); submit, lookup, info and
 * audit also work on a remote log (`--url` and `--vkey`, see remote.ts).
 */
export function registerLocalCommands(program: Command): void {
  const stateOption = () =>
    new Option('-s, --state <dir>', 'the log directory').env('TRUSTIX_STATE').makeOptionMandatory();
  // for commands that take --state or --url
  const localOrRemote = (cmd: Command, opts: { submit?: boolean } = {}) =>
    addRemoteOptions(
      cmd.addOption(new Option('-s, --state <dir>', 'a local log directory').env('TRUSTIX_STATE')),
      opts,
    );

  program
    .command('keygen')
    .description('print a new ed25519 signing key and its verifier key for a log named NAME')
    .argument('<name>', 'the log origin, e.g. example.com/builder1')
    .addHelpText('after', '\nExample:\n  trustix keygen example.com/builder1 > builder1.key')
    .action((name: string) => {
      const { skey, vkey } = generateKey(name);
      process.stdout.write(`${skey}\n`);
      process.stderr.write(`verifier key: ${vkey}\n`);
    });

  program
    .command('init')
    .description('create a new, empty log in DIR with a fresh signing key (mode 0600)')
    .addOption(stateOption())
    .option('--origin <name>', 'the log origin (checkpoint first line)', 'trustix.local/log')
    .option(
      '--key-file <file>',
      'use this signing key instead of generating one (a file only its owner may access: chmod 600)',
    )
    .addHelpText('after', '\nExample:\n  trustix init --state ./mylog --origin example.com/builder1')
    .action(async (o: { state: string; origin: string; keyFile?: string }) => {
      const skey = o.keyFile ? readSecretFile(o.keyFile, 'signing key') : undefined;
      const log = await Log.create(o.state, o.origin, skey ? { skey } : {});
      console.log(`created log ${log.origin} in ${o.state}`);
      console.log(`verifier key: ${log.vkey}`);
      await log.close();
    });

  localOrRemote(
    program
      .command('submit')
      .description(
        'append entries: each is KEY=VALUE with VALUE in hex (e.g. a sha256); or lines "KEY VALUE" from --file or stdin (-)',
      ),
    { submit: true },
  )
    .option('--protocol <name>', 'the entry protocol', 'nix')
    .option('-f, --file <file>', 'read "KEY VALUE" lines from a file, or - for stdin')
    .option('--json', 'print receipts as JSON lines')
    .option('--batch-size <n>', 'entries per batch (remote: per request, at most 10000)', '10000')
    .argument('[pairs...]', 'KEY=VALUEHEX pairs')
    .addHelpText(
      'after',
      '\nExamples:\n  trustix submit --state ./mylog 0c8i2...=3f7a...\n  cut -f1,2 pairs.tsv | trustix submit --state ./mylog -f -\n  trustix submit --url http://host:8080/logs/default/ --vkey "$VKEY" --token "$TOKEN" 0c8i2...=3f7a...',
    )
    .action(
      async (
        pairs: string[],
        o: RemoteOptions & {
          state?: string;
          protocol: string;
          file?: string;
          json?: boolean;
          batchSize: string;
        },
        cmd: Command,
      ) => {
        const target = targetOf(cmd);
        const chunk = Number(o.batchSize);
        if (!Number.isSafeInteger(chunk) || chunk < 1 || chunk > 10_000) {
          throw new CliError('--batch-size must be an integer from 1 to 10000', EXIT.usage);
        }
        const entries: Entry[] = [];
        for (const p of pairs) {
          const eq = p.lastIndexOf('=');
          if (eq <= 0) throw new CliError(`expected KEY=VALUE, got ${JSON.stringify(p)}`, EXIT.usage);
          if (p.includes('\ufffd') && !argumentIsUtf8(p)) {
            throw new CliError(
              `${JSON.stringify(p)}: the argument is not valid UTF-8 (keys are UTF-8 text)`,
              EXIT.usage,
            );
          }
          entries.push(makeEntry(o.protocol, p.slice(0, eq), p.slice(eq + 1), p));
        }
        if (o.file) {
          const bytes = readFileSync(o.file === '-' ? 0 : o.file);
          let n = 0;
          for (const raw of splitBytes(bytes, 0x0a)) {
            n++;
            // decoding would turn each invalid byte into U+FFFD, so such a key would become another
            if (!isUtf8(raw))
              throw new CliError(`line ${n}: not valid UTF-8 (keys are UTF-8 text)`, EXIT.usage);
            const t = raw.toString('utf8').trim();
            if (t === '' || t.startsWith('#')) continue;
            const parts = t.split(/\s+/);
            if (parts.length !== 2) throw new CliError(`line ${n}: expected "KEY VALUE"`, EXIT.usage);
            entries.push(makeEntry(o.protocol, parts[0], parts[1], `line ${n}`));
          }
        }
        if (entries.length === 0) throw new CliError('nothing to submit', EXIT.usage);
        const printReceipt = (e: Entry, r: { index: number; duplicate: boolean; checkpoint: string }) =>
          console.log(
            JSON.stringify({
              key: e.key.toString(),
              index: r.index,
              duplicate: r.duplicate,
              checkpoint: r.checkpoint,
            }),
          );
        if (target === 'remote') {
          const auth = submitAuth(o);
          const client = openClient(o);
          const bar = entries.length > chunk ? progress('submitting', entries.length) : undefined;
          const receipts = await invalidExits(() =>
            client.submit(entries, auth, { onProgress: (d) => bar?.update(d), batchSize: chunk }),
          );
          bar?.stop();
          let appended = 0;
          for (const [j, r] of receipts.entries()) {
            if (!r.duplicate) appended++;
            if (o.json) printReceipt(entries[j], r);
          }
          const size = (await client.trusted())?.checkpoint.size;
          if (!o.json) console.log(`${entries.length} submitted, ${appended} appended; log size ${size}`);
          return;
        }
        const log = await Log.open(o.state!);
        try {
          const bar = entries.length > chunk ? progress('submitting', entries.length) : undefined;
          let appended = 0;
          for (let i = 0; i < entries.length; i += chunk) {
            const receipts = await log.submit(entries.slice(i, i + chunk));
            for (const [j, r] of receipts.entries()) {
              if (!r.duplicate) appended++;
              if (o.json) printReceipt(entries[i + j], r);
            }
            bar?.update(Math.min(entries.length, i + chunk));
          }
          bar?.stop();
          const head = log.head();
          if (!o.json)
            console.log(`${entries.length} submitted, ${appended} appended; log size ${head.size}`);
        } finally {
          await log.close();
        }
      },
    );

  localOrRemote(
    program
      .command('lookup')
      .description('look KEY up and verify the answer; exit 0 if present, 3 if proven absent, 4 if invalid'),
  )
    .option('--protocol <name>', 'the entry protocol', 'nix')
    .option('--json', 'print the verified answer as JSON')
    .option(
      '--history',
      "also list every value the log holds for KEY, oldest first (a rebuild that gave another value adds an entry; the lookup answers the latest). Reads every entry: from the log's files with --state, or every entry bundle of a remote log, each match checked by an inclusion proof",
    )
    .argument('<key>', KEY_ARG_HELP)
    .addHelpText(
      'after',
      '\nExamples:\n  trustix lookup --state ./mylog 0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k\n  trustix lookup --url http://host:8080/logs/default/ --vkey "$VKEY" 0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k\n  trustix lookup --url http://host:8080/logs/default/ --vkey "$VKEY" ./result\n  trustix lookup --state /var/lib/trustix/logs/default --history 0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k',
    )
    .action(
      async (
        arg: string,
        o: RemoteOptions & { state?: string; protocol: string; json?: boolean; history?: boolean },
        cmd: Command,
      ) => {
        const key = await lookupKeyArg(o.protocol, arg);
        let verdict: LookupVerdict;
        let answer: LookupAnswer | undefined;
        let history: HistoryItem[] | undefined;
        const keyBytes = Buffer.from(key);
        if (targetOf(cmd) === 'remote') {
          const client = openClient(o);
          try {
            const r = await client.lookup(o.protocol, key);
            answer = r.answer;
            verdict =
              r.status === 'present'
                ? { status: 'present', entry: r.entry, index: r.index, checkpoint: r.checkpoint }
                : { status: 'absent', checkpoint: r.checkpoint };
            if (o.history) {
              const size = r.checkpoint.size;
              history = await keyHistory(client.entries(0, size, { treeSize: size }), o.protocol, keyBytes);
              // entry bundles are not signed: each match must be included in the trusted checkpoint
              for (const h of history) {
                const p = await client.proveInclusion(h.index);
                if (!p.data.equals(h.data)) {
                  throw new VerificationError(
                    'history.inclusion',
                    `entry ${h.index} differs from its entry bundle`,
                  );
                }
              }
            }
          } catch (err) {
            if (!(err instanceof VerificationError)) throw err;
            verdict = { status: 'invalid', check: err.check, reason: err.message };
          }
        } else {
          const log = await Log.open(o.state!, { readOnly: true });
          try {
            answer = log.lookup(o.protocol, keyBytes);
            verdict = verifyLookup(answer, verifierFromVkey(log.vkey), {
              protocol: o.protocol,
              key: keyBytes,
            });
            if (o.history && verdict.status !== 'invalid') {
              history = await keyHistory(
                storeChunks(log.storage, verdict.checkpoint.size),
                o.protocol,
                keyBytes,
              );
            }
          } finally {
            await log.close();
          }
        }
        if (history && verdict.status !== 'invalid') {
          // the index answers the latest entry of the key; the entries must agree
          const last = history.at(-1);
          const consistent =
            verdict.status === 'present' ? last?.index === verdict.index : last === undefined;
          if (!consistent) {
            verdict = {
              status: 'invalid',
              check: 'history.latest',
              reason: `the lookup answers ${verdict.status === 'present' ? `entry ${verdict.index}` : 'absent'}, but the latest entry for the key is ${last ? `entry ${last.index}` : 'none'}`,
            };
          }
        }
        if (o.json) {
          console.log(
            JSON.stringify({
              status: verdict.status,
              ...(verdict.status === 'present'
                ? { index: verdict.index, value: toHex(verdict.entry.value), size: verdict.checkpoint.size }
                : {}),
              ...(verdict.status === 'absent' ? { size: verdict.checkpoint.size } : {}),
              ...(verdict.status === 'invalid' ? { check: verdict.check, reason: verdict.reason } : {}),
              ...(history
                ? { history: history.map((h) => ({ index: h.index, value: toHex(h.entry.value) })) }
                : {}),
              ...(answer ? { answer } : {}),
            }),
          );
        } else if (verdict.status === 'present') {
          console.log(
            `present: ${key} -> ${toHex(verdict.entry.value)} (entry ${verdict.index}, verified against size ${verdict.checkpoint.size})`,
          );
        } else if (verdict.status === 'absent') {
          console.log(`absent: ${key} (non-inclusion verified against size ${verdict.checkpoint.size})`);
        } else {
          console.log(`INVALID: ${verdict.check}: ${verdict.reason}`);
        }
        if (history && !o.json && verdict.status !== 'invalid') {
          console.log(
            `history: ${history.length} entr${history.length === 1 ? 'y' : 'ies'} for ${key}, oldest first`,
          );
          for (const h of history) {
            const latest = verdict.status === 'present' && h.index === verdict.index ? ' (latest)' : '';
            console.log(`  entry ${h.index}: ${toHex(h.entry.value)}${latest}`);
          }
        }
        process.exitCode =
          verdict.status === 'present' ? EXIT.ok : verdict.status === 'absent' ? EXIT.absent : EXIT.invalid;
      },
    );

  localOrRemote(
    program.command('info').description("print a log's origin, verifier key, size and latest checkpoint"),
  )
    .option('--json', 'JSON output')
    .addHelpText(
      'after',
      '\nExamples:\n  trustix info --state ./mylog\n  trustix info --url http://host:8080/logs/default/ --vkey "$VKEY"\n  trustix info --url http://host:8080/logs/default/   (key taken from the server, unverified)',
    )
    .action(async (o: RemoteOptions & { state?: string; json?: boolean }, cmd: Command) => {
      if (targetOf(cmd) === 'local') {
        const log = await Log.open(o.state!, { readOnly: true });
        const d = log.describe();
        await log.close();
        if (o.json) console.log(JSON.stringify(d));
        else
          console.log(`origin: ${d.origin}\nvkey: ${d.vkey}\nsize: ${d.size}\ncheckpoint:\n${d.checkpoint}`);
        return;
      }
      let vkey = o.vkey ? readVkey(o.vkey) : undefined;
      const pinned = vkey !== undefined;
      if (!vkey) {
        // without a pinned key, ask the server for it: the output says it is unverified
        const root = serverRootOf(o.url!);
        if (!root)
          throw new CliError('need --vkey KEY (the URL is not of the form .../logs/<id>/)', EXIT.usage);
        const prefix = new URL(o.url!).pathname.replace(/\/?$/, '/');
        const found = (await listLogs(root, { timeoutMs: timeoutMs(o) })).find((l) => l.prefix === prefix);
        if (!found) throw new CliError(`the server lists no log at ${prefix}; pass --vkey`);
        vkey = readVkey(found.vkey);
      }
      // an unpinned key must not leave anything in the trust store
      const client = openClient(o, { vkey, remember: pinned });
      const before = await client.trusted();
      const t = await invalidExits(() => client.checkpoint());
      const d = {
        url: client.url.href,
        origin: client.origin,
        vkey: client.vkey,
        keyPinned: pinned,
        size: t.checkpoint.size,
        ...(before ? { previouslyTrustedSize: before.checkpoint.size } : {}),
        checkpoint: t.note,
      };
      if (o.json) console.log(JSON.stringify(d));
      else {
        console.log(`url: ${d.url}\norigin: ${d.origin}`);
        console.log(`vkey: ${d.vkey}${pinned ? '' : ' (from the server, NOT verified: pin it with --vkey)'}`);
        console.log(`size: ${d.size}${before ? ` (previously trusted: ${before.checkpoint.size})` : ''}`);
        console.log(`checkpoint:\n${d.checkpoint}`);
      }
    });

  localOrRemote(
    program
      .command('audit')
      .description('replay every entry and recompute every published log root and map root'),
  )
    .option('--json', 'JSON output')
    .addHelpText(
      'after',
      '\nExamples:\n  trustix audit --state ./mylog\n  trustix audit --url http://host:8080/logs/default/ --vkey "$VKEY"   (checks the latest and the last trusted checkpoint)',
    )
    .action(async (o: RemoteOptions & { state?: string; json?: boolean }, cmd: Command) => {
      let report: AuditReport;
      if (targetOf(cmd) === 'remote') {
        const client = openClient(o);
        const before = await client.trusted();
        const latest = await invalidExits(() => client.checkpoint());
        const size = latest.checkpoint.size;
        // a remote log serves only its latest checkpoint; the one this client trusted before is checked too
        const checkpoints = [{ size, checkpoint: latest.note }];
        if (before && before.note !== latest.note) {
          checkpoints.unshift({ size: before.checkpoint.size, checkpoint: before.note });
        }
        const bar = o.json ? undefined : progress('auditing', size);
        report = await invalidExits(() =>
          auditEntries(client.entries(0, size, { treeSize: size }), checkpoints, client.verifier, {
            total: size,
            onProgress: (d) => bar?.update(d),
          }),
        );
        bar?.stop();
      } else {
        const log = await Log.open(o.state!, { readOnly: true });
        try {
          const total = log.head().size;
          const bar = o.json ? undefined : progress('auditing', total);
          report = await auditStore(log.storage, verifierFromVkey(log.vkey), (d) => bar?.update(d));
          bar?.stop();
        } finally {
          await log.close();
        }
      }
      if (o.json) console.log(JSON.stringify(report));
      else if (report.ok)
        console.log(`ok: ${report.size} entries, ${report.checkpoints} checkpoints reproduced`);
      else {
        const d = report.divergence!;
        console.log(`DIVERGENCE at size ${d.size} (${d.check}): ${d.message}`);
      }
      if (!report.ok) process.exitCode = EXIT.invalid;
    });
}

/** `--token` or `--writer-key` for remote submissions. */
function submitAuth(o: RemoteOptions): SubmitAuth {
  if (o.writerKey) {
    const skey = readSecretFile(o.writerKey, 'writer key');
    return { skey, ...(o.writer ? { writer: o.writer } : {}) };
  }
  if (o.token) return { token: o.token };
  throw new CliError(
    'a remote submit needs --token TOKEN (or TRUSTIX_TOKEN) or --writer-key FILE',
    EXIT.usage,
  );
}

function makeEntry(protocol: string, key: string, valueHex: string, where: string): Entry {
  if (!/^(?:[0-9a-fA-F]{2})+$/.test(valueHex)) throw new CliError(`${where}: value must be hex`, EXIT.usage);
  let keyBytes: Buffer;
  try {
    keyBytes = keyFromText(key);
  } catch (err) {
    throw new CliError(`${where}: ${(err as Error).message}`, EXIT.usage);
  }
  return { protocol, key: keyBytes, value: Buffer.from(valueHex, 'hex'), metadata: Buffer.alloc(0) };
}

/** The pieces of `bytes` between `sep` bytes, as views. */
function* splitBytes(bytes: Buffer, sep: number): Iterable<Buffer> {
  let start = 0;
  for (let at = bytes.indexOf(sep); at >= 0; at = bytes.indexOf(sep, start)) {
    yield bytes.subarray(start, at);
    start = at + 1;
  }
  yield bytes.subarray(start);
}

/**
 * Whether the command-line argument that Node decoded as `arg` was valid UTF-8. Node replaces each
 * invalid byte of an argument with U+FFFD, so the bytes are read back from /proc/self/cmdline
 * (Linux); where that is missing, the argument is taken as it was decoded.
 */
function argumentIsUtf8(arg: string): boolean {
  let cmdline: Buffer;
  try {
    cmdline = readFileSync('/proc/self/cmdline');
  } catch {
    return true;
  }
  for (const raw of splitBytes(cmdline, 0)) if (!isUtf8(raw) && raw.toString('utf8') === arg) return false;
  return true;
}
