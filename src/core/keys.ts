/**
 * Key layout of everything Trivisor keeps in the key-value store: the one place a key
 * prefix is written down (src/store/records.ts pairs each with its record's schema).
 */
export const keys = {
  guestPrefix: '/trivisor/guests/',
  guest: (name: string): string => `/trivisor/guests/${name}`,
  guestStatusPrefix: '/trivisor/guest-status/',
  guestStatus: (name: string): string => `/trivisor/guest-status/${name}`,
  /**
   * The member that owns a guest, as a bare name: what status writes compare (a member that is
   * not the owner cannot write one) and what moves when the guest moves (decision 28).
   */
  guestLocationPrefix: '/trivisor/guest-location/',
  guestLocation: (name: string): string => `/trivisor/guest-location/${name}`,
  /** What the NIC observer saw of a running guest's NICs → GuestNetworkObservation. */
  guestNetworkPrefix: '/trivisor/guest-network/',
  guestNetwork: (name: string): string => `/trivisor/guest-network/${name}`,
  /** The last scheduled backup of a guest that failed, until one succeeds → BackupFailure (decision 0062). */
  backupFailurePrefix: '/trivisor/backup-failures/',
  backupFailure: (name: string): string => `/trivisor/backup-failures/${name}`,
  imagePrefix: '/trivisor/images/',
  image: (fingerprint: string): string => `/trivisor/images/${fingerprint}`,
  imageAliasPrefix: '/trivisor/image-aliases/',
  imageAlias: (alias: string): string => `/trivisor/image-aliases/${alias}`,
  hostPrefix: '/trivisor/hosts/',
  host: (name: string): string => `/trivisor/hosts/${name}`,
  networkPrefix: '/trivisor/networks/',
  network: (name: string): string => `/trivisor/networks/${name}`,
  networkStatusPrefix: '/trivisor/network-status/',
  networkStatus: (name: string): string => `/trivisor/network-status/${name}`,
  /** Claims of network addresses: `/trivisor/network-addresses/NET/IP` → NetworkAddressClaim. */
  /** What each member other than the network's own (its `location`) built of it: a bridge on every member. */
  networkMemberStatusPrefix: '/trivisor/network-member-status/',
  networkMemberStatuses: (network: string): string => `/trivisor/network-member-status/${network}/`,
  networkMemberStatus: (network: string, member: string): string =>
    `/trivisor/network-member-status/${network}/${member}`,
  /** VNIs taken by networks (decision 0050): `/trivisor/network-vnis/VNI` → the network's name. */
  networkVniPrefix: '/trivisor/network-vnis/',
  networkVni: (vni: string): string => `/trivisor/network-vnis/${vni}`,
  networkAddressPrefix: '/trivisor/network-addresses/',
  networkAddresses: (network: string): string => `/trivisor/network-addresses/${network}/`,
  networkAddress: (network: string, ip: string): string => `/trivisor/network-addresses/${network}/${ip}`,
  storagePoolPrefix: '/trivisor/storage-pools/',
  storagePool: (name: string): string => `/trivisor/storage-pools/${name}`,
  /** What each member made of a pool defined on every member (decision 0038): its own instance's state. */
  storagePoolMemberStatusPrefix: '/trivisor/storage-pool-member-status/',
  storagePoolMemberStatuses: (pool: string): string => `/trivisor/storage-pool-member-status/${pool}/`,
  storagePoolMemberStatus: (pool: string, member: string): string =>
    `/trivisor/storage-pool-member-status/${pool}/${member}`,
  /** Custom volumes: `/trivisor/storage-volumes/POOL/NAME` → VolumeRecord. */
  storageVolumePrefix: '/trivisor/storage-volumes/',
  storageVolumes: (pool: string): string => `/trivisor/storage-volumes/${pool}/`,
  storageVolume: (pool: string, name: string): string => `/trivisor/storage-volumes/${pool}/${name}`,
  /** Which pool a guest off the default pool lives on → GuestPoolRecord. */
  guestPoolPrefix: '/trivisor/guest-pools/',
  guestPool: (guest: string): string => `/trivisor/guest-pools/${guest}`,
  /** Snapshots: `/trivisor/snapshots/GUEST/NAME` → SnapshotRecord. */
  snapshotPrefix: '/trivisor/snapshots/',
  snapshots: (guest: string): string => `/trivisor/snapshots/${guest}/`,
  snapshot: (guest: string, snapshot: string): string => `/trivisor/snapshots/${guest}/${snapshot}`,
  /** Marks a guest being made by a copy or an import until it is complete: a crash leaves it to be deleted. */
  /**
   * A guest whose move runs (decision 0075): where to and why, on the moving daemon's lease, so
   * that one that dies half way leaves none.
   */
  guestMovePrefix: '/trivisor/guest-moves/',
  guestMove: (guest: string): string => `/trivisor/guest-moves/${guest}`,
  /**
   * A member's copy of a guest that a move undone left there, the member not answering then (its
   * daemon dead or cut off): `/trivisor/move-discards/MEMBER/GUEST` → when it was left. The member's
   * receiver discards the copy once it sees the key, then deletes it (decision 0040, amended).
   */
  moveDiscardPrefix: '/trivisor/move-discards/',
  moveDiscards: (member: string): string => `/trivisor/move-discards/${member}/`,
  moveDiscard: (member: string, guest: string): string => `/trivisor/move-discards/${member}/${guest}`,
  /** A guest an evacuation moved or stopped: where it came from, so that a restore brings it back. */
  evacuationPrefix: '/trivisor/evacuations/',
  evacuation: (guest: string): string => `/trivisor/evacuations/${guest}`,
  storagePendingPrefix: '/trivisor/storage-pending/',
  storagePending: (guest: string): string => `/trivisor/storage-pending/${guest}`,
  projectPrefix: '/trivisor/projects/',
  project: (name: string): string => `/trivisor/projects/${name}`,
  /**
   * A project's guests (decision 0087): `/trivisor/project-guests/PROJECT/GUEST` → '', written and
   * deleted in the transactions that make and remove the guest's spec.
   */
  projectGuestPrefix: '/trivisor/project-guests/',
  projectGuests: (project: string): string => `/trivisor/project-guests/${project}/`,
  projectGuest: (project: string, guest: string): string => `/trivisor/project-guests/${project}/${guest}`,
  /** Present once every guest of the store has its key above (the index's backfill ran). */
  projectGuestsIndexed: '/trivisor/project-guests-indexed',
  tokenPrefix: '/trivisor/auth/tokens/',
  token: (name: string): string => `/trivisor/auth/tokens/${name}`,
  certificatePrefix: '/trivisor/auth/certificates/',
  certificate: (fingerprint: string): string => `/trivisor/auth/certificates/${fingerprint}`,
  /**
   * Operation claims (docs/decisions/0028): `/trivisor/claims/KIND/NAME` → OperationClaim,
   * made with a create-if-absent while one member changes an object, deleted when it is done.
   */
  claimPrefix: '/trivisor/claims/',
  claim: (kind: string, name: string): string => `/trivisor/claims/${kind}/${name}`,
  /** The cluster itself (decision 0032): its CA and how its store is reached → ClusterRecord. */
  cluster: '/trivisor/cluster/config',
  /** Cluster members: `/trivisor/cluster/members/NAME` → MemberRecord. */
  memberPrefix: '/trivisor/cluster/members/',
  member: (name: string): string => `/trivisor/cluster/members/${name}`,
  /** A member's liveness, on its lease: gone once the member stops renewing → MemberHeartbeat. */
  memberHeartbeatPrefix: '/trivisor/cluster/heartbeats/',
  memberHeartbeat: (name: string): string => `/trivisor/cluster/heartbeats/${name}`,
  /** Join tokens, by the name of the member each admits → JoinTokenRecord. */
  joinTokenPrefix: '/trivisor/cluster/join-tokens/',
  joinToken: (name: string): string => `/trivisor/cluster/join-tokens/${name}`,
  /** Cluster-wide settings (`cluster.rebalance.*`, decision 0053) → a map of key to value. */
  clusterSettings: '/trivisor/cluster/settings',
  /** Each member's recent measured load of its guests (decision 0053) → MemberLoad. */
  memberLoadPrefix: '/trivisor/rebalance/load/',
  memberLoad: (name: string): string => `/trivisor/rebalance/load/${name}`,
  /** The rebalancer's election key, on the acting daemon's own lease → the member's name. */
  rebalanceLeader: '/trivisor/rebalance/leader',
  /** When the rebalancer last ran a cycle → ISO time, bare. */
  rebalanceLast: '/trivisor/rebalance/last',
  /** The bandwidth finished moves measured from a member to another (issue 14 §2) → MoveBandwidth. */
  moveBandwidthPrefix: '/trivisor/rebalance/bandwidth/',
  moveBandwidth: (from: string, to: string): string => `/trivisor/rebalance/bandwidth/${from}/${to}`,
  /** A move the rebalancer asked of a guest's owner → RebalanceRequest. */
  rebalanceRequestPrefix: '/trivisor/rebalance/requests/',
  rebalanceRequest: (guest: string): string => `/trivisor/rebalance/requests/${guest}`,
  /** A member's power as power management keeps it (decision 0055) → MemberPower. */
  memberPowerPrefix: '/trivisor/power/members/',
  memberPower: (name: string): string => `/trivisor/power/members/${name}`,
  /** The rebalancer's recent moves, explained: `/trivisor/rebalance/moves/MS-GUEST` → ClusterMove. */
  clusterMovePrefix: '/trivisor/rebalance/moves/',
  clusterMove: (id: string): string => `/trivisor/rebalance/moves/${id}`,
} as const;
