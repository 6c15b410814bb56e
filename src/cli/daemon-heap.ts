/**
 * The daemon's V8 heap flags (decision 0092). V8 grows its young generation when a program
 * allocates fast, and the pages stay with the process: at thousands of guests that, not the
 * objects kept, is most of the daemon's RSS (decision 0078). The flags must be given when the
 * process starts, and the daemon is started by several launchers (bin/trivisor, the systemd unit,
 * the test harness running src/cli/main.ts), so `trivisor daemon` re-executes itself once, same
 * pid, with whichever flag its launch did not set. A flag set on the command line or in
 * NODE_OPTIONS is the administrator's and is kept as it is.
 */
export const DAEMON_V8_FLAGS: readonly string[] = ['--max-semi-space-size=2'];

const flagName = (arg: string) => arg.split('=')[0]!.replaceAll('_', '-');

/**
 * The argv to execute for the daemon to run with its heap flags, or undefined when every flag is
 * already set (after the re-execution, or by the administrator).
 */
export function daemonReexecArgv(
  execPath: string,
  execArgv: readonly string[],
  argv: readonly string[],
  nodeOptions: string | undefined,
): string[] | undefined {
  const given = new Set([...execArgv, ...(nodeOptions ?? '').split(/\s+/)].filter(Boolean).map(flagName));
  const missing = DAEMON_V8_FLAGS.filter((f) => !given.has(flagName(f)));
  if (missing.length === 0) return undefined;
  return [execPath, ...execArgv, ...missing, ...argv.slice(1)];
}
