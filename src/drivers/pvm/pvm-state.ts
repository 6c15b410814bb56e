import { readFile } from 'node:fs/promises';
import type { GuestUsage } from '../../core/types.ts';
import { readCgroupUsage } from '../../host/cgroups-v1.ts';
import { isSameProcess } from '../../host/proc-stat.ts';
import type { GuestDriver, RuntimeState } from '../guest-driver.ts';
import { exists, type PvmContext } from './pvm-context.ts';

/** What a guest is (absent, stopped, running or frozen, adopting a known process) and what it uses. */
export function pvmState(c: PvmContext): Pick<GuestDriver, 'inspect' | 'usage'> {
  const { cgroupsPath, pathsOf, readRecord, liveUml } = c;
  return {
    async inspect(spec, known): Promise<RuntimeState> {
      const p = pathsOf(spec);
      if (!(await exists(p.dir))) return { state: 'absent' };
      const identity = await liveUml(spec, known);
      if (!identity) return { state: 'stopped' };
      return { state: (await exists(p.frozenFile)) ? 'frozen' : 'running', process: identity };
    },

    async usage(spec): Promise<GuestUsage> {
      const usage = await readCgroupUsage(cgroupsPath(spec));
      // The guest's limit is its RAM; the cgroup's is that plus the kernel's host overhead.
      const record = await readRecord(spec);
      if (record) usage.memoryLimitBytes = record.memoryBytes;
      else delete usage.memoryLimitBytes;
      if (usage.memoryBytes === 0 && record && (await isSameProcess(record))) {
        // Someone moved the kernel out of its memory cgroup (some sandboxes' supervisors do):
        // the main process's resident set, which maps all guest RAM it touched, is the next best figure.
        const statm = await readFile(`/proc/${record.pid}/statm`, 'utf8').catch(() => '');
        usage.memoryBytes = Number(statm.split(' ')[1] ?? 0) * 4096;
      }
      return usage;
    },
  };
}
