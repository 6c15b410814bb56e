import { closeSync, openSync, writeSync } from 'node:fs';
import path from 'node:path';
import { readLocalMembership } from './cluster/cluster-files.ts';
import { etcdClientOptions } from './cluster/daemon-store.ts';
import { startHaAgent } from './control/ha/agent.ts';
import { cgroupParentOf } from './drivers/guest-cgroup.ts';
import { killGuest, runningGuests } from './host/guest-processes.ts';
import { createLogger } from './host/logger.ts';
import { openEtcdStore } from './store/etcd-store.ts';

/**
 * The HA agent of one member (decision 0052): `node src/ha-agent.ts STATE_DIR`, started by the
 * daemon in a session of its own (it outlives the daemon, even one killed with -9, as the guests
 * and etcd do) and started again by the daemon when it finds it gone. SIGTERM is a clean stop:
 * it fences (kills this member's HA guests, gives its lease up), as a member that leaves must.
 */

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
  const membership = await readLocalMembership(stateDir);
  if (!membership) {
    log.error({ stateDir }, 'HA agent: this host is not a cluster member; nothing to do');
    process.exit(2);
  }
  // The daemon names this member's own etcd when it runs one (agent-process.ts says why).
  const own = process.env.TRIVISOR_HA_ETCD_ENDPOINTS?.split(',').filter(Boolean);
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
    },
    ...(watchdog && { watchdog }),
    onRemoved: () => {
      void store.close().finally(() => process.exit(0));
    },
  });
  log.info({ member: membership.name, pid: process.pid }, 'HA agent running');
  const stop = () => {
    void agent
      .stop()
      .finally(() => store.close())
      .finally(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

await main();
