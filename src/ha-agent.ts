import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { type LocalMembership, readLocalMembership } from './cluster/cluster-files.ts';
import { etcdClientOptions } from './cluster/daemon-store.ts';
import { etcdPaths } from './cluster/etcd-member.ts';
import { startHaAgent } from './control/ha/agent.ts';
import { haPaths } from './control/ha/ha-files.ts';
import type { ProcessIdentity } from './core/types.ts';
import { unmountCtLayer } from './drivers/ct/ct-layer-image.ts';
import { cgroupParentOf } from './drivers/guest-cgroup.ts';
import { killGuest, runningGuests } from './host/guest-processes.ts';
import { createLogger, type Logger } from './host/logger.ts';
import { isSameProcess, readProcessIdentity } from './host/proc-stat.ts';
import { hostRunner } from './host/runner.ts';
import { type ServiceNotifier, systemdNotifier } from './host/systemd-notify.ts';
import { openEtcdStore } from './store/etcd-store.ts';

/**
 * The HA agent of one member (decision 0052): `node src/ha-agent.ts STATE_DIR`, started by the
 * daemon in a session of its own (it outlives the daemon, even one killed with -9, as the guests
 * and etcd do) and started again by the daemon when it finds it gone. SIGTERM is a clean stop:
 * it fences (kills this member's HA guests, gives its lease up), as a member that leaves must.
 *
 * Or run by systemd (`trivisor-ha-agent.service`, decision 0052 amended; the daemon then starts
 * none, `TRIVISOR_HA_AGENT=systemd`): it tells systemd it is ready and pets its watchdog at every
 * look through `systemd-notify`; on a host that is not a member yet it waits for the membership
 * file, and while another agent of this state directory runs (one a daemon started) it waits
 * for that one to end, so that one member never has two.
 */

const WAIT_POLL_MS = 2000;

/** Waits, petting systemd's watchdog, until `ready` answers something. */
async function waitFor<T>(
  ready: () => Promise<T | undefined>,
  notifier: ServiceNotifier,
  status: string,
): Promise<T> {
  notifier.status(status);
  for (;;) {
    const value = await ready();
    if (value !== undefined) return value;
    notifier.alive();
    await new Promise((r) => setTimeout(r, WAIT_POLL_MS));
  }
}

/** Another live agent of this state directory, as its pid file names it. */
async function otherAgent(stateDir: string): Promise<ProcessIdentity | undefined> {
  try {
    const id = JSON.parse(readFileSync(haPaths(stateDir).pid, 'utf8')) as ProcessIdentity;
    return id.pid !== process.pid && (await isSameProcess(id)) ? id : undefined;
  } catch {
    return undefined;
  }
}

/** This member's own etcd member's client URL (its record), when the daemon runs one here. */
function ownEtcdEndpoint(stateDir: string, log: Logger): string[] | undefined {
  try {
    const record = JSON.parse(readFileSync(etcdPaths(stateDir).record, 'utf8')) as { clientUrl?: unknown };
    return typeof record.clientUrl === 'string' ? [record.clientUrl] : undefined;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT')
      log.warn({ err: String(e) }, 'HA agent: cannot read the etcd member record');
    return undefined;
  }
}

/**
 * The host's watchdog device (`TRIVISOR_HA_WATCHDOG`, e.g. /dev/watchdog from `softdog`): opened
 * when HA guests start running here, written at every pet, closed with the magic `V` (disarmed)
 * once none runs. Its timeout is the device's own (softdog's `soft_margin`), set when the module
 * is loaded; decision 0044 wants it at 2 s.
 */
function deviceWatchdog(device: string | undefined) {
  if (!device || device === 'none') return undefined;
  let fd: number | undefined;
  return {
    pet() {
      fd ??= openSync(device, 'w');
      writeSync(fd, '1');
    },
    disarm() {
      if (fd === undefined) return;
      writeSync(fd, 'V');
      closeSync(fd);
      fd = undefined;
    },
  };
}

async function main(): Promise<void> {
  const stateDir = path.resolve(process.argv[2] ?? process.env.TRIVISOR_DIR ?? '/var/lib/trivisor');
  const log = createLogger().child({ component: 'ha-agent' });
  const notifier = systemdNotifier({ env: process.env, runner: hostRunner(), log, pid: process.pid });
  let membership: LocalMembership | undefined = await readLocalMembership(stateDir);
  if (!membership && !notifier) {
    log.error({ stateDir }, 'HA agent: this host is not a cluster member; nothing to do');
    process.exit(2);
  }
  if (notifier) {
    // Ready at once: what it waits for next (a membership, another agent's end) may take days.
    notifier.ready('starting');
    membership ??= await waitFor(
      () => readLocalMembership(stateDir).catch(() => undefined),
      notifier,
      `this host is not a cluster member: waiting for ${stateDir}'s membership`,
    );
    const other = await otherAgent(stateDir);
    if (other) {
      log.info(
        { pid: other.pid },
        "HA agent: another agent holds this member's lease: waiting for it to end",
      );
      await waitFor(
        async () => ((await otherAgent(stateDir)) ? undefined : true),
        notifier,
        `another HA agent (pid ${other.pid}) runs for this member: waiting for it to end`,
      );
    }
  }
  if (!membership) return;
  // This agent's pid file, as the daemon's supervisor writes it (agent-process.ts): a daemon finds it.
  const me = await readProcessIdentity(process.pid);
  if (me) {
    mkdirSync(haPaths(stateDir).dir, { recursive: true, mode: 0o700 });
    writeFileSync(haPaths(stateDir).pid, `${JSON.stringify(me)}\n`, { mode: 0o600 });
  }
  // This member's own etcd when the daemon runs one (agent-process.ts says why): the daemon names
  // it; under systemd its record does.
  const own =
    process.env.TRIVISOR_HA_ETCD_ENDPOINTS?.split(',').filter(Boolean) ?? ownEtcdEndpoint(stateDir, log);
  const client = etcdClientOptions(stateDir, membership);
  const store = await openEtcdStore({
    ...client,
    ...(own && own.length > 0 && { endpoints: own }),
    onError: (e) => log.error({ err: String(e) }, 'etcd store callback failed'),
  });
  const parent = cgroupParentOf(stateDir);
  const watchdog = deviceWatchdog(process.env.TRIVISOR_HA_WATCHDOG);
  const agent = startHaAgent({
    store,
    stateDir,
    member: membership.name,
    log,
    running: (only) => runningGuests(parent, { only }),
    kill: async (guest) => {
      const left = await killGuest(parent, guest);
      if (left.length > 0)
        log.error({ guest, pids: left }, 'HA agent: processes of a fenced guest are still there');
      // A ct guest's layer image on a network pool is unmounted here, before the lease can expire:
      // left mounted, its dirty pages would reach the image after another member mounted it
      // (decision 0094). Blocked while the pool is out of reach, a configured watchdog resets the member.
      else
        await unmountCtLayer(hostRunner(), stateDir, guest).catch((e: unknown) =>
          log.error({ guest, err: String(e) }, 'HA agent: cannot unmount the layer of a fenced guest'),
        );
    },
    ...(watchdog && { watchdog }),
    onRemoved: () => {
      void store.close().finally(() => process.exit(0));
    },
    ...(notifier && { onLook: () => notifier.alive() }),
  });
  log.info({ member: membership.name, pid: process.pid }, 'HA agent running');
  notifier?.status(`HA agent of member ${membership.name}`);
  const stop = () => {
    notifier?.stopping();
    void agent
      .stop()
      .finally(() => store.close())
      .finally(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

await main();
