import { Command, CommanderError } from 'commander';
import { addConsoleCommand } from './console-command.ts';
import { addExecCommand } from './exec-command.ts';
import { addFileCommands } from './file-commands.ts';
import { addConfigCommands, addGuestCommands } from './guest-commands.ts';
import { addNetworkCommands } from './network-commands.ts';
import {
  addDaemonCommand,
  addImageCommands,
  addMonitorCommand,
  addOperationCommands,
} from './other-commands.ts';
import { addStorageCommands } from './storage-commands.ts';
import { addVolumeCommands } from './volume-commands.ts';

/** The `trivisor` command line (commander), without parsing anything yet. */
export function buildProgram(): Command {
  const program = new Command('trivisor')
    .description('Trivisor: vm, pvm and ct guests from one control plane')
    .option('--remote <url>', 'daemon URL, e.g. http://10.0.0.5:8443 (env TRIVISOR_REMOTE)')
    .option('--token <token>', 'API token for --remote (env TRIVISOR_TOKEN)')
    .showSuggestionAfterError(true)
    // Settings below are inherited by every subcommand added afterwards.
    .exitOverride()
    .configureOutput({
      outputError: (message, write) => write(`Error: ${oneLine(message.replace(/^error:\s*/i, ''))}\n`),
    });
  addGuestCommands(program);
  addExecCommand(program);
  addConsoleCommand(program);
  addConfigCommands(program);
  addFileCommands(program);
  addImageCommands(program);
  addStorageCommands(program);
  addVolumeCommands(program);
  addNetworkCommands(program);
  addOperationCommands(program);
  addMonitorCommand(program);
  addDaemonCommand(program);
  return program;
}

const oneLine = (text: string) => text.replace(/\s*\n\s*/g, ' ').trim();

/** Runs the CLI; every failure is one `Error: ...` line on stderr and exit code 1. */
export async function runCli(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv, { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      // Commander already printed its (one-line) message, or help/version.
      process.exit(e.exitCode === 0 ? 0 : 1);
    }
    const message = e instanceof Error ? e.message : String(e);
    process.stderr.write(`Error: ${oneLine(message)}\n`);
    process.exit(1);
  }
  // Exit as soon as the command is done: open sockets must not keep the CLI alive.
  process.exit(typeof process.exitCode === 'number' ? process.exitCode : 0);
}

if (import.meta.main) await runCli(process.argv.slice(2));
