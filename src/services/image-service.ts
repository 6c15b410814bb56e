import { rm } from 'node:fs/promises';
import type { ImageResolver } from '../control/guest-controller.ts';
import { alreadyExists, failedPrecondition, invalidArgument, notFound } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { assertImageAlias } from '../core/names.ts';
import type { GuestSpec, ImageRecord } from '../core/types.ts';
import { debootstrapSuite } from '../images/debootstrap-image.ts';
import type { ImageFiles } from '../images/image-files.ts';
import type { KvStore } from '../store/kv.ts';
import type { EventBus, ImageService, OperationService } from './types.ts';

export interface ImageServiceDeps {
  store: KvStore;
  files: ImageFiles;
  operations: OperationService;
  events: EventBus;
}

/** The image service plus what the daemon needs at start and the controller needs to build guests. */
export interface ImageServiceWithInternals extends ImageService, ImageResolver {
  /** Makes the built-in busybox image if it is missing (first start). */
  ensureBusybox(): Promise<ImageRecord>;
}

export function createImageService(deps: ImageServiceDeps): ImageServiceWithInternals {
  const { store, files, operations, events } = deps;

  async function records(): Promise<ImageRecord[]> {
    const { kvs } = await store.list(keys.imagePrefix);
    return kvs.map((kv) => JSON.parse(kv.value) as ImageRecord);
  }

  async function resolve(ref: string): Promise<ImageRecord> {
    if (typeof ref !== 'string' || ref.length === 0) throw invalidArgument('No image given');
    const alias = await store.get(keys.imageAlias(ref));
    const fp = alias?.value;
    if (fp) {
      const kv = await store.get(keys.image(fp));
      if (kv) return JSON.parse(kv.value) as ImageRecord;
    }
    if (/^[0-9a-f]{6,64}$/.test(ref)) {
      const matches = (await records()).filter((r) => r.fingerprint.startsWith(ref));
      if (matches.length === 1 && matches[0]) return matches[0];
      if (matches.length > 1)
        throw invalidArgument(`Image fingerprint prefix ${ref} is ambiguous; give more digits`);
    }
    throw notFound(`Image ${ref} not found; see trivisor image list`);
  }

  async function assertAliasFree(alias: string): Promise<void> {
    assertImageAlias(alias);
    if (await store.get(keys.imageAlias(alias))) throw alreadyExists(`Image alias ${alias} already exists`);
  }

  /** Stores the record and alias of an image whose files are in place. */
  async function register(
    added: Awaited<ReturnType<ImageFiles['addBusybox']>>,
    alias: string | undefined,
  ): Promise<ImageRecord> {
    const existing = await store.get(keys.image(added.fingerprint));
    const record: ImageRecord = existing
      ? (JSON.parse(existing.value) as ImageRecord)
      : {
          ...added.metadata,
          fingerprint: added.fingerprint,
          aliases: [],
          sizeBytes: added.sizeBytes,
          createdAt: new Date().toISOString(),
        };
    if (alias && !record.aliases.includes(alias)) record.aliases.push(alias);
    const ops: Parameters<KvStore['txn']>[0]['success'] = [
      { type: 'put', key: keys.image(record.fingerprint), value: JSON.stringify(record) },
    ];
    const compare: Parameters<KvStore['txn']>[0]['compare'] = [];
    if (alias) {
      ops.push({ type: 'put', key: keys.imageAlias(alias), value: record.fingerprint });
      compare.push({ key: keys.imageAlias(alias), target: 'version', op: '=', value: 0 });
    }
    const r = await store.txn({ compare, success: ops });
    if (!r.succeeded) throw alreadyExists(`Image alias ${alias} was taken meanwhile`);
    events.publish({
      type: 'lifecycle',
      action: 'image-created',
      source: `/1.0/images/${record.fingerprint}`,
      metadata: { fingerprint: record.fingerprint, aliases: record.aliases },
    });
    return record;
  }

  return {
    list: records,
    get: resolve,

    async build(request) {
      const alias = request.alias ?? request.source;
      await assertAliasFree(alias);
      await debootstrapSuite(request.source);
      return operations.start({
        description: `Building image ${alias} from ${request.source}`,
        resources: { images: [`/1.0/images/${alias}`] },
        mayCancel: true,
        async run(ctx) {
          const added = await files.buildDebootstrap(request.source, {
            signal: ctx.signal,
            onProgress: (percent, text) => ctx.progress(percent, text),
          });
          const record = await register(added, alias);
          return { fingerprint: record.fingerprint };
        },
      });
    },

    async importTarball(request) {
      try {
        await assertAliasFree(request.alias);
      } catch (e) {
        await rm(request.tarballPath, { force: true });
        throw e;
      }
      return operations.start({
        description: `Importing image ${request.alias}`,
        resources: { images: [`/1.0/images/${request.alias}`] },
        mayCancel: true,
        async run(ctx) {
          try {
            const added = await files.importTarball(request.tarballPath, {
              signal: ctx.signal,
              onProgress: (percent, text) => ctx.progress(percent, text),
            });
            const record = await register(added, request.alias);
            return { fingerprint: record.fingerprint };
          } finally {
            await rm(request.tarballPath, { force: true });
          }
        },
      });
    },

    async delete(ref) {
      const record = await resolve(ref);
      const { kvs } = await store.list(keys.guestPrefix);
      const users = kvs
        .map((kv) => JSON.parse(kv.value) as GuestSpec)
        .filter((g) => g.image === record.fingerprint);
      if (users.length > 0) {
        const names = users.map((g) => g.name);
        const shown =
          names.slice(0, 5).join(', ') + (names.length > 5 ? ` and ${names.length - 5} more` : '');
        throw failedPrecondition(
          `Image ${ref} is used by guest${names.length > 1 ? 's' : ''} ${shown}; delete them first`,
        );
      }
      await store.txn({
        compare: [],
        success: [
          { type: 'delete', key: keys.image(record.fingerprint) },
          ...record.aliases.map((a) => ({ type: 'delete' as const, key: keys.imageAlias(a) })),
        ],
      });
      await files.remove(record.fingerprint);
      events.publish({
        type: 'lifecycle',
        action: 'image-deleted',
        source: `/1.0/images/${record.fingerprint}`,
        metadata: { fingerprint: record.fingerprint, aliases: record.aliases },
      });
    },

    async ensureBusybox() {
      // Rebuilt each start (it takes well under a second): a busybox-static upgrade yields a new image.
      const added = await files.addBusybox();
      const alias = await store.get(keys.imageAlias('busybox'));
      if (alias?.value === added.fingerprint && (await store.get(keys.image(added.fingerprint)))) {
        return resolve(added.fingerprint);
      }
      if (alias) {
        // The alias moves to the new build; the old image stays for the guests made from it.
        const old = await store.get(keys.image(alias.value));
        if (old) {
          const rec = JSON.parse(old.value) as ImageRecord;
          rec.aliases = rec.aliases.filter((a) => a !== 'busybox');
          await store.put(keys.image(rec.fingerprint), JSON.stringify(rec));
        }
        await store.delete(keys.imageAlias('busybox'));
      }
      return register(added, 'busybox');
    },

    async handle(fingerprint) {
      const kv = await store.get(keys.image(fingerprint));
      if (!kv) throw notFound(`Image ${fingerprint} not found; it may have been deleted`);
      return {
        record: JSON.parse(kv.value) as ImageRecord,
        rootfs: files.rootfsPath(fingerprint),
        baseDisk: () => files.baseDisk(fingerprint),
      };
    },
  };
}
