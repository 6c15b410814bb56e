import type { ClusterMember, ClusterService } from '../cluster/membership.ts';
import type { RebalanceService } from '../control/rebalance-controller.ts';
import type { GuestFile } from '../core/guest-files.ts';
import type {
  Guest,
  GuestSpec,
  GuestStatus,
  ImageRecord,
  Model,
  NicDevice,
  Operation,
  TrivisorEvent,
} from '../core/types.ts';
import type { ConsoleStream, ExecSession } from '../drivers/guest-driver.ts';
import type { SysctlReport } from '../host/host-sysctls.ts';
import type { KsmStatus } from '../host/ksm.ts';
import type { DiskExport, TreeExport } from '../images/image-files.ts';
import type { StoragePending } from '../store/records.ts';
import type { BackupRecovery } from './backup-recovery.ts';
import type { GuestMover, MoveReceiver } from './guest-move.ts';

/** A running command in a guest, and an attached guest console, as the transport streams them. */
export type { ConsoleStream, ExecSession };

import type { AuditLog } from './audit-log.ts';
import type { AuthService } from './auth-service.ts';
import type { ConsolidationPlanner } from './consolidation-planner.ts';
import type { MetricsHistory } from './metrics-history.ts';
import type { NetworkService } from './network-service.ts';
import type { OwnerRouting } from './owner-routing.ts';
import type { PoolService } from './pool-service.ts';
import type { ProjectService } from './project-service.ts';
import type { StorageService } from './storage-service.ts';
import type { VolumeService } from './volume-service.ts';

/** Body of `POST /1.0/guests`. */
export interface CreateGuestRequest {
  name: string;
  /** Image alias or fingerprint (prefix). */
  image: string;
  model?: Model;
  config?: Record<string, string>;
  /** Start after creating (`launch`). */
  start?: boolean;
  /** Incus-style devices: `{ eth0: { type: 'nic', network: 'trivisor0' } }`. */
  devices?: Record<string, NicDevice>;
  /** Project of the new guest (default: the service's project, else `default`). */
  project?: string;
  /** The member to place the guest on (`--target`, `?target=`); else the scheduler picks (decision 0033). */
  target?: string;
}

/** Body of `PUT /1.0/guests/{name}/state`. */
export interface StateChangeRequest {
  action: 'start' | 'stop' | 'restart' | 'freeze' | 'unfreeze';
  /** For stop/restart: seconds to wait for a clean shutdown before killing (default 30, -1 = forever). */
  timeout?: number;
  force?: boolean;
}

/** Body of `POST /1.0/guests/{name}/exec` (Incus's field names). */
export interface ExecRequest {
  command: string[];
  environment?: Record<string, string>;
  cwd?: string;
  interactive?: boolean;
  width?: number;
  height?: number;
  user?: number;
  group?: number;
}

/** Progress reporting and cancellation handed to the work of an operation. */
export interface OperationContext {
  signal: AbortSignal;
  progress(percent: number | null, text?: string): void;
  setMetadata(metadata: Record<string, unknown>): void;
}

export interface OperationSpec {
  /** Project the operation belongs to (default: `default`); another project's requests do not see it. */
  project?: string;
  description: string;
  resources?: Record<string, string[]>;
  mayCancel?: boolean;
  /** The work; its resolved value is merged into the operation's metadata. */
  run(ctx: OperationContext): Promise<Record<string, unknown> | undefined>;
}

/** Long actions as listable, waitable, cancellable operations (in memory, per daemon, as in Incus). */
export interface OperationService {
  start(spec: OperationSpec): Operation;
  list(): Operation[];
  /** NotFound for unknown ids. */
  get(id: string): Operation;
  /** Whether this daemon runs (or ran, recently) operation `id`. */
  has(id: string): boolean;
  /** Resolves when the operation ends or `timeoutMs` passes (then with its current state). */
  wait(id: string, timeoutMs?: number): Promise<Operation>;
  /** FailedPrecondition if it cannot be cancelled. */
  cancel(id: string): Operation;
}

/** Fan-out of events to `/1.0/events` subscribers. */
export interface EventBus {
  publish(event: Omit<TrivisorEvent, 'timestamp'>): void;
  /** Returns an unsubscribe function. */
  subscribe(listener: (event: TrivisorEvent) => void, types?: TrivisorEvent['type'][]): () => void;
}

/**
 * Guests. The service main.ts builds is the host's view (every project, for internal
 * callers); `inProject(name)` is one project's, where another project's guest is NotFound.
 */
export interface GuestService {
  inProject(project: string): GuestService;
  /** `allProjects` lists every project's guests even in a project's view. */
  /** `target`: only the guests of that member (their `location`). */
  list(options?: { withUsage?: boolean; allProjects?: boolean; target?: string }): Promise<Guest[]>;
  /**
   * The names `list` would show with the same options, in the same order, decoding no guest
   * record where the project index answers (`GET /1.0/guests` without recursion).
   */
  names(options?: { allProjects?: boolean; target?: string }): Promise<string[]>;
  get(name: string, options?: { withUsage?: boolean }): Promise<Guest>;
  /**
   * Guests the caller holds (spec and status: the guest controller's running ones) with their
   * usage and NIC counters, reading nothing from the store; no observed addresses nor warnings
   * (the metric sampler, decision 0080).
   */
  withUsage?(guests: ReadonlyArray<{ spec: GuestSpec; status: GuestStatus }>): Promise<Guest[]>;
  /**
   * Validates, records, provisions (and starts if asked) as an operation; errors in the request throw at once.
   * `pending` (a copy's or an import's storage-pending marker) is written in the guest record's own
   * transaction: a create refused, or a daemon killed around it, never leaves the marker on a guest
   * the caller did not make (the next start's sweep deletes a marked guest).
   */
  create(request: CreateGuestRequest, options?: { pending?: StoragePending }): Promise<Operation>;
  /**
   * Where `create` would place the guest now (decision 0033), writing nothing: a guest on a
   * pool every member has is made on the member this names (decision 0038).
   */
  placementFor?(
    request: Pick<CreateGuestRequest, 'model' | 'config' | 'target'>,
  ): Promise<{ member: string }>;
  changeState(name: string, request: StateChangeRequest): Promise<Operation>;
  delete(name: string, options?: { force?: boolean }): Promise<Operation>;
  /** Sets and unsets config keys; applies live ones to a running guest; returns keys that wait for a restart. */
  updateConfig(
    name: string,
    change: { set?: Record<string, string>; unset?: string[] },
  ): Promise<{ guest: Guest; pendingRestart: string[] }>;
  /** Starts a command in a running guest. */
  exec(name: string, request: ExecRequest): Promise<ExecSession>;
  /** Attaches to a running (or frozen) guest's console: input and output. */
  attachConsole(name: string): Promise<ConsoleStream>;
  /** A new VNC (RFB) connection to a running vm guest's display (`console --type vga`). */
  attachDisplay(name: string): Promise<ConsoleStream>;
  /** A running vm guest's screen as PNG (`console --screenshot`). */
  screenshot(name: string): Promise<Buffer>;
  /** Presses keys on a running vm guest's keyboard: combinations (`ctrl-alt-del`), then typed text. */
  sendKeys(name: string, keys: { combos?: string[]; text?: string }): Promise<void>;
  /** Path of the guest's console log (for `console --show-log` and following). */
  consoleLogPath(name: string): Promise<string>;
  /** Writes a whole file into a running guest (`file push`). */
  pushFile(name: string, request: PushFileRequest): Promise<{ size: number }>;
  /** Reads a regular file of a running guest (`file pull`). */
  pullFile(name: string, path: string): Promise<GuestFile>;
}

/** `POST /1.0/guests/{name}/files`: the bytes and what the file gets (mode 0644, root's, by default). */
export interface PushFileRequest {
  path: string;
  data: Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  /** Make missing parent directories. */
  createDirs?: boolean;
}

/** Images; like GuestService, the host's view with `inProject` for one project's. */
export interface ImageService {
  inProject(project: string): ImageService;
  list(options?: { allProjects?: boolean }): Promise<ImageRecord[]>;
  /** By alias or (unique prefix of) fingerprint; NotFound otherwise (and for another project's image). */
  get(ref: string): Promise<ImageRecord>;
  /** An image tree for a member that lacks it (decision 0034); NotFound when this member lacks it too. */
  exportTree(fingerprint: string): Promise<TreeExport>;
  /** A disk image's stored qcow2 for a member that lacks it (decision 0034); NotFound when this member lacks it too. */
  exportDisk(fingerprint: string): Promise<DiskExport>;
  /** `debian/bookworm` and friends, built with debootstrap, as an operation. */
  build(request: { source: string; alias?: string }): Promise<Operation>;
  /**
   * Imports an uploaded file already written to `tarballPath` (the service deletes it): a root
   * file system tarball, or a whole-disk image (qcow2 or raw) that becomes a vm disk image,
   * told apart by content; anything else (an ISO among them) is an InvalidArgument before any
   * operation starts. `sha256`: the upload's, computed as it arrived (a disk image's fingerprint).
   */
  importTarball(request: { tarballPath: string; alias: string; sha256?: string }): Promise<Operation>;
  /** FailedPrecondition while a guest uses it. */
  delete(ref: string): Promise<void>;
}

/** Host-level facts for `/1.0` and metrics. */
export interface HostService {
  info(): Promise<{
    name: string;
    version: string;
    stateDir: string;
    kernel: string;
    cpus: number;
    memoryBytes: number;
    /** Kernel settings the daemon raised (or found high enough) at start (decisions 0057-0059). */
    sysctls?: SysctlReport[];
    drivers: Array<{
      model: Model;
      supported: boolean;
      version: string;
      warnings: string[];
      /** Driver facts, e.g. the vm driver's `accelerator` and `acceleratorReason`. */
      details: Record<string, string>;
    }>;
    store: string;
    /** Kernel Samepage Merging (decision 0060); absent when the daemon was given no view of it. */
    ksm?: KsmStatus;
  }>;
  /** Prometheus exposition text. */
  metrics(): Promise<{ contentType: string; body: string }>;
}

/** Everything the HTTP layer needs, injected by main.ts. */
export interface Services {
  guests: GuestService;
  /** Managed networks; absent where networking is not set up. */
  networks?: NetworkService;
  images: ImageService;
  operations: OperationService;
  events: EventBus;
  host: HostService;
  /** Snapshots, copies and backups; absent where storage is not set up. */
  storage?: StorageService;
  /** Storage pools; absent where storage is not set up. */
  pools?: PoolService;
  /** Custom storage volumes; absent where storage is not set up. */
  volumes?: VolumeService;
  /** Tokens and trusted client certificates; absent: only the daemon's own token is known. */
  auth?: AuthService;
  /** The audit log of changes made through the API; absent: nothing is recorded. */
  audit?: AuditLog;
  /** Projects and their quotas. */
  projects: ProjectService;
  /** Where guest-scoped requests run (decision 0028); absent: always here. */
  owner?: OwnerRouting;
  /** CPU, memory, network and disk history of guests and the host; absent: none is kept. */
  metricsHistory?: MetricsHistory;
  /** Cluster membership (decision 0032); absent: this daemon can neither form nor join a cluster. */
  cluster?: ClusterService;
  /** Moving guests between members (decision 0040); absent off a cluster. */
  moves?: { mover: GuestMover; receiver: MoveReceiver };
  /** Guests brought back from the backup directory (decision 0046); absent: not offered. */
  backupRecovery?: BackupRecovery;
  /** The rebalancer's settings, moves and cycles on demand (decision 0053); absent off a cluster. */
  rebalance?: RebalanceService;
  /** The consolidation planner behind `POST /1.0/plans/consolidate` (decision 0065); absent: not offered. */
  consolidation?: ConsolidationPlanner;
  /** HA per member for `cluster list` (decision 0052); absent off a cluster. */
  haSummary?: (members: ClusterMember[]) => Promise<Map<string, NonNullable<ClusterMember['ha']>>>;
}
