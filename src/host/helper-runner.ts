import { constants } from 'node:os';
import type { Launcher } from './launcher.ts';
import { CommandError, type ProcessRunner, type RunResult } from './runner.ts';

/**
 * A runner whose `run()` forks from the launcher's small helper instead of from the daemon
 * (decision 0097): a spawn from Node forks the whole daemon and copies its page tables on the event
 * loop's thread, which at thousands of guests was most of the daemon's CPU for a networked start's
 * `ip`/`nft`/`bridge` commands. Same contract as hostRunner().run: the daemon's environment with
 * `env` added, `cwd`, `input` on stdin, SIGKILL at `timeoutMs` (exit 128, `killed by SIGKILL` added
 * to stderr), a CommandError on a non-zero exit unless `allowFailure`, `cannot run …` when the
 * command cannot be run or `signal` aborted it. `spawn()` (live children with pipes) stays
 * `spawnFrom`'s.
 */
export function helperRunner(launcher: Launcher, spawnFrom: ProcessRunner): ProcessRunner {
  return {
    async run(argv, options = {}) {
      if (!argv[0]) throw new TypeError('empty argv');
      const ended = await launcher.capture(argv, {
        env: options.env ? { ...process.env, ...options.env } : process.env,
        ...(options.cwd !== undefined && { cwd: options.cwd }),
        ...(options.input !== undefined && { input: options.input }),
        ...(options.timeoutMs !== undefined && { timeoutMs: options.timeoutMs }),
        ...(options.signal && { signal: options.signal }),
      });
      const signalName = ended.signal ? signalNameOf(ended.signal) : '';
      const result: RunResult = {
        code: ended.signal ? 128 : ended.code,
        stdout: ended.stdout.toString('utf8'),
        stderr: ended.stderr.toString('utf8') + (signalName ? `\nkilled by ${signalName}` : ''),
      };
      if (result.code !== 0 && !options.allowFailure) throw new CommandError(argv, result);
      return result;
    },
    spawn(argv, options) {
      return spawnFrom.spawn(argv, options);
    },
  };
}

/** The name of signal `n` (SIGKILL for 9), as Node names a child's ending signal. */
const signalNameOf = (n: number): string =>
  Object.entries(constants.signals).find(([, v]) => v === n)?.[0] ?? `signal ${n}`;
