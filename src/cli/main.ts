#!/usr/bin/env node
import { Command, CommanderError } from 'commander';
import { registerCommands } from './commands/index.js';
import { CliError, describeError, EXIT } from './output.js';

const program = new Command('trustix')
  .description('Verifiable logs of build results, and local voting across them.')
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride();

registerCommands(program);

// A reader that stops early (`trustix lookup --help | head -3`) closes the pipe: that is the end of
// the output, not an error worth a stack trace.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code !== 'EPIPE') throw err;
  process.exit(process.exitCode ?? 0);
});

async function main(): Promise<void> {
  try {
    await program.parseAsync(process.argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode === 0 ? 0 : EXIT.usage;
      return;
    }
    process.stderr.write(`trustix: ${describeError(err)}\n`);
    process.exitCode = err instanceof CliError ? err.exitCode : EXIT.error;
  }
}

await main();
