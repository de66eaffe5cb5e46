// Helpers for the publishing tests: a throwaway Nix setup (chroot store, temp NIX_CONF_DIR and
// cache, as /work/shared/NIX.md describes), the CLI as a subprocess, and a hook wrapper script.
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeNixConf } from '../fixtures/nix-conf.js';

export const REPO = new URL('../../', import.meta.url).pathname;
export const MAIN = new URL('../../src/cli/main.ts', import.meta.url).pathname;

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a program to completion without blocking this process's event loop. */
export function runProgram(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  opts: { cwd?: string } = {},
): Promise<Run> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'], cwd: opts.cwd ?? REPO });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr, ms: Date.now() - t0 }));
  });
}

export interface NixSetup {
  dir: string;
  env: NodeJS.ProcessEnv;
}

/** A Nix configuration for tests that never touches /etc/nix or the user's cache. */
export function nixSetup(dir: string): NixSetup {
  mkdirSync(join(dir, 'xdg'), { recursive: true });
  writeNixConf(join(dir, 'conf'));
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    NIX_CONF_DIR: join(dir, 'conf'),
    XDG_CACHE_HOME: join(dir, 'xdg'),
  };
  for (const k of [
    'TRUSTIX_URL',
    'TRUSTIX_VKEY',
    'TRUSTIX_TOKEN',
    'TRUSTIX_TRUST_DIR',
    'TRUSTIX_PUBLISH_CONFIG',
  ]) {
    delete env[k];
  }
  return { dir, env };
}

/**
 * A Nix file with two derivations needing no nixpkgs: `dep` (prints its tag) and `top`, whose
 * output refers to `dep`'s. Different tags give different store paths.
 */
export function writeDerivations(dir: string, tag: string): string {
  const file = join(dir, `${tag}.nix`);
  writeFileSync(
    file,
    `let dep = derivation { name = "${tag}-dep"; system = builtins.currentSystem; builder = "/bin/sh";
      args = [ "-c" "echo ${tag} > $out" ]; };
in { inherit dep; top = derivation { name = "${tag}-top"; system = builtins.currentSystem; builder = "/bin/sh";
      args = [ "-c" "echo \${dep} > $out" ]; }; }
`,
  );
  return file;
}

/** A wrapper running the Node.js hook command (`trustix nix post-build-hook --config ...`). */
export function writeHookWrapper(dir: string, config: string, name = 'hook.sh'): string {
  const file = join(dir, name);
  writeFileSync(
    file,
    `#!/bin/sh\ncd '${REPO}' && exec '${process.execPath}' --import tsx '${MAIN}' nix post-build-hook --config '${config}'\n`,
  );
  chmodSync(file, 0o755);
  return file;
}

/** `trustix ARGS` as a subprocess. */
export function trustix(args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  return runProgram(process.execPath, ['--import', 'tsx', MAIN, ...args], env);
}
