import { finished } from 'node:stream/promises';
import type { Command } from 'commander';
import { clientOf, collect, parsePairs } from './context.ts';

interface ExecOptions {
  t?: boolean;
  T?: boolean;
  env: string[];
  cwd?: string;
  user?: string;
  group?: string;
}

/** `exec NAME [-t|-T] [--env K=V] [--cwd DIR] -- CMD...`: streams pass through, the exit code is ours. */
export function addExecCommand(program: Command): void {
  program
    .command('exec')
    .description('Run a command in a guest (put the command after --)')
    .argument('<name>')
    .argument('<command...>')
    .option('-t, --force-interactive', 'use a terminal even when stdin/stdout are not terminals')
    .option('-T, --force-noninteractive', 'no terminal, even when stdin and stdout are terminals')
    .option('--env <key=value>', 'environment variable (repeatable)', collect, [])
    .option('--cwd <dir>', 'working directory in the guest')
    .option('--user <uid>', 'user id to run as')
    .option('--group <gid>', 'group id to run as')
    .action(async (name: string, command: string[], rawOpts: Record<string, unknown>, cmd: Command) => {
      const opts: ExecOptions = {
        t: rawOpts.forceInteractive === true,
        T: rawOpts.forceNoninteractive === true,
        env: rawOpts.env as string[],
      };
      if (typeof rawOpts.cwd === 'string') opts.cwd = rawOpts.cwd;
      if (typeof rawOpts.user === 'string') opts.user = rawOpts.user;
      if (typeof rawOpts.group === 'string') opts.group = rawOpts.group;
      process.exitCode = await runExec(cmd, name, command, opts);
    });
}

async function runExec(cmd: Command, name: string, command: string[], opts: ExecOptions): Promise<number> {
  const stdin = process.stdin;
  const stdout = process.stdout;
  // Like Incus: a terminal when both ends are terminals, unless told otherwise; but vm and
  // pvm guests run commands through the QEMU guest agent, which has no terminal.
  const model = stdin.isTTY === true && !opts.t ? (await clientOf(cmd).getGuest(name)).model : undefined;
  const auto = !opts.t && !opts.T && stdin.isTTY === true && stdout.isTTY === true;
  const tty = opts.t ? true : auto ? model === 'ct' : false;
  // The guest agent of vm/pvm guests takes stdin whole before the command runs: a terminal
  // would never end it, so it gets none (as `ssh -n`); pipe input in to give some.
  const noStdin = model !== undefined && model !== 'ct' && !tty;
  const environment = parsePairs(opts.env, 'Environment variable');
  if (tty && !environment.TERM) environment.TERM = process.env.TERM ?? 'xterm-256color';
  const request: Parameters<ReturnType<typeof clientOf>['exec']>[1] = {
    command,
    environment,
    interactive: tty,
  };
  if (opts.cwd !== undefined) request.cwd = opts.cwd;
  if (opts.user !== undefined) request.user = Number(opts.user);
  if (opts.group !== undefined) request.group = Number(opts.group);
  // A terminal may report 0x0 (e.g. a fresh pty): then let the guest pick its default size.
  if (tty && stdout.isTTY && stdout.columns > 0 && stdout.rows > 0) {
    request.width = stdout.columns;
    request.height = stdout.rows;
  }

  const handle = await clientOf(cmd).exec(name, request);
  const rawMode = tty && stdin.isTTY === true;
  const restore = () => {
    if (rawMode) stdin.setRawMode(false);
  };
  process.once('exit', restore);
  if (rawMode) stdin.setRawMode(true);

  const onResize = () => {
    if (stdout.columns > 0 && stdout.rows > 0) handle.resize(stdout.columns, stdout.rows);
  };
  const onSigint = () => handle.signal('SIGINT');
  const onSigterm = () => handle.signal('SIGTERM');
  if (tty && stdout.isTTY) process.on('SIGWINCH', onResize);
  // In raw mode Ctrl-C arrives as a byte; otherwise forward the signal, as Incus does.
  if (!rawMode) process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigterm);

  if (noStdin) handle.stdin.end();
  else stdin.pipe(handle.stdin);
  handle.stdout.pipe(stdout, { end: false });
  handle.stderr.pipe(process.stderr, { end: false });
  try {
    const [code] = await Promise.all([handle.exit, finished(handle.stdout), finished(handle.stderr)]);
    return code;
  } finally {
    restore();
    stdin.unpipe(handle.stdin);
    stdin.pause();
    stdin.unref?.();
    process.off('SIGWINCH', onResize);
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigterm);
  }
}
