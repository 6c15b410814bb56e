import os from 'node:os';
import { Counter, Gauge, Registry } from 'prom-client';
import type { GuestSpec, Model, ProcessIdentity } from '../core/types.ts';
import type { DiskCounters, GuestDriver, ProbeResult } from '../drivers/guest-driver.ts';
import type { ProcessIoCounters } from '../host/host-counters.ts';
import type { SysctlReport } from '../host/host-sysctls.ts';
import type { KsmStatus } from '../host/ksm.ts';
import type { NicCounters } from '../network/network-backend.ts';
import type { HostCounters } from './metrics-sampler.ts';
import type { GuestService, HostService } from './types.ts';

export interface HostServiceDeps {
  hostName: string;
  version: string;
  stateDir: string;
  storeDescription: string;
  drivers: Partial<Record<Model, GuestDriver>>;
  guests: GuestService;
  /** What the daemon did to the host's kernel settings at start (host/host-sysctls.ts). */
  sysctls?: SysctlReport[];
  /**
   * This member's guests' specs and the process each runs as, by name (from the store): what
   * should run, and what a driver needs to ask the engine.
   */
  guestRecords?: () => Promise<Map<string, { spec: GuestSpec; process: ProcessIdentity | undefined }>>;
  /** Counters of a NIC's host end by port name (the network backend's, as the guest sees them). */
  nicCounters?: (port: string) => Promise<NicCounters | undefined>;
  /** I/O of a ct or pvm guest's processes (host/host-counters.ts readCgroupProcessIo). */
  processIo?: (guest: GuestSpec) => ProcessIoCounters | undefined;
  /** The member's own CPU, network and disk counters (host/host-counters.ts readHostCounters). */
  readHost?: () => HostCounters;
  /** KSM as it is now (host/ksm.ts): the daemon runs it while vm guests do. */
  ksm?: () => Promise<KsmStatus>;
  /** This member's storage pools and their space (without the per-guest walk). */
  pools?: () => Promise<
    Array<{ name: string; driver: string; usage: { totalBytes: number; usedBytes: number } | null }>
  >;
}

/** Guests whose engines are asked at once for their disk counters (vm: one QMP round trip each). */
const DISK_CONCURRENCY = 8;

/**
 * Host facts and the Prometheus metrics (decision 0030): per guest CPU, memory, processes, and
 * network and disk counters named as Incus names its own; per member totals, pools and the
 * guests that should run and do not. Each member exports its own guests, so a Prometheus that
 * scrapes every member counts each guest once.
 */
export function createHostService(deps: HostServiceDeps): HostService {
  let probes: Promise<ProbeResult[]> | undefined;
  const probeAll = () => {
    probes ??= Promise.all(Object.values(deps.drivers).map((d) => d.probe()));
    return probes;
  };

  const registry = new Registry();
  const guestLabels = ['member', 'project', 'name', 'model'] as const;
  const deviceLabels = [...guestLabels, 'device'] as const;
  const gauge = <L extends string>(name: string, help: string, labelNames: readonly L[] = []) =>
    new Gauge<L>({ name, help, labelNames, registers: [registry] });
  // Counters are read whole from their source at each scrape, never incremented here.
  const counter = <L extends string>(name: string, help: string, labelNames: readonly L[]) =>
    new Counter<L>({ name, help, labelNames, registers: [registry] });

  const guestUp = gauge('trivisor_guest_up', '1 when the guest runs', guestLabels);
  const guestShouldRun = gauge(
    'trivisor_guest_desired_running',
    '1 when the guest should run (its desired state is Running)',
    guestLabels,
  );
  const guestMemory = gauge('trivisor_guest_memory_bytes', 'Memory used by the guest', guestLabels);
  const guestMemoryLimit = gauge(
    'trivisor_guest_memory_limit_bytes',
    'Memory limit of the guest',
    guestLabels,
  );
  const guestCpu = counter('trivisor_guest_cpu_seconds_total', 'CPU time used by the guest', guestLabels);
  const guestProcesses = gauge('trivisor_guest_processes', 'Processes in the guest', guestLabels);
  const nic = {
    rxBytes: counter(
      'trivisor_network_receive_bytes_total',
      'Bytes the guest received on the NIC',
      deviceLabels,
    ),
    txBytes: counter(
      'trivisor_network_transmit_bytes_total',
      'Bytes the guest sent on the NIC',
      deviceLabels,
    ),
    rxPackets: counter(
      'trivisor_network_receive_packets_total',
      'Packets the guest received on the NIC',
      deviceLabels,
    ),
    txPackets: counter(
      'trivisor_network_transmit_packets_total',
      'Packets the guest sent on the NIC',
      deviceLabels,
    ),
    rxErrors: counter('trivisor_network_receive_errs_total', 'Receive errors on the NIC', deviceLabels),
    txErrors: counter('trivisor_network_transmit_errs_total', 'Transmit errors on the NIC', deviceLabels),
    rxDropped: counter(
      'trivisor_network_receive_drop_total',
      'Packets for the guest dropped on the NIC',
      deviceLabels,
    ),
    txDropped: counter(
      'trivisor_network_transmit_drop_total',
      'Packets from the guest dropped on the NIC',
      deviceLabels,
    ),
  } satisfies Record<keyof NicCounters, Counter<string>>;
  const disk = {
    readBytes: counter(
      'trivisor_disk_read_bytes_total',
      'Bytes read from the disk (vm: as the guest issued them; ct, pvm: what its processes had the host read from storage, device "all")',
      deviceLabels,
    ),
    writtenBytes: counter(
      'trivisor_disk_written_bytes_total',
      'Bytes written to the disk (vm: as the guest issued them; ct, pvm: what its processes wrote for storage, device "all")',
      deviceLabels,
    ),
    reads: counter(
      'trivisor_disk_reads_completed_total',
      'Read requests the vm guest completed on the disk',
      deviceLabels,
    ),
    writes: counter(
      'trivisor_disk_writes_completed_total',
      'Write requests the vm guest completed on the disk',
      deviceLabels,
    ),
  } satisfies Record<keyof DiskCounters, Counter<string>>;
  const ioCalls = {
    readCalls: counter(
      'trivisor_guest_io_read_calls_total',
      'Read system calls of the ct or pvm guest’s host processes (files, pipes, sockets)',
      guestLabels,
    ),
    writeCalls: counter(
      'trivisor_guest_io_write_calls_total',
      'Write system calls of the ct or pvm guest’s host processes (files, pipes, sockets)',
      guestLabels,
    ),
  };

  const memberLabels = ['member'] as const;
  const guestsByStatus = gauge('trivisor_guests', "This member's guests by status", ['member', 'status']);
  const hostInfo = gauge('trivisor_host_info', 'The member and its Trivisor version (always 1)', [
    'member',
    'version',
  ]);
  const hostMemory = gauge('trivisor_host_memory_bytes', 'Host memory', memberLabels);
  const hostMemoryAvailable = gauge(
    'trivisor_host_memory_available_bytes',
    'Host memory not in use',
    memberLabels,
  );
  const hostCpus = gauge('trivisor_host_cpus', 'Host CPUs', memberLabels);
  const hostLoad = gauge('trivisor_host_load1', 'Host load average over 1 minute', memberLabels);
  const hostCpu = counter(
    'trivisor_host_cpu_seconds_total',
    'CPU time the host spent busy (all CPUs)',
    memberLabels,
  );
  const hostRx = counter(
    'trivisor_host_network_receive_bytes_total',
    'Bytes the host received on its physical interfaces',
    memberLabels,
  );
  const hostTx = counter(
    'trivisor_host_network_transmit_bytes_total',
    'Bytes the host sent on its physical interfaces',
    memberLabels,
  );
  const hostRead = counter(
    'trivisor_host_disk_read_bytes_total',
    'Bytes read from the host’s disks',
    memberLabels,
  );
  const hostWritten = counter(
    'trivisor_host_disk_written_bytes_total',
    'Bytes written to the host’s disks',
    memberLabels,
  );
  const guestsMemoryTotal = gauge(
    'trivisor_host_guest_memory_bytes',
    'Memory used by all guests',
    memberLabels,
  );
  const guestsProcessesTotal = gauge(
    'trivisor_host_guest_processes',
    'Processes in all guests',
    memberLabels,
  );
  const daemonRss = gauge(
    'trivisor_daemon_resident_memory_bytes',
    'Resident memory of the daemon',
    memberLabels,
  );
  const poolLabels = ['member', 'pool', 'driver'] as const;
  const poolSize = gauge('trivisor_storage_pool_size_bytes', 'Size of the storage pool', poolLabels);
  const poolUsed = gauge('trivisor_storage_pool_used_bytes', 'Space used on the storage pool', poolLabels);
  const poolUp = gauge('trivisor_storage_pool_up', '1 when the storage pool is usable', poolLabels);

  const member = deps.hostName;
  let scraping: Promise<unknown> = Promise.resolve();
  /**
   * A ct or pvm guest's process I/O is a sum over its living processes, which keeps what their
   * reaped children did but drops what a process whose parent is outside the guest did once it
   * ends (a `trivisor exec` session, reaped by runc): a counter must not go down, so a drop is
   * carried as an offset, per guest process (a restarted guest starts again from its own sum).
   */
  const ioSeen = new Map<string, { process: string; last: ProcessIoCounters; offset: ProcessIoCounters }>();
  const monotonicIo = (key: string, process: string, raw: ProcessIoCounters): ProcessIoCounters => {
    const seen = ioSeen.get(key);
    const zero = { readBytes: 0, writtenBytes: 0, readCalls: 0, writeCalls: 0 };
    const offset = seen && seen.process === process ? { ...seen.offset } : zero;
    const out = { ...raw };
    for (const k of Object.keys(raw) as Array<keyof ProcessIoCounters>) {
      if (seen && seen.process === process && raw[k] < seen.last[k]) offset[k] += seen.last[k] - raw[k];
      out[k] = raw[k] + offset[k];
    }
    ioSeen.set(key, { process, last: raw, offset });
    ioTouched.add(key);
    return out;
  };
  const ioTouched = new Set<string>();
  const setCounter = <L extends string>(c: Counter<L>, labels: Record<L, string>, value: number) => {
    if (Number.isFinite(value) && value >= 0) c.inc(labels, value);
  };

  async function collect(): Promise<void> {
    registry.resetMetrics();
    const [guests, stored] = await Promise.all([
      deps.guests.list({ withUsage: true, allProjects: true }),
      deps.guestRecords?.() ?? new Map<string, { spec: GuestSpec; process: ProcessIdentity | undefined }>(),
    ]);
    const counts: Record<string, number> = { Running: 0, Stopped: 0, Frozen: 0, Error: 0 };
    let mem = 0;
    let procs = 0;
    const diskWork: Array<() => Promise<void>> = [];
    for (const g of guests) {
      // Each member exports the guests it runs; a cluster's others export theirs.
      if (g.host !== member) continue;
      counts[g.status] = (counts[g.status] ?? 0) + 1;
      const l = { member, project: g.project, name: g.name, model: g.model };
      const running = g.status === 'Running';
      guestUp.set(l, running ? 1 : 0);
      const own = stored.get(g.name);
      if (own) guestShouldRun.set(l, own.spec.desired === 'Running' ? 1 : 0);
      const u = g.state.usage;
      if (u) {
        guestMemory.set(l, u.memoryBytes);
        if (u.memoryLimitBytes !== undefined) guestMemoryLimit.set(l, u.memoryLimitBytes);
        setCounter(guestCpu, l, u.cpuSeconds);
        guestProcesses.set(l, u.processes);
        mem += u.memoryBytes;
        procs += u.processes;
      }
      if (g.status !== 'Running' && g.status !== 'Frozen') continue;
      for (const [device, state] of Object.entries(g.state.nics ?? {})) {
        const c = state.hostName ? await deps.nicCounters?.(state.hostName) : undefined;
        if (!c) continue;
        for (const key of Object.keys(nic) as Array<keyof NicCounters>)
          setCounter(nic[key], { ...l, device }, c[key]);
      }
      if (!own) continue;
      const driver = deps.drivers[g.model];
      const process = own.process;
      if (driver?.diskCounters && process) {
        const diskCounters = driver.diskCounters.bind(driver);
        diskWork.push(async () => {
          const byDisk = await diskCounters(own.spec, { process }).catch(() => undefined);
          for (const [device, c] of Object.entries(byDisk ?? {})) {
            for (const key of Object.keys(disk) as Array<keyof DiskCounters>)
              setCounter(disk[key], { ...l, device }, c[key]);
          }
        });
      } else {
        const raw = deps.processIo?.(own.spec);
        const io = raw
          ? monotonicIo(`${g.project}/${g.name}`, `${process?.pid}:${process?.startTime}`, raw)
          : undefined;
        if (io) {
          const all = { ...l, device: 'all' };
          setCounter(disk.readBytes, all, io.readBytes);
          setCounter(disk.writtenBytes, all, io.writtenBytes);
          setCounter(ioCalls.readCalls, l, io.readCalls);
          setCounter(ioCalls.writeCalls, l, io.writeCalls);
        }
      }
    }
    // Guests gone or stopped since: their next sum starts afresh.
    for (const key of ioSeen.keys()) if (!ioTouched.has(key)) ioSeen.delete(key);
    ioTouched.clear();
    for (let i = 0; i < diskWork.length; i += DISK_CONCURRENCY) {
      await Promise.all(diskWork.slice(i, i + DISK_CONCURRENCY).map((work) => work()));
    }
    for (const [status, n] of Object.entries(counts)) guestsByStatus.set({ member, status }, n);
    hostInfo.set({ member, version: deps.version }, 1);
    hostMemory.set({ member }, os.totalmem());
    hostMemoryAvailable.set({ member }, os.freemem());
    hostCpus.set({ member }, os.availableParallelism());
    hostLoad.set({ member }, os.loadavg()[0] ?? 0);
    guestsMemoryTotal.set({ member }, mem);
    guestsProcessesTotal.set({ member }, procs);
    daemonRss.set({ member }, process.memoryUsage.rss());
    const host = deps.readHost?.();
    if (host) {
      setCounter(hostCpu, { member }, host.cpuBusySeconds);
      setCounter(hostRx, { member }, host.netRxBytes);
      setCounter(hostTx, { member }, host.netTxBytes);
      setCounter(hostRead, { member }, host.diskReadBytes);
      setCounter(hostWritten, { member }, host.diskWriteBytes);
    }
    for (const pool of (await deps.pools?.().catch(() => [])) ?? []) {
      const l = { member, pool: pool.name, driver: pool.driver };
      poolUp.set(l, pool.usage ? 1 : 0);
      if (!pool.usage) continue;
      poolSize.set(l, pool.usage.totalBytes);
      poolUsed.set(l, pool.usage.usedBytes);
    }
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
        ...(deps.sysctls && { sysctls: deps.sysctls }),
        drivers: results.map((p) => ({
          model: p.model,
          supported: p.supported,
          version: p.version,
          warnings: p.warnings,
          details: p.details,
        })),
        store: deps.storeDescription,
        ...(deps.ksm && { ksm: await deps.ksm() }),
      };
    },
    metrics() {
      // One collection at a time: two scrapes at once would reset each other's values half-way.
      const next = scraping.then(async () => {
        await collect();
        return { contentType: registry.contentType, body: await registry.metrics() };
      });
      scraping = next.catch(() => {});
      return next;
    },
  };
}
