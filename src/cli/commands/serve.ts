import { type Command, Option } from 'commander';
import { parseAddress } from '../../server/config.js';
import { TrustixServer } from '../../server/serve.js';
import { prepareState } from '../../server/state.js';
import { CliError, EXIT } from '../output.js';

/** `trustix serve`: run a node (HTTP read/write API over the logs of a state directory). */
export function registerServeCommand(program: Command): void {
  program
    .command('serve')
    .description(
      'run a log server; on first start with an empty --state DIR, create a log, its signing key and a writer token',
    )
    .addOption(
      new Option('-s, --state <dir>', 'state directory (config, logs, writer tokens)').env('TRUSTIX_STATE'),
    )
    .option(
      '-c, --config <file>',
      'TOML config declaring logs, writers, listeners and limits (docs/server.md)',
    )
    .option(
      '-l, --listen <host:port>',
      'serve every API on this address instead of the configured listeners (port 0: any free port)',
    )
    .option('--origin <name>', 'origin of the log created on first start (default: <hostname>/trustix)')
    .addOption(
      new Option(
        '--storage <url>',
        "keep the log in PostgreSQL (postgresql://USER@HOST:PORT/DATABASE) instead of LMDB in the state directory; several nodes may share one database, one of them sequencing at a time (overrides the log's storage; docs/scale-out.md)",
      ).env('TRUSTIX_STORAGE'),
    )
    .option(
      '--advertise <url>',
      'where clients reach this node (http://HOST:PORT), told to writers that reach another node of a shared log (default: the first --listen address)',
    )
    .option(
      '--witness-policy <file>',
      "C2SP tlog-policy file: ask its witnesses to cosign every checkpoint of every log (overrides the logs' witness_policy; docs/witness.md)",
    )
    .addHelpText(
      'after',
      '\nExamples:\n  trustix serve --state ./node --listen 127.0.0.1:8080 --origin example.com/builder1\n  trustix serve --config /etc/trustix/trustix.toml\n  trustix serve --state ./node --listen 10.0.0.5:8080 --storage postgresql://trustix@db.example:5432/log1\n\nA password in the --storage URL is never printed; PGPASSWORD works as well.',
    )
    .action(
      async (o: {
        state?: string;
        config?: string;
        listen?: string;
        origin?: string;
        witnessPolicy?: string;
        storage?: string;
        advertise?: string;
      }) => {
        const say = (line: string) => process.stdout.write(`${line}\n`);
        if (o.state === undefined && o.config === undefined) {
          throw new CliError('serve: --state DIR or --config FILE is required', EXIT.usage);
        }
        if (o.listen !== undefined && !parseAddress(o.listen)) {
          throw new CliError(
            `serve: --listen must be HOST:PORT or [IPv6]:PORT, got ${JSON.stringify(o.listen)}`,
            EXIT.usage,
          );
        }
        const prepared = prepareState(o);
        for (const n of prepared.notes) say(n);
        say(`config: ${prepared.configFile}`);
        const server = await TrustixServer.start(prepared.config, say);
        await new Promise<void>((done) => {
          let stopping = false;
          const stop = (signal: string) => {
            if (stopping) {
              process.stderr.write(`trustix serve: ${signal} again, exiting without draining\n`);
              process.exit(1);
            }
            stopping = true;
            say(`draining (${signal}): ${server.submissionsInFlight} submissions in flight`);
            server.shutdown().then(
              () => {
                say('stopped');
                done();
              },
              (err: unknown) => {
                process.stderr.write(`trustix serve: shutdown failed: ${(err as Error).message}\n`);
                process.exitCode = 1;
                done();
              },
            );
          };
          process.on('SIGTERM', () => stop('SIGTERM'));
          process.on('SIGINT', () => stop('SIGINT'));
        });
      },
    );
}
