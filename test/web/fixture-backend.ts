import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { ClusterMove, RebalanceResult } from '../../src/api/cluster-schemas.ts';
import type { ClusterInfo, ClusterMember, ClusterService } from '../../src/cluster/membership.ts';
import type { RebalanceService } from '../../src/control/rebalance-controller.ts';
import type { Caller } from '../../src/core/access.ts';
import { rebalanceSettings } from '../../src/core/config-keys.ts';
import {
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  notFound,
  notSupported,
} from '../../src/core/errors.ts';
import { isPowerKey, powerSettings } from '../../src/core/power-keys.ts';
import type { Guest, Model } from '../../src/core/types.ts';
import { buildServer } from '../../src/server/build-server.ts';
import { createWebSessions } from '../../src/server/web-sessions.ts';
import { createConsolidationPlanner } from '../../src/services/consolidation-planner.ts';
import { openMetricsHistory } from '../../src/services/metrics-history.ts';
import type { StorageService } from '../../src/services/storage-service.ts';
import type { OperationService } from '../../src/services/types.ts';
import { createMemoryStore } from '../../src/store/memory-store.ts';
import { createFakeServices, type FakeServices } from '../fakes/fake-services.ts';

/**
 * The deterministic layer of the browser tests (issue 15): the real server, sessions, static
 * serving and web build over fake services that hold 1,000 guests of all three models and a
 * day of seeded metrics. Guests named `broken-N` refuse to start, with a reason, so that bulk
 * actions have failures to report. Also run by hand (`node test/web/fixture-backend.ts DIR`)
 * for screenshots and the speed benchmark.
 */
export interface FixtureBackend {
  url: string;
  token: string;
  fake: FakeServices;
  app: FastifyInstance;
  /** Every guest create request the API passed on, in order (what the wizard sent). */
  created: CreateRequest[];
  /** The fake rebalancer's keys, moves and the cycles asked of it: tests read them. */
  rebalance: FakeRebalancer;
  /** The fake membership's members (empty on a single host): tests read and change them. */
  members: ClusterMember[];
  /** The fake backups: what was asked of them. */
  backups: FakeBackups;
  /** The daemon's backup directory (decisions 0070, 0074): a chain, a whole archive, a broken chain. */
  backupDir: string;
  /** Each listing of the backup directory the API was asked for, in order: its `target` ('' without one). */
  backupListings: string[];
  /**
   * Holds the next listing of `target`'s backup directory until `release()`: a slow member. Its
   * answer then lists `guest`'s archives only, as that member's own directory would (the fixture
   * has one directory). `asked` resolves when the request arrives; `release()` when it is answered.
   */
  holdBackupListing(target: string, guest: string): { asked: Promise<void>; release(): Promise<void> };
  /** A login link (`/login#code=…`) that signs a browser in as `caller`: another role than the token's. */
  loginLink(caller: Caller): Promise<string>;
  /** Changes a guest's status as a controller would: the store, then a lifecycle event. */
  setStatus(name: string, status: Guest['status']): void;
  close(): Promise<void>;
}

export const FIXTURE_TOKEN = 'fixture-admin-token';
const REPO = path.resolve(import.meta.dirname, '../..');
const MODELS: Model[] = ['ct', 'pvm', 'vm'];
const NOW = Date.now();

/** `n` guests: `ct-0001`…, every model, a few stopped and frozen, three broken. */
export function fixtureGuests(n: number): Guest[] {
  const out: Guest[] = [];
  for (let i = 1; i <= n; i++) {
    const model = MODELS[i % 3]!;
    const broken = i % 333 === 0;
    const name = broken ? `broken-${i}` : `${model}-${String(i).padStart(4, '0')}`;
    const status: Guest['status'] = broken
      ? 'Stopped'
      : i % 7 === 0
        ? 'Stopped'
        : i % 50 === 0
          ? 'Frozen'
          : 'Running';
    const running = status !== 'Stopped';
    out.push({
      name,
      project: 'default',
      model,
      status,
      image: 'a1b2c3d4e5f60718293a4b5c6d7e8f9012345678901234567890abcdef012345',
      imageAlias: 'busybox',
      config: { 'limits.memory': model === 'ct' ? '64MiB' : '128MiB' },
      host: 'fakehost',
      createdAt: new Date(Date.parse('2026-11-01T00:00:00Z') + i * 60_000).toISOString(),
      devices: { eth0: { type: 'nic', network: 'trivisor0' } },
      state: {
        pid: running ? 10_000 + i : null,
        startedAt: running ? '2026-11-30T00:00:00.000Z' : null,
        uptimeSeconds: running ? 3600 : null,
        usage: running ? { memoryBytes: (8 + (i % 40)) * 2 ** 20, cpuSeconds: i, processes: 3 } : null,
        restartCount: 0,
        addresses: running ? [`198.18.${Math.floor(i / 250)}.${(i % 250) + 2}`] : [],
      },
    });
  }
  return out;
}

/** A day of one sample a minute for the host and a few guests, with a stopped hour as a gap. */
function seedHistory(history: ReturnType<typeof openMetricsHistory>, names: string[]): void {
  const start = NOW - 24 * 3600_000;
  // One sample a minute, and every 10 s in the last hour (the hour range's step).
  for (let t = start; t <= NOW; t += t >= NOW - 3600_000 ? 10_000 : 60_000) {
    const phase = (t - start) / 3600_000;
    const samples = [
      {
        series: 'host/fakehost',
        values: {
          cpu: 0.6 + 0.4 * Math.sin(phase),
          memoryBytes: 6e9 + 1e9 * Math.sin(phase / 3),
          netRxBytesPerSecond: 2e5 + 1e5 * Math.cos(phase),
          netTxBytesPerSecond: 1e5,
          diskReadBytesPerSecond: 5e5,
          diskWriteBytesPerSecond: 3e5 + 2e5 * Math.sin(phase * 2),
        },
      },
    ];
    // Stopped between 6 and 7 hours ago: a gap in every guest's charts.
    const stopped = t > NOW - 7 * 3600_000 && t < NOW - 6 * 3600_000;
    if (!stopped) {
      for (const name of names) {
        samples.push({
          series: `guest/${name}`,
          values: {
            cpu: 0.2 + 0.15 * Math.sin(phase * 1.5),
            memoryBytes: 4e7 + 1e7 * Math.sin(phase),
            netRxBytesPerSecond: 3e4,
            netTxBytesPerSecond: 1e4 + 5e3 * Math.sin(phase),
            diskReadBytesPerSecond: 1e4,
            diskWriteBytesPerSecond: 2e4,
          },
        });
      }
    }
    history.record(samples, t);
  }
}

const GiB = 2 ** 30;
type CreateRequest = Parameters<FakeServices['guests']['create']>[0];

/**
 * Cluster membership as the API answers it (decision 0032), without etcd: `member` starts as a
 * cluster of three (this host with the guests, web2 holding guests of its own, web3 Offline and
 * empty), `single` as a host of its own that a bootstrap makes the first member. Refusals are
 * the real service's, in its words: removing this member or one that holds guests, a join by a
 * host that holds guests.
 */
function fakeCluster(
  mode: 'member' | 'single',
  ownGuests: () => number,
  operations: Pick<OperationService, 'start'>,
): { service: ClusterService; members: ClusterMember[] } {
  const self = 'fakehost';
  const members: ClusterMember[] = [];
  const info = (): ClusterInfo =>
    members.length === 0
      ? { enabled: false }
      : {
          enabled: true,
          member: self,
          address: '198.18.0.1:8444',
          caFingerprint: 'ab'.repeat(32),
          etcd: { managed: true, endpoints: ['https://198.18.0.1:2379', 'https://198.18.0.2:2379'] },
        };
  const joinedAt = '2026-12-01T09:00:00.000Z';
  const selfMember = (): ClusterMember => ({
    name: self,
    address: '198.18.0.1:8444',
    status: 'Online',
    roles: ['etcd-voter'],
    guests: ownGuests(),
    version: '0.1.0',
    cpu: { cpus: 2, used: 0.85, free: 1.15 },
    memory: { totalBytes: 24 * GiB, usedBytes: 6.5 * GiB, freeBytes: 17.5 * GiB },
    disk: { totalBytes: 400 * GiB, freeBytes: 250 * GiB },
    joinedAt,
  });
  if (mode === 'member') {
    members.push(
      selfMember(),
      {
        name: 'web2',
        address: '198.18.0.2:8444',
        status: 'Online',
        roles: ['etcd-voter'],
        guests: 12,
        version: '0.1.0',
        cpu: { cpus: 4, used: 1.5, free: 2.5 },
        memory: { totalBytes: 16 * GiB, usedBytes: 3 * GiB, freeBytes: 13 * GiB },
        disk: { totalBytes: 100 * GiB, freeBytes: 60 * GiB },
        joinedAt,
      },
      {
        name: 'web3',
        address: '198.18.0.3:8444',
        status: 'Offline',
        roles: ['etcd-client'],
        guests: 0,
        version: '0.1.0',
        cpu: null,
        memory: null,
        disk: null,
        joinedAt,
      },
    );
  }
  const requireMember = () => {
    if (members.length === 0) {
      throw failedPrecondition(
        'This daemon is not a cluster member: make it the first one with trivisor cluster bootstrap --address IP, or join one with trivisor cluster join',
      );
    }
  };
  const service: ClusterService = {
    async info() {
      return info();
    },
    async bootstrap(request) {
      if (members.length > 0) throw failedPrecondition('This daemon is a cluster member already');
      if (!/^\d{1,3}(\.\d{1,3}){3}(:\d+)?$/.test(request.address)) {
        throw invalidArgument(`Cluster address ${request.address} is not IP[:PORT]`);
      }
      members.push(selfMember());
      return info();
    },
    async createJoinToken(name, options) {
      requireMember();
      if (members.some((m) => m.name === name)) throw alreadyExists(`A member named ${name} exists already`);
      return {
        name,
        token: `trvjoin_${randomBytes(48).toString('base64url')}`,
        expiresAt: new Date(Date.now() + (options.ttlMs ?? 3 * 3_600_000)).toISOString(),
      };
    },
    async join() {
      if (members.length > 0) throw failedPrecondition('This daemon is a cluster member already');
      throw failedPrecondition(
        `This host holds ${ownGuests()} guests: only a host with no guests, custom volumes or networks can join a cluster`,
      );
    },
    async acceptJoin() {
      throw failedPrecondition('The fixture accepts no joining host');
    },
    async list() {
      requireMember();
      return members.map((m) => (m.name === self ? selfMember() : { ...m }));
    },
    async get(name) {
      requireMember();
      const found = members.find((m) => m.name === name);
      if (!found) throw notFound(`No cluster member is named ${name}: see trivisor cluster list`);
      return found;
    },
    async remove(name, options = {}) {
      requireMember();
      const at = members.findIndex((m) => m.name === name);
      const member = members[at];
      if (!member) throw notFound(`No cluster member is named ${name}: see trivisor cluster list`);
      if (name === self) {
        throw failedPrecondition(
          `Member ${name} is the one this request reached: remove it through another member`,
        );
      }
      if (member.guests > 0 && !options.force) {
        throw failedPrecondition(
          `Member ${name} holds ${member.guests} guests (web2-a, web2-b, web2-c, web2-d, web2-e, …): move or delete them first, or remove it anyway with --force (its guests stay recorded on it)`,
        );
      }
      members.splice(at, 1);
    },
    async changeMemberState(name, { action }) {
      requireMember();
      const member = members.find((m) => m.name === name);
      if (!member) throw notFound(`No cluster member is named ${name}: see trivisor cluster list`);
      member.status = action === 'evacuate' ? 'Evacuated' : 'Online';
      // The fixture's members hold no real guests: nothing is left to move.
      return operations.start({
        project: 'default',
        description: `${action} ${name}`,
        resources: {},
        run: async () => undefined,
      });
    },
  };
  return { service, members };
}

/** The fixture's rebalancer: the real keys' checks over a map, two recorded moves, a fixed plan. */
export interface FakeRebalancer extends RebalanceService {
  config: Record<string, string>;
  recorded: ClusterMove[];
  /** Each cycle asked for, dry or not, in order. */
  cycles: boolean[];
}

/** A planned move of the fixture's plan, with the explanation the rebalancer would record. */
const plannedMove = (atMs: number): RebalanceResult['planned'][number] => ({
  atMs,
  guest: 'web2-a',
  model: 'vm',
  from: 'web2',
  to: 'fakehost',
  how: 'live',
  reason: 'balance',
  imbalanceBefore: 0.214,
  imbalanceAfter: 0.061,
  loadBefore: { from: 0.82, to: 0.39 },
  loadAfter: { from: 0.67, to: 0.54 },
  benefitSeconds: 137.7,
  costSeconds: 0.84,
  copySeconds: 8.1,
  downtimeMs: 300,
  constraints: ['web3 is Offline', 'busy-db: migration.downtime_budget=0'],
  summary:
    'balance: web2-a (vm) live web2 → fakehost; web2 82% → 67%, fakehost 39% → 54%; imbalance 0.214 → 0.061; benefit 137.7 s against cost 0.84 s (copy 8.1 s, downtime 300 ms)',
});

function fakeRebalancer(): FakeRebalancer {
  const hourAgo = NOW - 3600_000;
  const r: FakeRebalancer = {
    config: { 'cluster.rebalance.interval': '10m' },
    cycles: [],
    recorded: [
      {
        ...plannedMove(hourAgo),
        guest: 'web2-b',
        model: 'ct',
        how: 'cold',
        reason: 'overload',
        downtimeMs: 2400,
        constraints: [],
        summary: 'overload: web2-b (ct) cold web2 → fakehost',
        result: 'failed',
        error: 'Member fakehost cannot be reached: connection refused',
        finishedAt: new Date(hourAgo + 5_000).toISOString(),
      },
      {
        ...plannedMove(hourAgo - 600_000),
        guest: 'web2-c',
        result: 'moved',
        finishedAt: new Date(hourAgo - 590_000).toISOString(),
      },
    ],
    async settings() {
      return { ...r.config };
    },
    async updateSettings(patch) {
      const next = { ...r.config };
      for (const [k, v] of Object.entries(patch)) {
        if (v === null) delete next[k];
        else next[k] = v;
      }
      // The daemon's own checks: one bad key or value refuses the whole change.
      rebalanceSettings(Object.fromEntries(Object.entries(next).filter(([k]) => !isPowerKey(k))));
      powerSettings(next);
      r.config = next;
      return { ...next };
    },
    async moves() {
      return r.recorded.map((m) => ({ ...m }));
    },
    async run({ dryRun }) {
      r.cycles.push(dryRun);
      const planned = [plannedMove(Date.now())];
      const moved: ClusterMove[] = dryRun
        ? []
        : planned.map((m) => ({ ...m, result: 'moved', finishedAt: new Date().toISOString() }));
      r.recorded.unshift(...moved);
      return {
        dryRun,
        imbalanceBefore: 0.214,
        imbalanceAfter: 0.061,
        planned,
        notes: ['web3 is Offline: left out of the cycle'],
        moved,
        // Power management's part of the plan, as the daemon answers it when it is on (decision 0055).
        ...(r.config['cluster.power.enabled'] === 'true' && {
          power: {
            powerOn: [{ member: 'web3', reason: 'demand 92% of what is on passes cluster.power.on_at 90%' }],
            powerOff: [
              {
                member: 'web2',
                reason: "load 12% over 40m, below cluster.power.low_load 85%; the others' peak 41%",
                moves: [plannedMove(Date.now())],
              },
            ],
          },
        }),
      };
    },
  };
  return r;
}

/** The fixture's backups: requests recorded, the API's refusals in the real service's words. */
export interface FakeBackups {
  /** Each backup asked for, with its options. */
  made: Array<{ guest: string; options: Parameters<StorageService['createBackup']>[1] }>;
  /** Each archive imported: its name, whether live, and its first bytes. */
  imported: Array<{ name?: string; live: boolean; head: string }>;
  /** Ends the live import under way (it holds at half its copy until then, so its progress can be seen). */
  finishLive(): void;
}

const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

function fakeStorage(
  guestMap: Map<string, Guest>,
  operations: Pick<OperationService, 'start'>,
  exportDir: string,
): { service: StorageService; backups: FakeBackups } {
  // What the route said before there was a storage service: the fixture has no snapshots.
  const none = async (): Promise<never> => {
    throw notSupported('This daemon has no storage service: snapshots and backups are unavailable');
  };
  let release: (() => void) | undefined;
  const backups: FakeBackups = {
    made: [],
    imported: [],
    finishLive() {
      release?.();
    },
  };
  const service: StorageService = {
    inProject: () => service,
    listSnapshots: none,
    getSnapshot: none,
    createSnapshot: none,
    deleteSnapshot: none,
    restoreSnapshot: none,
    async copyGuest() {
      throw notSupported('This daemon cannot copy guests: it has no storage service');
    },
    async createBackup(guest, options) {
      const g = guestMap.get(guest);
      if (!g) throw notFound(`Guest ${guest} not found`);
      if (options.uncompressed && (g.model !== 'vm' || options.incremental || options.withSnapshots)) {
        throw invalidArgument(
          'An uncompressed export is for the live restore of a vm guest: it is made of a vm guest alone, without --incremental or --with-snapshots',
        );
      }
      backups.made.push({ guest, options: { ...options } });
      const backup = options.name ?? `backup-${backups.made.length}`;
      // The page downloads what it made (`?follow=true`): a small archive stands for it.
      await mkdir(path.join(exportDir, guest), { recursive: true });
      await writeFile(path.join(exportDir, guest, `${backup}.tar`), `fixture backup ${backup} of ${guest}`);
      return operations.start({
        project: 'default',
        description: `Backing up guest ${guest}`,
        resources: { guests: [`/1.0/guests/${guest}`] },
        run: async () => ({ backup, sizeBytes: options.uncompressed ? 512 * 2 ** 20 : 96 * 2 ** 20 }),
      });
    },
    backupFile: none,
    importUpload: none,
    async followBackup(guest, backup) {
      const file = path.join(exportDir, guest, `${backup}.tar`);
      const { size } = await stat(file).catch(() => {
        throw notFound(`Guest ${guest} has no backup ${backup}`);
      });
      // Finished at once: written whole, no header sent again.
      return {
        open: () => open(file, 'r'),
        status: () => ({ state: 'done', sizeBytes: size }),
        changed: async () => {},
        headerOffsets: async () => [],
      };
    },
    async deleteBackup() {},
    async importBackup({ archivePath, name, live }) {
      const head = await readFile(archivePath);
      await rm(archivePath, { force: true });
      // The real checks, in their words: a live restore reads an uncompressed vm archive in place.
      if (live && head.subarray(0, 4).equals(ZSTD_MAGIC)) {
        throw failedPrecondition(
          "The archive's disk is compressed (rootfs.tar.zst), and QEMU cannot read it in place: export the guest with --uncompressed for a live restore, or import this archive without --live",
        );
      }
      const guest = name ?? 'imported';
      backups.imported.push({
        ...(name !== undefined && { name }),
        live: live === true,
        head: head.toString('latin1', 0, 16),
      });
      return operations.start({
        project: 'default',
        description: live ? `Restoring guest ${guest} live` : `Importing guest ${guest}`,
        resources: { guests: [`/1.0/guests/${guest}`] },
        run: async (ctx) => {
          if (!live) return undefined;
          // The guest runs on the archive, half its disk copied behind it, as the block job reports it.
          ctx.setMetadata({ runningAfterMs: 3140 });
          ctx.progress(50, '256 MiB of 512 MiB copied, 128 MiB/s, 2 s left');
          await new Promise<void>((resolve) => {
            release = resolve;
          });
          release = undefined;
          return { name: guest, runningAfterMs: 3140, completedAfterMs: 42_000 };
        },
      });
    },
    async discardImport() {},
    sweep: async () => {},
    recover: none,
  };
  return { service, backups };
}

/**
 * The fixture's backup directory, in the scheduled backups' layout (decision 0062): ct-0003's
 * chain (a zstd full and two incrementals), vm-0002's uncompressed whole archive, and pvm-0001's
 * second incremental whose full and first link are gone (listed as not restorable).
 */
async function writeBackupDirectory(dir: string): Promise<void> {
  const chain = '3f9a1c2b4d5e6f70';
  const files: Array<[string, Buffer]> = [
    [`ct-0003/20261201T030000Z-full-${chain}.tar`, Buffer.concat([ZSTD_MAGIC, Buffer.alloc(3000, 1)])],
    [`ct-0003/20261202T030000Z-incr-${chain}-1.tar`, Buffer.concat([ZSTD_MAGIC, Buffer.alloc(200, 2)])],
    [`ct-0003/20261203T030000Z-incr-${chain}-2.tar`, Buffer.concat([ZSTD_MAGIC, Buffer.alloc(300, 3)])],
    ['vm-0002/20261204T030000Z.tar', Buffer.from('uncompressed vm archive')],
    ['pvm-0001/20261203T030000Z-incr-aaaabbbbccccdddd-2.tar', Buffer.concat([ZSTD_MAGIC, Buffer.alloc(99)])],
  ];
  for (const [name, data] of files) {
    await mkdir(path.join(dir, path.dirname(name)), { recursive: true });
    await writeFile(path.join(dir, name), data);
  }
}

/** Starts the fixture on 127.0.0.1 over HTTPS (a throwaway certificate in `runDir`). */
export async function startFixtureBackend(
  runDir: string,
  options: { guests?: number; sessionTtlMs?: number; port?: number; cluster?: 'member' | 'single' } = {},
): Promise<FixtureBackend> {
  const key = path.join(runDir, 'fixture.key');
  const cert = path.join(runDir, 'fixture.crt');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '2',
      '-subj',
      '/CN=127.0.0.1',
    ],
    { stdio: 'ignore' },
  );

  const fake = createFakeServices();
  fake.guestMap.clear();
  for (const g of fixtureGuests(options.guests ?? 1000)) fake.guestMap.set(g.name, g);
  // One guest says its member, as guests on a cluster do: its page offers a move (decision 0040).
  const placed = fake.guestMap.get('ct-0006');
  if (placed) {
    placed.location = 'fakehost';
    placed.placement = 'most free memory: 17.5 GiB of 24.0';
  }
  const history = openMetricsHistory(':memory:');
  seedHistory(history, ['ct-0003', 'pvm-0001', 'vm-0002']);
  fake.metricsHistory = history;
  // The planner is pure logic over the upload: the daemon's own, in its worker thread (decision 0065).
  fake.consolidation = createConsolidationPlanner();
  const cluster = fakeCluster(options.cluster ?? 'member', () => fake.guestMap.size, fake.operations);
  fake.cluster = cluster.service;
  const rebalance = fakeRebalancer();
  // HA as the CRM would see it (decision 0052): web2's agent lost, with admission control's warning.
  fake.haSummary = async (members) =>
    new Map(
      members
        .filter((m) => m.name !== 'web3')
        .map((m) => [
          m.name,
          m.name === 'web2'
            ? {
                live: false,
                guests: 3,
                warning: 'The other members could restart 1 of its 3 HA guests: 2 GiB of memory short',
              }
            : { live: true, guests: 1 },
        ]),
    );
  if ((options.cluster ?? 'member') === 'member') fake.rebalance = rebalance;
  const storage = fakeStorage(fake.guestMap, fake.operations, path.join(runDir, 'exports'));
  fake.storage = storage.service;
  // A move only says where the guest went: the members' side of it is the cluster tests'.
  fake.moves = {
    mover: {
      pinned: async () => undefined,
      async move(name, { target }) {
        const g = fake.guestMap.get(name);
        if (!g) throw notFound(`Guest ${name} not found`);
        return fake.operations.start({
          project: 'default',
          description: `Moving guest ${name} to ${target}`,
          resources: { guests: [`/1.0/guests/${name}`] },
          run: async () => {
            g.location = target;
            g.host = target;
            return { location: target };
          },
        });
      },
    },
    receiver: {
      async receive() {
        throw failedPrecondition('The fixture receives no guests');
      },
      async discard() {},
      async prepareLive() {
        throw failedPrecondition('The fixture receives no guests');
      },
      async finishLive() {
        throw failedPrecondition('The fixture receives no guests');
      },
    },
  };

  const publish = (name: string, status: Guest['status']) =>
    fake.events.publish({
      type: 'lifecycle',
      project: 'default',
      action: 'guest-updated',
      source: `/1.0/guests/${name}`,
      metadata: { name, status },
    });
  const base = fake.guests;
  const created: CreateRequest[] = [];
  const guests: typeof base = {
    ...base,
    inProject: () => guests,
    async create(request) {
      created.push(structuredClone(request));
      return base.create(request);
    },
    async changeState(name, request) {
      if (name.startsWith('broken-') && request.action === 'start') {
        throw failedPrecondition(
          `Guest ${name} cannot start: its root file system is missing (restore a backup)`,
        );
      }
      const op = await base.changeState(name, request);
      fake.operations.wait(op.id).then(() => publish(name, fake.guestMap.get(name)?.status ?? 'Stopped'));
      return op;
    },
    async delete(name, o) {
      const op = await base.delete(name, o);
      fake.operations.wait(op.id).then(() =>
        fake.events.publish({
          type: 'lifecycle',
          project: 'default',
          action: 'guest-deleted',
          source: `/1.0/guests/${name}`,
          metadata: { name },
        }),
      );
      return op;
    },
  };
  fake.guests = guests;

  const sessions = createWebSessions({
    store: createMemoryStore(),
    ...(options.sessionTtlMs !== undefined && { sessionTtlMs: options.sessionTtlMs }),
    daemonTokenSha256: () => createHash('sha256').update(FIXTURE_TOKEN).digest('hex'),
  });
  const backupDir = path.join(runDir, 'backups');
  await writeBackupDirectory(backupDir);
  const app = await buildServer(fake, {
    auth: { type: 'token', token: FIXTURE_TOKEN },
    uploadDir: runDir,
    backupDir,
    https: { key: readFileSync(key, 'utf8'), cert: readFileSync(cert, 'utf8') },
    // The browser suite's pages load many chunks at once; the limits are the API's own concern.
    limits: {},
    web: { sessions, uiRoot: REPO },
  });
  const backupListings: string[] = [];
  type Hold = { target: string; guest: string; asked(): void; gate: Promise<void>; answered(): void };
  let hold: Hold | undefined;
  const heldRequests = new WeakMap<object, Hold>();
  app.addHook('onRequest', async (request) => {
    if (request.method !== 'GET' || request.routeOptions.url !== '/1.0/backups') return;
    const target = (request.query as { target?: string }).target ?? '';
    backupListings.push(target);
    const h = hold;
    if (h?.target !== target) return;
    hold = undefined;
    heldRequests.set(request, h);
    h.asked();
    await h.gate;
  });
  app.addHook('onSend', async (request, _reply, payload) => {
    const h = heldRequests.get(request);
    if (!h || typeof payload !== 'string') return payload;
    const body = JSON.parse(payload) as { metadata?: unknown };
    if (Array.isArray(body.metadata))
      body.metadata = body.metadata.filter((a: { guest?: string }) => a.guest === h.guest);
    return JSON.stringify(body);
  });
  app.addHook('onResponse', async (request) => {
    heldRequests.get(request)?.answered();
  });
  await app.listen({ host: '127.0.0.1', port: options.port ?? 0 });
  const port = (app.server.address() as { port: number }).port;
  return {
    url: `https://127.0.0.1:${port}`,
    token: FIXTURE_TOKEN,
    fake,
    app,
    members: cluster.members,
    backups: storage.backups,
    backupDir,
    backupListings,
    holdBackupListing(target, guest) {
      let asked!: () => void;
      let open!: () => void;
      let answered!: () => void;
      const arrived = new Promise<void>((r) => {
        asked = r;
      });
      const gate = new Promise<void>((r) => {
        open = r;
      });
      const done = new Promise<void>((r) => {
        answered = r;
      });
      hold = { target, guest, asked, gate, answered };
      return {
        asked: arrived,
        release() {
          if (hold?.target === target) hold = undefined;
          open();
          return done;
        },
      };
    },
    async loginLink(caller) {
      return `/login#code=${(await sessions.createLink(caller)).code}`;
    },
    rebalance,
    created,
    setStatus(name, status) {
      const g = fake.guestMap.get(name);
      if (g) g.status = status;
      publish(name, status);
    },
    async close() {
      await app.close();
      history.close();
    },
  };
}

if (import.meta.main) {
  const dir = process.argv[2];
  if (!dir) {
    process.stderr.write(
      'Error: give a directory for the certificate: node test/web/fixture-backend.ts DIR [PORT]\n',
    );
    process.exit(1);
  }
  const backend = await startFixtureBackend(dir, { port: Number(process.argv[3] ?? 0) });
  process.stdout.write(`${backend.url} token ${backend.token}\n`);
}
