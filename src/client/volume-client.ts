import type {
  AttachVolumeRequest,
  CreateVolumeRequest,
  StorageVolume,
  VolumeChange,
} from '../services/volume-service.ts';

/** Custom storage volumes. */
export interface VolumeClient {
  listVolumes(pool: string): Promise<StorageVolume[]>;
  getVolume(pool: string, name: string): Promise<StorageVolume>;
  /** `target`: on a cluster, the member to make it on (a pool on every member, the default pool). */
  createVolume(
    pool: string,
    request: CreateVolumeRequest,
    options?: { target?: string },
  ): Promise<StorageVolume>;
  /** Uploads an ISO image as an iso volume `name` (a CD-ROM for vm guests). */
  importIsoVolume(pool: string, name: string, file: string): Promise<StorageVolume>;
  /** Grows a volume to `size` (e.g. `2GiB`). */
  resizeVolume(pool: string, name: string, size: string): Promise<VolumeChange>;
  deleteVolume(pool: string, name: string): Promise<void>;
  attachVolume(pool: string, name: string, request: AttachVolumeRequest): Promise<VolumeChange>;
  detachVolume(
    pool: string,
    name: string,
    request: { guest: string; device?: string },
  ): Promise<VolumeChange>;
}

type Call = <T>(method: string, path: string, json?: unknown) => Promise<T>;
/** Sends a file as a request body with headers; resolves with the envelope's metadata. */
type Upload = <T>(path: string, file: string, headers: Record<string, string>) => Promise<T>;

const enc = encodeURIComponent;

/** The volume part of the client, over the same transport. */
export function volumeMethods(call: Call, upload: Upload): VolumeClient {
  const url = (pool: string, name?: string) =>
    `/1.0/storage-pools/${enc(pool)}/volumes/custom${name === undefined ? '' : `/${enc(name)}`}`;
  return {
    listVolumes: (pool) => call('GET', `${url(pool)}?recursion=1`),
    getVolume: (pool, name) => call('GET', url(pool, name)),
    createVolume: (pool, request, o = {}) =>
      call('POST', `${url(pool)}${o.target !== undefined ? `?target=${enc(o.target)}` : ''}`, request),
    importIsoVolume: (pool, name, file) =>
      upload(url(pool), file, { 'x-trivisor-name': name, 'x-trivisor-type': 'iso' }),
    resizeVolume: (pool, name, size) => call('PATCH', url(pool, name), { config: { size } }),
    async deleteVolume(pool, name) {
      await call('DELETE', url(pool, name));
    },
    attachVolume: (pool, name, request) => call('POST', `${url(pool, name)}/attach`, request),
    detachVolume: (pool, name, request) => call('POST', `${url(pool, name)}/detach`, request),
  };
}
