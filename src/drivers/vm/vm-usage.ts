import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isLiveKey } from '../../core/config-keys.ts';
import { failedPrecondition } from '../../core/errors.ts';
import type { GuestUsage } from '../../core/types.ts';
import { readCgroupUsage } from '../../host/cgroups-v1.ts';
import { isSameProcess } from '../../host/proc-stat.ts';
import type { DiskCounters, GuestDriver } from '../guest-driver.ts';
import { vmResources } from './qemu-command.ts';
import { CGROUP_ROOT, type VmContext } from './vm-context.ts';

/** What a guest uses (cgroup, balloon, disk counters) and the live limits changes. */
export function createVmUsage(c: VmContext): Pick<GuestDriver, 'usage' | 'update' | 'diskCounters'> {
  const { cgroupsPath, readBoot, writeBoot, liveQemu, withQmp } = c;
  return {
    async usage(spec): Promise<GuestUsage> {
      const usage = await readCgroupUsage(cgroupsPath(spec));
      const boot = await readBoot(spec);
      const q = boot && (await isSameProcess(boot.identity));
      // The host sees one process per guest; what runs inside is the guest kernel's business.
      usage.processes = q ? 1 : 0;
      if (q) usage.memoryLimitBytes = boot.balloonBytes;
      else delete usage.memoryLimitBytes;
      return usage;
    },
    async update(spec, changedKeys) {
      const boot = await readBoot(spec);
      const live = boot && (await isSameProcess(boot.identity));
      const needRestart = changedKeys.filter((k) => !isLiveKey(k));
      if (!live) return [];
      const wanted = vmResources(spec.config);
      if (changedKeys.includes('limits.memory')) {
        const bytes = wanted.memoryMiB * 2 ** 20;
        if (bytes > boot.memoryBytes) {
          // The balloon can only give back what the guest booted with.
          needRestart.push('limits.memory');
        } else {
          await withQmp(spec, (q) => q.execute('balloon', { value: bytes }));
          await writeBoot(spec, { ...boot, balloonBytes: bytes });
        }
      }
      if (changedKeys.includes('limits.cpu')) {
        if (wanted.vcpus !== boot.vcpus) needRestart.push('limits.cpu');
        const dir = join(CGROUP_ROOT, 'cpu', cgroupsPath(spec));
        await writeFile(join(dir, 'cpu.cfs_quota_us'), String(wanted.cpuQuotaUs ?? -1)).catch(() => {});
      }
      return [...new Set(needRestart)];
    },
    // QEMU counts each block backend's requests as the guest issued them: what the guest's disks did,
    // whatever the host's page cache made of it. Disks by node name (root, config, volumes).
    async diskCounters(spec, { process }) {
      if (!(await liveQemu(spec, process))) throw failedPrecondition(`Guest ${spec.name} is not running.`);
      const stats = await withQmp(spec, (q) =>
        q.execute<QmpBlockStats[]>('query-blockstats', { 'query-nodes': false }, { timeoutMs: 2000 }),
      );
      return diskCountersOf(stats);
    },
  };
}

/** One entry of QMP's `query-blockstats` (the fields read here). */
interface QmpBlockStats {
  device?: string;
  'node-name'?: string;
  qdev?: string;
  stats: { rd_bytes: number; wr_bytes: number; rd_operations: number; wr_operations: number };
}

/**
 * Counters by disk: a backend's top node name (root, config, a volume's node), else its legacy
 * drive name; a CD-ROM drive without a medium has neither and is left out.
 */
export function diskCountersOf(stats: QmpBlockStats[]): Record<string, DiskCounters> {
  const out: Record<string, DiskCounters> = {};
  for (const s of stats) {
    const name = s['node-name'] || s.device;
    if (!name) continue;
    out[name] = {
      readBytes: s.stats.rd_bytes,
      writtenBytes: s.stats.wr_bytes,
      reads: s.stats.rd_operations,
      writes: s.stats.wr_operations,
    };
  }
  return out;
}
