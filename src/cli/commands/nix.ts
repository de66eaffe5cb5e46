import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { type Command, Option } from 'commander';
import { LogClient, type SubmitAuth } from '../../client/client.js';
import { defaultTrustDir, FileTrustStore } from '../../client/trust-store.js';
import { InsecureSecretError, readSecretFile } from '../../config/secret.js';
import { FormatError } from '../../core/errors.js';
import type { WitnessPolicy } from '../../core/policy.js';
import { proofDirOf } from '../../misbehaviour/files.js';
import { NixStoreError, toStorePath } from '../../nix/nix-query.js';
import {
  checkLogUrl,
  defaultHookLog,
  defaultPublishConfigPath,
  describeFailure,
  describeFlush,
  entriesForPaths,
  flushSpool,
  hookWrapperScript,
  loadPublishConfig,
  type PublishConfig,
  type PublishSettings,
  pathsToPublish,
  readPublishConfig,
  recordBuild,
  resolvePublishConfig,
  runPublisher,
} from '../../nix/publish.js';
import { REJECTED_DIR, Spool } from '../../nix/spool.js';
import { findProgram } from '../../runtime/find-program.js';
import { writeFileDurably } from '../../storage/durable.js';
import { CliError, EXIT, progress } from '../output.js';
import { registerNixCacheCommand } from './nix-cache.js';
import {
  addRemoteOptions,
  invalidExits,
  type RemoteOptions,
  readVkey,
  timeoutMs,
  witnessPolicyOf,
} from './remote.js';

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
      '\nExamples:\n  trustix nix install-hook      # the post-build hook, see docs/nix-howto.md\n  trustix nix publish           # delivers what the hook records\n  trustix nix submit --closure ./result\n  trustix nix flush',
    );
}

const CONFIG_HELP =
  'publish config (default: $TRUSTIX_PUBLISH_CONFIG or $XDG_CONFIG_HOME/trustix/publish.toml)';

function clientFor(
  c: PublishConfig,
  timeout: number,
  trustDir?: string,
  policy: { witnessPolicy?: WitnessPolicy } = {},
): LogClient {
  return new LogClient({
    ...policy,
    url: c.log,
    vkey: c.vkey,
    timeoutMs: timeout,
    submitTimeoutMs: Math.max(timeout, 1000),
    trustStore: new FileTrustStore(trustDir ?? c.trustDir ?? defaultTrustDir()),
    proofDir: proofDirOf(trustDir ?? c.trustDir ?? defaultTrustDir()),
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

/** `post-build-hook`, `install-hook`, `publish`, `flush` and `submit`. */
export function registerNixPublishCommands(nix: Command): void {
  nix
    .command('post-build-hook')
    .description(
      "record the build that just finished in the spool (run by Nix as its post-build-hook); `trustix nix publish` or `trustix nix flush` delivers it. No network, no store query. Always exits 0: a hook's failure would fail the user's build",
    )
    .addOption(new Option('--config <file>', CONFIG_HELP))
    .addHelpText(
      'after',
      '\n`trustix nix install-hook` writes a faster wrapper that records the same way without starting Node.js\nand needs nothing from PATH; point nix.conf at it:\n  post-build-hook = /etc/trustix/post-build-hook',
    )
    .action(async (o: { config?: string }) => {
      const say = (line: string) => process.stderr.write(`trustix: ${line}\n`);
      try {
        const config = loadPublishConfig(o.config);
        await recordBuild(process.env, new Spool(config.spool, { warn: say }));
      } catch (err) {
        say(`post-build-hook: nothing recorded for ${process.env.DRV_PATH ?? '?'}: ${describeFailure(err)}`);
      }
      process.exitCode = 0;
    });

  nix
    .command('install-hook')
    .description(
      "write the post-build hook wrapper: a shell script with absolute paths that records each build in the publish config's spool, needs nothing from PATH and always exits 0",
    )
    .addOption(new Option('--config <file>', CONFIG_HELP))
    .option('--out <path>', 'where to write the wrapper', '/etc/trustix/post-build-hook')
    .option(
      '--log <path>',
      'where the wrapper says why it could not record a build (default: /var/log/trustix-hook.log as root, else $XDG_STATE_HOME/trustix/hook.log)',
    )
    .addHelpText(
      'after',
      '\nExample:\n  trustix nix install-hook --config /etc/trustix/publish.toml --out /etc/trustix/post-build-hook\nthen in /etc/nix/nix.conf:\n  post-build-hook = /etc/trustix/post-build-hook',
    )
    .action(async (o: { config?: string; out: string; log?: string }) => {
      const config = usageConfig(() => loadPublishConfig(o.config));
      const out = resolve(o.out);
      const log = resolve(o.log ?? defaultHookLog());
      const bash = findProgram('bash');
      const script = hookWrapperScript({
        spool: resolve(config.spool),
        log,
        tools: {
          ...(bash ? { bash } : {}),
          date: findProgram('date') ?? '/usr/bin/date',
          mkdir: findProgram('mkdir') ?? '/usr/bin/mkdir',
          mv: findProgram('mv') ?? '/usr/bin/mv',
          sync: findProgram('sync') ?? '/usr/bin/sync',
        },
      });
      try {
        mkdirSync(dirname(out), { recursive: true });
        writeFileDurably(out, script, 0o755);
      } catch (err) {
        throw new CliError(`cannot write ${out}: ${(err as Error).message}`);
      }
      console.log(
        `wrote ${out}: it records each build in ${config.spool} (why it could not: ${log})\nadd to nix.conf:  post-build-hook = ${out}\nand run the publisher:  trustix nix publish${o.config ? ` --config ${o.config}` : ''}`,
      );
    });

  nix
    .command('publish')
    .description(
      'deliver the spool to the log as builds arrive: watches the spool (and scans it every --interval), reads each recorded build from the store and submits it; runs until SIGTERM or SIGINT',
    )
    .addOption(new Option('--config <file>', CONFIG_HELP))
    .option('--interval <seconds>', 'periodic scan of the spool, and the longest wait between retries', '30')
    .addHelpText(
      'after',
      '\nExample (systemd/trustix-publish.service runs this):\n  trustix nix publish --config /etc/trustix/publish.toml',
    )
    .action(async (o: { config?: string; interval: string }) => {
      const interval = Number(o.interval);
      if (!Number.isFinite(interval) || interval <= 0 || interval > 86_400) {
        throw new CliError(
          '--interval must be a number of seconds, more than 0 and at most 86400',
          EXIT.usage,
        );
      }
      const config = usageConfig(() => loadPublishConfig(o.config));
      const say = (line: string) => process.stderr.write(`trustix: ${line}\n`);
      const stop = new AbortController();
      const onSignal = () => stop.abort();
      process.once('SIGTERM', onSignal);
      process.once('SIGINT', onSignal);
      say(`publishing ${config.spool} to ${config.log.href}`);
      try {
        await runPublisher({
          spool: new Spool(config.spool, { warn: say }),
          client: clientFor(config, config.timeoutMs),
          auth: config.auth,
          say,
          intervalMs: interval * 1000,
          signal: stop.signal,
        });
      } finally {
        process.off('SIGTERM', onSignal);
        process.off('SIGINT', onSignal);
      }
      say('stopped');
    });

  nix
    .command('flush')
    .description(
      'deliver what waits in the spool (recorded builds and entries) to the log once; exit 0 when the spool is empty, 1 otherwise',
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
      const aside =
        status.rejected > 0
          ? `; ${status.rejected} file(s) set aside for good in ${join(config.spool, REJECTED_DIR)} (see their .reason files)`
          : '';
      if (r.error !== undefined) {
        throw new CliError(
          `${describeFlush(r)}; then failed: ${describeFailure(r.error)}; ${r.remaining} file(s) wait in ${config.spool}${aside}`,
        );
      }
      if (r.remaining > 0 || status.claimed > 0) {
        throw new CliError(
          `${describeFlush(r)}; ${r.remaining} file(s) still pending and ${status.claimed} being delivered by another process in ${config.spool}${aside}`,
        );
      }
      console.log(
        r.files === 0 && r.builds === 0
          ? `spool is empty (${config.spool})${aside}`
          : `${describeFlush(r)}; spool is empty${aside}`,
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
      const client = usageConfig(() => clientFor(config, timeoutMs(o), o.trustDir, witnessPolicyOf(o)));
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
