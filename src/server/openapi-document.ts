/*
 * What the route schemas cannot say for themselves in the OpenAPI document, added in one place
 * (decision 0030) rather than in each route file: an operationId and a tag on every operation,
 * the servers, the license, and fastify's wildcard route written as the path parameter it is.
 * Generators (openapi-typescript, openapi-generator) name methods after operationIds and group
 * them by tag; without them each invents names of its own.
 */

/** The part of an OpenAPI 3 operation this module reads and writes. */
interface Operation {
  operationId?: string;
  tags?: string[];
  parameters?: Array<{ in?: string; name?: string; description?: string }>;
  [key: string]: unknown;
}

/** The part of an OpenAPI 3 document this module reads and writes. */
export interface OpenApiDocument {
  info?: Record<string, unknown>;
  servers?: unknown[];
  tags?: Array<{ name: string; description: string }>;
  paths?: Record<string, Record<string, Operation> | undefined>;
  [key: string]: unknown;
}

const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options'] as const;

/**
 * Tags by the first path segment after `/1.0` (`''` is `/1.0` itself). A route under a new
 * first segment gets no tag until it is named here, and write-openapi.test.ts then fails.
 */
export const TAGS: Record<string, { tag: string; description: string }> = {
  '': { tag: 'server', description: 'The server and its host, the event stream, WebSocket tickets' },
  events: { tag: 'server', description: '' },
  'websocket-tickets': { tag: 'server', description: '' },
  guests: {
    tag: 'guests',
    description: 'Guests of every model: lifecycle, configuration, exec, console, files, snapshots, backups',
  },
  images: { tag: 'images', description: 'Images: root file system trees and whole disks, shared read-only' },
  'storage-pools': {
    tag: 'storage',
    description: 'Storage pools and their custom volumes; backups and recovery',
  },
  backups: { tag: 'storage', description: '' },
  admin: { tag: 'storage', description: '' },
  operations: { tag: 'operations', description: 'Long-running actions: list, wait for, cancel' },
  networks: {
    tag: 'networks',
    description: 'Networks: bridges with DHCP, DNS, NAT, forwards and ACLs; attaching guests',
  },
  auth: { tag: 'auth', description: 'Tokens, trusted certificates, browser sessions and login links' },
  audit: { tag: 'auth', description: '' },
  projects: { tag: 'projects', description: 'Projects: namespaces with quotas' },
  metrics: { tag: 'metrics', description: 'Prometheus metrics and the metric history' },
  cluster: { tag: 'cluster', description: 'Cluster members' },
  plans: {
    tag: 'plans',
    description: 'The consolidation planner: hosts needed for an inventory, and where each workload goes',
  },
};

/**
 * operationIds that the derivation below would get wrong or make ugly, by `METHOD PATH` (the
 * path as the document has it). Anything not here is derived from the method and the path.
 */
export const OPERATION_IDS: Record<string, string> = {
  'GET /1.0': 'getServer',
  'GET /1.0/metrics': 'getMetrics',
  'GET /1.0/metrics/history': 'getHostMetricHistory',
  'GET /1.0/guests/{name}/metrics': 'getGuestMetricHistory',
  'POST /1.0/guests/{name}': 'moveGuest',
  'POST /1.0/cluster/members/{name}/state': 'changeMemberState',
  'POST /1.0/cluster/guest-moves/{name}': 'receiveGuestMove',
  'DELETE /1.0/cluster/guest-moves/{name}': 'discardGuestMove',
  'POST /1.0/cluster/live-moves/{name}': 'prepareLiveMove',
  'POST /1.0/cluster/live-moves/{name}/finish': 'finishLiveMove',
  'GET /1.0/cluster/config': 'getClusterConfig',
  'PATCH /1.0/cluster/config': 'updateClusterConfig',
  'GET /1.0/cluster/moves': 'listClusterMoves',
  'POST /1.0/cluster/rebalance': 'rebalanceCluster',
  'PUT /1.0/guests/{name}/state': 'changeGuestState',
  'POST /1.0/guests/{name}/exec': 'execInGuest',
  'GET /1.0/guests/{name}/console': 'getGuestConsoleLog',
  'POST /1.0/guests/{name}/console': 'attachGuestConsole',
  'GET /1.0/guests/{name}/console/screenshot': 'getGuestScreenshot',
  'POST /1.0/guests/{name}/console/keys': 'sendGuestKeys',
  'GET /1.0/guests/{name}/files': 'pullGuestFile',
  'POST /1.0/guests/{name}/files': 'pushGuestFile',
  'POST /1.0/guests/{name}/backups': 'exportGuest',
  'GET /1.0/guests/{name}/backups/{backup}/export': 'downloadGuestBackup',
  'POST /1.0/backups': 'importGuest',
  'POST /1.0/backups/import': 'importGuestFromBackupDirectory',
  'GET /1.0/backups': 'listBackupDirectory',
  'GET /1.0/backups/{guest}/{archive}': 'getBackupDirectoryArchive',
  'POST /1.0/admin/recover': 'recoverGuests',
  'POST /1.0/admin/recover/backups': 'recoverGuestsFromBackups',
  'DELETE /1.0/operations/{id}': 'cancelOperation',
  'GET /1.0/operations/{id}/wait': 'waitForOperation',
  'POST /1.0/networks/{name}/attach': 'attachNetwork',
  'POST /1.0/networks/{name}/detach': 'detachNetwork',
  'GET /1.0/storage-pools/{pool}/volumes': 'listStoragePoolVolumes',
  'GET /1.0/storage-pools/{pool}/volumes/custom': 'listCustomVolumes',
  'POST /1.0/storage-pools/{pool}/volumes/custom': 'createCustomVolume',
  'GET /1.0/storage-pools/{pool}/volumes/custom/{volume}': 'getCustomVolume',
  'PATCH /1.0/storage-pools/{pool}/volumes/custom/{volume}': 'updateCustomVolume',
  'DELETE /1.0/storage-pools/{pool}/volumes/custom/{volume}': 'deleteCustomVolume',
  'POST /1.0/storage-pools/{pool}/volumes/custom/{volume}/attach': 'attachCustomVolume',
  'POST /1.0/storage-pools/{pool}/volumes/custom/{volume}/detach': 'detachCustomVolume',
  'GET /1.0/audit': 'getAuditLog',
  'POST /1.0/auth/session': 'createSession',
  'GET /1.0/auth/session': 'getSession',
  'DELETE /1.0/auth/session': 'deleteSession',
  'POST /1.0/auth/web-links': 'createWebLink',
  'POST /1.0/websocket-tickets': 'createWebSocketTicket',
  'POST /1.0/plans/consolidate': 'planConsolidation',
  'POST /1.0/plans/advise': 'adviseWorkloads',
};

/** The API's two listeners (docs/api.md): the root-only unix socket and HTTPS. */
export const SERVERS = [
  {
    url: 'http://trivisor',
    description:
      'The unix socket $TRIVISOR_DIR/trivisor.sock (default /var/lib/trivisor/trivisor.sock), root only, no token: send the requests over it (curl --unix-socket); the host name is not looked at',
  },
  {
    url: 'https://{host}:{port}',
    description: 'The HTTPS listener (trivisor daemon --listen): a token or a trusted client certificate',
    variables: {
      host: { default: '127.0.0.1', description: 'Where the daemon listens' },
      port: { default: '8443', description: 'Its port' },
    },
  },
];

const isParam = (segment: string) => /^\{.+\}$/.test(segment);
const words = (segment: string) => segment.split(/[-_]/).filter((w) => w !== '');
const pascal = (w: string) => (w === '' ? '' : w[0]!.toUpperCase() + w.slice(1));
const singular = (w: string) => (w.endsWith('s') ? w.slice(0, -1) : w);

/**
 * `listGuests`, `createGuest`, `getGuest`, `updateGuest` (PATCH), `replaceGuest` (PUT),
 * `deleteGuest`, `getGuestSnapshot`…: a verb from the method and whether the path is a collection
 * (some path continues it with a parameter) or an item (it ends with a parameter), then the
 * static segments, each singular when a parameter follows it.
 */
export function deriveOperationId(method: string, path: string, collections: ReadonlySet<string>): string {
  const segments = path.split('/').filter((s) => s !== '' && s !== '1.0');
  const item = segments.length > 0 && isParam(segments.at(-1)!);
  const collection = collections.has(path);
  const verb =
    {
      get: collection ? 'list' : 'get',
      post: collection ? 'create' : 'post',
      put: item ? 'replace' : 'set',
      patch: 'update',
      delete: 'delete',
    }[method] ?? method;
  const nouns: string[] = [];
  segments.forEach((s, i) => {
    if (isParam(s)) return;
    const beforeParam = i + 1 < segments.length && isParam(segments[i + 1]!);
    const ws = words(s);
    // Singular before a parameter, and for the one item a create makes.
    const last = i === segments.length - 1;
    if (ws.length > 0 && (beforeParam || (last && verb === 'create')))
      ws[ws.length - 1] = singular(ws.at(-1)!);
    nouns.push(...ws.map(pascal));
  });
  return verb + nouns.join('');
}

/** The tag of a path, or undefined when its first segment is not in TAGS. */
export function tagOf(path: string): string | undefined {
  const segments = path.split('/').filter((s) => s !== '' && s !== '1.0');
  if (segments[0] === 'guests' && segments[2] === 'metrics') return 'metrics';
  return TAGS[segments[0] ?? '']?.tag;
}

/**
 * The document as generators want it. Changes `doc` in place and returns it: fastify's
 * `/1.0/images/*` (an alias may hold slashes) becomes `/1.0/images/{ref}`, since a path
 * parameter named `*` is not in its path; the route decodes `%2F`, so a generated client that
 * escapes the slash reaches it.
 */
export function finishOpenApi(doc: OpenApiDocument): OpenApiDocument {
  // Rebuilt rather than renamed in place, so that the paths keep their order.
  const paths: NonNullable<OpenApiDocument['paths']> = {};
  for (const [path, item] of Object.entries(doc.paths ?? {})) {
    if (!path.includes('{*}')) {
      paths[path] = item;
      continue;
    }
    for (const op of Object.values(item ?? {})) {
      for (const p of op.parameters ?? []) {
        if (p.in === 'path' && p.name === '*') {
          p.name = 'ref';
          p.description = 'Image alias (its slashes sent as they are or as %2F) or fingerprint prefix';
        }
      }
    }
    paths[path.replace('{*}', '{ref}')] = item;
  }
  doc.paths = paths;
  const collections = new Set(
    Object.keys(paths)
      .filter((p) => /\/\{[^}]+\}$/.test(p))
      .map((p) => p.replace(/\/\{[^}]+\}$/, '')),
  );
  const used = new Set<string>();
  for (const [path, item] of Object.entries(paths)) {
    for (const method of METHODS) {
      const op = item?.[method];
      if (!op) continue;
      op.operationId ??=
        OPERATION_IDS[`${method.toUpperCase()} ${path}`] ?? deriveOperationId(method, path, collections);
      const tag = tagOf(path);
      if (tag !== undefined) op.tags ??= [tag];
      for (const t of op.tags ?? []) used.add(t);
    }
  }
  const described = new Map<string, string>();
  for (const { tag, description } of Object.values(TAGS)) if (description) described.set(tag, description);
  doc.tags = [...used].sort().map((name) => ({ name, description: described.get(name) ?? name }));
  doc.servers = SERVERS;
  doc.info = {
    ...doc.info,
    license: { name: 'Apache-2.0', url: 'https://www.apache.org/licenses/LICENSE-2.0' },
  };
  return doc;
}
