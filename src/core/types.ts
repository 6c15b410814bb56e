import type { ErrorCode } from './errors.ts';

/** The three models of server virtualization Trivisor runs side by side. */
export type Model = 'ct' | 'pvm' | 'vm';
export const MODELS: readonly Model[] = ['ct', 'pvm', 'vm'];

/** What an administrator asks a guest to be. */
export type DesiredState = 'Running' | 'Stopped' | 'Frozen';

/** What a guest is observed to be (Incus's status names). */
export type GuestStatusName = 'Running' | 'Stopped' | 'Frozen' | 'Error';

/** Restart policy applied when a guest's init dies without being asked to. */
export type RestartPolicy = 'never' | 'on-failure' | 'always';

/**
 * What an evacuation of its member does with a guest (Incus's `cluster.evacuate`; decision 0041):
 * auto moves it (cold, while live migration is not built), migrate moves it, stop stops it.
 */
export const EVACUATE_MODES = ['auto', 'live-migrate', 'migrate', 'stop'] as const;
export type EvacuateMode = (typeof EVACUATE_MODES)[number];

/**
 * Desired state of one guest, stored at `keys.guest(name)`. Every change that the
 * controller must act on bumps `generation`.
 */
export interface GuestSpec {
  name: string;
  project: string;
  model: Model;
  /** Fingerprint of the image the guest was made from. */
  image: string;
  /** What the user typed for the image (alias or fingerprint), for display. */
  imageAlias: string;
  /** Incus-style configuration keys (`limits.memory`, `boot.autostart`…), validated by core/config-keys. */
  config: Record<string, string>;
  desired: DesiredState;
  generation: number;
  /** Bumped by `restart`: the controller restarts the guest once per bump. */
  restartRequest: number;
  /** How long a requested stop waits for the guest's init before killing it. */
  stopTimeoutMs: number;
  /** Set by a forced stop: kill at once. */
  stopForce: boolean;
  /** Set by delete: the controller stops the guest, removes its files, then its records. */
  deleting: boolean;
  /**
   * The member that owns the guest (Incus's `location`): its controller converges it, and its
   * API answers what must run where the guest is (docs/decisions/0028). `keys.guestLocation`
   * holds the same name, for transactions to compare (records before it had `host`).
   */
  location: string;
  /** Why the scheduler chose that member, in one line (decision 0033); absent on a single host. */
  placement?: string;
  createdAt: string;
  /** Incus-style devices by name (`eth0: { type: 'nic', network: 'trivisor0' }`); none when absent. */
  devices?: Record<string, NicDevice>;
  /**
   * Custom volumes attached to the guest, by device name (Incus's `disk` device:
   * `data: { type: 'disk', pool: 'default', source: 'vol1', path: '/mnt/data' }`).
   * Kept apart from `devices`, which the network code reads as NICs only.
   */
  disks?: Record<string, DiskDevice>;
}

/** A custom volume attached to a guest (Incus's `disk` device); `path` is where a ct guest sees a filesystem volume. */
export interface DiskDevice {
  type: 'disk';
  pool: string;
  /** The volume's name. */
  source: string;
  path?: string;
}

/**
 * A guest's NIC on a managed network (Incus's `nic` device). `hwaddr` and
 * `ipv4.address` are filled in at creation when not given, and kept: the MAC
 * and the DHCP reservation stay the same across restarts.
 */
export interface NicDevice {
  type: 'nic';
  network: string;
  hwaddr?: string;
  'ipv4.address'?: string;
  /** Bandwidth to the guest, e.g. `10Mbit` (shaped on the host end). */
  'limits.ingress'?: string;
  /** Bandwidth from the guest, e.g. `10Mbit` (policed as it enters the bridge). */
  'limits.egress'?: string;
}

/** Desired state of one managed network, stored at `keys.network(name)`. */
export interface NetworkSpec {
  /** Also the Linux bridge's name, so unique on the host whatever the project. */
  name: string;
  /** Absent in records made before projects: `default` (core/projects.ts projectOfRecord). */
  project?: string;
  description: string;
  /** `ipv4.address` (gateway CIDR), `ipv4.nat`, `dns.domain`, `security.isolated`. */
  config: Record<string, string>;
  generation: number;
  /** Set by delete: the controller removes the bridge, dnsmasq and rules, then the records. */
  deleting: boolean;
  /** The member whose bridge it is (records before it had `host`); every member's, once networks span members. */
  location: string;
  createdAt: string;
  /** Port forwards (DNAT) from host addresses to guests of this network. */
  forwards?: NetworkForward[];
  /** ACL rules for every guest port of the network, in order; what no rule matches is allowed. */
  acls?: NetworkAclRule[];
  /**
   * The VXLAN network identifier joining the members' bridges (decision 0050), unique in the
   * cluster (claimed under `network-vnis/`); records made before it get one from their member.
   */
  vni?: number;
}

/**
 * One stateless ACL rule (Incus's rule fields): `egress` is traffic a guest sends,
 * `ingress` traffic sent to a guest; the first matching rule decides.
 */
export interface NetworkAclRule {
  direction: 'ingress' | 'egress';
  action: 'allow' | 'drop';
  /** Address or CIDR. */
  source?: string;
  destination?: string;
  protocol?: 'tcp' | 'udp' | 'icmp';
  /** Only with tcp or udp. */
  destinationPort?: number;
}

/** DNAT of one host address and port to an address and port on a network. */
export interface NetworkForward {
  listenAddress: string;
  listenPort: number;
  protocol: 'tcp' | 'udp';
  targetAddress: string;
  targetPort: number;
  /** Guest the target address belonged to when the forward was added, for display. */
  targetGuest?: string;
}

/** Observed state of a network, written by its host's network controller. */
export interface NetworkStatus {
  status: 'Created' | 'Error';
  observedGeneration: number;
  error?: string;
  /** The typed code of `error`. */
  errorCode?: ErrorCode;
  failedGeneration?: number;
  dnsmasq?: ProcessIdentity;
}

/** Who holds an address of a network (value of `keys.networkAddress`). */
export interface NetworkAddressClaim {
  guest: string;
  nic: string;
  hwaddr: string;
}

/** A network as the API shows it. */
export interface Network {
  name: string;
  project: string;
  description: string;
  type: 'bridge';
  managed: boolean;
  config: Record<string, string>;
  status: 'Created' | 'Pending' | 'Error';
  error?: string;
  /** `/1.0/guests/NAME` of every guest with a NIC on it. */
  usedBy: string[];
  createdAt: string;
  forwards?: NetworkForward[];
  acls?: NetworkAclRule[];
  /**
   * On a cluster, the network's bridge on each member (decision 0034), its own member first;
   * absent on a single host.
   */
  members?: NetworkMemberState[];
  /**
   * On a cluster, the VXLAN that joins the members' bridges (decision 0050), read-only: its VNI
   * (`id`), UDP port and the MTU guests are given; each member's end is in `members`.
   */
  tunnel?: NetworkTunnel;
}

/** The overlay of a network that spans members (decision 0050). */
export interface NetworkTunnel {
  type: 'vxlan';
  /** The VNI, the same on every member. */
  id: number;
  port: number;
  /** The MTU guests are given on this network (the underlay's less VXLAN's 50 bytes). */
  mtu: number;
}

/** How a network's bridge stands on one member. */
export interface NetworkMemberState {
  name: string;
  /** Pending: the member has not built the network's current generation yet. */
  status: 'Created' | 'Pending' | 'Error';
  error?: string;
  /** The member's end of the network's VXLAN: its cluster address (present with `tunnel`). */
  tunnelEndpoint?: string;
}

/** One NIC of a guest as `info` shows it. */
export interface GuestNicState {
  network: string;
  hwaddr: string;
  /** Host-side interface name. */
  hostName: string;
  /** IPv4 addresses the guest was last seen holding on this NIC (not the reserved one). */
  addresses: string[];
  /** `lease` when the guest could not be asked and `addresses` are its active DHCP lease. */
  addressSource?: 'guest' | 'lease';
  /** Why the NIC does not work in the guest, naming the cause; absent while it works. */
  warning?: string;
  counters: { rxBytes: number; txBytes: number; rxPackets: number; txPackets: number } | null;
}

/** What the NIC observer last saw of one NIC of a running guest. */
export interface ObservedNic {
  /** IPv4 addresses (dotted quads) the guest holds on the NIC, which is up. */
  addresses: string[];
  /** `guest`: the guest's own view (its network namespace or agent); `lease`: dnsmasq's active lease. */
  source: 'guest' | 'lease' | 'none';
  /** Why the NIC does not work, naming the cause, once that has lasted (decision 15). */
  warning?: string;
}

/**
 * Observed network state of one running guest, written by its host's NIC observer at
 * `keys.guestNetwork(name)` when it changes; kept apart from `GuestStatus`, which the
 * guest controller owns (two writers of one key would lose each other's updates).
 */
export interface GuestNetworkObservation {
  /** The guest process it was seen in: an observation of an earlier run is never shown. */
  process: ProcessIdentity;
  nics: Record<string, ObservedNic>;
  /** When it last changed. */
  changedAt: string;
}

/** Facts that identify a live guest process: a pid alone can be reused. */
export interface ProcessIdentity {
  pid: number;
  /** Field 22 of /proc/PID/stat: clock ticks after boot when the process started. */
  startTime: number;
}

/** Observed state of one guest, written by its host's controller at `keys.guestStatus(name)`. */
export interface GuestStatus {
  status: GuestStatusName;
  /** `generation` of the spec this status answers. */
  observedGeneration: number;
  observedRestartRequest: number;
  process?: ProcessIdentity;
  startedAt?: string;
  /** Why the guest is in Error, or why the last action failed. */
  error?: string;
  /** The typed code of `error`, so that a waiter (on any member) fails with it, not with Internal. */
  errorCode?: ErrorCode;
  /** Spec generation whose convergence failed (with `error`): the world was left as it was. */
  failedGeneration?: number;
  /** Config as last applied to the guest (live keys apply at once, others at the next start). */
  appliedConfig: Record<string, string>;
  /** Changed keys that take effect only after a restart. */
  pendingRestart: string[];
  /** Incremented each time a restart policy restarted the guest. */
  restartCount: number;
  lastExitAt?: string;
  /** True while the on-disk guest (root file system, bundle) exists. */
  provisioned: boolean;
}

/** Resource usage of a guest, read from its cgroups (or its engine) at `sampledAt`. */
export interface GuestUsage {
  memoryBytes: number;
  memoryLimitBytes?: number;
  cpuSeconds: number;
  processes: number;
  /**
   * When these figures were read (ISO 8601), set by the guest service: now for a guest's info, up
   * to a sampler interval ago in the guests list (decision 0099). A driver leaves it out.
   */
  sampledAt?: string;
}

/** A guest as the API shows it: spec and status together. */
export interface Guest {
  name: string;
  project: string;
  model: Model;
  status: GuestStatusName;
  image: string;
  imageAlias: string;
  config: Record<string, string>;
  /** The member that owns the guest; `location` says the same under Incus's name. */
  host: string;
  location?: string;
  /** Why it was placed there (a cluster's scheduler, decision 0033). */
  placement?: string;
  createdAt: string;
  error?: string;
  devices?: Record<string, NicDevice>;
  /** Attached custom volumes by device name. */
  disks?: Record<string, DiskDevice>;
  state: {
    pid: number | null;
    startedAt: string | null;
    uptimeSeconds: number | null;
    usage: GuestUsage | null;
    restartCount: number;
    /** IPv4 addresses the running guest holds on its NICs, as last observed (decision 15). */
    addresses?: string[];
    /** Per-NIC state (with counters when usage was asked for). */
    nics?: Record<string, GuestNicState>;
    /** What does not work as asked, e.g. a NIC that did not come up, naming the cause; absent when nothing. */
    warnings?: string[];
  };
}

/** What an image holds: a root file system tree (every model) or a whole disk (vm only). */
export type ImageType = 'rootfs' | 'disk';

/** Metadata of a stored image: a root file system tree shared read-only by its guests. */
export interface ImageRecord {
  fingerprint: string;
  /** Absent in records made before projects: `default`, whose images every project may launch from. */
  project?: string;
  aliases: string[];
  description: string;
  os: string;
  release: string;
  architecture: string;
  source: 'builtin' | 'debootstrap' | 'import';
  /**
   * `disk`: a whole-disk image (partition table, boot loader and kernel of its own) that only
   * vm guests boot, through their firmware; absent or `rootfs`: a root file system tree.
   */
  type?: ImageType;
  sizeBytes: number;
  createdAt: string;
  /**
   * Image properties the drivers read: `init` (JSON argv of the guest's init when
   * not /sbin/init) and `stop.signal` (signal that asks init to power off).
   */
  properties: Record<string, string>;
}

export type OperationStatus = 'Pending' | 'Running' | 'Success' | 'Failure' | 'Cancelled';

/** A long-running action (Incus's operation): listed, waited on, cancelled. */
export interface Operation {
  id: string;
  project: string;
  description: string;
  status: OperationStatus;
  createdAt: string;
  updatedAt: string;
  /** 0..100 when known. */
  progress: number | null;
  progressText: string | null;
  /** Resources the operation touches, e.g. `{ guests: ['/1.0/guests/web1'] }`. */
  resources: Record<string, string[]>;
  metadata: Record<string, unknown>;
  mayCancel: boolean;
  error: string | null;
  /** The member that runs it (Incus's `location`); absent from a daemon told no name. */
  location?: string;
}

/** One entry of the event stream (`/1.0/events`). */
export interface TrivisorEvent {
  /** `audit`: one entry of the audit log (services/audit-log.ts) as it is recorded. */
  type: 'lifecycle' | 'operation' | 'logging' | 'audit';
  /** Project of what the event is about; absent: `default` (host-level events included). */
  project?: string;
  timestamp: string;
  /** e.g. `guest-started`, `guest-stopped`, `image-created`. */
  action?: string;
  source?: string;
  /** On a cluster: the member the event happened on (Incus's `location`). */
  location?: string;
  metadata: Record<string, unknown>;
}
