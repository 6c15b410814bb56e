import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { invalidArgument, TrivisorError } from '../core/errors.ts';
import type { ProcessRunner } from '../host/runner.ts';
import { hashedOnTheWay, offloadedSha256 } from '../host/sha256-offload.ts';
import {
  ArchiveDamaged,
  type ArchiveMember,
  listArchive,
  memberChunks,
  readMember,
} from '../storage/backup-archive.ts';
import { writeThroughFifo } from '../storage/fifo-stream.ts';
import type { BackupManifest } from '../storage/storage-records.ts';

/**
 * Reading a backup archive (decision 35), shared by an import and by the member that receives a
 * moved guest: its manifest checked against its members before anything is applied, then each
 * payload fed once from the archive into a driver through a FIFO, its checksum computed on the way.
 */
export interface OpenedArchive {
  path: string;
  manifest: BackupManifest;
  /** The archive's files by name. */
  members: Map<string, ArchiveMember>;
}

/** The refusal of a payload whose bytes are not what the manifest says. */
export const corrupted = (rel: string): TrivisorError =>
  invalidArgument(`The backup archive is corrupted: ${rel} does not match its checksum`);

/**
 * Lists the archive and reads its manifest; refuses, in one line, one that is not whole.
 * `snapshotsOnly`: a live move's cold part (decision 0088), its snapshots and no root file system.
 */
export async function openArchive(
  path: string,
  options: { snapshotsOnly?: boolean } = {},
): Promise<OpenedArchive> {
  const listed = await listArchive(path).catch((e: unknown) => {
    if (e instanceof ArchiveDamaged) {
      throw invalidArgument(
        `The backup archive is corrupted or truncated (${e.message}): make the export again`,
      );
    }
    throw e;
  });
  const members = new Map(listed.filter((m) => m.type === 'file').map((m) => [m.name, m]));
  const manifestMember = members.get('manifest.json');
  if (!manifestMember)
    throw invalidArgument('The file is not a Trivisor backup: it has no readable manifest.json');
  const manifest = parseManifest(
    await readMember(path, manifestMember, MAX_MANIFEST_BYTES).catch(() => Buffer.alloc(0)),
    options.snapshotsOnly === true,
  );
  for (const [rel, want] of Object.entries(manifest.files)) {
    const member = members.get(rel);
    if (!member) {
      throw invalidArgument(
        `The backup archive lacks ${rel}, which its manifest lists: make the export again`,
      );
    }
    if (member.size !== want.sizeBytes) throw corrupted(rel);
  }
  for (const snap of manifest.snapshots) {
    if (!manifest.files[`snapshots/${snap.name}.tar.zst`]) {
      throw invalidArgument(`The backup archive lacks snapshot ${snap.name}: make the export again`);
    }
  }
  return { path, manifest, members };
}

/** The bytes of every payload the manifest lists, for progress. */
export const payloadBytes = (archive: OpenedArchive): number =>
  Object.values(archive.manifest.files).reduce((n, f) => n + f.sizeBytes, 0);

/**
 * Feeds payload `rel` to `consume` (a driver's importTar, given a FIFO's path) and refuses it
 * when its checksum differs; `work` is a private directory for the FIFO.
 */
export async function feedPayload(options: {
  archive: OpenedArchive;
  rel: string;
  work: string;
  runner: ProcessRunner;
  signal: AbortSignal;
  onBytes?: (n: number) => void;
  consume: (path: string) => Promise<unknown>;
}): Promise<void> {
  const { archive, rel, signal } = options;
  const member = archive.members.get(rel);
  const want = archive.manifest.files[rel];
  if (!member || !want) throw corrupted(rel);
  const fifo = join(options.work, rel.replaceAll('/', '-'));
  await options.runner.run(['mkfifo', '-m', '0600', fifo]);
  // Hashed in a worker thread while the chunk is written into the FIFO (src/host/sha256-offload.ts).
  const hash = offloadedSha256();
  let sha256: string;
  try {
    const failure = await writeThroughFifo(
      fifo,
      options.consume,
      hashedOnTheWay(memberChunks(archive.path, member), hash),
      (chunk) => {
        signal.throwIfAborted();
        options.onBytes?.(chunk.length);
      },
    ).then(
      () => undefined,
      (e: unknown) => e ?? new Error('failed'),
    );
    await rm(fifo, { force: true });
    if (signal.aborted) throw new TrivisorError('Cancelled', 'The import was cancelled');
    // Throws if the hashing itself failed (the thread), which is no fault of the archive's.
    sha256 = await hash.digest();
    // A damaged payload makes its consumer fail too: the checksum names the cause.
    if (sha256 !== want.sha256) throw corrupted(rel);
    if (failure) throw failure;
  } finally {
    hash.discard();
  }
}

/** A manifest is a few KiB (its snapshots' records): anything far larger is not one. */
export const MAX_MANIFEST_BYTES = 16 * 2 ** 20;

/** Parses and checks a manifest's shape; `snapshotsOnly`: a live move's cold part. */
export function parseManifest(data: Buffer, snapshotsOnly: boolean): BackupManifest {
  let manifest: BackupManifest;
  try {
    manifest = JSON.parse(data.toString('utf8')) as BackupManifest;
  } catch {
    throw invalidArgument('The file is not a Trivisor backup: it has no readable manifest.json');
  }
  if (manifest.format !== 'trivisor-backup/1') {
    throw invalidArgument(`The backup format ${JSON.stringify(manifest.format)} is not known to this daemon`);
  }
  // rootfs.tar: an uncompressed export, for a live restore (decision 0063).
  if (snapshotsOnly) {
    if (!manifest.files || manifest.files['rootfs.tar.zst'] || manifest.files['rootfs.tar'])
      throw invalidArgument("The archive of a live move's snapshots lists a root file system");
  } else if (!manifest.files?.['rootfs.tar.zst'] === !manifest.files?.['rootfs.tar'])
    throw invalidArgument('The backup manifest lists no rootfs.tar.zst (or rootfs.tar)');
  for (const rel of Object.keys(manifest.files)) {
    if (!/^(rootfs\.tar(\.zst)?|snapshots\/[a-z0-9-]+\.tar\.zst)$/.test(rel)) {
      throw invalidArgument(`The backup manifest lists an unexpected file ${JSON.stringify(rel)}`);
    }
  }
  return manifest;
}
