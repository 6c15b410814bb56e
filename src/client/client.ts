import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { PassThrough, Readable } from 'node:stream';
import type WebSocket from 'ws';
import type { AsyncResponse, SyncResponse } from '../api/envelopes.ts';
import type {
  AddForwardBody,
  ConfigUpdateResult,
  CreateGuestBody,
  CreateNetworkBody,
  ExecBody,
  Guest,
  GuestStateResponse,
  HostInfo,
  ImageRecord,
  Network,
  NetworkAclRule,
  NicChange,
  Operation,
  StateChangeBody,
  TrivisorEvent,
} from '../api/types.ts';
import type { History, HistoryRange } from '../api/web-schemas.ts';
import { type ErrorCode, isErrorCode } from '../core/errors.ts';
import { TrivisorApiError } from './api-error.ts';
import { type AuthClient, authMethods } from './auth-client.ts';
import { type ClusterClient, clusterMethods } from './cluster-client.ts';
import { type ConsoleHandle, consoleHandleOf } from './console-stream.ts';
import { type ExecHandle, execHandleOf } from './exec-stream.ts';
import { type ProjectClient, projectMethods } from './project-client.ts';
import { type StorageClient, storageMethods } from './storage-client.ts';
import { type ClientTarget, createTransport, parseEnvelope } from './transport.ts';
import { type VolumeClient, volumeMethods } from './volume-client.ts';

/** A subscription to the event stream. */
export interface EventSubscription {
  close(): void;
  /** Resolves when the stream ends (closed by either side). */
  closed: Promise<void>;
}

/** Options of `waitOperation`. */
export interface WaitOptions {
  /** Called with the operation whenever it is polled (about every `pollMs`) while it runs. */
  onProgress?: (op: Operation) => void;
  pollMs?: number;
  /** Return failed/cancelled operations instead of throwing. */
  allowFailure?: boolean;
}

/** What `pushFile` gives the file. */
export interface PushFileOptions {
  mode?: number;
  uid?: number;
  gid?: number;
  /** Make missing parent directories. */
  createDirs?: boolean;
}

/** A file read from a guest. */
export interface PulledFile {
  data: Buffer;
  mode: number;
  uid: number;
  gid: number;
}

/** Typed access to every route of the Trivisor API. */
export interface TrivisorClient
  extends StorageClient,
    VolumeClient,
    ProjectClient,
    AuthClient,
    ClusterClient {
  serverInfo(): Promise<HostInfo>;
  /** `allProjects`: every project's guests, each with its `project`. */
  listGuests(options?: { usage?: boolean; allProjects?: boolean }): Promise<Guest[]>;
  getGuest(name: string): Promise<Guest>;
  /** `target`: the cluster member to place the guest on (else the scheduler picks, decision 0033). */
  createGuest(request: CreateGuestBody, options?: { target?: string }): Promise<Operation>;
  updateGuestConfig(
    name: string,
    change: { set?: Record<string, string>; unset?: string[] },
  ): Promise<ConfigUpdateResult>;
  deleteGuest(name: string, options?: { force?: boolean }): Promise<Operation>;
  /** Moves a guest to another member of the cluster (decision 0040); `live` where the model allows. */
  moveGuest(name: string, target: string, options?: { live?: boolean }): Promise<Operation>;
  getGuestState(name: string): Promise<GuestStateResponse>;
  changeGuestState(name: string, request: StateChangeBody): Promise<Operation>;
  /** Starts an exec operation as given (record-output, wait-for-websocket or neither). */
  startExec(name: string, request: ExecBody): Promise<Operation>;
  /** Runs a command and joins its stdin/stdout/stderr over a WebSocket. */
  exec(name: string, request: Omit<ExecBody, 'wait-for-websocket' | 'record-output'>): Promise<ExecHandle>;
  consoleLog(name: string): Promise<string>;
  /** Writes a whole file into a running guest (mode 0644, root's, unless given). */
  pushFile(name: string, path: string, data: Buffer, options?: PushFileOptions): Promise<void>;
  /** Reads a file of a running guest, with its mode and owner in the guest. */
  pullFile(name: string, path: string): Promise<PulledFile>;
  /** Attaches to a vm or pvm guest's console, input and output, over a WebSocket (ct: NotSupported). */
  attachConsole(name: string): Promise<ConsoleHandle>;
  /**
   * Opens a vm guest's display over a WebSocket: `input` and `output` carry RFB (VNC) bytes,
   * for a local VNC viewer or noVNC to speak through.
   */
  attachDisplay(name: string): Promise<ConsoleHandle>;
  /** A running vm guest's screen as PNG bytes. */
  screenshot(name: string): Promise<Buffer>;
  /** Presses key combinations (`ctrl-alt-del`) and then types `text` on a running vm guest's keyboard. */
  sendKeys(name: string, keys: { keys?: string[]; text?: string }): Promise<void>;
  /** The console log from its start, then as it grows, until `close()`. */
  followConsole(name: string): Promise<{ stream: Readable; close(): void }>;
  listImages(): Promise<ImageRecord[]>;
  getImage(ref: string): Promise<ImageRecord>;
  buildImage(request: { source: string; alias?: string }): Promise<Operation>;
  /**
   * Uploads a root file system tarball or a whole-disk image (qcow2 or raw); with `checksum`
   * (`sha256:HEX` or `sha512:HEX`) the daemon refuses an upload that does not match it.
   */
  importImage(tarballPath: string, options: { alias: string; checksum?: string }): Promise<Operation>;
  deleteImage(ref: string): Promise<void>;
  listOperations(): Promise<Operation[]>;
  getOperation(id: string): Promise<Operation>;
  /** Waits for the end; throws TrivisorApiError for failed or cancelled ones (unless allowFailure). */
  waitOperation(id: string, options?: WaitOptions): Promise<Operation>;
  cancelOperation(id: string): Promise<Operation>;
  events(
    listener: (event: TrivisorEvent) => void,
    options?: { types?: TrivisorEvent['type'][] },
  ): Promise<EventSubscription>;
  metrics(): Promise<string>;
  /** A guest's metric history, average and maximum per step over `range` (decision 0027). */
  guestMetricsHistory(name: string, range: HistoryRange): Promise<History>;
  /** A single-use ticket for one WebSocket path, for clients that cannot send the token in a header (browsers). */
  websocketTicket(path: string): Promise<{ ticket: string; path: string; expiresInSeconds: number }>;
  openapi(): Promise<Record<string, unknown>>;
  listNetworks(): Promise<Network[]>;
  getNetwork(name: string): Promise<Network>;
  createNetwork(request: CreateNetworkBody): Promise<Network>;
  updateNetwork(name: string, change: { set?: Record<string, string>; unset?: string[] }): Promise<Network>;
  deleteNetwork(name: string): Promise<void>;
  addNetworkAcl(network: string, rule: NetworkAclRule): Promise<Network>;
  removeNetworkAcl(network: string, index: number): Promise<Network>;
  /** Returns the NIC's name and whether the running guest got it live. */
  attachNetwork(
    network: string,
    request: {
      guest: string;
      nic?: string;
      hwaddr?: string;
      'ipv4.address'?: string;
      'limits.ingress'?: string;
      'limits.egress'?: string;
    },
  ): Promise<NicChange>;
  detachNetwork(network: string, request: { guest: string; nic?: string }): Promise<NicChange>;
  addNetworkForward(network: string, request: AddForwardBody): Promise<Network>;
  removeNetworkForward(
    network: string,
    forward: { listenAddress: string; listenPort: number; protocol?: 'tcp' | 'udp' },
  ): Promise<Network>;
}

const enc = encodeURIComponent;

function opened(socket: WebSocket): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.once('open', () => resolve());
    socket.once('unexpected-response', (req, res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        // ws leaves a refused handshake's connection to us: drop it, or it keeps the process alive.
        req.destroy();
        let message = `The server refused the WebSocket (HTTP ${res.statusCode})`;
        let code: ErrorCode | undefined;
        try {
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
            error?: string;
            code?: unknown;
          };
          if (body.error) message = body.error;
          if (isErrorCode(body.code)) code = body.code;
        } catch {}
        reject(
          new TrivisorApiError(message, { status: res.statusCode ?? 0, ...(code !== undefined && { code }) }),
        );
      });
    });
    socket.once('error', (e) =>
      reject(
        new TrivisorApiError(`Cannot open the WebSocket: ${e.message}`, { status: 0, code: 'Unavailable' }),
      ),
    );
  });
}

/** Creates a client for the daemon's unix socket (`{socketPath}`) or a remote URL with a token. */
export function createClient(options: ClientTarget): TrivisorClient {
  const transport = createTransport(options);

  const call = async <T>(method: string, path: string, json?: unknown): Promise<T> => {
    const res = await transport.request(method, path, json === undefined ? {} : { json });
    return parseEnvelope<SyncResponse<T>>(res).metadata;
  };
  const callAsync = async (method: string, path: string, json?: unknown): Promise<Operation> => {
    const res = await transport.request(method, path, json === undefined ? {} : { json });
    return parseEnvelope<AsyncResponse>(res).metadata;
  };

  /** An attached console of `type` (the serial console, or a vm's display as RFB) over its WebSocket. */
  const consoleOfType = async (name: string, type: 'console' | 'vga'): Promise<ConsoleHandle> => {
    const op = await callAsync('POST', `/1.0/guests/${enc(name)}/console`, { type });
    const url = op.metadata.websocket;
    if (typeof url !== 'string')
      throw new TrivisorApiError('The server gave no console websocket', { status: 500 });
    const socket = await transport.websocket(url);
    // Listen before the upgrade completes: the first frames may arrive with it.
    const handle = consoleHandleOf(socket, op.id);
    await opened(socket);
    return handle;
  };

  const client: TrivisorClient = {
    ...storageMethods(transport, { call, callAsync }),
    ...volumeMethods(call, async (path, file, headers) => {
      const size = (await stat(file)).size;
      const res = await transport.request('POST', path, {
        stream: createReadStream(file),
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(size), ...headers },
      });
      return parseEnvelope<SyncResponse<never>>(res).metadata;
    }),
    ...projectMethods(call),
    ...authMethods(call),
    ...clusterMethods(call, callAsync),
    serverInfo: () => call('GET', '/1.0'),
    listGuests: (o) =>
      call('GET', `/1.0/guests?recursion=${o?.usage ? 2 : 1}${o?.allProjects ? '&all-projects=true' : ''}`),
    getGuest: (name) => call('GET', `/1.0/guests/${enc(name)}`),
    guestMetricsHistory: (name, range) => call('GET', `/1.0/guests/${enc(name)}/metrics?range=${range}`),
    createGuest: (request, options) =>
      callAsync(
        'POST',
        options?.target === undefined
          ? '/1.0/guests'
          : `/1.0/guests?target=${encodeURIComponent(options.target)}`,
        request,
      ),
    listNetworks: () => call('GET', '/1.0/networks?recursion=1'),
    getNetwork: (name) => call('GET', `/1.0/networks/${enc(name)}`),
    createNetwork: (request) => call('POST', '/1.0/networks', request),
    updateNetwork: (name, change) => {
      const body: { config?: Record<string, string>; unset?: string[] } = {};
      if (change.set) body.config = change.set;
      if (change.unset) body.unset = change.unset;
      return call('PATCH', `/1.0/networks/${enc(name)}`, body);
    },
    addNetworkForward: (network, request) => call('POST', `/1.0/networks/${enc(network)}/forwards`, request),
    removeNetworkForward: (network, f) =>
      call(
        'DELETE',
        `/1.0/networks/${enc(network)}/forwards/${enc(`${f.listenAddress}:${f.listenPort}`)}${f.protocol ? `?protocol=${f.protocol}` : ''}`,
      ),
    addNetworkAcl: (network, rule) => call('POST', `/1.0/networks/${enc(network)}/acls`, rule),
    removeNetworkAcl: (network, index) => call('DELETE', `/1.0/networks/${enc(network)}/acls/${index}`),
    attachNetwork: (network, request) => call('POST', `/1.0/networks/${enc(network)}/attach`, request),
    async detachNetwork(network, request) {
      return call('POST', `/1.0/networks/${enc(network)}/detach`, request);
    },
    async deleteNetwork(name) {
      await call('DELETE', `/1.0/networks/${enc(name)}`);
    },
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
    async exec(name, request) {
      const op = await callAsync('POST', `/1.0/guests/${enc(name)}/exec`, {
        ...request,
        'wait-for-websocket': true,
      });
      const url = op.metadata.websocket;
      if (typeof url !== 'string')
        throw new TrivisorApiError('The server gave no exec websocket', { status: 500 });
      const socket = await transport.websocket(url);
      // Listen before the upgrade completes: the first frames may arrive with it.
      const handle = execHandleOf(socket, op.id);
      await opened(socket);
      return handle;
    },
    async consoleLog(name) {
      const res = await transport.request('GET', `/1.0/guests/${enc(name)}/console?type=log`);
      if (res.status >= 400) parseEnvelope(res);
      return res.body.toString('utf8');
    },
    async attachConsole(name) {
      return consoleOfType(name, 'console');
    },
    async attachDisplay(name) {
      return consoleOfType(name, 'vga');
    },
    async screenshot(name) {
      const res = await transport.request('GET', `/1.0/guests/${enc(name)}/console/screenshot`);
      if (res.status >= 400) parseEnvelope(res);
      return res.body;
    },
    async sendKeys(name, keys) {
      await call('POST', `/1.0/guests/${enc(name)}/console/keys`, keys);
    },
    async pushFile(name, path, data, o = {}) {
      const headers: Record<string, string> = {
        'content-type': 'application/octet-stream',
        'content-length': String(data.length),
      };
      if (o.mode !== undefined) headers['x-trivisor-mode'] = o.mode.toString(8).padStart(4, '0');
      if (o.uid !== undefined) headers['x-trivisor-uid'] = String(o.uid);
      if (o.gid !== undefined) headers['x-trivisor-gid'] = String(o.gid);
      if (o.createDirs) headers['x-trivisor-create-dirs'] = 'true';
      const res = await transport.request('POST', `/1.0/guests/${enc(name)}/files?path=${enc(path)}`, {
        stream: Readable.from([data]),
        headers,
      });
      parseEnvelope(res);
    },
    async pullFile(name, path) {
      const res = await transport.request('GET', `/1.0/guests/${enc(name)}/files?path=${enc(path)}`);
      if (res.status >= 400) parseEnvelope(res);
      const header = (h: string) => String(res.headers[h] ?? '');
      return {
        data: res.body,
        mode: Number.parseInt(header('x-trivisor-mode') || '644', 8),
        uid: Number(header('x-trivisor-uid') || 0),
        gid: Number(header('x-trivisor-gid') || 0),
      };
    },
    async followConsole(name) {
      const socket = await transport.websocket(`/1.0/guests/${enc(name)}/console/follow`);
      const stream = new PassThrough();
      socket.on('message', (data) => {
        stream.write(Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer));
      });
      socket.on('close', () => stream.end());
      socket.on('error', () => stream.end());
      await opened(socket);
      return { stream, close: () => socket.close() };
    },
    listImages: () => call('GET', '/1.0/images?recursion=1'),
    getImage: (ref) => call('GET', `/1.0/images/${enc(ref)}`),
    buildImage: (request) => callAsync('POST', '/1.0/images', request),
    async importImage(tarballPath, o) {
      const size = (await stat(tarballPath)).size;
      const res = await transport.request('POST', '/1.0/images', {
        stream: createReadStream(tarballPath),
        headers: {
          'content-type': 'application/octet-stream',
          'content-length': String(size),
          'x-trivisor-alias': o.alias,
          ...(o.checksum !== undefined && { 'x-trivisor-checksum': o.checksum }),
        },
      });
      return parseEnvelope<AsyncResponse>(res).metadata;
    },
    async deleteImage(ref) {
      await call('DELETE', `/1.0/images/${enc(ref)}`);
    },
    listOperations: () => call('GET', '/1.0/operations?recursion=1'),
    getOperation: (id) => call('GET', `/1.0/operations/${enc(id)}`),
    async waitOperation(id, o = {}) {
      // Long polls keep the request count low; progress callers poll faster to show movement.
      const timeoutSeconds = (o.pollMs ?? (o.onProgress ? 500 : 30_000)) / 1000;
      let op = await call<Operation>('GET', `/1.0/operations/${enc(id)}/wait?timeout=${timeoutSeconds}`);
      while (op.status === 'Running' || op.status === 'Pending') {
        o.onProgress?.(op);
        op = await call<Operation>('GET', `/1.0/operations/${enc(id)}/wait?timeout=${timeoutSeconds}`);
      }
      if (!o.allowFailure && op.status !== 'Success') {
        const code = isErrorCode(op.metadata.errorCode) ? op.metadata.errorCode : undefined;
        throw new TrivisorApiError(op.error ?? `The operation ended with status ${op.status}`, {
          status: 0,
          ...(code !== undefined && { code }),
          ...(op.status === 'Cancelled' && { code: 'Cancelled' as const }),
        });
      }
      return op;
    },
    cancelOperation: (id) => call('DELETE', `/1.0/operations/${enc(id)}`),
    async events(listener, o = {}) {
      const query = o.types?.length ? `?type=${o.types.join(',')}` : '';
      const socket = await transport.websocket(`/1.0/events${query}`);
      socket.on('message', (data) => {
        try {
          listener(JSON.parse(String(data)) as TrivisorEvent);
        } catch {
          // a malformed message is skipped, not fatal
        }
      });
      await opened(socket);
      const closed = new Promise<void>((resolve) => {
        socket.on('close', () => resolve());
        socket.on('error', () => resolve());
      });
      return { close: () => socket.close(), closed };
    },
    async metrics() {
      const res = await transport.request('GET', '/1.0/metrics');
      if (res.status >= 400) parseEnvelope(res);
      return res.body.toString('utf8');
    },
    websocketTicket: (path) => call('POST', '/1.0/websocket-tickets', { path }),
    async openapi() {
      const res = await transport.request('GET', '/1.0/openapi.json');
      return parseEnvelope<Record<string, unknown>>(res);
    },
  };
  return client;
}
