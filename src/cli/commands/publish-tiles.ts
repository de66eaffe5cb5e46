import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { type PublishedTiles, publishTiles } from '../../log/static-tiles.js';
import { LmdbLogStore } from '../../storage/lmdb/lmdb.js';
import { PgLogStore } from '../../storage/postgres/postgres.js';
import type { LogStore } from '../../storage/store.js';
import { CliError, describeError, EXIT, progress } from '../output.js';

interface PublishOptions {
  storage?: string;
  state?: string;
  log: string;
  to: string;
  follow?: boolean;
  interval: string;
}

/** `trustix publish-tiles`: a log's checkpoint, tiles and entry bundles as static files. */
export function registerPublishTilesCommand(program: Command): void {
  program
    .command('publish-tiles')
    .description(
      "write a log's checkpoint, hash tiles and entry bundles as files any static web server or CDN can serve (C2SP tlog-tiles)",
    )
    .option('--storage <url>', 'the log database: postgresql://USER@HOST:PORT/DB')
    .option(
      '-s, --state <dir>',
      "or a node's state directory (its log --log), or a log directory (holding log.mdb); read while the node runs",
    )
    .option('--log <id>', 'with --state: the id of the log in the state directory', 'default')
    .requiredOption(
      '--to <dir>',
      'directory to write to; serve it as the log prefix (DIR/checkpoint, DIR/tile/...)',
    )
    .option(
      '--follow',
      'keep running: publish each new checkpoint as it appears (stop with SIGTERM or Ctrl-C)',
    )
    .option('--interval <seconds>', 'with --follow: seconds between two polls of the store', '1')
    .addHelpText(
      'after',
      `
Full tiles are written once (a file already there is kept); partial tiles are written for every
published checkpoint whose tile is still partial; every file is written to a temporary name, fsynced
and renamed, and the checkpoint last, so a server never hands out a checkpoint whose tiles are not
there yet. Prints one line per checkpoint published: "published size N (M files)".

Examples:
  trustix publish-tiles --storage postgresql://trustix@db:5432/log --to /srv/www/log --follow
  trustix publish-tiles --state ./node --to ./public
  python3 -m http.server -d ./public 8000     # then http://HOST:8000/ is the log's tlog-tiles prefix`,
    )
    .action(async (o: PublishOptions) => {
      const interval = Number(o.interval);
      if (!Number.isFinite(interval) || interval <= 0) {
        throw new CliError(
          `publish-tiles: --interval must be a positive number of seconds, got ${o.interval}`,
          EXIT.usage,
        );
      }
      const store = await openStore(o);
      try {
        const origin = store.getMeta('origin');
        if (origin === undefined)
          throw new CliError('publish-tiles: the store holds no log (no origin recorded)');
        const to = resolve(o.to);
        const once = () => publishOnce(store, origin, to);
        await once();
        if (o.follow) await follow(once, interval * 1000);
      } finally {
        await store.close();
      }
    });
}

async function openStore(o: PublishOptions): Promise<LogStore> {
  if ((o.storage === undefined) === (o.state === undefined)) {
    throw new CliError('publish-tiles: give exactly one of --storage URL or --state DIR', EXIT.usage);
  }
  if (o.storage !== undefined) {
    if (!/^postgres(ql)?:\/\//.test(o.storage)) {
      throw new CliError(
        `publish-tiles: --storage must be a postgresql://USER@HOST:PORT/DB URL, got ${JSON.stringify(o.storage)}`,
        EXIT.usage,
      );
    }
    return PgLogStore.open(o.storage);
  }
  const state = resolve(o.state!);
  const dir = existsSync(join(state, 'log.mdb')) ? state : join(state, 'logs', o.log);
  // a reader: no writer lock, so a running node keeps its log
  return LmdbLogStore.open(dir, { lock: false });
}

/** Publishes the store's current checkpoint, with a progress bar for a run that writes many files. */
async function publishOnce(store: LogStore, origin: string, to: string): Promise<PublishedTiles> {
  let bar: ReturnType<typeof progress> | undefined;
  try {
    const r = await publishTiles(store, origin, to, (done, total) => {
      if (bar === undefined && total >= 1024) bar = progress('publishing tiles', total);
      bar?.update(done);
    });
    if (r.checkpointChanged) process.stdout.write(`published size ${r.size} (${r.written} files)\n`);
    return r;
  } finally {
    bar?.stop();
  }
}

/** Polls every `ms` until SIGTERM or SIGINT; a failed poll is reported and retried at the next. */
async function follow(once: () => Promise<unknown>, ms: number): Promise<void> {
  let wake: () => void = () => {};
  let timer: NodeJS.Timeout | undefined;
  let stopping = false;
  const onSignal = () => {
    stopping = true;
    clearTimeout(timer);
    wake();
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  try {
    while (!stopping) {
      await new Promise<void>((r) => {
        wake = r;
        timer = setTimeout(r, ms);
      });
      if (stopping) break;
      try {
        await once();
      } catch (err) {
        process.stderr.write(`trustix publish-tiles: ${describeError(err)} (retrying)\n`);
      }
    }
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
}
