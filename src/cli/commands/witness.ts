import { resolve } from 'node:path';
import { type Command, Option } from 'commander';
import { parseAddress } from '../../server/config.js';
import { type LogDeclaration, loadWitnessConfig, witnessedLogs } from '../../witness/config.js';
import { WitnessServer } from '../../witness/server.js';
import { CliError, EXIT } from '../output.js';

/** `trustix witness`: a C2SP tlog-witness v1.0.0 server (docs/witness.md). */
export function registerWitnessCommand(program: Command): void {
  program
    .command('witness')
    .description(
      'run a C2SP tlog-witness: cosign checkpoints of the given logs that are consistent with what it cosigned before',
    )
    .addOption(
      new Option('-s, --state <dir>', 'state directory (witness.key, witness.mdb, evidence/)').env(
        'TRUSTIX_WITNESS_STATE',
      ),
    )
    .requiredOption('-l, --listen <host:port>', 'address to serve on (port 0: any free port)')
    .option(
      '--log <vkey>',
      "a log to witness, by its verifier key; its origin is the key's name (repeatable)",
      (v: string, prev: string[] | undefined) => [...(prev ?? []), v],
    )
    .option('-c, --config <file>', 'TOML file listing logs: [[log]] origin = "...", vkey = "..." or [...]')
    .option('--name <name>', 'name of the witness key created on first start (default: <hostname>/witness)')
    .addHelpText(
      'after',
      '\nPrints "witness <name> vkey <vkey>" then "ready". Evidence of log misbehaviour goes to DIR/evidence/.\n\nExample:\n  trustix witness --state ./w1 --listen 127.0.0.1:7380 --log example.com/log+1a2b3c4d+AR...',
    )
    .action(async (o: { state?: string; listen: string; log?: string[]; config?: string; name?: string }) => {
      const say = (line: string) => process.stdout.write(`${line}\n`);
      if (o.state === undefined) throw new CliError('witness: --state DIR is required', EXIT.usage);
      const address = parseAddress(o.listen);
      if (!address) {
        throw new CliError(
          `witness: --listen must be HOST:PORT or [IPv6]:PORT, got ${JSON.stringify(o.listen)}`,
          EXIT.usage,
        );
      }
      const decls: LogDeclaration[] = (o.log ?? []).map((vkey, i) => ({
        vkeys: [vkey],
        where: `--log #${i + 1}`,
      }));
      if (o.config !== undefined) decls.push(...loadWitnessConfig(o.config));
      const logs = witnessedLogs(decls);
      const server = await WitnessServer.start(
        { stateDir: resolve(o.state), host: address.host, port: address.port, logs, name: o.name },
        say,
      );
      say(`witness ${server.cosigner.name} vkey ${server.vkey}`);
      for (const origin of logs.keys()) say(`log ${origin}`);
      say(`listening ${server.url}`);
      say('ready');
      await new Promise<void>((done) => {
        const stop = (signal: string) => {
          say(`stopping (${signal})`);
          server.close().then(done, (err: unknown) => {
            process.stderr.write(`trustix witness: shutdown failed: ${(err as Error).message}\n`);
            process.exitCode = 1;
            done();
          });
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
      });
    });
}
