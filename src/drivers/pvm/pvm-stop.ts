import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { internal } from '../../core/errors.ts';
import type { GuestSpec } from '../../core/types.ts';
import { removeCgroup } from '../../host/cgroups-v1.ts';
import type { GuestDriver } from '../guest-driver.ts';
import { AGENT_STOP_TIMEOUT_MS, exists, HALT_WAIT_MS, type PvmContext } from './pvm-context.ts';

/** Stopping a guest (its init through the agent, then halt, then SIGKILL), freezing it, deleting it. */
export function pvmStop(c: PvmContext): Pick<GuestDriver, 'stop' | 'freeze' | 'unfreeze' | 'delete'> {
  const { self, log, cgroupParent, pathsOf, mconsoleOf, liveUml, waitGone, dropAgent, agentOf } = c;
  const { cleanUpRuntime, runningUml } = c;
  /** Asks the guest's init to power off with the image's stop signal, through the agent; false when it cannot. */
  const askInitToStop = async (spec: GuestSpec): Promise<boolean> => {
    const signal = (
      await readFile(join(pathsOf(spec).dir, 'stop-signal'), 'utf8').catch(() => 'SIGTERM')
    ).trim();
    try {
      const agent = await agentOf(spec, AGENT_STOP_TIMEOUT_MS);
      await agent.signalInit(signal, AGENT_STOP_TIMEOUT_MS);
      return true;
    } catch (e) {
      log.debug({ guest: spec.name, err: String(e) }, 'the agent could not ask init to stop');
      dropAgent(spec);
      return false;
    }
  };

  return {
    async stop(spec, options) {
      const identity = await liveUml(spec);
      if (identity) {
        const mconsole = mconsoleOf(spec);
        // A stopped kernel serves nothing but mconsole: resume it so that it can power off or halt.
        if (await exists(pathsOf(spec).frozenFile)) await mconsole.go().catch(() => {});
        let gone = false;
        if (!options.force) {
          const deadline = Date.now() + options.timeoutMs;
          const timer = new AbortController();
          await Promise.race([
            askInitToStop(spec),
            sleep(options.timeoutMs, undefined, { signal: timer.signal }).catch(() => {}),
          ]).finally(() => timer.abort());
          gone = await waitGone(identity, Math.max(0, deadline - Date.now()));
        }
        if (!gone) {
          log.info({ guest: spec.name, force: options.force }, 'halting guest');
          await mconsole.halt().catch(() => {});
          gone = await waitGone(identity, HALT_WAIT_MS);
        }
        if (!gone) {
          try {
            process.kill(identity.pid, 'SIGKILL');
          } catch {
            // Gone meanwhile.
          }
        }
      }
      await cleanUpRuntime(spec);
    },

    async freeze(spec) {
      await runningUml(spec);
      // Marked first: a daemon dying between the two must not leave a stopped kernel that looks running.
      await writeFile(pathsOf(spec).frozenFile, '');
      try {
        await mconsoleOf(spec).stop();
      } catch (e) {
        await rm(pathsOf(spec).frozenFile, { force: true });
        throw e;
      }
    },

    async unfreeze(spec) {
      await runningUml(spec);
      const reply = await mconsoleOf(spec).request('go');
      // A kernel that is not stopped refuses `go`: it runs, which is what was asked.
      if (!reply.ok && (await exists(pathsOf(spec).frozenFile))) {
        throw internal(
          `Guest ${spec.name}'s UML kernel refused to resume: ${reply.text || 'no reason given'}.`,
        );
      }
      await rm(pathsOf(spec).frozenFile, { force: true });
    },

    async delete(spec) {
      const p = pathsOf(spec);
      if (await liveUml(spec)) await self().stop(spec, { timeoutMs: 0, force: true });
      await cleanUpRuntime(spec);
      await rm(p.runtimeDir, { recursive: true, force: true });
      await rm(p.dir, { recursive: true, force: true });
      // The parent goes with its last guest; rmdir refuses while ct or pvm guests remain.
      await removeCgroup(cgroupParent);
    },
  };
}
