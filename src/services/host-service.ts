import os from 'node:os';
import { Gauge, Registry } from 'prom-client';
import type { Model } from '../core/types.ts';
import type { GuestDriver, ProbeResult } from '../drivers/guest-driver.ts';
import type { GuestService, HostService } from './types.ts';

export interface HostServiceDeps {
  hostName: string;
  version: string;
  stateDir: string;
  storeDescription: string;
  drivers: Partial<Record<Model, GuestDriver>>;
  guests: GuestService;
}

/** Host facts and Prometheus metrics (per guest cpu, memory, processes; per host totals). */
export function createHostService(deps: HostServiceDeps): HostService {
  let probes: Promise<ProbeResult[]> | undefined;
  const probeAll = () => {
    probes ??= Promise.all(Object.values(deps.drivers).map((d) => d.probe()));
    return probes;
  };

  const registry = new Registry();
  const labels = ['name', 'model'] as const;
  const guestMemory = new Gauge({
    name: 'trivisor_guest_memory_bytes',
    help: 'Memory used by the guest',
    labelNames: labels,
    registers: [registry],
  });
  const guestMemoryLimit = new Gauge({
    name: 'trivisor_guest_memory_limit_bytes',
    help: 'Memory limit of the guest',
    labelNames: labels,
    registers: [registry],
  });
  const guestCpu = new Gauge({
    name: 'trivisor_guest_cpu_seconds_total',
    help: 'CPU time used by the guest',
    labelNames: labels,
    registers: [registry],
  });
  const guestProcesses = new Gauge({
    name: 'trivisor_guest_processes',
    help: 'Processes in the guest',
    labelNames: labels,
    registers: [registry],
  });
  const guestUp = new Gauge({
    name: 'trivisor_guest_up',
    help: '1 when the guest runs',
    labelNames: labels,
    registers: [registry],
  });
  const guestsByStatus = new Gauge({
    name: 'trivisor_guests',
    help: 'Guests by status',
    labelNames: ['status'] as const,
    registers: [registry],
  });
  const hostMemory = new Gauge({
    name: 'trivisor_host_memory_bytes',
    help: 'Host memory',
    registers: [registry],
  });
  const hostMemoryAvailable = new Gauge({
    name: 'trivisor_host_memory_available_bytes',
    help: 'Host memory not in use',
    registers: [registry],
  });
  const hostCpus = new Gauge({ name: 'trivisor_host_cpus', help: 'Host CPUs', registers: [registry] });
  const hostLoad = new Gauge({
    name: 'trivisor_host_load1',
    help: 'Host load average over 1 minute',
    registers: [registry],
  });
  const guestsMemoryTotal = new Gauge({
    name: 'trivisor_host_guest_memory_bytes',
    help: 'Memory used by all guests',
    registers: [registry],
  });
  const guestsCpuTotal = new Gauge({
    name: 'trivisor_host_guest_cpu_seconds_total',
    help: 'CPU time used by all guests',
    registers: [registry],
  });
  const guestsProcessesTotal = new Gauge({
    name: 'trivisor_host_guest_processes',
    help: 'Processes in all guests',
    registers: [registry],
  });
  const daemonRss = new Gauge({
    name: 'trivisor_daemon_resident_memory_bytes',
    help: 'Resident memory of the daemon',
    registers: [registry],
  });

  async function collect(): Promise<void> {
    for (const g of [guestMemory, guestMemoryLimit, guestCpu, guestProcesses, guestUp, guestsByStatus])
      g.reset();
    const guests = await deps.guests.list({ withUsage: true });
    const counts: Record<string, number> = { Running: 0, Stopped: 0, Frozen: 0, Error: 0 };
    let mem = 0;
    let cpu = 0;
    let procs = 0;
    for (const g of guests) {
      counts[g.status] = (counts[g.status] ?? 0) + 1;
      const l = { name: g.name, model: g.model };
      guestUp.set(l, g.status === 'Running' ? 1 : 0);
      const u = g.state.usage;
      if (!u) continue;
      guestMemory.set(l, u.memoryBytes);
      if (u.memoryLimitBytes !== undefined) guestMemoryLimit.set(l, u.memoryLimitBytes);
      guestCpu.set(l, u.cpuSeconds);
      guestProcesses.set(l, u.processes);
      mem += u.memoryBytes;
      cpu += u.cpuSeconds;
      procs += u.processes;
    }
    for (const [status, n] of Object.entries(counts)) guestsByStatus.set({ status }, n);
    hostMemory.set(os.totalmem());
    hostMemoryAvailable.set(os.freemem());
    hostCpus.set(os.availableParallelism());
    hostLoad.set(os.loadavg()[0] ?? 0);
    guestsMemoryTotal.set(mem);
    guestsCpuTotal.set(cpu);
    guestsProcessesTotal.set(procs);
    daemonRss.set(process.memoryUsage.rss());
  }

  return {
    async info() {
      const results = await probeAll();
      return {
        name: deps.hostName,
        version: deps.version,
        stateDir: deps.stateDir,
        kernel: `${os.type()} ${os.release()}`,
        cpus: os.availableParallelism(),
        memoryBytes: os.totalmem(),
        drivers: results.map((p) => ({
          model: p.model,
          supported: p.supported,
          version: p.version,
          warnings: p.warnings,
          details: p.details,
        })),
        store: deps.storeDescription,
      };
    },
    async metrics() {
      await collect();
      return { contentType: registry.contentType, body: await registry.metrics() };
    },
  };
}
