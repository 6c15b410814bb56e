import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { ProcessRunner } from './runner.ts';

/** What `qemu-img info --output=json` says of a qcow2 file (the fields Trivisor reads). */
export interface Qcow2Info {
  virtualSizeBytes: number;
  format: string;
  /** The backing file as the image records it, when it has one. */
  backingFile?: string;
  backingFormat?: string;
  /** Internal snapshots, oldest first. */
  snapshots: string[];
}

/** Options of the commands that read an image a running QEMU may hold. */
export interface ShareOptions {
  /**
   * Open without taking QEMU's image lock (`-U`). Only safe for data that
   * cannot change under the reader, such as an internal snapshot.
   */
  forceShare?: boolean;
  signal?: AbortSignal;
}

/**
 * qemu-img (Debian's qemu-utils) for qcow2 overlays: internal snapshots,
 * flattening and re-basing. Every command goes through the injected runner.
 */
export function qemuImg(runner: ProcessRunner) {
  const run = (argv: string[], signal?: AbortSignal) =>
    runner.run(['qemu-img', ...argv], signal ? { signal } : {});
  const share = (o: ShareOptions | undefined) => (o?.forceShare ? ['-U'] : []);

  return {
    async info(path: string, options?: ShareOptions): Promise<Qcow2Info> {
      const { stdout } = await run(['info', ...share(options), '--output=json', path], options?.signal);
      const raw = JSON.parse(stdout) as {
        'virtual-size': number;
        format: string;
        'backing-filename'?: string;
        'full-backing-filename'?: string;
        'backing-filename-format'?: string;
        snapshots?: Array<{ name: string; id: string }>;
      };
      const info: Qcow2Info = {
        virtualSizeBytes: raw['virtual-size'],
        format: raw.format,
        snapshots: (raw.snapshots ?? [])
          .slice()
          .sort((a, b) => Number(a.id) - Number(b.id))
          .map((s) => s.name),
      };
      const backing = raw['full-backing-filename'] ?? raw['backing-filename'];
      if (backing) info.backingFile = backing;
      if (raw['backing-filename-format']) info.backingFormat = raw['backing-filename-format'];
      return info;
    },

    /** Makes internal snapshot `name` of the image's current state (the image must not be in use). */
    async createSnapshot(path: string, name: string): Promise<void> {
      await run(['snapshot', '-c', name, path]);
    },

    /** Reverts the image's current state to internal snapshot `name` (the image must not be in use). */
    async applySnapshot(path: string, name: string): Promise<void> {
      await run(['snapshot', '-a', name, path]);
    },

    async deleteSnapshot(path: string, name: string): Promise<void> {
      await run(['snapshot', '-d', name, path]);
    },

    /**
     * Writes the content of `source` (its current state, or its internal
     * snapshot) to a new qcow2 at `target`. With `backing`, the target is an
     * overlay on it and only what the source's top layer holds is copied (the
     * source's own backing file must have the same content); without, the
     * target is flat: the whole disk, its zero areas left sparse.
     */
    async convert(
      source: string,
      target: string,
      options: ShareOptions & { snapshot?: string; backing?: { path: string; format: string } } = {},
    ): Promise<void> {
      await run(
        [
          'convert',
          ...share(options),
          ...(options.snapshot === undefined ? [] : ['-l', `snapshot.name=${options.snapshot}`]),
          '-f',
          'qcow2',
          '-O',
          'qcow2',
          ...(options.backing ? ['-B', options.backing.path, '-F', options.backing.format] : []),
          source,
          target,
        ],
        options.signal,
      );
    },

    /**
     * Makes the current state of the qcow2 `disk` read exactly as `content`
     * (any image, e.g. a flat one from another host), writing only the
     * clusters that differ from what `disk` reads now: clusters it shares
     * with its snapshots or its backing file stay shared. A throw-away overlay
     * on `content` is re-based (safe mode, which compares both) onto `disk`,
     * which leaves in it just the differing clusters, and is then committed
     * into `disk`. The disk must not be in use.
     */
    async setContent(
      disk: string,
      content: { path: string; format: string },
      options: { signal?: AbortSignal } = {},
    ): Promise<void> {
      const diff = join(dirname(disk), `.tmp-${basename(disk)}-${randomBytes(4).toString('hex')}.diff`);
      try {
        await run(
          ['create', '-q', '-f', 'qcow2', '-F', content.format, '-b', content.path, diff],
          options.signal,
        );
        await run(['rebase', '-f', 'qcow2', '-F', 'qcow2', '-b', disk, diff], options.signal);
        await run(['commit', '-q', '-f', 'qcow2', diff], options.signal);
      } finally {
        await rm(diff, { force: true });
      }
    },
  };
}

/** The qemu-img helpers of one runner. */
export type QemuImg = ReturnType<typeof qemuImg>;
