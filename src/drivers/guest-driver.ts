import type { Duplex, Readable, Writable } from 'node:stream';
import type { GuestFile, GuestFileAttributes } from '../core/guest-files.ts';
import type { GuestSpec, GuestUsage, ImageRecord, Model, ProcessIdentity } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import type { ProcessRunner } from '../host/runner.ts';
import type { GuestNetworking } from '../network/guest-networking.ts';
import type { LiveResult, VolumeResolver } from './guest-volumes.ts';
import type { LiveMigration } from './live-migration.ts';

/** What a driver's probe found on this host. */
export interface ProbeResult {
  model: Model;
  supported: boolean;
  version: string;
  /** Why it is unsupported, or caveats (e.g. "KVM hangs; using TCG"). */
  warnings: string[];
  details: Record<string, string>;
}

/** What a driver sees of the image a guest is made from. */
export interface ImageHandle {
  record: ImageRecord;
  /** Path of the read-only root file system tree (owned by real root ids). */
  rootfs: string;
  /**
   * Unused since ct guests mount `rootfs` idmapped (docs/decisions/0018); optional only so
   * that handles written for the earlier interface still compile. Do not call it.
   */
  shiftedRootfs?(base: number): Promise<string>;
  /**
   * A raw ext4 disk image derived once from the tree (with the guest kit of
   * src/images/guest-kit.ts injected), cached and shared read-only: the
   * copy-on-write backing file of `vm` and `pvm` guests.
   */
  baseDisk(): Promise<string>;
  /**
   * No image at all: a vm guest with a blank disk of `limits.disk`, installed from an ISO
   * (`create --empty`). Its record is a stand-in of type `disk` (the guest boots through its
   * firmware) and `baseDisk()` rejects.
   */
  blank?: boolean;
}

/** What `sendKeys` presses: named combinations (`ctrl-alt-del`), then a string typed key by key. */
export interface KeyInput {
  combos?: string[];
  text?: string;
}

/** Cumulative I/O of one disk of a running guest, as its engine counts it (decision 0030). */
export interface DiskCounters {
  readBytes: number;
  writtenBytes: number;
  /** Read requests completed. */
  reads: number;
  /** Write requests completed. */
  writes: number;
}

/** Observed state of a guest's processes on this host. */
export interface RuntimeState {
  state: 'running' | 'frozen' | 'stopped' | 'absent';
  process?: ProcessIdentity;
}

export interface ExecOptions {
  command: string[];
  env: Record<string, string>;
  cwd?: string;
  tty: boolean;
  /** Initial terminal size when tty. */
  columns?: number;
  rows?: number;
  user?: number;
  group?: number;
}

/** A running exec session: streams plus control. */
export interface ExecSession {
  stdin: Writable;
  stdout: Readable;
  /** null when tty (stderr is merged into the terminal). */
  stderr: Readable | null;
  resize(columns: number, rows: number): void;
  signal(signal: NodeJS.Signals): void;
  /** Exit code of the command (128+n when killed by signal n). */
  exit: Promise<number>;
}

/** What `pushFile` writes: a whole regular file, ids as the guest sees them. */
export interface PushFileOptions extends GuestFileAttributes {
  /** Absolute, normalized path in the guest (core/guest-files checkGuestPath). */
  path: string;
  data: Buffer;
  /** Make missing parent directories (0755, root's). */
  createDirs?: boolean;
}

/**
 * An attached interactive console: what is written goes to the guest's console
 * as typed input; what is read is the console's output from the moment of
 * attaching. It ends when the console goes away (the guest stopped); destroy()
 * detaches, and the guest never waits for a detached or slow reader.
 */
export type ConsoleStream = Duplex;

/** One network interface as the guest itself sees it. */
export interface GuestInterface {
  /** Its name in the guest (`eth0`). */
  name: string;
  /** Its MAC, lower case, when the guest says. */
  mac?: string;
  /** Administratively up; undefined when the guest's view cannot tell (ct: the host's veth end does). */
  up?: boolean;
  /** IPv4 addresses (dotted quads) it holds. */
  addresses: string[];
}

/** What a running guest says of its interfaces (`GuestDriver.observeNics`). */
export interface GuestNicView {
  /** Every interface but loopback. */
  interfaces: GuestInterface[];
  /**
   * What the guest's engine logged about its NICs since it started, e.g. UML's
   * `Failed to open /dev/net/tun, err = 13` (lines as written, most recent last).
   */
  engineErrors: string[];
}

export interface StopOptions {
  timeoutMs: number;
  force: boolean;
}

/**
 * One interface for the three models (Incus's instance drivers). Every method is
 * idempotent where that makes sense; `create` must leave nothing behind when it
 * fails. Where a driver cannot do something it throws NotSupported.
 */
export interface GuestDriver {
  readonly model: Model;
  probe(): Promise<ProbeResult>;
  /**
   * Driver-specific validation of a guest's config (on top of core/config-keys); with the
   * record of its image when the caller has it (the fingerprint '' record: no image, a blank disk).
   */
  validate(spec: GuestSpec, image?: ImageRecord): void;
  /** Makes the guest's on-disk state (root file system, bundle). */
  create(spec: GuestSpec, image: ImageHandle): Promise<void>;
  /** Boots the guest; resolves once its init runs, with the identity of its top process. */
  start(spec: GuestSpec, image: ImageHandle): Promise<ProcessIdentity>;
  /** Asks init to power off, kills after `timeoutMs` (at once when `force`); resolves when gone. */
  stop(spec: GuestSpec, options: StopOptions): Promise<void>;
  freeze(spec: GuestSpec): Promise<void>;
  unfreeze(spec: GuestSpec): Promise<void>;
  /** Removes everything `create` and `start` made; the guest must be stopped. Idempotent. */
  delete(spec: GuestSpec): Promise<void>;
  /** What runs now; `known` is the identity recorded at start, checked against pid reuse. */
  inspect(spec: GuestSpec, known: ProcessIdentity | undefined): Promise<RuntimeState>;
  usage(spec: GuestSpec): Promise<GuestUsage>;
  /**
   * Gives the host back the memory the running guest has freed, where its engine keeps it
   * (pvm: UML's RAM file, docs/decisions/0060); resolves with the bytes released. vm guests
   * report their free pages themselves (virtio-balloon), ct guests' memory is the host's own.
   * `run` is the run the controller knows (its status' process): another one found running (a
   * restart's new kernel, still booting) is left alone and 0 resolved, since taking a booting
   * kernel's free memory away starves it.
   */
  releaseFreeMemory?(spec: GuestSpec, run: ProcessIdentity): Promise<number>;
  /** Applies live-changeable config to a running guest; returns keys that need a restart. */
  update(spec: GuestSpec, changedKeys: string[]): Promise<string[]>;
  exec(spec: GuestSpec, options: ExecOptions): Promise<ExecSession>;
  /**
   * Makes a file of the running guest hold `data` with the given mode and
   * owner (replacing it whole; a symlink at the path is replaced, links above
   * it are followed inside the guest). FailedPrecondition when the guest is
   * not running; NotFound when its directory is missing; InvalidArgument for a directory.
   */
  pushFile(spec: GuestSpec, options: PushFileOptions): Promise<void>;
  /** Reads a regular file of the running guest (following symlinks inside it), with its mode and owner. */
  pullFile(spec: GuestSpec, path: string): Promise<GuestFile>;
  /**
   * Attaches to the console of a running guest, input and output (Conflict when
   * already attached, NotSupported where the console takes no input).
   */
  attachConsole(spec: GuestSpec): Promise<ConsoleStream>;
  /** Path of the guest's console log file. */
  consoleLogPath(spec: GuestSpec): string;
  /**
   * A new connection to the running guest's graphical display (paused: the reader resumes it), speaking RFB (VNC) both ways
   * (vm guests with `vm.display`); absent where a model has no screen. FailedPrecondition
   * when the guest has none.
   */
  attachDisplay?(spec: GuestSpec): Promise<ConsoleStream>;
  /** The running guest's screen as a PNG image (vm guests with a display). */
  screenshot?(spec: GuestSpec): Promise<Buffer>;
  /** Presses keys on the running guest's keyboard (vm guests with a display). */
  sendKeys?(spec: GuestSpec, keys: KeyInput): Promise<void>;
  /**
   * Cumulative I/O of each disk of the running guest by disk name, as the guest's own disks see it
   * (vm: QEMU's block statistics), for the metrics. Absent where the engine has no such count
   * (ct, pvm: the metrics read their processes' I/O instead). FailedPrecondition when `process`
   * no longer runs.
   */
  diskCounters?(
    spec: GuestSpec,
    options: { process: ProcessIdentity },
  ): Promise<Record<string, DiskCounters>>;
  /** Moving the running guest to another member (vm, decision 0042); absent where the model cannot. */
  migration?: LiveMigration;
  /**
   * The running guest's own view of its interfaces and addresses (ct: its network namespace, read
   * from /proc; vm, pvm: a probe through its agent), for the NIC observer. `process` is the identity
   * recorded at start. FailedPrecondition when that process no longer runs; NotSupported where the
   * guest cannot be asked (a vm booting another OS without the agent); Unavailable when its agent
   * does not answer within `timeoutMs`.
   */
  observeNics(
    spec: GuestSpec,
    options: { process: ProcessIdentity; timeoutMs: number },
  ): Promise<GuestNicView>;
  /**
   * Hot-plugs NIC `nic` (already in `spec.devices`) into the running guest (`pid`: its top
   * process): its port on the bridge with the same filters and limits as at start, and the
   * device in the guest. Leaves nothing behind when it fails; FailedPrecondition when the
   * engine cannot take a device now (the caller says to stop the guest).
   */
  attachNic(spec: GuestSpec, nic: string, options: { pid: number }): Promise<LiveResult>;
  /** Hot-unplugs NIC `nic` (still in `spec.devices`) from the running guest and removes its port and filters. */
  detachNic(spec: GuestSpec, nic: string, options: { pid: number }): Promise<LiveResult>;
}

/** What every driver is built with (injected by main.ts). */
export interface DriverContext {
  runner: ProcessRunner;
  log: Logger;
  /** Root of Trivisor's state (TRIVISOR_DIR). */
  stateDir: string;
  /** Host uid/gid that root in unprivileged guests maps to; 65536 ids from there. */
  idmapBase: number;
  /** Puts guests' NICs on their networks; absent where networking is not set up (NICs then fail to start). */
  network?: GuestNetworking;
  /** Resolves guests' attached custom volumes to host paths; absent where volumes are not set up (none attach). */
  volumes?: VolumeResolver;
}
