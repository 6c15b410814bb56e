import { type Static, type TSchema, Type } from '@sinclair/typebox';
import { ERROR_CODES, type ErrorCode } from '../core/errors.ts';

/*
 * TypeBox schemas of everything on the wire. The server validates requests and
 * serializes responses with them, @fastify/swagger turns them into
 * docs/openapi.json, and clients take their types from `Static<...>`.
 * Request bodies reject unknown fields (additionalProperties: false) so typos
 * fail loudly instead of being ignored.
 */

const Model = Type.Union([Type.Literal('ct'), Type.Literal('pvm'), Type.Literal('vm')]);
const StringMap = Type.Record(Type.String(), Type.String());
const AnyMap = Type.Record(Type.String(), Type.Unknown());
const NullableString = Type.Union([Type.String(), Type.Null()]);
const NullableInteger = Type.Union([Type.Integer(), Type.Null()]);

export const GuestUsageSchema = Type.Object({
  memoryBytes: Type.Number(),
  memoryLimitBytes: Type.Optional(Type.Number()),
  cpuSeconds: Type.Number(),
  processes: Type.Integer(),
  sampledAt: Type.Optional(
    Type.String({
      description:
        "When these figures were read (ISO 8601). A guest's info and state read them live; the guests list (recursion=2) gives the metric sampler's last sample (taken every 10 s; one older than 30 s is not served), or a live read for a guest not sampled in its current run yet",
    }),
  ),
});

export const NicDeviceSchema = Type.Object(
  {
    type: Type.Literal('nic'),
    network: Type.String({ description: 'Managed network to plug into' }),
    hwaddr: Type.Optional(
      Type.String({ description: 'MAC address (default: stable, derived from guest and NIC)' }),
    ),
    'ipv4.address': Type.Optional(
      Type.String({ description: 'Static address (default: the next free one)' }),
    ),
    'limits.ingress': Type.Optional(Type.String({ description: 'Bandwidth to the guest, e.g. 10Mbit' })),
    'limits.egress': Type.Optional(Type.String({ description: 'Bandwidth from the guest, e.g. 10Mbit' })),
  },
  { additionalProperties: false },
);

export const DiskDeviceSchema = Type.Object(
  {
    type: Type.Literal('disk'),
    pool: Type.String({ description: 'Storage pool of the volume' }),
    source: Type.String({ description: 'Custom volume name' }),
    path: Type.Optional(Type.String({ description: 'Mount path in a ct guest (filesystem volumes)' })),
  },
  { additionalProperties: false },
);

export const GuestNicStateSchema = Type.Object({
  network: Type.String(),
  hwaddr: Type.String(),
  hostName: Type.String({ description: 'Host-side interface' }),
  addresses: Type.Array(Type.String(), {
    description: 'IPv4 addresses the running guest was last seen holding on this NIC (not its reservation)',
  }),
  addressSource: Type.Optional(
    Type.Union([Type.Literal('guest'), Type.Literal('lease')], {
      description: 'lease: the guest could not be asked, and addresses are its unexpired DHCP lease',
    }),
  ),
  warning: Type.Optional(
    Type.String({ description: 'Why the NIC does not work in the guest, naming the cause' }),
  ),
  counters: Type.Union([
    Type.Object({
      rxBytes: Type.Number(),
      txBytes: Type.Number(),
      rxPackets: Type.Number(),
      txPackets: Type.Number(),
    }),
    Type.Null(),
  ]),
});

const NetworkStateFields = {
  addresses: Type.Optional(
    Type.Array(Type.String(), {
      description:
        'IPv4 addresses the running guest holds on its NICs, as last observed (refreshed every few seconds)',
    }),
  ),
  nics: Type.Optional(Type.Record(Type.String(), GuestNicStateSchema)),
  warnings: Type.Optional(
    Type.Array(Type.String(), {
      description: 'What does not work as asked (e.g. a NIC that did not come up), naming the cause',
    }),
  ),
};

export const NetworkForwardSchema = Type.Object({
  listenAddress: Type.String(),
  listenPort: Type.Integer(),
  protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp')]),
  targetAddress: Type.String(),
  targetPort: Type.Integer(),
  targetGuest: Type.Optional(Type.String()),
});

export const AddForwardBodySchema = Type.Object(
  {
    listenAddress: Type.String({ description: 'Host IPv4 address to listen on' }),
    listenPort: Type.Integer({ minimum: 1, maximum: 65535 }),
    protocol: Type.Optional(Type.Union([Type.Literal('tcp'), Type.Literal('udp')], { default: 'tcp' })),
    target: Type.String({ description: 'Guest name (its NIC on this network) or an address of the network' }),
    targetPort: Type.Integer({ minimum: 1, maximum: 65535 }),
  },
  { additionalProperties: false },
);

export const NetworkAclRuleSchema = Type.Object(
  {
    direction: Type.Union([Type.Literal('ingress'), Type.Literal('egress')], {
      description: 'ingress: to a guest; egress: from a guest',
    }),
    action: Type.Union([Type.Literal('allow'), Type.Literal('drop')]),
    source: Type.Optional(Type.String({ description: 'Address or CIDR' })),
    destination: Type.Optional(Type.String({ description: 'Address or CIDR' })),
    protocol: Type.Optional(Type.Union([Type.Literal('tcp'), Type.Literal('udp'), Type.Literal('icmp')])),
    destinationPort: Type.Optional(Type.Integer()),
  },
  { additionalProperties: false },
);

export const NetworkSchema = Type.Object({
  name: Type.String(),
  project: Type.String(),
  description: Type.String(),
  type: Type.Literal('bridge'),
  managed: Type.Boolean(),
  config: StringMap,
  status: Type.Union([Type.Literal('Created'), Type.Literal('Pending'), Type.Literal('Error')]),
  error: Type.Optional(Type.String()),
  usedBy: Type.Array(Type.String()),
  createdAt: Type.String(),
  forwards: Type.Optional(Type.Array(NetworkForwardSchema)),
  acls: Type.Optional(Type.Array(NetworkAclRuleSchema)),
  members: Type.Optional(
    Type.Array(
      Type.Object({
        name: Type.String(),
        status: Type.Union([Type.Literal('Created'), Type.Literal('Pending'), Type.Literal('Error')]),
        error: Type.Optional(Type.String()),
        tunnelEndpoint: Type.Optional(
          Type.String({ description: "The member's end of the network's VXLAN (its cluster address)" }),
        ),
      }),
      {
        description:
          "On a cluster: the network's bridge on each member, its own member (location) first; absent on a single host",
      },
    ),
  ),
  tunnel: Type.Optional(
    Type.Object(
      {
        type: Type.Literal('vxlan'),
        id: Type.Integer({ description: 'The VNI, the same on every member' }),
        port: Type.Integer({ description: 'UDP port of the VXLAN' }),
        mtu: Type.Integer({ description: 'The MTU guests on the network are given' }),
      },
      {
        description:
          "On a cluster: the VXLAN joining the members' bridges (read-only); each member's end is in members",
      },
    ),
  ),
});

export const GuestStateSchema = Type.Object({
  ...NetworkStateFields,
  pid: NullableInteger,
  startedAt: NullableString,
  uptimeSeconds: Type.Union([Type.Number(), Type.Null()]),
  usage: Type.Union([GuestUsageSchema, Type.Null()]),
  restartCount: Type.Integer(),
});

export const GuestSchema = Type.Object({
  name: Type.String(),
  project: Type.String(),
  model: Model,
  status: Type.Union([
    Type.Literal('Running'),
    Type.Literal('Stopped'),
    Type.Literal('Frozen'),
    Type.Literal('Error'),
  ]),
  image: Type.String(),
  imageAlias: Type.String(),
  config: StringMap,
  host: Type.String(),
  location: Type.Optional(
    Type.String({ description: "The member that owns the guest (Incus's name; the same as host)" }),
  ),
  placement: Type.Optional(Type.String({ description: 'Why the scheduler placed it on that member' })),
  createdAt: Type.String(),
  error: Type.Optional(Type.String()),
  devices: Type.Optional(Type.Record(Type.String(), NicDeviceSchema)),
  disks: Type.Optional(
    Type.Record(Type.String(), DiskDeviceSchema, { description: 'Attached custom volumes' }),
  ),
  state: GuestStateSchema,
});

/** `GET /1.0/guests/{name}/state`: the status plus the live state. */
export const GuestStateResponseSchema = Type.Object({
  ...NetworkStateFields,
  status: GuestSchema.properties.status,
  error: Type.Optional(Type.String()),
  pid: NullableInteger,
  startedAt: NullableString,
  uptimeSeconds: Type.Union([Type.Number(), Type.Null()]),
  usage: Type.Union([GuestUsageSchema, Type.Null()]),
  restartCount: Type.Integer(),
});

export const ImageSchema = Type.Object({
  fingerprint: Type.String(),
  project: Type.String(),
  aliases: Type.Array(Type.String()),
  description: Type.String(),
  os: Type.String(),
  release: Type.String(),
  architecture: Type.String(),
  source: Type.Union([Type.Literal('builtin'), Type.Literal('debootstrap'), Type.Literal('import')]),
  type: Type.Optional(
    Type.Union([Type.Literal('rootfs'), Type.Literal('disk')], {
      description: 'disk: a whole-disk image that only vm guests boot; rootfs (or absent): a tree',
    }),
  ),
  sizeBytes: Type.Number(),
  createdAt: Type.String(),
  properties: StringMap,
});

export const OperationSchema = Type.Object({
  id: Type.String(),
  project: Type.String(),
  description: Type.String(),
  status: Type.Union([
    Type.Literal('Pending'),
    Type.Literal('Running'),
    Type.Literal('Success'),
    Type.Literal('Failure'),
    Type.Literal('Cancelled'),
  ]),
  createdAt: Type.String(),
  updatedAt: Type.String(),
  progress: Type.Union([Type.Number(), Type.Null()]),
  progressText: NullableString,
  resources: Type.Record(Type.String(), Type.Array(Type.String())),
  metadata: AnyMap,
  mayCancel: Type.Boolean(),
  error: NullableString,
  location: Type.Optional(Type.String({ description: 'The member that runs it' })),
});

export const EventSchema = Type.Object({
  type: Type.Union([
    Type.Literal('lifecycle'),
    Type.Literal('operation'),
    Type.Literal('logging'),
    Type.Literal('audit'),
  ]),
  project: Type.Optional(Type.String()),
  timestamp: Type.String(),
  action: Type.Optional(Type.String()),
  source: Type.Optional(Type.String()),
  location: Type.Optional(Type.String({ description: 'On a cluster: the member the event happened on' })),
  metadata: AnyMap,
});

export const HostInfoSchema = Type.Object({
  api_version: Type.String(),
  auth: Type.Union([Type.Literal('trusted'), Type.Literal('untrusted')]),
  auth_methods: Type.Array(Type.String()),
  /** Who the server takes the caller for (trusted callers only): token or certificate name, `root` on the socket. */
  auth_user_name: Type.Optional(Type.String()),
  auth_user_method: Type.Optional(Type.String()),
  /** The caller's role and the projects it holds in (`*`: all of them and the host). */
  auth_role: Type.Optional(Type.String()),
  auth_projects: Type.Optional(Type.Array(Type.String())),
  environment: Type.Optional(
    Type.Object({
      name: Type.String(),
      version: Type.String(),
      stateDir: Type.String(),
      kernel: Type.String(),
      cpus: Type.Integer(),
      memoryBytes: Type.Number(),
      sysctls: Type.Optional(
        Type.Array(
          Type.Object({
            key: Type.String(),
            before: Type.Union([Type.Number(), Type.Null()]),
            value: Type.Union([Type.Number(), Type.Null()]),
            atLeast: Type.Number(),
            changed: Type.Boolean(),
            reason: Type.String(),
            error: Type.Optional(Type.String()),
          }),
          {
            description:
              'Kernel settings the daemon raises at start for dense hosts (decisions 0057-0059): what it found, what it set, why',
          },
        ),
      ),
      drivers: Type.Array(
        Type.Object({
          model: Model,
          supported: Type.Boolean(),
          version: Type.String(),
          warnings: Type.Array(Type.String()),
          details: Type.Record(Type.String(), Type.String()),
        }),
      ),
      store: Type.String(),
      ksm: Type.Optional(
        Type.Object(
          {
            available: Type.Boolean(),
            run: Type.Integer({ description: '0 stopped, 1 merging, 2 stopped and unmerged' }),
            enabledByTrivisor: Type.Boolean({
              description: 'The daemon started it for its vm guests and puts it back once none runs',
            }),
            pagesToScan: Type.Integer(),
            sleepMillisecs: Type.Integer(),
            pagesShared: Type.Integer(),
            pagesSharing: Type.Integer(),
            savedBytes: Type.Number({ description: 'What merging saves: pages_sharing pages of 4 KiB' }),
          },
          { description: 'Kernel Samepage Merging (decision 0060)' },
        ),
      ),
    }),
  ),
});

export const ProjectUsageSchema = Type.Object({
  guests: Type.Integer(),
  memoryBytes: Type.Number({ description: "Sum of the guests' limits.memory" }),
  cpus: Type.Number({ description: "Sum of the guests' limits.cpu" }),
  diskBytes: Type.Number({ description: "Sum of the guests' limits.disk and the custom volumes' sizes" }),
  networks: Type.Integer(),
});

export const ProjectSchema = Type.Object({
  name: Type.String(),
  description: Type.String(),
  config: StringMap,
  createdAt: Type.String(),
  usage: ProjectUsageSchema,
  usedBy: Type.Array(Type.String(), {
    description: 'URLs of the guests, networks, volumes and images it holds',
  }),
});

// ---- requests ----

export const CreateProjectBodySchema = Type.Object(
  {
    name: Type.String({ description: 'DNS label' }),
    description: Type.Optional(Type.String()),
    config: Type.Optional(
      Type.Record(Type.String(), Type.String(), {
        description: 'limits.guests, limits.memory, limits.cpu, limits.disk, limits.networks, user.*',
      }),
    ),
  },
  { additionalProperties: false },
);

export const PatchProjectBodySchema = Type.Object(
  {
    description: Type.Optional(Type.String()),
    config: Type.Optional(
      Type.Record(Type.String(), Type.Unsafe<string | null>({ type: ['string', 'null'] }), {
        description: 'Keys to set; a null value unsets the key',
      }),
    ),
    unset: Type.Optional(Type.Array(Type.String(), { description: 'Keys to unset' })),
  },
  { additionalProperties: false },
);

export const CreateGuestBodySchema = Type.Object(
  {
    name: Type.String({ description: 'DNS label' }),
    image: Type.Optional(Type.String({ description: 'Image alias or fingerprint (prefix)' })),
    source: Type.Optional(
      Type.Union([
        Type.Object(
          {
            type: Type.Literal('image'),
            alias: Type.Optional(Type.String()),
            fingerprint: Type.Optional(Type.String()),
          },
          { additionalProperties: false, description: "Incus's form of `image`" },
        ),
        Type.Object(
          {
            type: Type.Literal('copy'),
            source: Type.String({ description: 'Guest to copy, or GUEST/SNAPSHOT' }),
          },
          { additionalProperties: false, description: 'A copy of another guest (Incus: source type copy)' },
        ),
        Type.Object(
          { type: Type.Literal('none') },
          {
            additionalProperties: false,
            description:
              'No image: a vm guest with a blank disk of limits.disk, to install from an ISO (Incus: source type none)',
          },
        ),
      ]),
    ),
    model: Type.Optional(Model),
    config: Type.Optional(StringMap),
    start: Type.Optional(Type.Boolean()),
    devices: Type.Optional(
      Type.Record(Type.String(), NicDeviceSchema, { description: 'NICs by name (eth0…)' }),
    ),
    storage: Type.Optional(Type.String({ description: 'Storage pool of the guest (default: default)' })),
  },
  { additionalProperties: false },
);

export const CreateNetworkBodySchema = Type.Object(
  {
    name: Type.String({ description: 'DNS label of at most 15 characters (it names the bridge)' }),
    description: Type.Optional(Type.String()),
    config: Type.Optional(
      Type.Record(Type.String(), Type.String(), {
        description: 'ipv4.address (required, gateway CIDR), ipv4.nat, dns.domain, security.isolated',
      }),
    ),
  },
  { additionalProperties: false },
);

/** `type: ['string','null']` rather than anyOf, so Ajv's type coercion keeps null as null. */
const StringOrNull = Type.Unsafe<string | null>({ type: ['string', 'null'] });

export const PatchGuestBodySchema = Type.Object(
  {
    config: Type.Optional(
      Type.Record(Type.String(), StringOrNull, { description: 'Keys to set; a null value unsets the key' }),
    ),
    unset: Type.Optional(Type.Array(Type.String(), { description: 'Keys to unset' })),
  },
  { additionalProperties: false },
);

export const StateChangeBodySchema = Type.Object(
  {
    action: Type.Union([
      Type.Literal('start'),
      Type.Literal('stop'),
      Type.Literal('restart'),
      Type.Literal('freeze'),
      Type.Literal('unfreeze'),
    ]),
    timeout: Type.Optional(
      Type.Integer({ minimum: -1, description: 'Seconds (stop/restart); -1 waits forever' }),
    ),
    force: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);

export const ExecBodySchema = Type.Object(
  {
    command: Type.Array(Type.String(), { minItems: 1 }),
    environment: Type.Optional(StringMap),
    cwd: Type.Optional(Type.String()),
    interactive: Type.Optional(Type.Boolean()),
    width: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })),
    height: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })),
    user: Type.Optional(Type.Integer({ minimum: 0 })),
    group: Type.Optional(Type.Integer({ minimum: 0 })),
    'wait-for-websocket': Type.Optional(Type.Boolean()),
    'record-output': Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);

export const ConsoleBodySchema = Type.Object(
  {
    type: Type.Optional(
      Type.Union([Type.Literal('console'), Type.Literal('vga')], {
        description:
          "Incus's console type: console (the serial console, default) or vga (a vm guest's screen: RFB, as a VNC viewer or noVNC speaks it)",
      }),
    ),
  },
  { additionalProperties: false },
);

export const ConsoleKeysBodySchema = Type.Object(
  {
    keys: Type.Optional(
      Type.Array(Type.String({ maxLength: 64 }), {
        maxItems: 64,
        description:
          'Key combinations pressed in order: ctrl-alt-del, or QEMU qcodes joined by - (ctrl-alt-f2)',
      }),
    ),
    text: Type.Optional(
      Type.String({ maxLength: 4096, description: 'Typed key by key after the combinations (US layout)' }),
    ),
  },
  { additionalProperties: false },
);

export const BuildImageBodySchema = Type.Object(
  {
    source: Type.String({ description: 'e.g. debian/bookworm' }),
    alias: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);

// ---- parameters ----

export const NameParamsSchema = Type.Object({ name: Type.String() });
export const IdParamsSchema = Type.Object({ id: Type.String() });
export const RecursionQuerySchema = Type.Object({
  recursion: Type.Optional(Type.Integer({ minimum: 0, maximum: 2, default: 0 })),
});

// ---- envelopes ----

/** `{ type: 'sync', status: 'Success', status_code: 200, metadata }`. */
export function SyncEnvelope<T extends TSchema>(metadata: T) {
  return Type.Object({
    type: Type.Literal('sync'),
    status: Type.String(),
    status_code: Type.Integer(),
    metadata,
  });
}

export const AsyncEnvelopeSchema = Type.Object({
  type: Type.Literal('async'),
  status: Type.String(),
  status_code: Type.Integer(),
  operation: Type.String({ description: '/1.0/operations/<id>' }),
  metadata: OperationSchema,
});

export const ErrorEnvelopeSchema = Type.Object({
  type: Type.Literal('error'),
  error: Type.String(),
  error_code: Type.Integer({ description: 'The HTTP status again, as in Incus' }),
  code: Type.Unsafe<ErrorCode>({
    type: 'string',
    enum: [...ERROR_CODES],
    description: 'The typed error code (docs/api.md, Errors): NotFound, Conflict, FailedPrecondition…',
  }),
});

export type CreateGuestBody = Static<typeof CreateGuestBodySchema>;
export type CreateProjectBody = Static<typeof CreateProjectBodySchema>;
export type PatchProjectBody = Static<typeof PatchProjectBodySchema>;
export type PatchGuestBody = Static<typeof PatchGuestBodySchema>;
export type CreateNetworkBody = Static<typeof CreateNetworkBodySchema>;
export type AddForwardBody = Static<typeof AddForwardBodySchema>;
export type NetworkAclRuleBody = Static<typeof NetworkAclRuleSchema>;
export type StateChangeBody = Static<typeof StateChangeBodySchema>;
export type ExecBody = Static<typeof ExecBodySchema>;
export type ConsoleBody = Static<typeof ConsoleBodySchema>;
export type ConsoleKeysBody = Static<typeof ConsoleKeysBodySchema>;
export type BuildImageBody = Static<typeof BuildImageBodySchema>;
export type HostInfo = Static<typeof HostInfoSchema>;
export type GuestStateResponse = Static<typeof GuestStateResponseSchema>;
