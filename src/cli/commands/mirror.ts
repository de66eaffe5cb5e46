import { resolve } from 'node:path';
import type { Command } from 'commander';
import { Mirror } from '../../mirror/mirror.js';
import { parseAddress } from '../../server/config.js';
import { CliError, EXIT } from '../output.js';
import { loadTrustConfig } from './decide.js';

/** `trustix mirror`: an auditing mirror (docs/mirror.md). */
export function registerMirrorCommand(program: Command): void {
  program
    .command('mirror')
    .description(
      "follow logs through their tiles, replay their entries into the mirror's own sparse index, check every checkpoint's map line, cosign what it audited and serve the copy read-only",
    )
    .requiredOption('-s, --state <dir>', 'state directory (mirror.key, logs/, proofs/)')
    .requiredOption('-l, --listen <host:port>', 'address to serve on (port 0: any free port)')
    .requiredOption(
      '-c, --config <file>',
      'TOML: [[log]] name = "...", url = "...", vkey = "..." (the trust config format of trustix decide)',
    )
    .option('--name <name>', 'name of the mirror key created on first start (default: <hostname>/mirror)')
    .option('--interval <seconds>', 'seconds between two polls of a log', '5')
    .option(
      '--chunk <bundles>',
      'entry bundles (256 entries each) fetched, verified and replayed together; a catch-up commits every 8 chunks',
      '32',
    )
    .addHelpText(
      'after',
      '\nPrints "mirror <name> vkey <vkey>", one "log <name> prefix <url>" line per log, "listening URL" and then\n"ready"; then progress lines while catching up and one line per audited checkpoint. A map line that\nis not the index of its entries stops that log and writes a proof file to DIR/proofs/.\n\nExample:\n  trustix mirror --state ./mirror --listen 127.0.0.1:7390 --config mirror.toml',
    )
    .action(
      async (o: {
        state: string;
        listen: string;
        config: string;
        name?: string;
        interval: string;
        chunk: string;
      }) => {
        const say = (line: string) => process.stdout.write(`${line}\n`);
        const address = parseAddress(o.listen);
        if (!address) {
          throw new CliError(
            `mirror: --listen must be HOST:PORT or [IPv6]:PORT, got ${JSON.stringify(o.listen)}`,
            EXIT.usage,
          );
        }
        const interval = Number(o.interval);
        if (!Number.isFinite(interval) || interval <= 0) {
          throw new CliError(
            `mirror: --interval must be a positive number of seconds, got ${o.interval}`,
            EXIT.usage,
          );
        }
        const chunk = Number(o.chunk);
        if (!Number.isSafeInteger(chunk) || chunk < 1 || chunk > 4096) {
          throw new CliError(
            `mirror: --chunk must be a whole number of entry bundles, 1 to 4096, got ${o.chunk}`,
            EXIT.usage,
          );
        }
        const config = loadTrustConfig(o.config);
        for (const [i, l] of config.logs.entries()) {
          if (l.url === undefined) {
            throw new CliError(
              `mirror: log[${i}] (${l.name}) has no url: a mirror follows remote logs`,
              EXIT.usage,
            );
          }
        }
        const mirror = await Mirror.open(
          {
            stateDir: resolve(o.state),
            logs: config.logs,
            host: address.host,
            port: address.port,
            ...(o.name !== undefined ? { name: o.name } : {}),
            intervalMs: interval * 1000,
            chunkBundles: chunk,
          },
          say,
        );
        if (mirror.keyCreated) say(`created the mirror key ${mirror.keyFile} (mode 0600)`);
        say(`mirror ${mirror.cosigner.name} vkey ${mirror.vkey}`);
        for (const s of mirror.statuses()) say(`log ${s.name} prefix ${s.prefix}`);
        say(`listening ${mirror.url}`);
        say('ready');
        mirror.start(say);
        await new Promise<void>((done) => {
          const stop = (signal: string) => {
            say(`stopping (${signal})`);
            mirror.close().then(done, (err: unknown) => {
              process.stderr.write(`trustix mirror: shutdown failed: ${(err as Error).message}\n`);
              process.exitCode = 1;
              done();
            });
          };
          process.once('SIGTERM', () => stop('SIGTERM'));
          process.once('SIGINT', () => stop('SIGINT'));
        });
      },
    );
}
