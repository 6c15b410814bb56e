import { Command, CommanderError } from 'commander';
import { addAdminCommands, addAuthCommands } from './auth-commands.ts';
import { addClusterCommands } from './cluster-commands.ts';
import { addCompletionCommands } from './completion.ts';
import { addConsoleCommand } from './console-command.ts';
import { addExecCommand } from './exec-command.ts';
import { addFileCommands } from './file-commands.ts';
import { addConfigCommands, addGuestCommands } from './guest-commands.ts';
import { addHelpExamples } from './help-examples.ts';
import { addNetworkCommands } from './network-commands.ts';
import {
  addDaemonCommand,
  addImageCommands,
  addMonitorCommand,
  addOperationCommands,
} from './other-commands.ts';
import { addPlanCommands } from './plan-commands.ts';
import { addProjectCommands } from './project-commands.ts';
import { addRemoteCommands } from './remote-commands.ts';
import { addServiceCommands } from './service-commands.ts';
import { addStorageCommands } from './storage-commands.ts';
import { addVolumeCommands } from './volume-commands.ts';

/** The `trivisor` command line (commander), without parsing anything yet. */
export function buildProgram(): Command {
  const program = new Command('trivisor')
    .description('Trivisor: vm, pvm and ct guests from one control plane')
    .option(
      '--remote <name>',
      'remote to talk to (trivisor remote list; env TRIVISOR_REMOTE; default: local)',
    )
    .option('--token <token>', "API token instead of the remote's own (env TRIVISOR_TOKEN)")
    .option('--project <name>', 'project to act in (env TRIVISOR_PROJECT; default: default)')
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
  addProjectCommands(program);
  addRemoteCommands(program);
  addAuthCommands(program);
  addAdminCommands(program);
  addClusterCommands(program);
  addServiceCommands(program);
  addPlanCommands(program);
  addMonitorCommand(program);
  addDaemonCommand(program);
  addCompletionCommands(program);
  addHelpExamples(program);
  return program;
}

const oneLine = (text: string) => text.replace(/\s*\n\s*/g, ' ').trim();

/** Runs the CLI; every failure is one `Error: ...` line on stderr and exit code 1. */
export async function runCli(argv: string[]): Promise<void> {
  try {
    const program = buildProgram();
    // The daemon logs its own stray errors and keeps serving (main.ts); every other command fails with one line.
    program.hook('preAction', (_program, command) => {
      if (command.name() !== 'daemon') failOnStrayErrors();
    });
    await program.parseAsync(argv, { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      // Commander already printed its (one-line) message, or help/version.
      process.exit(e.exitCode === 0 ? 0 : 1);
    }
    process.stderr.write(`Error: ${oneLine(messageOf(e))}\n`);
    process.exit(1);
  }
  // Exit as soon as the command is done: open sockets must not keep the CLI alive. Not before
  // stdout has taken everything, though: a pipe is written asynchronously, and exiting at once
  // cut a long output (`console --show-log` of a booted guest) at 64 or 128 KiB.
  const code = typeof process.exitCode === 'number' ? process.exitCode : 0;
  await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
  process.exit(code);
}

/** A local file's system call error as `PATH: reason` ("ENOENT: no such file…, stat '/x'" reads badly). */
function messageOf(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  if (err instanceof Error && typeof err.path === 'string' && typeof err.syscall === 'string') {
    const reason = err.message.replace(/^[A-Z0-9_]+: /, '').replace(/, [a-z_]+ '[^']*'(?: -> '[^']*')?$/, '');
    return `${err.path}: ${reason}`;
  }
  return e instanceof Error ? e.message : String(e);
}

/**
 * What escapes a command's promise (a stream's 'error' nobody listens to, a promise nobody
 * awaits) is still one `Error:` line and exit code 1, never a stack trace (issue 11, finding 7).
 */
function failOnStrayErrors(): void {
  const fail = (e: unknown) => {
    process.stderr.write(`Error: ${oneLine(messageOf(e))}\n`);
    process.exit(1);
  };
  process.on('uncaughtException', fail);
  process.on('unhandledRejection', fail);
  // A reader that went away (`trivisor list | head -1`) ends the command quietly, as a pipe does.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => (e.code === 'EPIPE' ? process.exit(0) : fail(e)));
  process.stderr.on('error', () => process.exit(1));
}

if (import.meta.main) await runCli(process.argv.slice(2));
