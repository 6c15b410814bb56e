import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Command, InvalidArgumentError } from 'commander';
import { createClient } from '../client/client.ts';
import { failedPrecondition, unavailable } from '../core/errors.ts';
import { stateDir } from './context.ts';

/**
 * `trivisor admin wait-ready`: the systemd unit's readiness check (decision 0030), as incusd's
 * `waitready` is Incus's: the service is started once the daemon's API answers on its socket,
 * which it opens after re-adopting its guests, so units ordered after trivisor.service find it
 * up. Always the local socket: a remote (or a default remote) in root's CLI config is not it.
 */
export function addServiceCommands(program: Command): void {
  const admin =
    program.commands.find((c) => c.name() === 'admin') ??
    program.command('admin').description('Administration of the daemon');
  admin
    .command('wait-ready')
    .description("Wait until this host's daemon answers on its unix socket (systemd's readiness check)")
    .option('--timeout <seconds>', 'give up after this long', seconds, 600)
    .option('--pid <pid>', "fail at once when this process (the daemon's, $MAINPID) is gone", positive)
    .action(async (opts: { timeout: number; pid?: number }) => {
      const socketPath = join(stateDir(), 'trivisor.sock');
      const client = createClient({ socketPath });
      const deadline = Date.now() + opts.timeout * 1000;
      for (;;) {
        const ok = await client.serverInfo().then(
          () => true,
          () => false,
        );
        if (ok) return;
        if (opts.pid !== undefined && !alive(opts.pid)) {
          throw failedPrecondition(
            `The daemon (pid ${opts.pid}) exited before it was ready: see journalctl -u trivisor`,
          );
        }
        if (Date.now() >= deadline) {
          throw unavailable(`The daemon did not answer on ${socketPath} within ${opts.timeout} s`);
        }
        await sleep(200);
      }
    });
}

function seconds(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError('give a number of seconds');
  return n;
}

function positive(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('give a process id');
  return n;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
