import { existsSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { type Command, Option } from 'commander';
import { defaultTrustDir, FileTrustStore } from '../../client/trust-store.js';
import { InsecureSecretError, readSecretFile } from '../../config/secret.js';
import { FormatError } from '../../core/errors.js';
import { loadDecideConfig } from '../../decide/config.js';
import { Decider } from '../../decide/decide.js';
import { proofDirOf } from '../../misbehaviour/files.js';
import { type CacheConfig, loadCacheConfig } from '../../nix/cache-config.js';
import { CacheProxy } from '../../nix/cache-proxy.js';
import { CachedTrustStore } from '../../nix/cache-trust.js';
import {
  formatNixPublicKey,
  formatNixSecretKey,
  generateNixSecretKey,
  type NixSecretKey,
  parseNixSecretKey,
} from '../../nix/keys.js';
import { parseAddress } from '../../server/config.js';
import { CliError, EXIT } from '../output.js';
import { defaultDecideConfig } from './decide.js';

function defaultCacheConfig(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CONFIG_HOME;
  const base = xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.config');
  return join(base, 'trustix', 'cache.toml');
}

/** The proxy's Nix signing key; created (mode 0600, public key beside it) on first start. */
function loadOrCreateKey(cfg: CacheConfig, say: (line: string) => void): NixSecretKey {
  if (!existsSync(cfg.secretKeyFile)) {
    const sk = generateNixSecretKey(cfg.keyName);
    writeFileSync(cfg.secretKeyFile, `${formatNixSecretKey(sk)}\n`, { mode: 0o600, flag: 'wx' });
    writeFileSync(`${cfg.secretKeyFile}.pub`, `${formatNixPublicKey(sk.publicKey)}\n`, { flag: 'wx' });
    say(`created signing key ${cfg.secretKeyFile} (public key in ${cfg.secretKeyFile}.pub)`);
    return sk;
  }
  try {
    return parseNixSecretKey(readSecretFile(cfg.secretKeyFile, 'Nix signing key'));
  } catch (err) {
    if (err instanceof InsecureSecretError) throw err;
    throw new CliError(`${cfg.secretKeyFile}: not a Nix secret key: ${(err as Error).message}`, EXIT.usage);
  }
}

/** `trustix nix cache`: the voting binary cache proxy (a Nix substituter). */
export function registerNixCacheCommand(nix: Command): void {
  nix
    .command('cache')
    .description(
      'run a Nix binary cache that serves a store path only when the configured logs agree on its NAR hash (404 otherwise)',
    )
    .addOption(
      new Option('-c, --config <file>', 'proxy configuration (TOML, docs/nix-howto.md)')
        .env('TRUSTIX_CACHE_CONFIG')
        .default(undefined, '$XDG_CONFIG_HOME/trustix/cache.toml'),
    )
    .option(
      '-l, --listen <host:port>',
      'listen here instead of the configured address (port 0: any free port)',
    )
    .option('-q, --quiet', 'no stderr line per decision or refusal (404 bodies still say why)')
    .addHelpText(
      'after',
      `
Nix is then pointed at the proxy, trusting only the proxy's key:
  substituters = http://127.0.0.1:37515
  trusted-public-keys = <the public key this command prints>

Example cache.toml:
  listen = "127.0.0.1:37515"
  secret_key_file = "cache-key.sec"     # created on first start
  decide_config = "decide.toml"         # the logs and the procedure (see trustix decide --help)
  verify_first_max = 4194304            # NARs up to this size are checked whole before sending
  serve_compressed = true               # larger ones go to Nix as the cache compressed them
  bad_upstream_ttl = 600                # seconds a cache that served bad bytes is tried last
  [[upstream]]
  url = "https://cache.example.org"
  [[upstream]]
  url = "file:///srv/cache"             # a directory written by nix copy --to file://...

At start the proxy checks every upstream (nix-cache-info) and every log (a verified
lookup) and prints one "check:" line each before "ready". A 404 body, and the log line
beside it, says why a path is refused: no decision (with each log's answer), decided but
no upstream has a matching narinfo, or bad bytes from an upstream.`,
    )
    .action(async (o: { config?: string; listen?: string; quiet?: boolean }) => {
      const say = (line: string) => process.stdout.write(`${line}\n`);
      let cfg: CacheConfig;
      let decideCfg: ReturnType<typeof loadDecideConfig>;
      try {
        cfg = loadCacheConfig(o.config ?? defaultCacheConfig(), { decideConfig: defaultDecideConfig() });
        decideCfg = loadDecideConfig(cfg.decideConfig);
      } catch (err) {
        if (err instanceof FormatError) throw new CliError(err.message, EXIT.usage);
        throw err;
      }
      if (o.listen !== undefined) {
        const listen = parseAddress(o.listen);
        if (!listen) {
          throw new CliError(
            `--listen must be HOST:PORT or [IPv6]:PORT, got ${JSON.stringify(o.listen)}`,
            EXIT.usage,
          );
        }
        cfg = { ...cfg, listen };
      }
      const key = loadOrCreateKey(cfg, say);
      const trustDir = cfg.trustDir ?? decideCfg.trustDir ?? defaultTrustDir();
      const decider = new Decider(decideCfg, {
        trustStore: new CachedTrustStore(new FileTrustStore(trustDir)),
        proofDir: proofDirOf(trustDir),
      });
      const proxy = new CacheProxy({
        config: cfg,
        decider,
        key,
        log: o.quiet ? undefined : (line) => process.stderr.write(`${line}\n`),
      });
      const url = await proxy.listen().catch((err: Error) => {
        throw new CliError(`cannot listen on ${cfg.listen.host}:${cfg.listen.port}: ${err.message}`);
      });
      say(`public key ${formatNixPublicKey(key.publicKey)}`);
      say(
        `deciding with ${cfg.decideConfig} over ${decideCfg.logs.length} log(s); upstreams: ${cfg.upstreams.map((u) => u.url).join(' ')}`,
      );
      say(`listening ${url.href}`);
      for (const line of await proxy.check()) say(`check: ${line}`);
      say('ready');
      await new Promise<void>((done) => {
        const stop = () => {
          proxy
            .close()
            .then(() => decider.close())
            .then(done, (err: unknown) => {
              process.stderr.write(`trustix nix cache: shutdown failed: ${(err as Error).message}\n`);
              process.exitCode = 1;
              done();
            });
        };
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      });
    });
}
