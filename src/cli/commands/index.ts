import type { Command } from 'commander';
import { registerDashboardCommand } from './dashboard.js';
import { registerDecideCommands } from './decide.js';
import { registerLocalCommands } from './local.js';
import { registerMirrorCommand } from './mirror.js';
import { registerMisbehaviourCommands } from './misbehaviour.js';
import { registerNixCommands } from './nix.js';
import { registerPublishTilesCommand } from './publish-tiles.js';
import { registerRemoteCommands } from './remote.js';
import { registerServeCommand } from './serve.js';
import { registerWitnessCommand } from './witness.js';

/** Every command module registers itself here; add one line per module. */
export function registerCommands(program: Command): void {
  registerLocalCommands(program);
  registerRemoteCommands(program);
  registerServeCommand(program);
  registerDecideCommands(program);
  registerNixCommands(program);
  registerWitnessCommand(program);
  registerMisbehaviourCommands(program);
  registerDashboardCommand(program);
  registerMirrorCommand(program);
  registerPublishTilesCommand(program);
}
