import type { AsyncResponse, ErrorResponse, SyncResponse } from '../../src/api/envelopes.ts';
import type { AdviceAnswer, ConsolidationPlanWire, PlanHistoryRange } from '../../src/api/plan-schemas.ts';
import type { Operation } from '../../src/api/types.ts';
import type { History, HistoryRange, SessionBody } from '../../src/api/web-schemas.ts';
import { type AuthClient, authMethods } from '../../src/client/auth-client.ts';
import type { TrivisorClient } from '../../src/client/client.ts';
import { type ClusterClient, clusterMethods } from '../../src/client/cluster-client.ts';
import { type ProjectClient, projectMethods } from '../../src/client/project-client.ts';
import { type VolumeClient, volumeMethods } from '../../src/client/volume-client.ts';
import { readFollowed } from './follow-download.ts';

/*
 * The browser's typed client: the public REST API over fetch, with the types (and, where the
 * Node client's code is free of Node, the very code) of src/client and src/api. A change of
 * the API's types breaks this file's type check (web/tsconfig.json), not a user's page.
 */

/** An error the API answered (or a failure to reach it: status 0). */
export class ApiError extends Error {
  readonly status: number;
  constructor(message: string, status: number) {
    super(message);
    this.status = status;
  }
}

/** The methods of the Node client the UI calls, with the same signatures. */
type Shared = Pick<
  TrivisorClient,
  | 'serverInfo'
  | 'listGuests'
  | 'getGuest'
  | 'createGuest'
  | 'updateGuestConfig'
  | 'deleteGuest'
  | 'getGuestState'
  | 'changeGuestState'
  | 'startExec'
  | 'listImages'
  | 'buildImage'
  | 'deleteImage'
  | 'listOperations'
  | 'getOperation'
  | 'cancelOperation'
  | 'websocketTicket'
  | 'listNetworks'
  | 'getNetwork'
  | 'createNetwork'
  | 'updateNetwork'
  | 'deleteNetwork'
  | 'addNetworkAcl'
  | 'removeNetworkAcl'
  | 'attachNetwork'
  | 'detachNetwork'
  | 'addNetworkForward'
  | 'removeNetworkForward'
  | 'listSnapshots'
  | 'createSnapshot'
  | 'deleteSnapshot'
  | 'restoreSnapshot'
  | 'copyGuest'
  | 'moveGuest'
  | 'createBackup'
  | 'deleteBackup'
  | 'listPools'
  | 'createPool'
  | 'deletePool'
  | 'recover'
  | 'recoverFromBackups'
  | 'listBackupDirectory'
  | 'importFromBackups'
>;

/** Everything the UI asks the daemon. */
export interface WebApi extends Shared, VolumeClient, ProjectClient, AuthClient, ClusterClient {
  /** Waits up to `timeoutSeconds` for an operation to end; it answers as it is then. */
  waitOperation(id: string, timeoutSeconds: number): Promise<Operation>;
  consoleLog(name: string): Promise<string>;
  /** Attaches to a vm or pvm guest's console: the operation's metadata names its WebSocket. */
  openConsole(name: string, type?: string): Promise<Operation>;
  /** A file of a running guest, with its mode. */
  pullFile(name: string, path: string): Promise<{ blob: Blob; mode: string }>;
  pushFile(
    name: string,
    path: string,
    data: Blob,
    options?: { mode?: string; createDirs?: boolean },
  ): Promise<void>;
  importImage(file: Blob, alias: string, onProgress?: (fraction: number) => void): Promise<Operation>;
  /** Uploads an ISO image as an iso volume of `pool` (a CD-ROM for vm guests, issue 17). */
  uploadIsoVolume(
    pool: string,
    name: string,
    file: Blob,
    onProgress?: (fraction: number) => void,
  ): Promise<Awaited<ReturnType<VolumeClient['getVolume']>>>;
  /** `live`: a vm guest runs at once from an uncompressed archive, its disk copied behind it (decision 0063). */
  importBackup(
    file: Blob,
    options: { name?: string; storage?: string; live?: boolean },
    onProgress?: (fraction: number) => void,
  ): Promise<Operation>;
  /**
   * Plans a consolidation as `trivisor plan consolidate` does, in the daemon (decision 0065): an
   * inventory file (CSV, or gzip'd), or with no file the project's guests from `fromHistory`.
   */
  planConsolidation(
    inventory: Blob | null,
    options: {
      hostSize: string;
      percentile?: number;
      seed?: number;
      forecastDays?: number;
      fromHistory?: PlanHistoryRange;
    },
  ): Promise<ConsolidationPlanWire>;
  /** ct, pvm or vm for each workload of a profile file (docs/advisor-profile.md), from the daemon's table. */
  adviseWorkloads(profiles: Blob): Promise<AdviceAnswer>;
  /** Where a browser downloads a finished backup (the session cookie authenticates the GET). */
  backupUrl(guest: string, backup: string): string;
  /**
   * Downloads a backup while its export writes it (`export?follow=true`, issue 20 §4): the whole
   * archive, or the export's failure (or how the download fell short) as the error.
   */
  followBackup(
    guest: string,
    backup: string,
    onBytes?: (receivedBytes: number) => void,
    /** Settles when the export's operation ended: from then on a silent download is stopped. */
    exportEnded?: Promise<unknown>,
  ): Promise<Blob>;
  guestHistory(name: string, range: HistoryRange): Promise<History>;
  /** A member's history: this one's, or another's (`member`), which the API asks of it. */
  hostHistory(range: HistoryRange, member?: string): Promise<History>;
  signIn(credentials: { token: string } | { link: string }): Promise<SessionBody>;
  session(): Promise<SessionBody>;
  signOut(): Promise<void>;
  /** A WebSocket URL for `path` (which may carry a query) opened with a fresh ticket. */
  websocketUrl(path: string): Promise<string>;
}

/** Options of `createWebApi`. */
export interface WebApiOptions {
  /** The project every request acts in (`?project=`). */
  project: () => string;
  /** The session's CSRF token, sent with every change. */
  csrf: () => string | undefined;
  /** Called when the daemon says the caller is not (or no longer) signed in. */
  onUnauthenticated: () => void;
  /** Called with whether the daemon could be reached at all. */
  onReachable?: (reachable: boolean) => void;
  base?: string;
}

const enc = encodeURIComponent;

/** `path` with `?project=`, except on routes outside projects (as src/client/transport.ts's inProject). */
export function inProject(path: string, project: string): string {
  if (project === 'default' || /[?&]project=/.test(path)) return path;
  const bare = path.split('?')[0] ?? '';
  if (!bare.startsWith('/1.0/') || bare.startsWith('/1.0/projects') || bare.startsWith('/1.0/auth/'))
    return path;
  return `${path}${path.includes('?') ? '&' : '?'}project=${enc(project)}`;
}

export function createWebApi(options: WebApiOptions): WebApi {
  const base = options.base ?? '';

  const send = async (
    method: string,
    path: string,
    body?: BodyInit | null,
    headers: Record<string, string> = {},
  ) => {
    const h: Record<string, string> = { ...headers };
    const csrf = options.csrf();
    if (method !== 'GET' && csrf) h['x-trivisor-csrf'] = csrf;
    let res: Response;
    try {
      res = await fetch(`${base}${inProject(path, options.project())}`, {
        method,
        headers: h,
        body: body ?? null,
        credentials: 'same-origin',
      });
    } catch {
      options.onReachable?.(false);
      throw new ApiError('Cannot reach the Trivisor daemon: is it running?', 0);
    }
    options.onReachable?.(true);
    return res;
  };

  const envelope = async <T>(res: Response): Promise<T> => {
    const type = res.headers.get('content-type') ?? '';
    const parsed = type.includes('json') ? ((await res.json().catch(() => undefined)) as unknown) : undefined;
    const error = parsed as Partial<ErrorResponse> | undefined;
    if (res.status >= 400 || error?.type === 'error') {
      if (res.status === 401) options.onUnauthenticated();
      throw new ApiError(typeof error?.error === 'string' ? error.error : `HTTP ${res.status}`, res.status);
    }
    if (parsed === undefined) throw new ApiError(`Expected a JSON answer (HTTP ${res.status})`, res.status);
    return parsed as T;
  };

  const call = async <T>(method: string, path: string, json?: unknown): Promise<T> => {
    const res = await send(
      method,
      path,
      json === undefined ? null : JSON.stringify(json),
      json === undefined ? {} : { 'content-type': 'application/json' },
    );
    return (await envelope<SyncResponse<T>>(res)).metadata;
  };
  const callAsync = async (method: string, path: string, json?: unknown): Promise<Operation> => {
    const res = await send(
      method,
      path,
      json === undefined ? null : JSON.stringify(json),
      json === undefined ? {} : { 'content-type': 'application/json' },
    );
    return (await envelope<AsyncResponse>(res)).metadata;
  };

  /** Uploads with progress: fetch has no upload progress, XMLHttpRequest does. */
  const upload = <T = Operation>(
    path: string,
    file: Blob,
    headers: Record<string, string>,
    onProgress?: (fraction: number) => void,
  ): Promise<T> =>
    new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open('POST', `${base}${inProject(path, options.project())}`);
      xhr.setRequestHeader('content-type', 'application/octet-stream');
      const csrf = options.csrf();
      if (csrf) xhr.setRequestHeader('x-trivisor-csrf', csrf);
      for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) onProgress?.(e.loaded / e.total);
      };
      xhr.onerror = () => reject(new ApiError('The upload failed: the connection broke', 0));
      xhr.onload = () => {
        let body: { type?: string; error?: string; metadata?: T } = {};
        try {
          body = JSON.parse(xhr.responseText);
        } catch {}
        if (xhr.status >= 400 || body.type === 'error') {
          if (xhr.status === 401) options.onUnauthenticated();
          reject(new ApiError(body.error ?? `HTTP ${xhr.status}`, xhr.status));
        } else resolve(body.metadata as T);
      };
      xhr.send(file);
    });

  const snapshots = (guest: string) => `/1.0/guests/${enc(guest)}/snapshots`;

  return {
    // The Node client uploads files by path, which a page has none of: its uploads are below.
    ...(volumeMethods as (c: typeof call, upload: (...args: unknown[]) => Promise<never>) => VolumeClient)(
      call,
      async () => {
        throw new ApiError('Uploading a file by its path is not possible from a browser', 400);
      },
    ),
    ...projectMethods(call),
    ...authMethods(call),
    ...clusterMethods(call, callAsync),
    serverInfo: () => call('GET', '/1.0'),
    listGuests: (o) =>
      call('GET', `/1.0/guests?recursion=${o?.usage ? 2 : 1}${o?.allProjects ? '&all-projects=true' : ''}`),
    getGuest: (name) => call('GET', `/1.0/guests/${enc(name)}`),
    createGuest: (request) => callAsync('POST', '/1.0/guests', request),
    updateGuestConfig: (name, change) => {
      const body: { config?: Record<string, string>; unset?: string[] } = {};
      if (change.set) body.config = change.set;
      if (change.unset) body.unset = change.unset;
      return call('PATCH', `/1.0/guests/${enc(name)}`, body);
    },
    deleteGuest: (name, o) => callAsync('DELETE', `/1.0/guests/${enc(name)}${o?.force ? '?force=true' : ''}`),
    moveGuest: (name, target, o) =>
      callAsync('POST', `/1.0/guests/${enc(name)}?target=${enc(target)}`, {
        migration: true,
        ...(o?.live !== undefined && { live: o.live }),
      }),
    getGuestState: (name) => call('GET', `/1.0/guests/${enc(name)}/state`),
    changeGuestState: (name, request) => callAsync('PUT', `/1.0/guests/${enc(name)}/state`, request),
    startExec: (name, request) => callAsync('POST', `/1.0/guests/${enc(name)}/exec`, request),
    listImages: () => call('GET', '/1.0/images?recursion=1'),
    buildImage: (request) => callAsync('POST', '/1.0/images', request),
    async deleteImage(ref) {
      await call('DELETE', `/1.0/images/${enc(ref)}`);
    },
    listOperations: () => call('GET', '/1.0/operations?recursion=1'),
    getOperation: (id) => call('GET', `/1.0/operations/${enc(id)}`),
    waitOperation: (id, timeoutSeconds) =>
      call('GET', `/1.0/operations/${enc(id)}/wait?timeout=${timeoutSeconds}`),
    cancelOperation: (id) => call('DELETE', `/1.0/operations/${enc(id)}`),
    websocketTicket: (path) => call('POST', '/1.0/websocket-tickets', { path }),
    listNetworks: () => call('GET', '/1.0/networks?recursion=1'),
    getNetwork: (name) => call('GET', `/1.0/networks/${enc(name)}`),
    createNetwork: (request) => call('POST', '/1.0/networks', request),
    updateNetwork: (name, change) => {
      const body: { config?: Record<string, string>; unset?: string[] } = {};
      if (change.set) body.config = change.set;
      if (change.unset) body.unset = change.unset;
      return call('PATCH', `/1.0/networks/${enc(name)}`, body);
    },
    async deleteNetwork(name) {
      await call('DELETE', `/1.0/networks/${enc(name)}`);
    },
    addNetworkAcl: (network, rule) => call('POST', `/1.0/networks/${enc(network)}/acls`, rule),
    removeNetworkAcl: (network, index) => call('DELETE', `/1.0/networks/${enc(network)}/acls/${index}`),
    attachNetwork: (network, request) => call('POST', `/1.0/networks/${enc(network)}/attach`, request),
    detachNetwork: (network, request) => call('POST', `/1.0/networks/${enc(network)}/detach`, request),
    addNetworkForward: (network, request) => call('POST', `/1.0/networks/${enc(network)}/forwards`, request),
    removeNetworkForward: (network, f) =>
      call(
        'DELETE',
        `/1.0/networks/${enc(network)}/forwards/${enc(`${f.listenAddress}:${f.listenPort}`)}${f.protocol ? `?protocol=${f.protocol}` : ''}`,
      ),
    listSnapshots: (guest) => call('GET', `${snapshots(guest)}?recursion=1`),
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
    async followBackup(guest, backup, onBytes, exportEnded) {
      const res = await send('GET', `/1.0/guests/${enc(guest)}/backups/${enc(backup)}/export?follow=true`);
      if (res.status >= 400 || !res.body) await envelope(res);
      if (!res.body) throw new ApiError(`Expected an archive (HTTP ${res.status})`, res.status);
      return readFollowed(res.body, onBytes, exportEnded ? { exportEnded } : {});
    },
    async deleteBackup(guest, backup) {
      await call('DELETE', `/1.0/guests/${enc(guest)}/backups/${enc(backup)}`);
    },
    backupUrl: (guest, backup) =>
      `${base}${inProject(`/1.0/guests/${enc(guest)}/backups/${enc(backup)}/export`, options.project())}`,
    listPools: () => call('GET', '/1.0/storage-pools?recursion=1'),
    createPool: (request) => call('POST', '/1.0/storage-pools', request),
    async deletePool(name) {
      await call('DELETE', `/1.0/storage-pools/${enc(name)}`);
    },
    recover: () => call('POST', '/1.0/admin/recover', {}),
    recoverFromBackups: (directory) => call('POST', '/1.0/admin/recover/backups', { directory }),
    listBackupDirectory: (o = {}) =>
      call(
        'GET',
        `/1.0/backups?recursion=1${o.guest !== undefined ? `&guest=${enc(o.guest)}` : ''}${o.target !== undefined ? `&target=${enc(o.target)}` : ''}`,
      ),
    importFromBackups: (archive, o = {}) =>
      callAsync('POST', `/1.0/backups/import${o.target !== undefined ? `?target=${enc(o.target)}` : ''}`, {
        source: { type: 'backup-directory', archive },
        ...(o.name !== undefined && { name: o.name }),
        ...(o.storage !== undefined && { pool: o.storage }),
        ...(o.live && { live: true }),
      }),
    openConsole: (name, type = 'console') => callAsync('POST', `/1.0/guests/${enc(name)}/console`, { type }),
    async consoleLog(name) {
      const res = await send('GET', `/1.0/guests/${enc(name)}/console?type=log`);
      if (res.status >= 400) await envelope(res);
      return res.text();
    },
    async pullFile(name, path) {
      const res = await send('GET', `/1.0/guests/${enc(name)}/files?path=${enc(path)}`);
      if (res.status >= 400) await envelope(res);
      return { blob: await res.blob(), mode: res.headers.get('x-trivisor-mode') ?? '' };
    },
    async pushFile(name, path, data, o = {}) {
      const headers: Record<string, string> = { 'content-type': 'application/octet-stream' };
      if (o.mode) headers['x-trivisor-mode'] = o.mode;
      if (o.createDirs) headers['x-trivisor-create-dirs'] = 'true';
      await envelope(await send('POST', `/1.0/guests/${enc(name)}/files?path=${enc(path)}`, data, headers));
    },
    uploadIsoVolume: (pool, name, file, onProgress) =>
      upload(
        `/1.0/storage-pools/${enc(pool)}/volumes/custom`,
        file,
        { 'x-trivisor-name': name, 'x-trivisor-type': 'iso' },
        onProgress,
      ),
    importImage: (file, alias, onProgress) =>
      upload('/1.0/images', file, { 'x-trivisor-alias': alias }, onProgress),
    planConsolidation: (inventory, o) => {
      const query = new URLSearchParams({ hostSize: String(o.hostSize) });
      if (o.percentile !== undefined) query.set('percentile', String(o.percentile));
      if (o.seed !== undefined) query.set('seed', String(o.seed));
      if (o.forecastDays !== undefined) query.set('forecastDays', String(o.forecastDays));
      if (o.fromHistory !== undefined) query.set('fromHistory', o.fromHistory);
      const path = `/1.0/plans/consolidate?${query}`;
      return inventory ? upload<ConsolidationPlanWire>(path, inventory, {}) : call('POST', path);
    },
    adviseWorkloads: (profiles) => upload<AdviceAnswer>('/1.0/plans/advise', profiles, {}),
    importBackup: (file, o, onProgress) =>
      upload(
        '/1.0/backups',
        file,
        {
          ...(o.name ? { 'x-trivisor-name': o.name } : {}),
          ...(o.storage ? { 'x-trivisor-pool': o.storage } : {}),
          ...(o.live ? { 'x-trivisor-live': '1' } : {}),
        },
        onProgress,
      ),
    guestHistory: (name, range) => call('GET', `/1.0/guests/${enc(name)}/metrics?range=${range}`),
    hostHistory: (range, member) =>
      call('GET', `/1.0/metrics/history?range=${range}${member ? `&target=${enc(member)}` : ''}`),
    signIn: (credentials) => call('POST', '/1.0/auth/session', credentials),
    session: () => call('GET', '/1.0/auth/session'),
    async signOut() {
      await call('DELETE', '/1.0/auth/session');
    },
    async websocketUrl(path) {
      const bare = path.split('?')[0] ?? path;
      const { ticket } = await call<{ ticket: string }>('POST', '/1.0/websocket-tickets', { path: bare });
      const url = new URL(`${base}${inProject(path, options.project())}`, location.href);
      url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
      url.searchParams.set('ticket', ticket);
      return url.toString();
    },
  };
}
