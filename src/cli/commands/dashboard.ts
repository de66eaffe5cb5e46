import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { type Command, Option } from 'commander';
import { defaultTrustDir } from '../../client/trust-store.js';
import { Dashboard } from '../../dashboard/app.js';
import { checkSetName, parseSetFile } from '../../dashboard/sets.js';
import { parseAddress } from '../../server/config.js';
import { CliError, EXIT } from '../output.js';
import { defaultDecideConfig, loadTrustConfig } from './decide.js';

/** `$XDG_STATE_HOME/trustix/dashboard`, or `~/.local/state/trustix/dashboard`. */
export function defaultDashboardState(env: NodeJS.ProcessEnv = process.env): string {
  return join(dirname(defaultTrustDir(env)), 'dashboard');
}

/** A `--set NAME=FILE` option: the set's name and keys, or a usage error saying what is wrong. */
function readSetOption(arg: string, protocol: string): { name: string; keys: string[] } {
  const eq = arg.indexOf('=');
  if (eq <= 0 || eq === arg.length - 1) {
    throw new CliError(`dashboard: --set must be NAME=FILE, got ${JSON.stringify(arg)}`, EXIT.usage);
  }
  const name = arg.slice(0, eq);
  const file = arg.slice(eq + 1);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CliError(
      `dashboard: --set ${name}: cannot read ${file}: ${(err as Error).message}`,
      EXIT.usage,
    );
  }
  try {
    checkSetName(name);
    return { name, keys: parseSetFile(text, protocol) };
  } catch (err) {
    throw new CliError(`dashboard: --set ${name} (${file}): ${(err as Error).message}`, EXIT.usage);
  }
}

/** `trustix dashboard`: follow the trust config's logs and serve the reproducibility page. */
export function registerDashboardCommand(program: Command): void {
  program
    .command('dashboard')
    .description(
      'follow every log of the trust config (verified through its tiles), index their entries and serve a page of where they agree, with a JSON API under /api/',
    )
    .addOption(
      new Option('-c, --config <file>', 'trust configuration (TOML), as for trustix decide')
        .env('TRUSTIX_DECIDE_CONFIG')
        .default(undefined, '$XDG_CONFIG_HOME/trustix/decide.toml'),
    )
    .option('-l, --listen <host:port>', 'address to serve on (port 0: any free port)', '127.0.0.1:8090')
    .addOption(
      new Option('-s, --state <dir>', "the dashboard's index (resumed after a restart)").default(
        undefined,
        '$XDG_STATE_HOME/trustix/dashboard',
      ),
    )
    .option('--interval <seconds>', 'seconds between two polls of a log', '5')
    .option(
      '--set <name=file>',
      'a package set: NAME and a FILE of store paths (e.g. nix-store -qR output) or keys, one a line; repeatable',
      (v: string, prev: string[]) => [...prev, v],
      [] as string[],
    )
    .addHelpText(
      'after',
      '\nPrints "listening URL" and then "ready" once serving.\n\nExamples:\n  trustix dashboard --config ~/.config/trustix/decide.toml --listen 127.0.0.1:8090\n  trustix dashboard --config trust.toml --listen 0.0.0.0:8090 --state ./dashboard-state\n  trustix dashboard --config trust.toml --set iso="$(pwd)/iso-closure.txt"   # nix-store -qR ./result > iso-closure.txt',
    )
    .action(
      async (o: { config?: string; listen: string; state?: string; interval: string; set: string[] }) => {
        const addr = parseAddress(o.listen);
        if (!addr) {
          throw new CliError(
            `dashboard: --listen must be HOST:PORT or [IPv6]:PORT, got ${JSON.stringify(o.listen)}`,
            EXIT.usage,
          );
        }
        const interval = Number(o.interval);
        if (!Number.isFinite(interval) || interval <= 0) {
          throw new CliError(
            `dashboard: --interval must be a positive number of seconds, got ${o.interval}`,
            EXIT.usage,
          );
        }
        const config = loadTrustConfig(o.config ?? defaultDecideConfig());
        const sets = o.set.map((arg) => readSetOption(arg, config.protocol));
        const dashboard = new Dashboard(config, {
          sets,
          stateDir: o.state === undefined ? defaultDashboardState() : resolve(o.state),
          intervalMs: interval * 1000,
        });
        const url = await dashboard.listen(addr.host, addr.port);
        process.stdout.write(`listening ${url}\nready\n`);
        await new Promise<void>((done) => {
          const stop = () => {
            dashboard.close().then(done, (err: unknown) => {
              process.stderr.write(`trustix dashboard: shutdown failed: ${(err as Error).message}\n`);
              process.exitCode = 1;
              done();
            });
          };
          process.once('SIGTERM', stop);
          process.once('SIGINT', stop);
        });
      },
    );
}
