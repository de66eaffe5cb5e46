import { existsSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { type Command, Option } from 'commander';
import { defaultTrustDir, FileTrustStore } from '../../client/trust-store.js';
import { InsecureSecretError, readSecretFile } from '../../config/secret.js';
import { FormatError } from '../../core/errors.js';
import { loadDecideConfig } from '../../decide/config.js';
import { Decider } from '../../decide/decide.js';
import { type CacheConfig, loadCacheConfig } from '../../nix/cache-config.js';
import { CacheProxy } from '../../nix/cache-proxy.js';
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
    .option('-q, --quiet', 'no line per narinfo decision')
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
  [[upstream]]
  url = "https://cache.example.org"`,
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
      const decider = new Decider(decideCfg, { trustStore: new FileTrustStore(trustDir) });
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
