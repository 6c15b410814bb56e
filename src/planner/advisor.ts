/**
 * The model advisor (issue 14 §5, decision 0054): which of ct, pvm and vm suits one workload, from
 * its measured profile and this host's own three-model table (bench/models.ts). Pure logic: the
 * table and the profile come in as values (advisor-input.ts reads them).
 */

export type GuestModel = 'ct' | 'pvm' | 'vm';
export const GUEST_MODELS: readonly GuestModel[] = ['ct', 'pvm', 'vm'];

/** What a workload's kind of operation costs, in seconds each, natively or in one model. */
export interface OperationCosts {
  /** Seconds of computation per second of native computation (a ratio: 1 natively). */
  computeRatio: number;
  syscallSeconds: number;
  forkExecSeconds: number;
  /** One 64 KiB write followed by fsync: what bench/models.ts times as I/O. */
  ioOpSeconds: number;
  /** Copying one byte in memory: bench/models.ts's memory-bandwidth workload (dd through a pipe). */
  copyByteSeconds: number;
}

/** One model's row of the table, with what it costs beyond its workload and what it isolates. */
export interface ModelCosts extends OperationCosts {
  bootMs: number;
  /** Host memory an idle guest of this model takes beyond its workload (PSS of its processes). */
  idleMemoryBytes: number;
}

/** The three-model table as measured on this host, per operation. */
export interface ModelTable {
  /** Where it was read from, for the output: the advice is only as good as that measurement. */
  source: string;
  measuredAt?: string;
  native: OperationCosts;
  models: Record<GuestModel, ModelCosts>;
  /**
   * The cores of the host the table was measured on (its provenance), the most any guest can use;
   * absent when the table does not say, and then only a profile's own `cores` limits a guest.
   */
  hostCores?: number;
}

/**
 * A workload as the advisor sees it: what it needs and its measured rates. Rates are per second
 * of wall-clock time as measured natively (or on whatever it runs now).
 */
export interface WorkloadProfile {
  id: string;
  /** `other`: a kernel that is not Linux (Windows, a BSD…): only an emulated machine runs it. */
  os: 'linux' | 'other';
  /** `own`: needs a Linux kernel of its own (its modules, version or sysctls), not the host's. */
  kernel: 'any' | 'own';
  /** `own-kernel`: must not share a kernel with other guests (a kernel bug must not reach them). */
  isolation: 'shared-kernel-ok' | 'own-kernel';
  /** CPU in use, in cores (0.5 = half a core busy). */
  cpuCores: number;
  syscallsPerSecond: number;
  forkExecsPerSecond: number;
  /** Synchronous writes per second, in 64 KiB operations (MiB/s × 16, or the IOPS given). */
  ioOpsPerSecond: number;
  /** Network traffic, received and sent together, in bytes per second. */
  networkBytesPerSecond: number;
  memoryBytes: number;
  /**
   * The CPUs the guest will be given (limits.cpu, a vm's vCPUs); absent: as many as the host has.
   * A model whose estimate needs more cores than this cannot keep up with the measured rates.
   */
  cores?: number;
}

/** How each model isolates a guest, the second half of the reason after cost. */
export const ISOLATION: Record<GuestModel, string> = {
  ct: 'shared kernel',
  pvm: 'own kernel, user-mode, as a process',
  vm: 'own kernel, hardware emulated',
};

/** The parts of a workload's busy time, natively or in a model, in seconds per second. */
export interface BusyTime {
  compute: number;
  syscalls: number;
  forkExecs: number;
  io: number;
  /** Network traffic: a system call per 64 KiB message and the copy of its bytes (a lower bound). */
  network: number;
}

/** One model's estimate for a workload. */
export interface ModelEstimate {
  model: GuestModel;
  isolation: string;
  /** Why the model cannot run this workload; absent when it can. */
  excludedBecause?: string;
  busySecondsPerSecond: BusyTime;
  /** Busy time in the model ÷ busy time natively: how much slower the same work goes. */
  slowdown: number;
  /** Host cores the workload keeps busy in the model at its measured rates (I/O waits excluded). */
  hostCores: number;
  /** The cores the guest can use: the profile's `cores`, at most the host's; absent when unknown. */
  guestCores?: number;
  /**
   * The share of the measured rates the guest can sustain: guestCores ÷ hostCores, at most 1. Below
   * 1 the model saturates its cores (contention): the work queues instead of taking more cores.
   */
  throughput: number;
  /** The workload's memory plus the model's idle guest. */
  hostMemoryBytes: number;
  bootMs: number;
}

/** The advice for one workload. */
export interface Advice {
  id: string;
  model: GuestModel;
  /** One line: `vm: needs a non-Linux kernel`, `ct: syscall-heavy: vm would cost 3.1×, pvm 211×`. */
  reason: string;
  estimates: ModelEstimate[];
}

/**
 * Costs within this factor of each other are a tie, decided by host memory: a 5% difference is
 * within the noise of a benchmark run on a shared host (bench/models.ts takes medians of 3).
 */
export const TIE_FACTOR = 1.05;

const KIND_WORDS: Record<keyof BusyTime, string> = {
  compute: 'compute-bound',
  syscalls: 'syscall-heavy',
  forkExecs: 'fork-heavy',
  io: 'I/O-heavy (synchronous writes)',
  network: 'network-heavy',
};

/**
 * Network traffic counted in messages of this size, each one system call (a send or a receive) plus
 * the copy of its bytes: the benchmark's unit for I/O, and the most one socket call moves with
 * Linux's default buffers. The virtual NIC's own work (a tap, virtio under TCG) is not measured by
 * bench/models.ts, so the network part is a lower bound in pvm and vm.
 */
export const NETWORK_MESSAGE_BYTES = 64 * 1024;
/** Slack on the core count: an estimate within 1% of the guest's cores still keeps up. */
const CORES_SLACK = 1.01;
/**
 * The host CPUs a pvm guest can keep busy: the UML kernel here is a uniprocessor one
 * (`linux.uml --showconfig`: `CONFIG_NR_CPUS=1`, no `CONFIG_SMP`), and the guest's processes run
 * only when its one kernel thread schedules them, so the whole guest runs on one host CPU whatever
 * `limits.cpu` says (decision 0054, amended 2026-12-07).
 */
export const PVM_GUEST_CPUS = 1;

function busyIn(p: WorkloadProfile, native: OperationCosts, costs: OperationCosts): BusyTime {
  const syscalls = p.syscallsPerSecond * native.syscallSeconds;
  const forkExecs = p.forkExecsPerSecond * native.forkExecSeconds;
  // The measured CPU share already holds the time spent in system calls and fork+exec: what is
  // left is the workload's own computation. A profile whose rates alone exceed its CPU share is
  // taken at its rates (its CPU share was measured coarser than they were).
  const compute = Math.max(0, p.cpuCores - syscalls - forkExecs);
  const io = p.ioOpsPerSecond * native.ioOpSeconds;
  // The network's system calls and copies are taken as measured rates of their own, not out of the
  // CPU share: a profile's network rate comes from its interface counters, not from its CPU.
  const messages = p.networkBytesPerSecond / NETWORK_MESSAGE_BYTES;
  return {
    compute: compute * (costs.computeRatio / native.computeRatio),
    syscalls: syscalls * (costs.syscallSeconds / native.syscallSeconds),
    forkExecs: forkExecs * (costs.forkExecSeconds / native.forkExecSeconds),
    io: io * (costs.ioOpSeconds / native.ioOpSeconds),
    network: messages * costs.syscallSeconds + p.networkBytesPerSecond * costs.copyByteSeconds,
  };
}

const total = (b: BusyTime) => b.compute + b.syscalls + b.forkExecs + b.io + b.network;

/** The cores a guest of this workload can use on the table's host, or undefined when unknown. */
function coresFor(p: WorkloadProfile, table: ModelTable): number | undefined {
  if (p.cores === undefined) return table.hostCores;
  return table.hostCores === undefined ? p.cores : Math.min(p.cores, table.hostCores);
}

/** The cores a guest of this model can use: a pvm guest one host CPU at most ({@link PVM_GUEST_CPUS}). */
function modelCores(model: GuestModel, cores: number | undefined): number | undefined {
  if (model !== 'pvm') return cores;
  return cores === undefined ? PVM_GUEST_CPUS : Math.min(cores, PVM_GUEST_CPUS);
}

/** Why a model cannot take this workload, or undefined. */
function exclusion(p: WorkloadProfile, model: GuestModel): string | undefined {
  if (p.os === 'other' && model !== 'vm')
    return model === 'ct' ? 'shares the host’s Linux kernel' : 'runs only a Linux kernel';
  if (model === 'ct' && p.kernel === 'own') return 'shares the host’s kernel';
  if (model === 'ct' && p.isolation === 'own-kernel') return 'shares the host’s kernel';
  return undefined;
}

/** Each model's estimate for the workload on the measured table. */
export function estimateModels(p: WorkloadProfile, table: ModelTable): ModelEstimate[] {
  const nativeBusy = total(busyIn(p, table.native, table.native));
  const profileCores = coresFor(p, table);
  return GUEST_MODELS.map((model) => {
    const costs = table.models[model];
    const guestCores = modelCores(model, profileCores);
    const busy = busyIn(p, table.native, costs);
    const excluded = exclusion(p, model);
    const hostCores = busy.compute + busy.syscalls + busy.forkExecs + busy.network;
    const throughput =
      guestCores === undefined || hostCores <= guestCores * CORES_SLACK ? 1 : guestCores / hostCores;
    return {
      model,
      isolation: ISOLATION[model],
      ...(excluded === undefined ? {} : { excludedBecause: excluded }),
      busySecondsPerSecond: busy,
      // Nothing measured to do: every model does nothing equally fast.
      slowdown: nativeBusy > 0 ? total(busy) / nativeBusy : 1,
      hostCores,
      ...(guestCores === undefined ? {} : { guestCores }),
      throughput,
      hostMemoryBytes: p.memoryBytes + costs.idleMemoryBytes,
      bootMs: costs.bootMs,
    };
  });
}

const times = (x: number) => `${x >= 10 ? x.toFixed(0) : x.toFixed(1)}×`;
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(bytes < 10 * 2 ** 20 ? 1 : 0)} MiB`;

/** The kind of work that makes `other` cost more than `chosen`: the largest part of the difference. */
function character(chosen: ModelEstimate, other: ModelEstimate): string {
  const kinds = Object.keys(KIND_WORDS) as Array<keyof BusyTime>;
  let best: keyof BusyTime = 'compute';
  let bestDiff = Number.NEGATIVE_INFINITY;
  for (const k of kinds) {
    const diff = other.busySecondsPerSecond[k] - chosen.busySecondsPerSecond[k];
    if (diff > bestDiff) {
      best = k;
      bestDiff = diff;
    }
  }
  return KIND_WORDS[best];
}

const cores = (x: number) => `${x >= 10 ? x.toFixed(0) : x.toFixed(1)}`;
/** How a model that saturates its cores falls short, for the reason. */
const given = (x: number) => (Number.isInteger(x) ? String(x) : x.toFixed(1));
/** Why a pvm guest has one core when the guest would have more: said where it binds. */
const oneCpu = (e: ModelEstimate, p: WorkloadProfile) =>
  e.model === 'pvm' &&
  e.guestCores === PVM_GUEST_CPUS &&
  (p.cores ?? Number.POSITIVE_INFINITY) > PVM_GUEST_CPUS
    ? ' (a pvm guest’s UML kernel runs on one host CPU)'
    : '';
const shortfall = (e: ModelEstimate, p: WorkloadProfile) =>
  `it would need ${cores(e.hostCores)} cores of ${given(e.guestCores ?? e.hostCores)}${oneCpu(e, p)}, ${Math.round(100 * e.throughput)}% of the measured rates`;

/**
 * The rule (decision 0054): the models that can run the workload (a non-Linux OS leaves vm; a
 * kernel of its own, needed or for isolation, leaves pvm and vm); of those, the ones that keep up
 * with the measured rates on the guest's cores (contention: a model that needs more cores than the
 * guest has queues its work), then the least estimated slowdown on this host's table; within
 * {@link TIE_FACTOR} in both, the least host memory per guest.
 */
export function advise(p: WorkloadProfile, table: ModelTable): Advice {
  const estimates = estimateModels(p, table);
  const allowed = estimates.filter((e) => e.excludedBecause === undefined);
  const byCost = [...allowed].sort(
    (a, b) =>
      b.throughput - a.throughput ||
      a.slowdown - b.slowdown ||
      GUEST_MODELS.indexOf(a.model) - GUEST_MODELS.indexOf(b.model),
  );
  const cheapest = byCost[0];
  if (cheapest === undefined) throw new Error('advise: every model excluded'); // os=other always leaves vm
  const tied = byCost.filter(
    (e) => e.throughput * TIE_FACTOR >= cheapest.throughput && e.slowdown <= cheapest.slowdown * TIE_FACTOR,
  );
  const chosen = [...tied].sort(
    (a, b) => a.hostMemoryBytes - b.hostMemoryBytes || a.slowdown - b.slowdown,
  )[0] as ModelEstimate;
  const others = byCost.filter((e) => e !== chosen);
  // Loses more of the measured rates than the chosen model: contention decides before cost.
  const fallsShort = (e: ModelEstimate) => e.throughput * TIE_FACTOR < chosen.throughput;
  const ownShortfall =
    chosen.throughput < 1 ? `; even so ${chosen.model} cannot keep up: ${shortfall(chosen, p)}` : '';

  let why: string;
  if (p.os === 'other') why = `needs a non-Linux kernel${ownShortfall}`;
  else {
    const need =
      p.kernel === 'own'
        ? 'needs its own kernel; '
        : p.isolation === 'own-kernel'
          ? 'needs its own kernel for isolation; '
          : '';
    const dearer = others
      .filter((e) => e.slowdown > chosen.slowdown * TIE_FACTOR)
      .sort((a, b) => a.slowdown - b.slowdown);
    const shortOnly = others.filter((e) => !dearer.includes(e) && fallsShort(e));
    const alike = others.filter((e) => !dearer.includes(e) && !fallsShort(e));
    const parts: string[] = [];
    const worst = dearer[dearer.length - 1];
    if (worst !== undefined) {
      const costs = dearer.map(
        (e, i) =>
          `${i === 0 ? `${e.model} would cost ` : `${e.model} `}${times(e.slowdown / chosen.slowdown)}${fallsShort(e) ? ` and could not keep up on ${given(e.guestCores ?? 0)} core${e.guestCores === 1 ? '' : 's'}${oneCpu(e, p)}` : ''}`,
      );
      parts.push(`${character(chosen, worst)}: ${costs.join(', ')}`);
    }
    for (const e of shortOnly) parts.push(`${e.model} cannot keep up: ${shortfall(e, p)}`);
    if (alike.length > 0) {
      const guest = (e: ModelEstimate) => mib(e.hostMemoryBytes - p.memoryBytes);
      parts.push(
        `${alike.map((e) => e.model).join(' and ')} ${alike.length > 1 ? 'cost' : 'costs'} about the same but ${alike.length > 1 ? 'take' : 'takes'} ${alike.map(guest).join(' and ')} of host memory per guest against ${guest(chosen)}`,
      );
    }
    why = `${need}${parts.join('; ') || 'the only model that can run it'}${ownShortfall}`;
  }
  return { id: p.id, model: chosen.model, reason: `${chosen.model}: ${why}`, estimates };
}
