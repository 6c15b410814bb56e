import { rm } from 'node:fs/promises';
import { removeCgroup } from '../../host/cgroups-v1.ts';
import type { GuestDriver, RuntimeState } from '../guest-driver.ts';
import { bootOf } from './vm-boot.ts';
import { exists, type VmContext } from './vm-context.ts';
import { removeRuntimeDir } from './vm-runtime-dir.ts';

/** How often a stop presses the ACPI power button again while the guest runs on. */
const REPRESS_MS = 15_000;

/** Stopping (power-down, then kill), freezing, deleting and inspecting a guest's QEMU. */
export function createVmPower(
  c: VmContext,
): Pick<GuestDriver, 'stop' | 'freeze' | 'unfreeze' | 'delete' | 'inspect'> {
  const {
    self,
    log,
    cgroupParent,
    pathsOf,
    agents,
    readBoot,
    adoptLegacy,
    liveQemu,
    withQmp,
    runStatus,
    waitGone,
    cleanUpRuntime,
    unrecordedQemu,
    killQemu,
    runningQemu,
    migratingOut,
  } = c;
  return {
    async stop(spec, stopOptions) {
      const q = await liveQemu(spec);
      if (q) {
        let gone = false;
        if (!stopOptions.force) {
          // The timeout counts from the request, however long the agent takes to answer.
          const deadline = Date.now() + stopOptions.timeoutMs;
          const p = pathsOf(spec);
          // A paused CPU cannot act on a power-down request.
          if ((await runStatus(spec)) === 'paused')
            await withQmp(spec, (c) => c.execute('cont')).catch(() => {});
          const boot = await readBoot(spec);
          // The image's init powers off on its stop signal (busybox init ignores ACPI): ask through the
          // agent, and press the ACPI power button too for images that listen to it. An OS of its own
          // gets the button only, as a machine's would (no kit in it to signal its init).
          const asked =
            bootOf(boot) === 'kit'
              ? agents.signalInit(p.agentSocket, boot?.stopSignal ?? 'SIGTERM', {
                  timeoutMs: Math.min(3000, stopOptions.timeoutMs),
                })
              : Promise.resolve();
          const press = () => withQmp(spec, (c) => c.execute('system_powerdown')).catch(() => {});
          await press();
          await asked.catch(() => {});
          // A button pressed while the guest's OS was still starting, before anything in it
          // listened for ACPI events (systemd-logind), is lost, as on a real machine: it is
          // pressed again every 15 s until the deadline (a press during a shutdown is ignored).
          for (;;) {
            const left = deadline - Date.now();
            gone = await waitGone(q, Math.max(0, Math.min(left, REPRESS_MS)));
            if (gone || left <= REPRESS_MS) break;
            await press();
          }
        }
        if (!gone) {
          log.info({ guest: spec.name, force: stopOptions.force }, 'killing vm guest');
          await killQemu(spec, q);
        }
      }
      await cleanUpRuntime(spec);
    },
    async freeze(spec) {
      await runningQemu(spec);
      await withQmp(spec, (q) => q.execute('stop'));
    },
    async unfreeze(spec) {
      await runningQemu(spec);
      await withQmp(spec, (q) => q.execute('cont'));
    },
    async delete(spec) {
      const p = pathsOf(spec);
      const q = await liveQemu(spec);
      if (q) await self().stop(spec, { timeoutMs: 0, force: true });
      // A QEMU no boot record names still answers: its disk and runtime files are not taken from it.
      if (!(await cleanUpRuntime(spec))) throw unrecordedQemu(spec);
      migratingOut.delete(spec.name);
      await removeRuntimeDir(p);
      await rm(p.dir, { recursive: true, force: true });
      await removeCgroup(cgroupParent);
    },
    async inspect(spec, known): Promise<RuntimeState> {
      if (!(await exists(pathsOf(spec).dir))) return { state: 'absent' };
      await adoptLegacy(spec);
      const q = await liveQemu(spec, known);
      if (!q) return { state: 'stopped' };
      const status = await runStatus(spec);
      if (status === 'io-error') {
        // QEMU paused the guest on a failed write (werror=enospc: its disk's file system is full).
        // The liveness checks come here every few seconds: resume, and once there is room again the
        // write succeeds; while the disk is still full QEMU just pauses it again.
        log.warn({ guest: spec.name }, 'vm guest paused on a full disk: resuming it');
        await withQmp(spec, (c) => c.execute('cont')).catch(() => {});
      }
      if (status === 'postmigrate' && !migratingOut.has(spec.name)) {
        // Its migration completed but the guest was never handed over (the daemon that moved it
        // died before the records changed owner: they still name this member), so the destination
        // never ran it: it runs on here.
        log.warn(
          { guest: spec.name },
          'vm guest left paused by a live move that was not handed over: resuming it',
        );
        await withQmp(spec, (c) => c.execute('cont')).catch(() => {});
      }
      return { state: status === 'paused' ? 'frozen' : 'running', process: q };
    },
  };
}
