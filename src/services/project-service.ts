import { setTimeout as sleep } from 'node:timers/promises';
import { alreadyExists, conflict, failedPrecondition, notFound, unavailable } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import {
  addUsage,
  assertLimitsCover,
  assertProjectName,
  DEFAULT_PROJECT,
  guestUsage,
  limitsOf,
  NO_USAGE,
  type Project,
  type ProjectSpec,
  type ProjectUsage,
  projectOfRecord,
  validateProjectConfig,
} from '../core/projects.ts';
import {
  type Compare,
  type KeyValue,
  type KvStore,
  readTogether,
  type TxnOp,
  type TxnResponse,
} from '../store/kv.ts';
import {
  type GuestReadPath,
  guestCountReads,
  guestReadPath,
  guestsRead,
  pathFor,
  projectGuestReads,
  projectGuestSpecs,
  readProjectGuestSpecs,
  SPECS_PER_READ,
} from '../store/project-guests.ts';
import { records } from '../store/records.ts';

/** Body of `POST /1.0/projects`. */
export interface CreateProjectRequest {
  name: string;
  description?: string;
  config?: Record<string, string>;
}

/** Projects (`trivisor project`), as in Incus's /1.0/projects. */
export interface ProjectService {
  /** Every project with its usage and objects, from one read of the store. */
  list(): Promise<Project[]>;
  /** The projects' names only (`GET /1.0/projects` without recursion): the project records alone. */
  names(): Promise<string[]>;
  /** NotFound for a project that does not exist. */
  get(name: string): Promise<Project>;
  create(request: CreateProjectRequest): Promise<Project>;
  /** Sets and unsets config keys (and the description); a limit below what the project uses is refused. */
  update(
    name: string,
    change: { set?: Record<string, string>; unset?: string[]; description?: string },
  ): Promise<Project>;
  /** Refused for `default` and for a project that still holds anything. */
  delete(name: string): Promise<void>;
  /** NotFound unless the project exists (what every scoped request checks first). */
  assertExists(name: string): Promise<void>;
}

/** A project as a guarded write read it: its record, its usage, and what makes the write conditional on both. */
export interface GuardedProject {
  spec: ProjectSpec;
  /**
   * What the project's objects add up to. From `readGuard`: only what the project's limits count
   * (a usage no limit counts is 0), which is all a quota check looks at.
   */
  usage: ProjectUsage;
  /** Objects of the project, for messages and for delete (none from `readGuard`). */
  objects: string[];
  /** The project's record is still the one read (and exists, unless it is an unrecorded `default`). */
  compare: Compare[];
  /** Rewrites the record: every other guarded write that read it now fails its compare and reads again. */
  success: TxnOp[];
}

/** An unrecorded `default`: a store from before projects, or one where default was never edited. */
const defaultSpec = (): ProjectSpec => ({
  name: DEFAULT_PROJECT,
  description: 'Default project',
  config: {},
  createdAt: new Date(0).toISOString(),
});

/** How often a guarded write reads again after another write in the same project won the race. */
const MAX_ATTEMPTS = 200;

/** The kinds of records a project's usage is summed from. */
type Counted = 'guests' | 'networks' | 'volumes' | 'images';
const ALL_COUNTED: readonly Counted[] = ['guests', 'networks', 'volumes', 'images'];
const KIND_OF = {
  guests: records.guest,
  networks: records.network,
  volumes: records.volume,
  images: records.image,
} as const;

/** The kinds a project's limits sum (decision 0084): none for a project without limits. */
function countedBy(config: Record<string, string>): Counted[] {
  const limits = limitsOf(config);
  const out: Counted[] = [];
  if (
    limits['limits.guests'] !== undefined ||
    limits['limits.memory'] !== undefined ||
    limits['limits.cpu'] !== undefined ||
    limits['limits.disk'] !== undefined
  ) {
    out.push('guests');
  }
  if (limits['limits.networks'] !== undefined) out.push('networks');
  if (limits['limits.disk'] !== undefined) out.push('volumes');
  return out;
}

/**
 * Reads a project, what it uses and holds, and the compare/put pair that makes a
 * transaction conditional on nothing having been written in the project since
 * (each create, copy, import and resize in a project rewrites its record in its
 * own transaction). Quotas are checked against this usage and the write lands
 * only if the record is unchanged, so two racing creates cannot both pass a
 * quota of one more: the second reads again and sees the first. It reads every
 * guest, network, volume and image record of the host: for `project show` and
 * delete; a quota check reads with `readGuard`.
 */
export async function readProject(store: KvStore, name: string): Promise<GuardedProject> {
  assertProjectName(name);
  return readCounting(store, name, ALL_COUNTED);
}

/**
 * What this process learnt of each project's reads, per store: hints only, each checked by the
 * read it shapes, so a stale one costs a request more, never another answer (decision 0087,
 * amended). `guarded`: the kinds the project's limits counted at its last guard (a guard with
 * limits then skips reading the record alone first); `path`: the cheaper path for its guests as
 * that read's own counts found it (the read then needs no counts of its own first).
 */
const hints = new WeakMap<object, Map<string, { guarded?: readonly Counted[]; path?: GuestReadPath }>>();

function hintsOf(store: KvStore, name: string) {
  let byName = hints.get(store);
  if (!byName) {
    byName = new Map();
    hints.set(store, byName);
  }
  let mine = byName.get(name);
  if (!mine) {
    mine = {};
    byName.set(name, mine);
  }
  return mine;
}

/**
 * What a quota check needs of a project (decision 0084), as `readProject` reads it but
 * proportional to the project's limits: with none, the project's record alone (one key,
 * whatever the number of guests); with limits, the record and the kinds of records those
 * limits sum, read at one revision. The compare is on the record read with the usage, so
 * a limit set after the first read makes the guarded write fail and read again.
 */
export async function readGuard(store: KvStore, name: string): Promise<GuardedProject> {
  assertProjectName(name);
  // A project that had limits at its last guard is read with what they counted straight away, in
  // one request (a limit removed since costs that read once; one added is read by readCounting).
  const known = hints.get(store)?.get(name)?.guarded;
  if (known && known.length > 0) return readCounting(store, name, known, { guard: true });
  const projectKv = await store.get(records.project.key(name));
  const spec = specOf(name, projectKv);
  const counted = countedBy(spec.config);
  if (counted.length === 0) return guarded(name, spec, projectKv?.modRevision ?? 0, NO_USAGE, []);
  return readCounting(store, name, counted, { guard: true });
}

async function readCounting(
  store: KvStore,
  name: string,
  first: readonly Counted[],
  options: { guard?: boolean } = {},
): Promise<GuardedProject> {
  let counting = first;
  let path = hints.get(store)?.get(name)?.path;
  for (;;) {
    // One read at one revision (on etcd one request, where five side by side cost more on a busy
    // member); a record that does not decode is left out, as a list leaves it out.
    // A project's guests are read through its index (decision 0087): the index's mark and the
    // project's keys here, their specs by key after (or every guest, on a store not indexed yet).
    // Read after the record, they are still what the compare guards: a guest made in the project
    // since rewrote the record.
    // A project with most of the store's guests reads every spec in this one read instead (two
    // counts choose: pathFor), where the index would cost two records a guest. The counts ride in
    // this read; the path they check is the one they chose last time (the first read of a project
    // in this process counts first, on its own: guestReadPath).
    const listed: Counted[] = counting.filter((kind) => kind !== 'guests');
    const withGuests = counting.includes('guests');
    if (withGuests && path === undefined) path = await guestReadPath(store, name);
    const read = await readTogether(store, [
      { key: records.project.key(name) },
      ...listed.map((kind) => ({ key: KIND_OF[kind].prefix, prefix: true })),
      ...(withGuests ? [...guestCountReads(name), ...projectGuestReads(name, path)] : []),
    ]);
    const projectKv = read.kvs[0]?.[0];
    const spec = specOf(name, projectKv);
    const limited = countedBy(spec.config);
    if (options.guard) hintsOf(store, name).guarded = limited;
    // A limit set between a guard's first read and this one may count a kind not read: read it too.
    const missing = limited.filter((k) => !counting.includes(k));
    if (missing.length > 0) {
      counting = [...counting, ...missing];
      continue;
    }
    const kvsOf = (kind: Counted) => read.kvs[listed.indexOf(kind) + 1] ?? [];
    let guests: KeyValue[] = [];
    if (withGuests) {
      const at = listed.length + 1;
      const mine = read.counts[at] ?? 0;
      const cheaper = pathFor(mine, read.counts[at + 1] ?? 0);
      hintsOf(store, name).path = cheaper;
      const found = guestsRead(read.kvs.slice(at + 2), path);
      // The index path read more than one request of specs would take: one range read instead.
      if (cheaper === 'all' && path === 'index' && found.indexed && mine > SPECS_PER_READ) {
        path = cheaper;
        continue;
      }
      guests = await projectGuestSpecs(store, name, found);
    }
    const held = holdings({
      guests,
      networks: kvsOf('networks'),
      volumes: kvsOf('volumes'),
      images: kvsOf('images'),
    }).get(name) ?? { usage: NO_USAGE, objects: [] };
    // A guard's objects would be a part of them only: it has none.
    const complete = ALL_COUNTED.every((k) => counting.includes(k));
    return guarded(name, spec, projectKv?.modRevision ?? 0, held.usage, complete ? held.objects : []);
  }
}

/** What each project's objects add up to, and the objects, from records of every project. */
function holdings(
  read: Record<Counted, KeyValue[]>,
): Map<string, { usage: ProjectUsage; objects: string[] }> {
  const out = new Map<string, { usage: ProjectUsage; objects: string[] }>();
  const add = (project: string, usage: ProjectUsage | undefined, object: string) => {
    let p = out.get(project);
    if (!p) {
      p = { usage: NO_USAGE, objects: [] };
      out.set(project, p);
    }
    if (usage) p.usage = addUsage(p.usage, usage);
    p.objects.push(object);
  };
  for (const guest of decoded(records.guest, read.guests)) {
    add(projectOfRecord(guest), guestUsage(guest.config), `/1.0/guests/${guest.name}`);
  }
  for (const network of decoded(records.network, read.networks)) {
    add(projectOfRecord(network), { ...NO_USAGE, networks: 1 }, `/1.0/networks/${network.name}`);
  }
  for (const volume of decoded(records.volume, read.volumes)) {
    add(
      projectOfRecord(volume),
      { ...NO_USAGE, diskBytes: volume.sizeBytes },
      `/1.0/storage-pools/${volume.pool}/volumes/custom/${volume.name}`,
    );
  }
  for (const image of decoded(records.image, read.images)) {
    add(projectOfRecord(image), undefined, `/1.0/images/${image.fingerprint}`);
  }
  return out;
}

function specOf(name: string, projectKv: KeyValue | undefined): ProjectSpec {
  if (!projectKv && name !== DEFAULT_PROJECT) {
    throw notFound(`Project ${name} not found: see trivisor project list`);
  }
  return projectKv ? records.project.decode(projectKv) : defaultSpec();
}

function decoded<T>(kind: { decode(kv: KeyValue): T }, kvs: KeyValue[]): T[] {
  return kvs.flatMap((one) => {
    try {
      return [kind.decode(one)];
    } catch {
      return [];
    }
  });
}

function guarded(
  name: string,
  spec: ProjectSpec,
  modRevision: number,
  usage: ProjectUsage,
  objects: string[],
): GuardedProject {
  return {
    spec,
    usage,
    objects,
    compare: [records.project.at(name).unchanged(modRevision)],
    success: [records.project.at(name).putOp(spec)],
  };
}

/** A guarded write's own part of its transaction; `project` replaces the record the guard rewrites. */
export interface GuardedParts {
  compare: Compare[];
  success: TxnOp[];
  project?: ProjectSpec;
}

/**
 * Runs a write in a project under its guard: `attempt` gets what `readGuard` read
 * (`options.read`: another read, `readProject` for the whole usage),
 * throws to refuse (a quota, a taken name) and returns the transaction's own parts;
 * the guard's are added. When the transaction fails because another write in the
 * project came first, everything is read and decided again. A failure of the
 * attempt's own compares is returned for the caller to explain.
 */
export async function guardedWrite(
  store: KvStore,
  project: string,
  attempt: (p: GuardedProject) => Promise<GuardedParts>,
  options: { firstRead?: Promise<GuardedProject>; read?: typeof readProject } = {},
): Promise<TxnResponse> {
  const read = options.read ?? readGuard;
  for (let i = 0; i < MAX_ATTEMPTS; i++) {
    // A first read the caller started early (beside its own reads) serves the first attempt:
    // if the project changed since, the transaction fails and the next attempt reads again.
    const p = await (i === 0 && options.firstRead ? options.firstRead : read(store, project));
    const own = await attempt(p);
    const guardPut: TxnOp[] = own.project ? [records.project.at(project).putOp(own.project)] : p.success;
    const r = await store.txn({
      compare: [...p.compare, ...own.compare],
      success: [...own.success, ...guardPut],
    });
    if (r.succeeded) return r;
    const now = await store.get(records.project.key(project));
    const guard = p.compare[0]?.value;
    if ((now?.modRevision ?? 0) === guard) return r;
    // Another write in the project won: back off a little so that a crowd of creates spreads out.
    await sleep(Math.random() * Math.min(20, i + 1));
  }
  throw unavailable(`Project ${project} is too busy with other changes: retry`);
}

export function createProjectService(deps: { store: KvStore }): ProjectService {
  const { store } = deps;

  const show = (p: GuardedProject): Project => ({ ...p.spec, usage: p.usage, usedBy: p.objects });

  const service: ProjectService = {
    async list() {
      // One read of every project and everything they hold, summed in one pass (each record once,
      // one request), where reading each project on its own read default's share of the guests
      // and each other project's through its index, a request or more each.
      const read = await readTogether(store, [
        { key: records.project.prefix, prefix: true },
        ...ALL_COUNTED.map((kind) => ({ key: KIND_OF[kind].prefix, prefix: true })),
      ]);
      const [projectKvs = [], guests = [], networks = [], volumes = [], images = []] = read.kvs;
      const held = holdings({ guests, networks, volumes, images });
      const specs = new Map<string, ProjectSpec>([[DEFAULT_PROJECT, defaultSpec()]]);
      for (const kv of projectKvs) {
        const [spec] = decoded(records.project, [kv]);
        if (spec) specs.set(records.project.nameOf(kv.key), spec);
      }
      return [...specs.entries()]
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([name, spec]) => {
          const p = held.get(name);
          return { ...spec, usage: p?.usage ?? NO_USAGE, usedBy: p?.objects ?? [] };
        });
    },

    async names() {
      // Only the names: no guest, network, volume or image is read.
      const { kvs } = await store.list(records.project.prefix);
      return [...new Set([DEFAULT_PROJECT, ...kvs.map((kv) => records.project.nameOf(kv.key))])].sort();
    },

    async get(name) {
      return show(await readProject(store, name));
    },

    async create(request) {
      assertProjectName(request.name);
      const config = validateProjectConfig({ ...(request.config ?? {}) });
      if (request.name === DEFAULT_PROJECT) throw alreadyExists('Project default already exists');
      const spec: ProjectSpec = {
        name: request.name,
        description: request.description ?? '',
        config,
        createdAt: new Date().toISOString(),
      };
      const ref = records.project.at(spec.name);
      const r = await store.txn({ compare: [ref.absent()], success: [ref.putOp(spec)] });
      if (!r.succeeded) throw alreadyExists(`Project ${spec.name} already exists`);
      return service.get(spec.name);
    },

    async update(name, change) {
      await guardedWrite(
        store,
        name,
        async (p) => {
          const config = { ...p.spec.config, ...(change.set ?? {}) };
          for (const key of change.unset ?? []) {
            if (!(key in config))
              throw notFound(`Project ${name} has no configuration key ${JSON.stringify(key)}`);
            delete config[key];
          }
          validateProjectConfig(config);
          assertLimitsCover(name, config, p.usage);
          await assertGuestsCountable(name, config);
          const next: ProjectSpec = {
            ...p.spec,
            config,
            ...(change.description !== undefined && { description: change.description }),
          };
          return { compare: [], success: [], project: next };
        },
        // A new limit is checked against every usage, not only the ones the old limits counted.
        { read: readProject },
      );
      return service.get(name);
    },

    async delete(name) {
      assertProjectName(name);
      if (name === DEFAULT_PROJECT) throw failedPrecondition('Project default cannot be deleted');
      const p = await readProject(store, name);
      if (p.objects.length > 0) {
        const shown = p.objects.slice(0, 5).join(', ');
        throw failedPrecondition(
          `Project ${name} is not empty: it holds ${shown}${p.objects.length > 5 ? ` and ${p.objects.length - 5} more` : ''}; delete them first`,
        );
      }
      // Conditional on nothing having been made in it since it was found empty.
      const r = await store.txn({
        compare: p.compare,
        // Its index's keys go too: none should be left (each guest's delete took its own).
        success: [
          records.project.at(name).deleteOp(),
          { type: 'delete', key: keys.projectGuests(name), prefix: true },
        ],
      });
      if (!r.succeeded) throw conflict(`Project ${name} was changed at the same time; retry`);
    },

    async assertExists(name) {
      assertProjectName(name);
      if (name === DEFAULT_PROJECT) return;
      if (!(await store.get(records.project.key(name)))) {
        throw notFound(`Project ${name} not found: see trivisor project list`);
      }
    },
  };

  /** With limits.memory (cpu, disk) on the project, every guest in it must set the key (as Incus requires). */
  async function assertGuestsCountable(name: string, config: Record<string, string>): Promise<void> {
    for (const g of decoded(records.guest, await readProjectGuestSpecs(store, name))) {
      if (projectOfRecord(g) !== name) continue;
      for (const key of ['limits.memory', 'limits.cpu', 'limits.disk']) {
        if (config[key] !== undefined && g.config[key] === undefined) {
          throw failedPrecondition(
            `Guest ${g.name} of project ${name} has no ${key}: set it on the guest before setting ${key} on the project`,
          );
        }
      }
    }
  }

  return service;
}
