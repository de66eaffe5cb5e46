import { existsSync } from 'node:fs';
import { type Command, Option } from 'commander';
import { LogClient, type SubmitAuth } from '../../client/client.js';
import { defaultTrustDir, FileTrustStore } from '../../client/trust-store.js';
import { InsecureSecretError, readSecretFile } from '../../config/secret.js';
import { FormatError } from '../../core/errors.js';
import { NixStoreError, toStorePath } from '../../nix/nix-query.js';
import {
  checkLogUrl,
  defaultPublishConfigPath,
  describeFailure,
  entriesForPaths,
  flushSpool,
  loadPublishConfig,
  type PublishConfig,
  type PublishSettings,
  pathsToPublish,
  readPublishConfig,
  resolvePublishConfig,
  runPostBuildHook,
} from '../../nix/publish.js';
import { Spool } from '../../nix/spool.js';
import { CliError, EXIT, progress } from '../output.js';
import { registerNixCacheCommand } from './nix-cache.js';
import { addRemoteOptions, invalidExits, type RemoteOptions, readVkey, timeoutMs } from './remote.js';

/** `trustix nix ...`: the group, and every Nix subcommand registered on it (one line each). */
export function registerNixCommands(program: Command): Command {
  const nix = createNixCommand(program);
  registerNixPublishCommands(nix);
  registerNixCacheCommand(nix);
  return nix;
}

/** The `nix` command group; other modules add their subcommands to what this returns. */
export function createNixCommand(program: Command): Command {
  return program
    .command('nix')
    .description('Nix integration: publishing build results, and the voting binary cache proxy')
    .addHelpText(
      'after',
      '\nExamples:\n  trustix nix submit --closure ./result\n  trustix nix flush\n  trustix nix post-build-hook   # run by Nix, see docs/nix.md',
    );
}

const CONFIG_HELP =
  'publish config (default: $TRUSTIX_PUBLISH_CONFIG or $XDG_CONFIG_HOME/trustix/publish.toml)';

function clientFor(c: PublishConfig, timeout: number, trustDir?: string): LogClient {
  return new LogClient({
    url: c.log,
    vkey: c.vkey,
    timeoutMs: timeout,
    submitTimeoutMs: Math.max(timeout, 1000),
    trustStore: new FileTrustStore(trustDir ?? c.trustDir ?? defaultTrustDir()),
  });
}

function usageConfig<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof FormatError) throw new CliError(err.message, EXIT.usage);
    throw err;
  }
}

/** `post-build-hook`, `flush` and `submit`. */
export function registerNixPublishCommands(nix: Command): void {
  nix
    .command('post-build-hook')
    .description(
      "publish the outputs of the build that just finished (run by Nix as its post-build-hook); entries the log cannot take now wait in the spool. Always exits 0: a hook's failure would fail the user's build",
    )
    .addOption(new Option('--config <file>', CONFIG_HELP))
    .addHelpText(
      'after',
      '\nNix runs the hook with no arguments, so point post-build-hook at a wrapper script:\n  #!/bin/sh\n  exec trustix nix post-build-hook --config /etc/trustix/publish.toml\nor set TRUSTIX_PUBLISH_CONFIG in the environment Nix runs with.\n\nExample (nix.conf):\n  post-build-hook = /etc/trustix/post-build-hook.sh',
    )
    .action(async (o: { config?: string }) => {
      const say = (line: string) => process.stderr.write(`trustix: ${line}\n`);
      // Whatever happens the build must go on: exit 0, and never hold it for long. Entries are
      // spooled before the network is used, so being cut short loses nothing.
      let config: PublishConfig;
      try {
        config = loadPublishConfig(o.config);
      } catch (err) {
        say(`post-build-hook: nothing published: ${describeFailure(err)}`);
        process.exitCode = 0;
        return;
      }
      const bound = Math.max(3 * config.timeoutMs + 5_000, 15_000);
      const watchdog = setTimeout(() => {
        say(
          `post-build-hook: gave up after ${Math.round(bound / 1000)} s; spooled entries wait in ${config.spool}`,
        );
        process.exit(0);
      }, bound);
      watchdog.unref();
      try {
        await runPostBuildHook({
          env: process.env,
          config,
          client: clientFor(config, config.timeoutMs),
          say,
          query: { timeoutMs: bound },
        });
      } catch (err) {
        say(`post-build-hook: nothing published for ${process.env.DRV_PATH ?? '?'}: ${describeFailure(err)}`);
      } finally {
        clearTimeout(watchdog);
      }
      process.exitCode = 0;
    });

  nix
    .command('flush')
    .description(
      'deliver the entries waiting in the spool to the log; exit 0 when the spool is empty, 1 otherwise',
    )
    .addOption(new Option('--config <file>', CONFIG_HELP))
    .option('--timeout <seconds>', 'deadline for each request to the log', '10')
    .addHelpText('after', '\nExample:\n  trustix nix flush --config /etc/trustix/publish.toml')
    .action(async (o: { config?: string; timeout: string }) => {
      const config = usageConfig(() => loadPublishConfig(o.config));
      const client = clientFor(config, timeoutMs(o));
      const spool = new Spool(config.spool);
      let bar: ReturnType<typeof progress> | undefined;
      const r = await flushSpool(spool, client, config.auth, {
        onProgress: (done, total) => {
          if (total === 0) return;
          bar ??= progress('flushing spool files', total);
          bar.update(done);
        },
      });
      bar?.stop();
      const status = await spool.status();
      let bad = status.bad > 0 ? `; ${status.bad} unreadable file(s) set aside in ${config.spool}` : '';
      if (status.refused > 0)
        bad += `; ${status.refused} file(s) refused by the log set aside in ${config.spool}`;
      if (r.error !== undefined) {
        throw new CliError(
          `delivered ${r.entries} entries (${r.appended} new), then failed: ${describeFailure(r.error)}; ${r.remaining} file(s) wait in ${config.spool}${bad}`,
        );
      }
      if (r.remaining > 0 || status.claimed > 0) {
        throw new CliError(
          `delivered ${r.entries} entries (${r.appended} new); ${r.remaining} file(s) still pending and ${status.claimed} being delivered by another process in ${config.spool}${bad}`,
        );
      }
      console.log(
        r.files === 0
          ? `spool is empty (${config.spool})${bad}`
          : `delivered ${r.entries} entries from ${r.files} file(s): ${r.appended} new, ${r.duplicates} already present; spool is empty${bad}`,
      );
    });

  addRemoteOptions(
    nix
      .command('submit')
      .description(
        'publish existing store paths (with --closure, everything they depend on) to the log of the publish config, or to --url with --token/--writer-key',
      )
      .argument('<paths...>', 'store paths, or links to them such as ./result')
      .option('--closure', 'publish the whole closure of each path')
      .option('--store <store>', 'the Nix store to read (as nix-store --store), e.g. a chroot store')
      .addOption(new Option('--config <file>', CONFIG_HELP))
      .option('--batch-size <n>', 'entries per request (at most 10000)', '10000')
      .addHelpText(
        'after',
        '\nExamples:\n  trustix nix submit ./result\n  trustix nix submit --closure /nix/store/...-hello-2.12 --url http://host:8080/logs/default/ --vkey "$VKEY" --token "$TOKEN"',
      ),
    { submit: true },
  ).action(
    async (
      args: string[],
      o: RemoteOptions & { closure?: boolean; store?: string; config?: string; batchSize: string },
    ) => {
      const chunk = Number(o.batchSize);
      if (!Number.isSafeInteger(chunk) || chunk < 1 || chunk > 10_000) {
        throw new CliError('--batch-size must be an integer from 1 to 10000', EXIT.usage);
      }
      const config = usageConfig(() => {
        const file = o.config ?? defaultPublishConfigPath();
        const s: PublishSettings = o.config || existsSync(file) ? readPublishConfig(file) : {};
        if (o.url) s.log = checkLogUrl(o.url, '--url').href;
        if (o.vkey) s.vkey = readVkey(o.vkey);
        const auth = cliAuth(o);
        if (auth) s.auth = auth;
        return resolvePublishConfig(s);
      });
      const query = { store: o.store };
      const roots: string[] = [];
      for (const a of args) {
        try {
          roots.push(await toStorePath(a));
        } catch (err) {
          if (err instanceof NixStoreError) throw new CliError(err.message, EXIT.usage);
          throw err;
        }
      }
      const paths = await pathsToPublish(roots, !!o.closure, query);
      const big = paths.length > chunk;
      let bar = big ? progress('reading the store', paths.length) : undefined;
      const { entries, skipped } = await entriesForPaths(paths, {
        ...query,
        onProgress: (d) => bar?.update(d),
      });
      bar?.stop();
      for (const s of skipped) process.stderr.write(`trustix: not publishing ${s.path}: ${s.reason}\n`);
      const client = clientFor(config, timeoutMs(o), o.trustDir);
      bar = big ? progress('submitting', entries.length) : undefined;
      const receipts = await invalidExits(() =>
        client.submit(entries, config.auth, { onProgress: (d) => bar?.update(d), batchSize: chunk }),
      );
      bar?.stop();
      let appended = 0;
      for (const r of receipts) if (!r.duplicate) appended++;
      const size = (await client.trusted())?.checkpoint.size;
      console.log(
        `${entries.length} store path(s) published to ${config.log.href}: ${appended} new, ${entries.length - appended} already present; log size ${size}`,
      );
      if (skipped.length > 0) {
        throw new CliError(`${skipped.length} path(s) could not be published (see above)`);
      }
    },
  );
}

function cliAuth(o: RemoteOptions): SubmitAuth | undefined {
  if (o.writerKey) {
    let skey: string;
    try {
      skey = readSecretFile(o.writerKey, 'writer key');
    } catch (err) {
      if (err instanceof InsecureSecretError) throw err;
      throw new CliError(`--writer-key: cannot read ${o.writerKey}: ${(err as Error).message}`, EXIT.usage);
    }
    return { skey, ...(o.writer ? { writer: o.writer } : {}) };
  }
  if (o.token) return { token: o.token };
  return undefined;
}
