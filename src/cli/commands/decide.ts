import { writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { type Command, Option } from 'commander';
import { defaultTrustDir, FileTrustStore } from '../../client/trust-store.js';
import { FormatError, VerificationError } from '../../core/errors.js';
import { type DecideConfig, loadDecideConfig } from '../../decide/config.js';
import { Decider, formatDecision } from '../../decide/decide.js';
import { decisionBundle, verifyDecisionBundle } from '../../decide/evidence.js';
import { proofDirOf } from '../../misbehaviour/files.js';
import { KEY_ARG_HELP, lookupKeyArg } from '../lookup-key.js';
import { CliError, EXIT } from '../output.js';

/** `decide`: no decision is not an error, but callers must be able to tell. */
const EXIT_UNDECIDED = 3;

export function defaultDecideConfig(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CONFIG_HOME;
  const base = xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.config');
  return join(base, 'trustix', 'decide.toml');
}

/** A trust config file; a bad one is a usage error (exit 2). */
export function loadTrustConfig(file: string): DecideConfig {
  try {
    return loadDecideConfig(file);
  } catch (err) {
    if (err instanceof FormatError) throw new CliError(err.message, EXIT.usage);
    throw err;
  }
}

/** `trustix decide KEY`: ask every configured log, decide, explain. */
export function registerDecideCommands(program: Command): void {
  program
    .command('decide')
    .description(
      'ask every log in the trust config about KEY, decide by the configured procedure and explain; exit 0 if decided, 3 if not',
    )
    .argument('<key>', KEY_ARG_HELP)
    .addOption(
      new Option('-c, --config <file>', 'trust configuration (TOML)')
        .env('TRUSTIX_DECIDE_CONFIG')
        .default(undefined, '$XDG_CONFIG_HOME/trustix/decide.toml'),
    )
    .option('--protocol <name>', "the entry protocol (default: the config's, else nix)")
    .addOption(
      new Option('--trust-dir <dir>', 'where the last trusted checkpoint of each log is remembered').env(
        'TRUSTIX_TRUST_DIR',
      ),
    )
    .option('--json', 'JSON output')
    .option(
      '-e, --evidence <file>',
      'save the answers and the decision as an evidence bundle (trustix verify checks it)',
    )
    .addHelpText(
      'after',
      '\nExamples:\n  trustix decide 0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k --config ~/.config/trustix/decide.toml\n  trustix decide 0c8i2ww2dwk5hn8dywdzx6l0lrz0sb4k --json -e evidence.json && trustix verify evidence.json --config ~/.config/trustix/decide.toml',
    )
    .action(
      async (
        key: string,
        o: { config?: string; protocol?: string; trustDir?: string; json?: boolean; evidence?: string },
      ) => {
        const config = loadTrustConfig(o.config ?? defaultDecideConfig());
        const trustDir = o.trustDir ?? config.trustDir ?? defaultTrustDir();
        const decider = new Decider(config, {
          trustStore: new FileTrustStore(trustDir),
          proofDir: proofDirOf(trustDir),
        });
        try {
          const protocol = o.protocol ?? config.protocol;
          const { decision, results } = await decider.decide(await lookupKeyArg(protocol, key), protocol);
          if (o.evidence) {
            const text = `${JSON.stringify(decisionBundle(decision, results, config), null, 2)}\n`;
            if (o.evidence === '-') process.stderr.write(text);
            else writeFileSync(o.evidence, text);
          }
          if (o.json) console.log(JSON.stringify(decision));
          else process.stdout.write(formatDecision(decision));
          process.exitCode = decision.decided ? EXIT.ok : EXIT_UNDECIDED;
        } finally {
          await decider.close();
        }
      },
    );
}

/**
 * `trustix verify` for decision bundles. Returns false, having printed nothing, when `text` is
 * not a decision bundle, so that the caller goes on to check it as a log bundle.
 */
export async function verifyDecisionBundleText(
  text: Buffer,
  o: { json?: boolean; vkeys: string[]; config?: DecideConfig },
): Promise<boolean> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text.toString('utf8'));
  } catch {
    return false;
  }
  const type = (parsed as { type?: unknown } | null)?.type;
  if (typeof type !== 'string' || !type.startsWith('trustix-decision/')) return false;
  try {
    const r = await verifyDecisionBundle(parsed, {
      vkeys: o.vkeys,
      ...(o.config ? { config: o.config } : {}),
    });
    if (o.json) console.log(JSON.stringify({ valid: true, ...r }));
    else {
      const lines = [
        `valid: ${r.decided ? `decided ${r.protocol} ${r.key} -> ${r.value} (${r.support} verified answers agree)` : `undecided ${r.protocol} ${r.key}`}; the procedure ${r.procedure} re-run offline reaches the same decision`,
        `  answers verified: ${r.verified.map((v) => v.name).join(', ') || 'none'}`,
      ];
      if (r.failed.length > 0) {
        lines.push(
          `  failures as recorded (not checkable offline): ${r.failed.map((f) => `${f.name} (${f.check})`).join(', ')}`,
        );
      }
      if (r.unpinned.length > 0) {
        lines.push(
          `  NOT PINNED: the keys of ${r.unpinned.join(', ')} come from the bundle itself; pass --vkey or --config to check them`,
        );
      } else lines.push(`  keys pinned: ${r.pinned.join(', ')}`);
      if (!r.configChecked) {
        lines.push(
          '  NOT CHECKED: the logs, weights and procedure come from the bundle itself; pass --config to check them against your trust config',
        );
      }
      console.log(lines.join('\n'));
    }
  } catch (err) {
    if (err instanceof FormatError) throw new CliError(err.message, EXIT.usage);
    if (!(err instanceof VerificationError)) throw err;
    if (o.json) console.log(JSON.stringify({ valid: false, check: err.check, reason: err.message }));
    else console.log(`INVALID: ${err.check}: ${err.message}`);
    process.exitCode = EXIT.invalid;
  }
  return true;
}
