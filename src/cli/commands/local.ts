import { readFileSync } from 'node:fs';
import { type Command, Option } from 'commander';
import { toHex } from '../../core/bytes.js';
import type { Entry } from '../../core/entry.js';
import { verifyLookup } from '../../core/lookup.js';
import { generateKey, verifierFromVkey } from '../../core/note.js';
import { auditStore } from '../../log/audit.js';
import { Log } from '../../log/log.js';
import { CliError, EXIT, progress } from '../output.js';

/** Commands that work on a log directory on this machine. */
export function registerLocalCommands(program: Command): void {
  const stateOption = () =>
    new Option('-s, --state <dir>', 'the log directory').env('TRUSTIX_STATE').makeOptionMandatory();

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
    .option('--key-file <file>', 'use this signing key instead of generating one')
    .addHelpText('after', '\nExample:\n  trustix init --state ./mylog --origin example.com/builder1')
    .action(async (o: { state: string; origin: string; keyFile?: string }) => {
      const skey = o.keyFile ? readFileSync(o.keyFile, 'utf8').trim() : undefined;
      const log = await Log.create(o.state, o.origin, skey ? { skey } : {});
      console.log(`created log ${log.origin} in ${o.state}`);
      console.log(`verifier key: ${log.vkey}`);
      await log.close();
    });

  program
    .command('submit')
    .description(
      'append entries: each is KEY=VALUE with VALUE in hex (e.g. a sha256); or lines "KEY VALUE" from --file or stdin (-)',
    )
    .addOption(stateOption())
    .option('--protocol <name>', 'the entry protocol', 'nix')
    .option('-f, --file <file>', 'read "KEY VALUE" lines from a file, or - for stdin')
    .option('--json', 'print receipts as JSON lines')
    .argument('[pairs...]', 'KEY=VALUEHEX pairs')
    .addHelpText(
      'after',
      '\nExample:\n  trustix submit --state ./mylog 0c8i2...=3f7a...\n  cut -f1,2 pairs.tsv | trustix submit --state ./mylog -f -',
    )
    .action(
      async (pairs: string[], o: { state: string; protocol: string; file?: string; json?: boolean }) => {
        const entries: Entry[] = [];
        for (const p of pairs) {
          const eq = p.lastIndexOf('=');
          if (eq <= 0) throw new CliError(`expected KEY=VALUE, got ${JSON.stringify(p)}`, EXIT.usage);
          entries.push(makeEntry(o.protocol, p.slice(0, eq), p.slice(eq + 1), p));
        }
        if (o.file) {
          const text = readFileSync(o.file === '-' ? 0 : o.file, 'utf8');
          let n = 0;
          for (const line of text.split('\n')) {
            n++;
            const t = line.trim();
            if (t === '' || t.startsWith('#')) continue;
            const parts = t.split(/\s+/);
            if (parts.length !== 2) throw new CliError(`line ${n}: expected "KEY VALUE"`, EXIT.usage);
            entries.push(makeEntry(o.protocol, parts[0], parts[1], `line ${n}`));
          }
        }
        if (entries.length === 0) throw new CliError('nothing to submit', EXIT.usage);
        const log = await Log.open(o.state);
        try {
          const bar = entries.length > 10_000 ? progress('submitting', entries.length) : undefined;
          const chunk = 10_000;
          let appended = 0;
          for (let i = 0; i < entries.length; i += chunk) {
            const receipts = await log.submit(entries.slice(i, i + chunk));
            for (const [j, r] of receipts.entries()) {
              if (!r.duplicate) appended++;
              if (o.json) {
                const e = entries[i + j];
                console.log(
                  JSON.stringify({
                    key: e.key.toString(),
                    index: r.index,
                    duplicate: r.duplicate,
                    checkpoint: r.checkpoint,
                  }),
                );
              }
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

  program
    .command('lookup')
    .description('look KEY up and verify the answer; exit 0 if present, 3 if proven absent, 4 if invalid')
    .addOption(stateOption())
    .option('--protocol <name>', 'the entry protocol', 'nix')
    .option('--json', 'print the verified answer as JSON')
    .argument('<key>')
    .addHelpText('after', '\nExample:\n  trustix lookup --state ./mylog 0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k')
    .action(async (key: string, o: { state: string; protocol: string; json?: boolean }) => {
      const log = await Log.open(o.state);
      let answer: ReturnType<Log['lookup']>;
      let vkey: string;
      try {
        answer = log.lookup(o.protocol, Buffer.from(key));
        vkey = log.vkey;
      } finally {
        await log.close();
      }
      const verdict = verifyLookup(answer, verifierFromVkey(vkey), {
        protocol: o.protocol,
        key: Buffer.from(key),
      });
      if (o.json) {
        console.log(
          JSON.stringify({
            status: verdict.status,
            ...(verdict.status === 'present'
              ? { index: verdict.index, value: toHex(verdict.entry.value), size: verdict.checkpoint.size }
              : {}),
            ...(verdict.status === 'absent' ? { size: verdict.checkpoint.size } : {}),
            ...(verdict.status === 'invalid' ? { check: verdict.check, reason: verdict.reason } : {}),
            answer,
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
      process.exitCode =
        verdict.status === 'present' ? EXIT.ok : verdict.status === 'absent' ? EXIT.absent : EXIT.invalid;
    });

  program
    .command('info')
    .description("print a log's origin, verifier key, size and latest checkpoint")
    .addOption(stateOption())
    .option('--json', 'JSON output')
    .action(async (o: { state: string; json?: boolean }) => {
      const log = await Log.open(o.state);
      const d = log.describe();
      await log.close();
      if (o.json) console.log(JSON.stringify(d));
      else console.log(`origin: ${d.origin}\nvkey: ${d.vkey}\nsize: ${d.size}\ncheckpoint:\n${d.checkpoint}`);
    });

  program
    .command('audit')
    .description('replay every entry and recompute every published log root and map root')
    .addOption(stateOption())
    .option('--json', 'JSON output')
    .action(async (o: { state: string; json?: boolean }) => {
      const log = await Log.open(o.state);
      try {
        const total = log.head().size;
        const bar = o.json ? undefined : progress('auditing', total);
        const report = await auditStore(log.storage, verifierFromVkey(log.vkey), (d) => bar?.update(d));
        bar?.stop();
        if (o.json) console.log(JSON.stringify(report));
        else if (report.ok)
          console.log(`ok: ${report.size} entries, ${report.checkpoints} checkpoints reproduced`);
        else {
          const d = report.divergence!;
          console.log(`DIVERGENCE at size ${d.size} (${d.check}): ${d.message}`);
        }
        if (!report.ok) process.exitCode = EXIT.invalid;
      } finally {
        await log.close();
      }
    });
}

function makeEntry(protocol: string, key: string, valueHex: string, where: string): Entry {
  if (!/^(?:[0-9a-fA-F]{2})+$/.test(valueHex)) throw new CliError(`${where}: value must be hex`, EXIT.usage);
  return { protocol, key: Buffer.from(key), value: Buffer.from(valueHex, 'hex'), metadata: Buffer.alloc(0) };
}
