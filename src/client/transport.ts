import { request as httpRequest, type IncomingMessage, type RequestOptions } from 'node:http';
import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type WebSocket from 'ws';
import type { ErrorResponse } from '../api/envelopes.ts';
import { isErrorCode } from '../core/errors.ts';
import { TrivisorApiError } from './api-error.ts';
import { requestIntoSink } from './sink-request.ts';

/**
 * Where the daemon is: its root-only unix socket, or a URL plus token; and the project
 * every request acts in (`default` when absent), sent as `?project=` as Incus's client does.
 */
export type ClientTarget = ({ socketPath: string } | RemoteTarget) & { project?: string };

/**
 * A daemon over TCP: always HTTPS (docs/decisions/0022-tls-roles-audit.md). With
 * `serverFingerprint` the server must present exactly that certificate (pinned at `remote
 * add`), else the system's CAs must vouch for it. A token, a client certificate or both.
 */
export interface RemoteTarget {
  url: string;
  token?: string;
  /** SHA-256 (hex) of the server's certificate. */
  serverFingerprint?: string;
  /** PEM certificate and key, presented to servers that trust it. */
  clientCertificate?: { cert: string; key: string };
}

/** `path` with `project=` added, except on the routes that are not in a project (`/1.0`, `/1.0/projects…`). */
export function inProject(path: string, project: string | undefined): string {
  if (project === undefined || project === 'default' || /[?&]project=/.test(path)) return path;
  const bare = path.split('?')[0] ?? '';
  if (!bare.startsWith('/1.0/') || bare === '/1.0/projects' || bare.startsWith('/1.0/projects/')) return path;
  return `${path}${path.includes('?') ? '&' : '?'}project=${encodeURIComponent(project)}`;
}

/** A raw answer: status, headers, body bytes. */
export interface RawResponse {
  status: number;
  headers: IncomingMessage['headers'];
  body: Buffer;
}

/** Sends HTTP requests and opens WebSockets to one daemon. */
export interface Transport {
  request(
    method: string,
    path: string,
    options?: {
      json?: unknown;
      stream?: Readable;
      /**
       * Writes the request's body into `out` and ends it, instead of `stream`: its writes' callbacks
       * say when a buffer may be used again (the import's upload, decision 0106). A rejection
       * destroys the request, as a failed `stream` does.
       */
      body?: (out: Writable) => Promise<void>;
      headers?: Record<string, string>;
      /** A successful (< 400) answer's body is streamed here instead of being buffered. */
      sink?: Writable;
      /** With `sink`: called with the size of each piece of the body as it arrives. */
      onBytes?: (bytes: number) => void;
      /** Aborts the request, or the body's streaming; the promise rejects with the signal's reason. */
      signal?: AbortSignal;
    },
  ): Promise<RawResponse>;
  /** Loads `ws` on first use: most CLI commands never open a WebSocket (docs/decisions/0013-fast-cli.md). */
  websocket(path: string): Promise<WebSocket>;
  /** For messages: `unix:/var/lib/trivisor/trivisor.sock` or the URL. */
  describe(): string;
}

export function createTransport(target: ClientTarget): Transport {
  const base = 'url' in target ? new URL(target.url) : null;
  const authHeaders: Record<string, string> =
    'token' in target && target.token ? { authorization: `Bearer ${target.token}` } : {};
  const describe = () => ('socketPath' in target ? `unix:${target.socketPath}` : target.url);
  // Loaded only for https: TLS and crypto, which a unix-socket call never needs.
  const secureSocket = async () => {
    const remote = target as RemoteTarget;
    const { connectTls } = await import('./tls-connect.ts');
    return connectTls({
      host: base!.hostname.replace(/^\[|\]$/g, ''),
      port: Number(base!.port || 443),
      ...(remote.serverFingerprint !== undefined && { pin: remote.serverFingerprint }),
      ...(remote.clientCertificate !== undefined && { clientCertificate: remote.clientCertificate }),
    });
  };

  return {
    describe,
    async request(method, rawPath, options = {}) {
      const path = inProject(rawPath, target.project);
      const headers: Record<string, string> = { ...authHeaders, ...options.headers };
      let payload: Buffer | undefined;
      if (options.json !== undefined) {
        payload = Buffer.from(JSON.stringify(options.json));
        headers['content-type'] = 'application/json';
        headers['content-length'] = String(payload.length);
      }
      const reqOptions: RequestOptions = {
        method,
        path,
        headers,
        ...(options.signal !== undefined && { signal: options.signal }),
      };
      // An abort is the caller's, with its own reason: not a daemon that cannot be reached.
      const aborted = (e: unknown) => (options.signal?.aborted ? options.signal.reason : e);
      // Where it goes: the URL's host, port and path prefix, or the daemon's unix socket.
      const tls = base?.protocol === 'https:';
      if (base) {
        reqOptions.hostname = base.hostname.replace(/^\[|\]$/g, '');
        reqOptions.port = base.port || (tls ? 443 : 80);
        reqOptions.path = `${base.pathname.replace(/\/$/, '')}${path}`;
      } else if ('socketPath' in target) {
        reqOptions.socketPath = target.socketPath;
      }
      // A body into a sink (a backup's download) is read without Node's HTTP client, into one
      // buffer reused (decision 0105); over TLS it keeps Node's client.
      if (options.sink && method === 'GET' && !options.stream && payload === undefined && !tls) {
        const to = reqOptions.socketPath
          ? { path: reqOptions.socketPath }
          : reqOptions.hostname
            ? { host: reqOptions.hostname, port: Number(reqOptions.port) }
            : undefined;
        if (to) {
          const res = await requestIntoSink(
            {
              to,
              path: reqOptions.path ?? path,
              host: base ? base.host : 'localhost',
              headers,
              sink: options.sink,
              onBytes: options.onBytes,
              signal: options.signal,
            },
            (e) => connectionError(e, describe()),
          );
          return res as RawResponse;
        }
      }
      const send = httpRequest;
      // The TLS connection is made and its certificate checked before HTTP writes a byte on it.
      if (tls) {
        const socket = await secureSocket();
        reqOptions.createConnection = () => socket;
      }
      return new Promise<RawResponse>((resolve, reject) => {
        const req = send(reqOptions, (res) => {
          if (options.sink && (res.statusCode ?? 0) < 400) {
            const onBytes = options.onBytes;
            (onBytes
              ? pipeline(
                  res,
                  async function* (body: AsyncIterable<Buffer>) {
                    for await (const chunk of body) {
                      onBytes(chunk.length);
                      yield chunk;
                    }
                  },
                  options.sink,
                )
              : pipeline(res, options.sink)
            ).then(
              () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.alloc(0) }),
              (e: unknown) => reject(aborted(e)),
            );
            return;
          }
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
          );
          res.on('error', (e) => reject(aborted(e)));
        });
        req.on('error', (e: NodeJS.ErrnoException) => reject(aborted(connectionError(e, describe()))));
        if (options.body) {
          options.body(req).catch((e: unknown) => req.destroy(e as Error));
        } else if (options.stream) {
          pipeline(options.stream, req).catch((e: unknown) => req.destroy(e as Error));
        } else {
          req.end(payload);
        }
      });
    },
    async websocket(rawPath) {
      const path = inProject(rawPath, target.project);
      const { default: WebSocket } = await import('ws');
      if (base) {
        const url = new URL(`${base.pathname.replace(/\/$/, '')}${path}`, base);
        url.protocol = base.protocol === 'https:' ? 'wss:' : 'ws:';
        if (base.protocol !== 'https:')
          return new WebSocket(url, { headers: authHeaders, perMessageDeflate: false });
        const socket = await secureSocket();
        return new WebSocket(url, {
          headers: authHeaders,
          perMessageDeflate: false,
          createConnection: () => socket,
        });
      }
      const socketPath = (target as { socketPath: string }).socketPath;
      return new WebSocket(`ws+unix://${socketPath}:${path}`, { perMessageDeflate: false });
    },
  };
}

function connectionError(e: NodeJS.ErrnoException, where: string): TrivisorApiError {
  const hint =
    e.code === 'ENOENT' || e.code === 'ECONNREFUSED'
      ? 'is the daemon running? (start it with `trivisor daemon`)'
      : e.code === 'EACCES'
        ? 'the socket is root-only: run as root'
        : e.message;
  return new TrivisorApiError(`Cannot reach the Trivisor daemon at ${where}: ${hint}`, {
    status: 0,
    code: 'Unavailable',
    cause: e,
  });
}

/** Parses a JSON envelope, throwing the server's error as a TrivisorApiError. */
export function parseEnvelope<T>(res: RawResponse): T {
  const type = String(res.headers['content-type'] ?? '');
  let parsed: unknown;
  if (type.includes('json')) {
    try {
      parsed = JSON.parse(res.body.toString('utf8'));
    } catch {
      throw new TrivisorApiError(`The server sent malformed JSON (HTTP ${res.status})`, {
        status: res.status,
      });
    }
  }
  const envelope = parsed as Partial<ErrorResponse> | undefined;
  if (res.status >= 400 || envelope?.type === 'error') {
    const message =
      typeof envelope?.error === 'string'
        ? envelope.error
        : res.body.toString('utf8').trim().split('\n')[0] || `HTTP ${res.status}`;
    // The server's own code when it sent one; a guess from the status for older servers and proxies.
    const code = isErrorCode(envelope?.code) ? envelope.code : undefined;
    throw new TrivisorApiError(message, {
      status: typeof envelope?.error_code === 'number' ? envelope.error_code : res.status,
      ...(code !== undefined && { code }),
    });
  }
  if (parsed === undefined) {
    throw new TrivisorApiError(`Expected a JSON answer, got ${type || 'nothing'} (HTTP ${res.status})`, {
      status: res.status,
    });
  }
  return parsed as T;
}
