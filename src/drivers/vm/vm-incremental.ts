import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { failedPrecondition, internal } from '../../core/errors.ts';
import type { GuestSpec, ProcessIdentity } from '../../core/types.ts';
import { isSameProcess } from '../../host/proc-stat.ts';
import { qemuImg } from '../../host/qemu-img.ts';
import { type AgentAccess, withFrozenFileSystems } from '../agent-fs-freeze.ts';
import type { DriverContext } from '../guest-driver.ts';
import type { PortableChainState } from '../guest-storage.ts';
import { vmGuestPaths } from './qemu-command.ts';
import { connectQmp, type QmpClient, type QmpEvent } from './qmp-client.ts';
import type { AgentPool } from './vm-agent.ts';

/**
 * The persistent dirty bitmap in `root.qcow2` that records what changed since the last backup, as
 * guests made before decision 0062's amendment of 2026-12-07 have it (one name for every link).
 */
export const BACKUP_BITMAP = 'trivisor-backup';
/** Every backup bitmap's name starts so: the legacy one, and those named for their link. */
const BITMAP_PREFIX = BACKUP_BITMAP;
/** A chain's id: 16 hex digits (vm-incremental's own; pvm's are alike). */
const CHAIN_ID = /^[0-9a-f]{16}$/;

/**
 * The bitmap that holds what changed since link `sequence` of chain `chain` (decision 0062, amended
 * 2026-12-07): named for its link, so that a disk that went to another member (a cold move's
 * archive, a live move's migration) says by itself which link its bitmap follows.
 */
export const linkBitmap = (chain: string, sequence: number): string =>
  `${BITMAP_PREFIX}-${chain}-${sequence}`;

/** Whether `name` is one of the backup bitmaps (the legacy one or one named for a link). */
export const isBackupBitmap = (name: string): boolean =>
  name === BACKUP_BITMAP || /^trivisor-backup-[0-9a-f]{16}-\d+$/.test(name);

/** A bitmap as `qemu-img info` lists it in a qcow2. */
export interface StoredBitmap {
  name: string;
  granularity: number;
  flags: string[];
}

/** The bitmaps stored in qcow2 `disk` (not in use by a QEMU, or read with `forceShare`). */
export async function storedBitmaps(
  runner: DriverContext['runner'],
  disk: string,
  options: { forceShare?: boolean } = {},
): Promise<StoredBitmap[]> {
  const { stdout } = await runner.run([
    'qemu-img',
    'info',
    ...(options.forceShare ? ['-U'] : []),
    '--output=json',
    disk,
  ]);
  const info = JSON.parse(stdout) as {
    'format-specific'?: {
      data?: { bitmaps?: Array<{ name: string; granularity: number; flags?: string[] }> };
    };
  };
  return (info['format-specific']?.data?.bitmaps ?? []).map((b) => ({
    name: b.name,
    granularity: b.granularity,
    flags: b.flags ?? [],
  }));
}

/**
 * Whether a stored bitmap can be trusted to hold every write since its link: recording (`auto`)
 * and not `in-use` (a QEMU that had the disk open died without writing it back: inconsistent).
 */
export const isSoundBitmap = (b: StoredBitmap): boolean =>
  b.flags.includes('auto') && !b.flags.includes('in-use');

/** What a vm chain state carries (PortableChainState.data, JSON): the bitmap its next link reads, the disk's size. */
interface VmChainData {
  bitmap: string;
  sizeBytes: number;
}
/** Per guest: the chain the bitmap belongs to and the number of its last backup. */
const CHAIN_FILE = 'backup-chain.json';
/** Present while the guest's file systems are frozen (shared with vm-storage.ts, whose sweep thaws). */
const FREEZE_MARKER = 'fsfreeze.pending';
const JOB_TIMEOUT_MS = 30 * 60_000;

/** Where a backup stands in its chain: a full backup is sequence 0 of a new chain. */
export interface BackupLink {
  chain: string;
  sequence: number;
  kind: 'full' | 'incremental';
}

/**
 * Full and incremental backups of vm disks through a persistent qcow2 dirty
 * bitmap (QEMU's incremental backup): a full backup adds the bitmap in the
 * same QMP transaction that starts a `blockdev-backup sync=full`, and each
 * incremental copies only the clusters the bitmap marks (`sync=incremental`,
 * the bitmap cleared when the job succeeds). The running guest's QEMU does the
 * work, its file systems frozen through the agent while the job starts (the
 * job keeps that point in time by copying before writes); a stopped guest's
 * disk is opened by a short-lived qemu-storage-daemon instead.
 */
export interface VmIncrementalBackups {
  /**
   * Writes a backup of the guest's disk to `target` (a new qcow2 without a
   * backing file): the whole disk, or with `incremental` only the clusters
   * written since the guest's last backup, unallocated elsewhere.
   */
  backup(spec: GuestSpec, target: string, options: { incremental: boolean }): Promise<BackupLink>;
  /** Builds one flat qcow2 at `target` from a full backup and its incrementals, in order. */
  restoreChain(links: readonly string[], target: string): Promise<void>;
  /** Forgets the chain (the disk was rolled back or replaced): the next backup must be full. */
  resetChain(spec: GuestSpec): Promise<void>;
  /** The guest's chain as another member can take it over: its last link and the bitmap named for it. */
  chainState(spec: GuestSpec): Promise<PortableChainState | undefined>;
  /**
   * Makes `state` (of chainState, made where the guest was) the guest's chain, when its disk holds
   * the bitmap named for that link, recording and consistent, and has the size it had; false, with
   * nothing changed, otherwise (the next backup is then full).
   */
  continueChain(spec: GuestSpec, state: PortableChainState): Promise<boolean>;
}

/** A dirty bitmap as QEMU's monitor lists it. */
interface MonitorBitmap {
  name: string;
  recording?: boolean;
  persistent?: boolean;
  inconsistent?: boolean;
}

export function createVmIncrementalBackups(
  ctx: DriverContext,
  options: { agents: AgentPool },
): VmIncrementalBackups {
  const { runner, stateDir } = ctx;
  const img = qemuImg(runner);
  const pathsOf = (spec: GuestSpec) => vmGuestPaths(stateDir, spec.name);
  const chainFile = (spec: GuestSpec) => join(pathsOf(spec).dir, CHAIN_FILE);

  const liveQemu = async (spec: GuestSpec): Promise<ProcessIdentity | undefined> => {
    const boot = await readFile(pathsOf(spec).bootRecord, 'utf8')
      .then((t) => JSON.parse(t) as { identity?: ProcessIdentity })
      .catch(() => undefined);
    return boot?.identity && (await isSameProcess(boot.identity)) ? boot.identity : undefined;
  };

  const readChain = async (spec: GuestSpec): Promise<{ chain: string; sequence: number } | undefined> =>
    readFile(chainFile(spec), 'utf8')
      .then((t) => JSON.parse(t) as { chain: string; sequence: number })
      .catch(() => undefined);

  const writeChain = async (spec: GuestSpec, link: { chain: string; sequence: number }) => {
    const tmp = `${chainFile(spec)}.tmp`;
    await writeFile(tmp, `${JSON.stringify(link)}\n`, { mode: 0o600 });
    await rename(tmp, chainFile(spec));
  };

  /**
   * A QMP monitor on the guest's disk: the guest's own QEMU when it runs, else
   * a qemu-storage-daemon opened on `root.qcow2` (node `root`, as QEMU's drive
   * is named) and quit afterwards, which writes the persistent bitmap back.
   */
  const withMonitor = async <T>(
    spec: GuestSpec,
    work: (qmp: QmpClient, running: boolean) => Promise<T>,
  ): Promise<T> => {
    const p = pathsOf(spec);
    if (await liveQemu(spec)) {
      const qmp = await connectQmp(p.qmpSocket, { timeoutMs: 30_000, runner });
      try {
        return await work(qmp, true);
      } finally {
        qmp.close();
      }
    }
    const id = randomBytes(4).toString('hex');
    const socket = join(p.dir, `.tmp-qsd-${id}.sock`);
    const pidFile = join(p.dir, `.tmp-qsd-${id}.pid`);
    await runner.run([
      'qemu-storage-daemon',
      '--blockdev',
      `driver=file,node-name=file,filename=${p.disk}`,
      '--blockdev',
      'driver=qcow2,node-name=root,file=file',
      '--chardev',
      `socket,id=qmp,path=${socket},server=on,wait=off`,
      '--monitor',
      'chardev=qmp',
      '--daemonize',
      '--pidfile',
      pidFile,
    ]);
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    try {
      const qmp = await connectQmp(socket, { timeoutMs: 30_000 });
      try {
        const result = await work(qmp, false);
        await qmp.execute('quit').catch(() => {});
        return result;
      } finally {
        qmp.close();
      }
    } finally {
      // The bitmap is written back when the daemon closes the image: wait for it to be gone.
      for (let i = 0; i < 100; i++) {
        try {
          process.kill(pid, i < 50 ? 0 : 'SIGTERM');
        } catch {
          break;
        }
        await sleep(100);
      }
      await rm(socket, { force: true });
      await rm(pidFile, { force: true });
    }
  };

  /** The dirty bitmaps of the root disk: QEMU names its drive `root`, the storage daemon its node. */
  const monitorBitmaps = async (qmp: QmpClient, live: boolean): Promise<MonitorBitmap[]> => {
    type Bitmaps = MonitorBitmap[];
    if (live) {
      const blocks =
        await qmp.execute<
          Array<{ device: string; inserted?: { 'node-name'?: string; 'dirty-bitmaps'?: Bitmaps } }>
        >('query-block');
      // A guest started with -blockdev has node `root` (its BlockBackend has no name); one
      // started before, with -drive, has a BlockBackend named `root`.
      return (
        blocks.find((b) => b.device === 'root' || b.inserted?.['node-name'] === 'root')?.inserted?.[
          'dirty-bitmaps'
        ] ?? []
      );
    }
    const nodes =
      await qmp.execute<Array<{ 'node-name': string; 'dirty-bitmaps'?: Bitmaps }>>('query-named-block-nodes');
    return nodes.find((n) => n['node-name'] === 'root')?.['dirty-bitmaps'] ?? [];
  };

  /** Starts `actions` as one transaction and waits for backup job `jobId` to end; throws its error. */
  const runJob = async (
    qmp: QmpClient,
    jobId: string,
    actions: unknown[],
    freeze: AgentAccess | undefined,
    spec: GuestSpec,
  ) => {
    const done = new Promise<QmpEvent>((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(
          internal(`The backup of guest ${spec.name} did not finish within ${JOB_TIMEOUT_MS / 60_000} min.`),
        );
      }, JOB_TIMEOUT_MS);
      const off = qmp.onEvent((e) => {
        if (e.event !== 'BLOCK_JOB_COMPLETED' && e.event !== 'BLOCK_JOB_CANCELLED') return;
        if (e.data.device !== jobId) return;
        clearTimeout(timer);
        off();
        resolve(e);
      });
    });
    const start = () => qmp.execute('transaction', { actions }, { timeoutMs: 60_000 });
    if (freeze) {
      await withFrozenFileSystems(
        freeze,
        { marker: join(pathsOf(spec).dir, FREEZE_MARKER), guest: spec.name },
        start,
      );
    } else {
      await start();
    }
    const end = await done;
    if (end.event === 'BLOCK_JOB_CANCELLED' || typeof end.data.error === 'string') {
      throw internal(
        `The backup of guest ${spec.name} failed: ${typeof end.data.error === 'string' ? end.data.error : 'cancelled'}.`,
      );
    }
  };

  const service: VmIncrementalBackups = {
    async backup(spec, target, backupOptions) {
      const p = pathsOf(spec);
      if (!(await stat(p.disk).catch(() => undefined))) {
        throw failedPrecondition(`Guest ${spec.name} has no disk on this host.`);
      }
      const running = (await liveQemu(spec)) !== undefined;
      const chain = await readChain(spec);
      const noBase = () =>
        failedPrecondition(
          `Guest ${spec.name} has no full backup to build on (or its disk was rolled back since): make a full backup first.`,
        );
      if (backupOptions.incremental && !chain) throw noBase();
      const info = await img.info(p.disk, { forceShare: running });
      await runner.run(['qemu-img', 'create', '-q', '-f', 'qcow2', target, String(info.virtualSizeBytes)]);
      const jobId = `trivisor-backup-${randomBytes(4).toString('hex')}`;
      const targetNode = `${jobId}-target`;
      const link: BackupLink =
        backupOptions.incremental && chain
          ? { chain: chain.chain, sequence: chain.sequence + 1, kind: 'incremental' }
          : { chain: randomBytes(8).toString('hex'), sequence: 0, kind: 'full' };
      try {
        await withMonitor(spec, async (qmp, live) => {
          // A bitmap QEMU added lives in its memory until it closes the disk: ask QEMU, not the file.
          const bitmaps = await monitorBitmaps(qmp, live);
          // The bitmap this link reads: the one named for the link before, or the legacy one.
          const current =
            link.kind === 'incremental' && chain
              ? (bitmaps.find((b) => b.name === linkBitmap(chain.chain, chain.sequence)) ??
                bitmaps.find((b) => b.name === BACKUP_BITMAP))
              : undefined;
          if (
            link.kind === 'incremental' &&
            (!current || current.inconsistent || current.recording === false)
          ) {
            throw noBase();
          }
          const next = linkBitmap(link.chain, link.sequence);
          // Every other backup bitmap is stale: an older chain's, or one of this link made before a crash.
          for (const b of bitmaps) {
            if (isBackupBitmap(b.name) && b.name !== current?.name) {
              await qmp.execute('block-dirty-bitmap-remove', { node: 'root', name: b.name });
            }
          }
          if (link.kind === 'full') await rm(chainFile(spec), { force: true });
          // A guest's QEMU runs unprivileged: the daemon opens the target and hands it over. The
          // storage daemon of a stopped guest runs as root and opens it itself.
          let filename = target;
          if (live) {
            const added = await qmp.executeWithFds<{ 'fdset-id': number }>('add-fd', { opaque: target }, [
              { kind: 'file', path: target, access: 'readwrite' },
            ]);
            filename = `/dev/fdset/${added['fdset-id']}`;
          }
          try {
            await qmp.execute('blockdev-add', {
              driver: 'qcow2',
              'node-name': targetNode,
              file: { driver: 'file', filename },
            });
          } finally {
            // The node holds its own duplicate: the set's copy goes once nothing uses it.
            const set = /^\/dev\/fdset\/(\d+)$/.exec(filename)?.[1];
            if (set) await qmp.execute('remove-fd', { 'fdset-id': Number(set) }).catch(() => {});
          }
          try {
            const backup = { device: 'root', target: targetNode, 'job-id': jobId, 'auto-dismiss': true };
            // The bitmap of this link starts at the very point its copy is of (one transaction); the
            // link before's bitmap is only read (`never` cleared), and goes once the copy succeeded.
            const actions: unknown[] = [
              { type: 'block-dirty-bitmap-add', data: { node: 'root', name: next, persistent: true } },
              current
                ? {
                    type: 'blockdev-backup',
                    data: { ...backup, sync: 'bitmap', bitmap: current.name, 'bitmap-mode': 'never' },
                  }
                : { type: 'blockdev-backup', data: { ...backup, sync: 'full' } },
            ];
            const agent: AgentAccess | undefined = live
              ? (w) => options.agents.use(p.agentSocket, { timeoutMs: 10_000 }, w)
              : undefined;
            const status = live ? (await qmp.execute<{ status: string }>('query-status')).status : 'stopped';
            try {
              try {
                await runJob(qmp, jobId, actions, status === 'running' ? agent : undefined, spec);
              } catch (e) {
                if (e instanceof Error && /Cannot freeze/.test(e.message)) {
                  // No agent: crash-consistent, as a snapshot without one.
                  await runJob(qmp, jobId, actions, undefined, spec);
                } else {
                  throw e;
                }
              }
            } catch (e) {
              // The link was not made: the link before's bitmap (never cleared) still holds everything.
              await qmp.execute('block-dirty-bitmap-remove', { node: 'root', name: next }).catch(() => {});
              throw e;
            }
            if (current) await qmp.execute('block-dirty-bitmap-remove', { node: 'root', name: current.name });
          } finally {
            await qmp.execute('blockdev-del', { 'node-name': targetNode }).catch(() => {});
          }
        });
        await writeChain(spec, { chain: link.chain, sequence: link.sequence });
        return link;
      } catch (e) {
        await rm(target, { force: true });
        throw e;
      }
    },

    async restoreChain(links, target) {
      const [full, ...incrementals] = links;
      if (!full) throw failedPrecondition('A restore needs at least a full backup.');
      // Each incremental reads, where it holds nothing, from the one before: a backing chain
      // (made of copies: the backups themselves are left as they are).
      const work = `${target}.tmp-chain-${randomBytes(4).toString('hex')}`;
      await mkdir(work, { mode: 0o700 });
      try {
        let below = full;
        for (const [i, inc] of incrementals.entries()) {
          const link = join(work, `${i}.qcow2`);
          await runner.run(['cp', '--reflink=auto', '--sparse=always', '--', inc, link]);
          await runner.run(['qemu-img', 'rebase', '-u', '-f', 'qcow2', '-F', 'qcow2', '-b', below, link]);
          below = link;
        }
        await img.convert(below, target);
      } finally {
        await rm(work, { recursive: true, force: true });
      }
    },

    async resetChain(spec) {
      await rm(chainFile(spec), { force: true });
      const disk = pathsOf(spec).disk;
      if (!(await stat(disk).catch(() => undefined))) return;
      for (const b of await storedBitmaps(runner, disk)) {
        if (isBackupBitmap(b.name)) await runner.run(['qemu-img', 'bitmap', '--remove', disk, b.name]);
      }
    },

    async chainState(spec) {
      const chain = await readChain(spec);
      const disk = pathsOf(spec).disk;
      if (!chain || !(await stat(disk).catch(() => undefined))) return undefined;
      const info = await img.info(disk, { forceShare: true });
      const data: VmChainData = {
        bitmap: linkBitmap(chain.chain, chain.sequence),
        sizeBytes: info.virtualSizeBytes,
      };
      return { chain: chain.chain, sequence: chain.sequence, data: Buffer.from(JSON.stringify(data)) };
    },

    async continueChain(spec, state) {
      if (!CHAIN_ID.test(state.chain) || !Number.isSafeInteger(state.sequence) || state.sequence < 0) {
        return false;
      }
      let data: Partial<VmChainData>;
      try {
        data = JSON.parse(state.data.toString('utf8')) as Partial<VmChainData>;
      } catch {
        return false;
      }
      const name = linkBitmap(state.chain, state.sequence);
      if (data.bitmap !== name || typeof data.sizeBytes !== 'number') return false;
      const disk = pathsOf(spec).disk;
      if (!(await stat(disk).catch(() => undefined))) return false;
      const running = (await liveQemu(spec)) !== undefined;
      if ((await img.info(disk, { forceShare: running })).virtualSizeBytes !== data.sizeBytes) return false;
      if (running) {
        // The file's copy is in-use while QEMU holds it: QEMU's own says whether it records.
        const qmp = await connectQmp(pathsOf(spec).qmpSocket, { timeoutMs: 30_000, runner });
        try {
          const b = (await monitorBitmaps(qmp, true)).find((m) => m.name === name);
          if (!b || b.inconsistent || b.recording === false || b.persistent === false) return false;
        } finally {
          qmp.close();
        }
      } else {
        const b = (await storedBitmaps(runner, disk)).find((m) => m.name === name);
        if (!b || !isSoundBitmap(b)) return false;
      }
      await writeChain(spec, { chain: state.chain, sequence: state.sequence });
      return true;
    },
  };
  return service;
}
