import { copyFile, link, mkdir, readdir, stat } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { asTrivisorError, conflict, failedPrecondition, invalidArgument } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { isDnsLabel } from '../core/names.ts';
import type { GuestSpec, Operation } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import { digestOf } from '../storage/backup-archive.ts';
import { listShipped, restorePoint, type ShippedBackup } from '../storage/shipped-backups.ts';
import type { KvStore, TxnOp } from '../store/kv.ts';
import { records } from '../store/records.ts';
import { openArchive } from './archive-reader.ts';
import { handOver, type MoveReceiver, type MoveTransport } from './guest-move.ts';
import { succeeded } from './operation-service.ts';
import type { StorageService } from './storage-service.ts';
import type { GuestService, OperationService } from './types.ts';
import { provisionedAt, waitForGuest } from './wait-guest.ts';

/**
 * `trivisor admin recover --from-backups DIR` (issue 13 part 5; decisions 0046 and 0062): brings
 * back, from the latest backups each has in the backup directory, every guest that a lost member
 * held and every guest the store no longer knows. The latest backups are the newest chain's full
 * backup and its incrementals in order, every payload of every link checked against its checksum
 * before anything is applied; a link missing or damaged is named (`problems`), and the recovery
 * falls back to the links before it, or to the chain before when the full is the one lacking.
 *
 * - A guest whose member is Offline keeps its records, which change hands in one transaction
 *   compared against the spec as read and the lost member's ownership: the spec names the member
 *   the scheduler picks among the Online ones (desired Stopped), its status and its snapshots'
 *   records go (the snapshots were on the lost member's disks). That member's controller makes
 *   the guest's files from its image as for a new guest, the archive is applied onto them as in a
 *   move (decision 0040), and the guest is started if it was meant to run. Its name, keys, NICs
 *   (MAC and address) are the cluster's; its disk is the backup's.
 * - A guest the store does not know is imported on this member, as `trivisor import` would.
 * - A guest whose member is Online, or this host's own, is left alone: its member has it.
 *
 * Each guest is recovered on its own: one that fails is reported with the reason, the others go on.
 */
export interface RecoverReport {
  /** `backup`: the newest link applied; `links`: every one, in order; `problems`: why newer ones were not. */
  recovered: Array<{ name: string; member: string; backup: string; links: string[]; problems: string[] }>;
  skipped: Array<{ name: string; reason: string }>;
}

export interface BackupRecoveryDeps {
  store: KvStore;
  hostName: string;
  operations: OperationService;
  guests: Pick<GuestService, 'placementFor' | 'changeState'>;
  storage: Pick<StorageService, 'importBackup'>;
  /** The cluster's members and their status; none on a single host. */
  members: () => Promise<Array<{ name: string; status: string }>>;
  /** Sends an archive to another member's move receiver (absent on a single host). */
  transport?: Pick<MoveTransport, 'send'>;
  /** This member's move receiver (absent on a single host). */
  receiver?: Pick<MoveReceiver, 'receive'>;
  /** Where copies of archives are made for an import or a local receive (both remove what they are given). */
  workDir: string;
  log: Logger;
  /** How long a member may take to make a guest's files, and to start it (default 5 min). */
  convergeMs?: number;
}

export interface BackupRecovery {
  recover(directory: string): Promise<Operation>;
}

export function createBackupRecovery(deps: BackupRecoveryDeps): BackupRecovery {
  const { store, hostName } = deps;
  const log = deps.log.child({ component: 'backup-recovery' });
  const convergeMs = deps.convergeMs ?? 5 * 60_000;

  /** A copy of `path` the consumer may remove: a hard link where it can be, else a copy. */
  async function disposableCopy(path: string, name: string): Promise<string> {
    await mkdir(deps.workDir, { recursive: true, mode: 0o700 });
    const copy = join(deps.workDir, `.recover-${name}-${Date.now()}.tar`);
    await link(path, copy).catch(() => copyFile(path, copy));
    return copy;
  }

  /**
   * The links to restore a guest from: the newest restorable point (shipped-backups.ts
   * restorePoint), each link's archive opened and every payload hashed against its manifest; a
   * link that fails counts as missing and the point is chosen again without it.
   */
  async function verifiedLinks(
    directory: string,
    name: string,
  ): Promise<{ links: ShippedBackup[]; problems: string[] }> {
    const shipped = await listShipped(directory, name);
    const damaged = new Set<string>();
    const problems: string[] = [];
    for (;;) {
      const point = restorePoint(shipped, damaged);
      let bad: string | undefined;
      for (const link of point.links) {
        const why = await damage(link, name);
        if (why) {
          bad = link.name;
          problems.push(`Backup ${link.name} cannot be used: ${why}`);
          break;
        }
      }
      if (bad === undefined) return { links: point.links, problems: [...problems, ...point.problems] };
      damaged.add(bad);
    }
  }

  /** Why a shipped archive cannot be applied as the link its name says, or undefined when it can. */
  async function damage(link: ShippedBackup, name: string): Promise<string | undefined> {
    try {
      const archive = await openArchive(link.path);
      const { manifest } = archive;
      if (manifest.guest.name !== name) return `it is a backup of guest ${manifest.guest.name}`;
      const want = link.link;
      const got = manifest.incremental;
      if (want && (got?.chain !== want.chain || got.sequence !== want.sequence)) {
        return `its manifest says it is ${got ? `link ${got.sequence} of chain ${got.chain}` : 'a whole archive'}`;
      }
      for (const [rel, file] of Object.entries(manifest.files)) {
        const member = archive.members.get(rel);
        if (!member || (await digestOf(archive.path, member)).sha256 !== file.sha256)
          return `${rel} does not match its checksum`;
      }
      return undefined;
    } catch (e) {
      return asTrivisorError(e).message;
    }
  }

  /** Gives guest `spec` (of lost member `lost`) to `target` and puts the archives' disk under it, in order. */
  async function rehome(
    spec: GuestSpec,
    modRevision: number,
    lost: string,
    target: string,
    archives: string[],
  ) {
    if (!deps.transport || !deps.receiver) throw failedPrecondition('This host is not in a cluster');
    const name = spec.name;
    // The snapshots were on the lost member's disks: their records go with the hand-over.
    const dropSnapshots: TxnOp = { type: 'delete', key: keys.snapshots(name), prefix: true };
    const r = await handOver(store, { value: spec, modRevision }, lost, target, [dropSnapshots]);
    if (!r.succeeded)
      throw conflict(`Guest ${name} was changed while it was being recovered; run the recovery again`);
    const { generation } = r;
    const signal = AbortSignal.timeout(convergeMs);
    await waitForGuest(store, name, provisionedAt(generation), signal);
    for (const archive of archives) {
      if (target === hostName) await deps.receiver.receive(name, await disposableCopy(archive, name), signal);
      else await deps.transport.send(target, name, archive, signal);
    }
    if (spec.desired !== 'Stopped') {
      await succeeded(deps.operations, await deps.guests.changeState(name, { action: 'start' }));
    }
  }

  return {
    async recover(directory) {
      if (typeof directory !== 'string' || !isAbsolute(directory)) {
        throw invalidArgument(`The backup directory must be an absolute path on host ${hostName}`);
      }
      const st = await stat(directory).catch(() => undefined);
      if (!st?.isDirectory()) throw invalidArgument(`${directory} is not a directory on host ${hostName}`);
      return deps.operations.start({
        project: 'default',
        description: `Recovering guests from the backups in ${directory}`,
        resources: {},
        async run(ctx) {
          const report: RecoverReport = { recovered: [], skipped: [] };
          const names = (await readdir(directory)).filter(isDnsLabel);
          const [members, specs] = await Promise.all([deps.members(), records.guest.list(store)]);
          const statusOf = new Map(members.map((m) => [m.name, m.status]));
          const specOf = new Map(specs.items.map((s) => [s.value.name, s]));
          let done = 0;
          for (const name of names.sort()) {
            ctx.signal.throwIfAborted();
            ctx.progress(Math.floor((done++ * 100) / names.length), `guest ${name}`);
            if ((await listShipped(directory, name)).length === 0) continue;
            const held = specOf.get(name);
            try {
              const owner = held?.value.location;
              const ownerStatus = owner === undefined ? undefined : statusOf.get(owner);
              if (held && (owner === hostName || ownerStatus === undefined || ownerStatus === 'Online')) {
                report.skipped.push({ name, reason: `it is on member ${owner}, which has it` });
                continue;
              }
              if (held && ownerStatus !== 'Offline') {
                report.skipped.push({ name, reason: `its member ${owner} is ${ownerStatus}, not lost` });
                continue;
              }
              const { links, problems } = await verifiedLinks(directory, name);
              for (const problem of problems) log.warn({ guest: name, problem }, 'backup chain not whole');
              const latest = links.at(-1);
              if (!latest)
                throw failedPrecondition(`No backup of ${name} can be restored: ${problems.join('; ')}`);
              const done = {
                name,
                backup: latest.name,
                links: links.map((l) => l.name),
                problems,
              };
              if (!held) {
                // As `trivisor import` of each link in order: the full makes the guest, each
                // incremental goes onto it (stopped, as an import leaves it).
                for (const link of links) {
                  const op = await deps.storage.importBackup({
                    archivePath: await disposableCopy(link.path, name),
                  });
                  await succeeded(deps.operations, op);
                }
                report.recovered.push({ ...done, member: hostName });
                continue;
              }
              const place = await deps.guests.placementFor?.({
                model: held.value.model,
                config: held.value.config,
              });
              if (!place) throw failedPrecondition('This host places no guests: it is not in a cluster');
              await rehome(
                held.value,
                held.modRevision,
                held.value.location,
                place.member,
                links.map((l) => l.path),
              );
              report.recovered.push({ ...done, member: place.member });
            } catch (e) {
              const reason = asTrivisorError(e).message;
              log.warn({ guest: name, err: reason }, 'not recovered from its backup');
              report.skipped.push({ name, reason });
            }
          }
          return { recovered: report.recovered, skipped: report.skipped };
        },
      });
    },
  };
}
