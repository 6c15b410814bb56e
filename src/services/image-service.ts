import { rm } from 'node:fs/promises';
import type { ImageResolver } from '../control/guest-controller.ts';
import { alreadyExists, failedPrecondition, invalidArgument, notFound } from '../core/errors.ts';
import { assertImageAlias } from '../core/names.ts';
import { DEFAULT_PROJECT, projectOfRecord } from '../core/projects.ts';
import type { ImageRecord } from '../core/types.ts';
import type { ImageHandle } from '../drivers/guest-driver.ts';
import { hostRunner, type ProcessRunner } from '../host/runner.ts';
import { debootstrapSuite } from '../images/debootstrap-image.ts';
import { inspectDiskImage, sniffUpload, type UploadKind } from '../images/disk-image.ts';
import type { ImageFiles } from '../images/image-files.ts';
import type { KvStore } from '../store/kv.ts';
import { records, valuesOf } from '../store/records.ts';
import type { EventBus, ImageService, OperationService } from './types.ts';

export interface ImageServiceDeps {
  store: KvStore;
  files: ImageFiles;
  operations: OperationService;
  events: EventBus;
  /** Runs qemu-img to check an uploaded disk image before its import starts (default: the host's). */
  runner?: ProcessRunner;
  /**
   * On a cluster: brings the files of an image this member lacks from a member that has them
   * (decision 0034), verified against the tree's digest or, for a disk image, the digest of its
   * stored disk that its record holds. Absent: a missing image is NotFound.
   */
  fetch?: (image: ImageRecord) => Promise<void>;
}

/**
 * What a guest made without an image (`create --empty`, spec.image ''): a blank disk that a vm
 * guest boots through its firmware, from an ISO until an OS is installed.
 */
export const BLANK_IMAGE: ImageHandle = {
  record: {
    fingerprint: '',
    aliases: [],
    description: 'A blank disk',
    os: '',
    release: '',
    architecture: '',
    source: 'import',
    type: 'disk',
    sizeBytes: 0,
    createdAt: '',
    properties: {},
  },
  rootfs: '',
  blank: true,
  baseDisk: () => Promise.reject(failedPrecondition('A guest made with --empty has no image disk.')),
};

/** The image service plus what the daemon needs at start and the controller needs to build guests. */
export interface ImageServiceWithInternals extends ImageService, ImageResolver {
  /** Makes the built-in busybox image if it is missing (first start). */
  ensureBusybox(): Promise<ImageRecord>;
}

export function createImageService(deps: ImageServiceDeps): ImageServiceWithInternals {
  const { store, files, operations, events } = deps;
  const runner = deps.runner ?? hostRunner();
  /** Fetches of image files under way, one per fingerprint however many guests wait for it. */
  const fetching = new Map<string, Promise<void>>();

  async function allImages(): Promise<ImageRecord[]> {
    return valuesOf(await records.image.list(store));
  }

  /** The record as the API shows it: with its project, `default` for one recorded before projects. */
  const shown = (r: ImageRecord): ImageRecord => ({ ...r, project: projectOfRecord(r) });

  /** By alias or fingerprint prefix, among `scope`'s images (every image when undefined). */
  async function resolve(ref: string, scope?: string): Promise<ImageRecord> {
    if (typeof ref !== 'string' || ref.length === 0) throw invalidArgument('No image given');
    const inScope = (r: ImageRecord) => scope === undefined || projectOfRecord(r) === scope;
    const fp = (await records.imageAlias.at(ref).get(store))?.value;
    if (fp) {
      const r = (await records.image.at(fp).get(store))?.value;
      if (r && inScope(r)) return shown(r);
    }
    if (/^[0-9a-f]{6,64}$/.test(ref)) {
      // Only the project's own fingerprints: another project's must not make a prefix ambiguous.
      const matches = (await allImages())
        .filter((r) => inScope(r) && r.fingerprint.startsWith(ref))
        .map(shown);
      if (matches.length === 1 && matches[0]) return matches[0];
      if (matches.length > 1)
        throw invalidArgument(`Image fingerprint prefix ${ref} is ambiguous; give more digits`);
    }
    throw notFound(`Image ${ref} not found; see trivisor image list`);
  }

  async function assertAliasFree(alias: string, project: string): Promise<void> {
    assertImageAlias(alias);
    const taken = await records.imageAlias.at(alias).get(store);
    if (!taken) return;
    const image = await records.image.at(taken.value).get(store);
    const owner = image ? projectOfRecord(image.value) : project;
    throw alreadyExists(
      owner === project
        ? `Image alias ${alias} already exists`
        : `The image alias ${alias} is taken by an image of another project: aliases are unique on this host, pick another`,
    );
  }

  /** Stores the record and alias of an image whose files are in place. */
  async function register(
    added: Awaited<ReturnType<ImageFiles['addBusybox']>>,
    alias: string | undefined,
    project: string,
  ): Promise<ImageRecord> {
    const before = (await records.image.at(added.fingerprint).get(store))?.value;
    if (before && projectOfRecord(before) !== project) {
      // Image files are stored once per fingerprint: the same tree cannot belong to two projects.
      throw alreadyExists(
        projectOfRecord(before) === DEFAULT_PROJECT
          ? `This image is already on the host in project default (fingerprint ${added.fingerprint}), whose images every project can launch from`
          : 'This image is already on the host in another project: images are stored once per fingerprint',
      );
    }
    const record: ImageRecord = before
      ? before
      : {
          ...added.metadata,
          fingerprint: added.fingerprint,
          project,
          aliases: [],
          sizeBytes: added.sizeBytes,
          createdAt: new Date().toISOString(),
        };
    if (alias && !record.aliases.includes(alias)) record.aliases.push(alias);
    const ops: Parameters<KvStore['txn']>[0]['success'] = [
      records.image.at(record.fingerprint).putOp(record),
    ];
    const compare: Parameters<KvStore['txn']>[0]['compare'] = [];
    if (alias) {
      ops.push(records.imageAlias.at(alias).putOp(record.fingerprint));
      compare.push(records.imageAlias.at(alias).absent());
    }
    const r = await store.txn({ compare, success: ops });
    if (!r.succeeded) throw alreadyExists(`Image alias ${alias} was taken meanwhile`);
    events.publish({
      type: 'lifecycle',
      project,
      action: 'image-created',
      source: `/1.0/images/${record.fingerprint}`,
      metadata: { fingerprint: record.fingerprint, aliases: record.aliases },
    });
    return shown(record);
  }

  /** The service as one project sees it; `scope` undefined is the host's view. */
  function scoped(scope: string | undefined): ImageService {
    const project = scope ?? DEFAULT_PROJECT;
    return {
      inProject: (p) => scoped(p),
      // Trees are the host's: a member asks for one by fingerprint, whatever its project.
      exportTree: (fingerprint) => files.exportTree(fingerprint),
      exportDisk: (fingerprint) => files.exportDisk(fingerprint),

      async list(options = {}) {
        const all = await allImages();
        return all
          .filter((r) => scope === undefined || options.allProjects || projectOfRecord(r) === scope)
          .map(shown);
      },

      get: (ref) => resolve(ref, scope),

      async build(request) {
        const alias = request.alias ?? request.source;
        await assertAliasFree(alias, project);
        await debootstrapSuite(request.source);
        return operations.start({
          project,
          description: `Building image ${alias} from ${request.source}`,
          resources: { images: [`/1.0/images/${alias}`] },
          mayCancel: true,
          async run(ctx) {
            const added = await files.buildDebootstrap(request.source, {
              signal: ctx.signal,
              onProgress: (percent, text) => ctx.progress(percent, text),
            });
            const record = await register(added, alias, project);
            return { fingerprint: record.fingerprint };
          },
        });
      },

      async importTarball(request) {
        let kind: UploadKind;
        try {
          await assertAliasFree(request.alias, project);
          kind = await sniffUpload(request.tarballPath);
          if (kind === 'iso') {
            throw invalidArgument(
              'The upload is an ISO image, which is not an image but a CD for vm guests: keep it as an iso volume (trivisor storage volume import POOL FILE NAME --type iso) and attach it (trivisor config device add GUEST cdrom source=NAME)',
            );
          }
          if (kind === 'unknown') {
            throw invalidArgument(
              'The upload is neither a root file system tarball (tar, plain or compressed) nor a whole-disk image (qcow2, or raw with a partition table)',
            );
          }
          if (kind === 'qcow2' || kind === 'raw-disk') {
            await inspectDiskImage(runner, request.tarballPath, kind === 'qcow2' ? 'qcow2' : 'raw');
          }
        } catch (e) {
          await rm(request.tarballPath, { force: true });
          throw e;
        }
        const disk = kind === 'qcow2' || kind === 'raw-disk';
        return operations.start({
          project,
          description: `Importing ${disk ? 'disk image' : 'image'} ${request.alias}`,
          resources: { images: [`/1.0/images/${request.alias}`] },
          mayCancel: true,
          async run(ctx) {
            try {
              const progress = { signal: ctx.signal, onProgress: ctx.progress.bind(ctx) };
              const added = disk
                ? await files.importDisk(request.tarballPath, {
                    ...progress,
                    format: kind === 'qcow2' ? 'qcow2' : 'raw',
                    description: request.alias,
                    ...(request.sha256 !== undefined && { sha256: request.sha256 }),
                  })
                : await files.importTarball(request.tarballPath, progress);
              const record = await register(added, request.alias, project);
              return { fingerprint: record.fingerprint };
            } finally {
              await rm(request.tarballPath, { force: true });
            }
          },
        });
      },

      async delete(ref) {
        const record = await resolve(ref, scope);
        const users = valuesOf(await records.guest.list(store)).filter((g) => g.image === record.fingerprint);
        if (users.length > 0) {
          // Guests of other projects (launched from default's images) are counted, not named.
          const own = users.filter((g) => scope === undefined || projectOfRecord(g) === scope);
          const others = users.length - own.length;
          const names = [...own.map((g) => g.name), ...(others > 0 ? [`${others} of other projects`] : [])];
          const listed =
            names.slice(0, 5).join(', ') + (names.length > 5 ? ` and ${names.length - 5} more` : '');
          throw failedPrecondition(
            `Image ${ref} is used by guest${names.length > 1 ? 's' : ''} ${listed}; delete them first`,
          );
        }
        await store.txn({
          compare: [],
          success: [
            records.image.at(record.fingerprint).deleteOp(),
            ...record.aliases.map((a) => records.imageAlias.at(a).deleteOp()),
          ],
        });
        await files.remove(record.fingerprint);
        events.publish({
          type: 'lifecycle',
          project: projectOfRecord(record),
          action: 'image-deleted',
          source: `/1.0/images/${record.fingerprint}`,
          metadata: { fingerprint: record.fingerprint, aliases: record.aliases },
        });
      },
    };
  }

  return {
    ...scoped(undefined),

    async ensureBusybox() {
      // Rebuilt each start (it takes well under a second): a busybox-static upgrade yields a new image.
      const added = await files.addBusybox();
      const alias = await records.imageAlias.at('busybox').get(store);
      if (alias?.value === added.fingerprint && (await store.get(records.image.key(added.fingerprint)))) {
        return resolve(added.fingerprint);
      }
      if (alias) {
        // The alias moves to the new build; the old image stays for the guests made from it.
        const old = await records.image.at(alias.value).get(store);
        if (old) {
          const rec = { ...old.value, aliases: old.value.aliases.filter((a) => a !== 'busybox') };
          await records.image.at(rec.fingerprint).put(store, rec);
        }
        await store.delete(alias.key);
      }
      return register(added, 'busybox', DEFAULT_PROJECT);
    },

    async handle(fingerprint) {
      if (fingerprint === '') return BLANK_IMAGE;
      const found = await records.image.at(fingerprint).get(store);
      if (!found) throw notFound(`Image ${fingerprint} not found; it may have been deleted`);
      // The record is the cluster's, the files each member's: fetched once, here, when missing.
      if (deps.fetch && !(await files.exists(fingerprint))) {
        let pending = fetching.get(fingerprint);
        if (!pending) {
          const fetch = deps.fetch;
          pending = fetch(found.value).finally(() => fetching.delete(fingerprint));
          fetching.set(fingerprint, pending);
        }
        await pending;
      }
      return {
        record: found.value,
        rootfs: files.rootfsPath(fingerprint),
        baseDisk: () => files.baseDisk(fingerprint),
      };
    },
  };
}
