import type { Logger } from './logger.ts';
import type { ProcessRunner } from './runner.ts';

/**
 * What a process run by systemd as `Type=notify` with `WatchdogSec=` tells it (sd_notify(3)):
 * that it is ready, that it is still alive, and a line of status for `systemctl status`.
 */
export interface ServiceNotifier {
  /** `READY=1`, with a status line. */
  ready(status: string): void;
  /** `WATCHDOG=1`, sent at most every third of the watchdog's period (calling it more often is cheap). */
  alive(): void;
  /** `STATUS=…`: what `systemctl status` shows. */
  status(text: string): void;
  /** `STOPPING=1`. */
  stopping(): void;
}

/**
 * The notifier of a process systemd runs, or undefined when it is not run that way
 * (`NOTIFY_SOCKET` unset). Node.js cannot send a unix datagram (`node:dgram` has no unix
 * sockets), so each message is sent by `systemd-notify` (systemd's own client, in every systemd
 * install), through the injected runner: the unit needs `NotifyAccess=all`, as the sender is a
 * child of the main process. `systemd-notify` waits until systemd has taken the message (its
 * default since systemd 246, not `--no-block`), so that it cannot exit before systemd has read
 * which unit it belongs to, which would lose the message. One message at a time: a watchdog ping
 * while one is on its way is not queued (the next look sends it).
 */
export function systemdNotifier(opts: {
  env: Readonly<Record<string, string | undefined>>;
  runner: ProcessRunner;
  log: Logger;
  /** This process's pid: `WATCHDOG_PID`, when set, names the process the watchdog is for. */
  pid: number;
  /** Monotonic ms (default performance.now). */
  clock?: () => number;
}): ServiceNotifier | undefined {
  const { env, runner, log } = opts;
  if (!env.NOTIFY_SOCKET) return undefined;
  const clock = opts.clock ?? (() => performance.now());
  const usec = Number(env.WATCHDOG_USEC);
  const forUs = env.WATCHDOG_PID === undefined || Number(env.WATCHDOG_PID) === opts.pid;
  /** How often a ping goes: a third of the period, so that a late one still arrives in time. */
  const pingEveryMs = forUs && Number.isFinite(usec) && usec > 0 ? usec / 1000 / 3 : undefined;
  let lastPing = Number.NEGATIVE_INFINITY;
  let inFlight: Promise<void> | undefined;
  /** Messages that must not be dropped (ready, status, stopping), sent after the one in flight. */
  const queue: string[][] = [];
  const send = (fields: string[], mustArrive: boolean) => {
    if (inFlight) {
      if (mustArrive) queue.push(fields);
      return;
    }
    inFlight = runner
      .run(['systemd-notify', ...fields], { timeoutMs: 10_000, allowFailure: true })
      .then(
        (r) => {
          if (r.code !== 0)
            log.warn(
              { fields, err: r.stderr.trim() },
              'systemd-notify failed: systemd may not have the message',
            );
        },
        (e: unknown) => log.warn({ fields, err: String(e) }, 'cannot run systemd-notify'),
      )
      .finally(() => {
        inFlight = undefined;
        const next = queue.shift();
        if (next) send(next, true);
      });
  };
  return {
    ready: (status) => send(['--ready', `--status=${status}`], true),
    status: (text) => send([`--status=${text}`], true),
    stopping: () => send(['STOPPING=1'], true),
    alive() {
      if (pingEveryMs === undefined) return;
      const now = clock();
      if (now - lastPing < pingEveryMs || inFlight) return;
      lastPing = now;
      send(['WATCHDOG=1'], false);
    },
  };
}
