import { type FileHandle, open, rename, rm, stat } from 'node:fs/promises';
import { Writable } from 'node:stream';
import type { BackupDirectoryArchiveWire } from '../api/backup-schemas.ts';
import type { AsyncResponse } from '../api/envelopes.ts';
import { FollowFrameReader } from '../api/follow-frames.ts';
import type { Operation } from '../api/types.ts';
import type { CreatePoolRequest, StoragePool } from '../services/pool-service.ts';
import type { RecoverReport } from '../services/storage-service.ts';
import type { SnapshotRecord } from '../storage/storage-records.ts';
import { writeFileBody } from './file-body.ts';
import { parseEnvelope, type Transport } from './transport.ts';

/** Snapshots, copies and backups of guests. */
export interface StorageClient {
  listSnapshots(guest: string): Promise<SnapshotRecord[]>;
  getSnapshot(guest: string, snapshot: string): Promise<SnapshotRecord>;
  createSnapshot(guest: string, snapshot: string): Promise<Operation>;
  deleteSnapshot(guest: string, snapshot: string): Promise<Operation>;
  restoreSnapshot(guest: string, snapshot: string): Promise<Operation>;
  /** Copies `source` (or `source`'s snapshot) to a new guest `name` (on `storage`, default: the source's pool). */
  copyGuest(
    source: string,
    name: string,
    options?: { snapshot?: string; start?: boolean; storage?: string },
  ): Promise<Operation>;
  /** Starts making a backup archive on the daemon; the finished operation's metadata names it (`backup`). */
  /** `uncompressed` (vm): the disk stored plain, for `importBackup(…, { live: true })`. */
  /** `name`: the backup's name (`backup-` and 16 hex digits), so that it can be downloaded while it is made. */
  createBackup(
    guest: string,
    options?: { snapshots?: boolean; incremental?: boolean; uncompressed?: boolean; name?: string },
  ): Promise<Operation>;
  /**
   * Streams a backup to `filePath` (written under a temporary name, renamed when complete). With
   * `follow`, while its export still writes it (issue 20 §1): the download fails, leaving no file,
   * when the export fails or is cancelled. `onBytes`: the size of each piece received; `signal`
   * stops the download, leaving no file (it rejects with the signal's reason).
   */
  downloadBackup(
    guest: string,
    backup: string,
    filePath: string,
    options?: { follow?: boolean; onBytes?: (bytes: number) => void; signal?: AbortSignal },
  ): Promise<void>;
  deleteBackup(guest: string, backup: string): Promise<void>;
  /** Uploads an archive and starts importing it as a guest (named as in the archive unless `name`; on pool `storage`). */
  /** `target`: on a cluster, the member to import on (decision 0034); `live`: a vm guest runs at once (decision 0063). */
  importBackup(
    filePath: string,
    options?: { name?: string; storage?: string; target?: string; live?: boolean },
  ): Promise<Operation>;
  /** Starts importing GUEST/ARCHIVE of the daemon's backup directory, without an upload (decision 0070). */
  importFromBackups(
    archive: string,
    options?: { name?: string; storage?: string; target?: string; live?: boolean },
  ): Promise<Operation>;
  /**
   * The archives of the daemon's backup directory (all guests', or `guest`'s), oldest first
   * (decision 0074); on a cluster `target`'s directory (decision 0077).
   */
  listBackupDirectory(options?: { guest?: string; target?: string }): Promise<BackupDirectoryArchiveWire[]>;
  /** Rebuilds lost guest records from what is on the daemon's disk. */
  recover(): Promise<RecoverReport>;
  /** Starts bringing back a lost member's guests from the backup directory `directory` (on the daemon's host). */
  recoverFromBackups(directory: string): Promise<Operation>;
  listPools(): Promise<StoragePool[]>;
  /** `target`: on a cluster, that member's instance of a pool on every member (decision 0038). */
  getPool(name: string, options?: { target?: string }): Promise<StoragePool>;
  /** `target`: on a cluster, the member whose disks hold the pool (decision 0034). */
  createPool(request: CreatePoolRequest, options?: { target?: string }): Promise<StoragePool>;
  deletePool(name: string): Promise<void>;
}

type Call = <T>(method: string, path: string, json?: unknown) => Promise<T>;
type CallAsync = (method: string, path: string, json?: unknown) => Promise<Operation>;

const enc = encodeURIComponent;

/** An archive's file is read and written 1 MiB at a time on its way through HTTP, not 64 KiB (decision 0072). */
const ARCHIVE_IO_BYTES = 1 << 20;

/** Why a local file could not be used, in words (not the errno line, which names `.partial` files). */
function localReason(e: NodeJS.ErrnoException): string {
  switch (e.code) {
    case 'ENOENT':
      return 'its directory does not exist';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EISDIR':
      return 'it is a directory';
    case 'ENOTDIR':
      return 'a part of its path is not a directory';
    case 'ENOSPC':
      return 'the disk is full';
    case 'EROFS':
      return 'the file system is read-only';
    default:
      return e.code ?? e.message;
  }
}

/**
 * A sink for a followed download's frames (src/api/follow-frames.ts): each data frame written at
 * its offset of `out`, contiguous bytes gathered into 1 MiB writes through two buffers used in
 * turn. Fails on a failure frame (the export's reason) and on a body that ends without the end
 * frame; `sizeBytes` is the archive's size the end frame gave.
 */
function framesInto(out: FileHandle, backup: string): { sink: Writable; sizeBytes: () => number } {
  const reader = new FollowFrameReader();
  let size = -1;
  const buffers = [Buffer.allocUnsafe(ARCHIVE_IO_BYTES), Buffer.allocUnsafe(ARCHIVE_IO_BYTES)];
  let turn = 0;
  let fill = 0;
  let at = 0;
  let writing: Promise<void> = Promise.resolve();
  const writeAll = async (buffer: Buffer, length: number, position: number) => {
    let done = 0;
    while (done < length) {
      done += (await out.write(buffer, done, length - done, position + done)).bytesWritten;
    }
  };
  const flush = async () => {
    if (fill === 0) return;
    await writing;
    writing = writeAll(buffers[turn] as Buffer, fill, at);
    writing.catch(() => {});
    turn = 1 - turn;
    at += fill;
    fill = 0;
  };
  const put = async (offset: number, bytes: Buffer) => {
    if (offset !== at + fill) {
      await flush();
      at = offset;
    }
    let from = 0;
    while (from < bytes.length) {
      const n = bytes.copy(buffers[turn] as Buffer, fill, from);
      fill += n;
      from += n;
      if (fill === ARCHIVE_IO_BYTES) await flush();
    }
  };
  const sink = new Writable({
    highWaterMark: ARCHIVE_IO_BYTES,
    write(chunk: Buffer, _encoding, done) {
      (async () => {
        for (const event of reader.push(chunk)) {
          if (event.type === 'data') await put(event.offset, event.bytes);
          else if (event.type === 'end') size = event.sizeBytes;
          else throw new Error(event.message);
        }
      })().then(() => done(), done);
    },
    final(done) {
      (async () => {
        if (!reader.finished) {
          throw new Error(`The download of backup ${backup} stopped before the archive was complete`);
        }
        await flush();
        await writing;
      })().then(() => done(), done);
    },
  });
  return { sink, sizeBytes: () => size };
}

/** The storage half of the client, over the same transport. */
export function storageMethods(
  transport: Transport,
  helpers: { call: Call; callAsync: CallAsync },
): StorageClient {
  const { call, callAsync } = helpers;
  const snapshots = (guest: string) => `/1.0/guests/${enc(guest)}/snapshots`;
  return {
    listSnapshots: (guest) => call('GET', `${snapshots(guest)}?recursion=1`),
    getSnapshot: (guest, snapshot) => call('GET', `${snapshots(guest)}/${enc(snapshot)}`),
    createSnapshot: (guest, snapshot) => callAsync('POST', snapshots(guest), { name: snapshot }),
    deleteSnapshot: (guest, snapshot) => callAsync('DELETE', `${snapshots(guest)}/${enc(snapshot)}`),
    restoreSnapshot: (guest, snapshot) =>
      callAsync('PUT', `/1.0/guests/${enc(guest)}`, { restore: snapshot }),
    copyGuest: (source, name, o = {}) =>
      callAsync('POST', '/1.0/guests', {
        name,
        source: { type: 'copy', source: o.snapshot ? `${source}/${o.snapshot}` : source },
        ...(o.start !== undefined && { start: o.start }),
        ...(o.storage !== undefined && { storage: o.storage }),
      }),
    createBackup: (guest, o = {}) =>
      callAsync('POST', `/1.0/guests/${enc(guest)}/backups`, {
        snapshots: o.snapshots === true,
        ...(o.incremental && { incremental: true }),
        ...(o.uncompressed && { uncompressed: true }),
        ...(o.name !== undefined && { name: o.name }),
      }),
    async downloadBackup(guest, backup, filePath, options = {}) {
      const partial = `${filePath}.partial`;
      // Opened (and awaited) before the download: a stream that fails to open emits 'error'
      // before anything listens, which crashed the CLI with a stack trace (issue 11, finding 7).
      const out = await open(partial, 'w', 0o600).catch((e: NodeJS.ErrnoException) => {
        throw new Error(`Cannot write ${filePath}: ${localReason(e)}`);
      });
      const watch = {
        ...(options.onBytes !== undefined && { onBytes: options.onBytes }),
        ...(options.signal !== undefined && { signal: options.signal }),
      };
      try {
        const url = `/1.0/guests/${enc(guest)}/backups/${enc(backup)}/export`;
        if (options.follow) {
          const frames = framesInto(out, backup);
          const res = await transport.request('GET', `${url}?follow=true`, { sink: frames.sink, ...watch });
          if (res.status >= 400) parseEnvelope(res);
          const expected = frames.sizeBytes();
          const got = (await stat(partial)).size;
          if (got !== expected) {
            throw new Error(`The download of backup ${backup} ended with ${got} of ${expected} bytes`);
          }
          await out.close();
          await rename(partial, filePath);
          return;
        }
        const res = await transport.request('GET', url, {
          sink: out.createWriteStream({ highWaterMark: ARCHIVE_IO_BYTES }),
          ...watch,
        });
        if (res.status >= 400) parseEnvelope(res);
        const expected = Number(res.headers['content-length']);
        const got = (await stat(partial)).size;
        if (Number.isFinite(expected) && got !== expected) {
          throw new Error(`The download of backup ${backup} stopped after ${got} of ${expected} bytes`);
        }
        await rename(partial, filePath);
      } catch (e) {
        await out.close().catch(() => {});
        await rm(partial, { force: true });
        const err = e as NodeJS.ErrnoException;
        if (err.code === 'ENOSPC') throw new Error(`Cannot write ${filePath}: the disk is full`);
        if (err.code && err.syscall) throw new Error(`Cannot write ${filePath}: ${localReason(err)}`);
        throw e;
      }
    },
    async deleteBackup(guest, backup) {
      await call('DELETE', `/1.0/guests/${enc(guest)}/backups/${enc(backup)}`);
    },
    async importBackup(filePath, o = {}) {
      const size = (await stat(filePath)).size;
      const file = await open(filePath, 'r');
      // The body is sent while the daemon already unpacks it, and after its answer (the import's
      // operation) has come: the file is closed once the body's writing has ended, whichever way.
      let sending: Promise<void> | undefined;
      const query = o.target !== undefined ? `?target=${enc(o.target)}` : '';
      const res = await transport
        .request('POST', `/1.0/backups${query}`, {
          body: (out) => {
            sending = writeFileBody(file, out, { size }).finally(() => file.close());
            return sending;
          },
          headers: {
            'content-type': 'application/octet-stream',
            'content-length': String(size),
            ...(o.name !== undefined && { 'x-trivisor-name': o.name }),
            ...(o.storage !== undefined && { 'x-trivisor-pool': o.storage }),
            ...(o.live && { 'x-trivisor-live': '1' }),
          },
        })
        .catch(async (e: unknown) => {
          // A request that failed before its body was asked for (a TLS connection refused).
          if (sending === undefined) await file.close();
          throw e;
        });
      return parseEnvelope<AsyncResponse>(res).metadata;
    },
    importFromBackups: (archive, o = {}) =>
      call('POST', `/1.0/backups/import${o.target !== undefined ? `?target=${enc(o.target)}` : ''}`, {
        source: { type: 'backup-directory', archive },
        ...(o.name !== undefined && { name: o.name }),
        ...(o.storage !== undefined && { pool: o.storage }),
        ...(o.live && { live: true }),
      }),
    listBackupDirectory: (o = {}) =>
      call(
        'GET',
        `/1.0/backups?recursion=1${o.guest !== undefined ? `&guest=${enc(o.guest)}` : ''}${o.target !== undefined ? `&target=${enc(o.target)}` : ''}`,
      ),
    recover: () => call('POST', '/1.0/admin/recover', {}),
    recoverFromBackups: (directory) => call('POST', '/1.0/admin/recover/backups', { directory }),
    listPools: () => call('GET', '/1.0/storage-pools?recursion=1'),
    getPool: (name, o = {}) =>
      call(
        'GET',
        `/1.0/storage-pools/${enc(name)}${o.target !== undefined ? `?target=${enc(o.target)}` : ''}`,
      ),
    createPool: (request, o = {}) =>
      call('POST', `/1.0/storage-pools${o.target !== undefined ? `?target=${enc(o.target)}` : ''}`, request),
    async deletePool(name) {
      await call('DELETE', `/1.0/storage-pools/${enc(name)}`);
    },
  };
}
