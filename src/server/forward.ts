import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { WebSocket } from 'ws';
import { errorResponse } from '../api/envelopes.ts';
import { httpStatusOf } from '../api/errors.ts';
import { metadataOfAnswer } from '../cluster/member-client.ts';
import type { Caller } from '../core/access.ts';
import { asTrivisorError, unavailable } from '../core/errors.ts';

/**
 * Requests passed from the member that was asked to the member that must answer
 * (docs/decisions/0034-forwarding.md): the guest's owner, or the member that runs an
 * operation. The connection is the members' own (mutual TLS, decision 0032); the caller the
 * first member authenticated travels in a header that only a member's certificate may set.
 */
export interface MemberForwarding {
  /** This member's name. */
  here: string;
  /** The other members that may be asked (Online ones, this member excluded). */
  others(): Promise<string[]>;
  /** A verified connection to `member`'s API (its certificate checked against its name). */
  connect(member: string): Promise<TLSSocket>;
  /**
   * `member`'s status as `cluster list` has it (Online, Offline, Standby, Evacuated), undefined
   * when unknown. An Offline or Standby member is not dialled: the request fails at once.
   */
  statusOf?(member: string): Promise<string | undefined>;
}

/** Statuses of a member that cannot answer: its daemon is gone, or it is powered off. */
const UNREACHABLE_STATUSES = new Set(['Offline', 'Standby']);

/** The header that carries the first member's caller (base64url JSON). */
export const FORWARDED_CALLER_HEADER = 'x-trivisor-caller';
/** Set on a forwarded request: the member that forwarded it. Such a request is never forwarded again. */
export const FORWARDED_BY_HEADER = 'x-trivisor-forwarded-by';

export function encodeCaller(caller: Caller): string {
  return Buffer.from(JSON.stringify(caller)).toString('base64url');
}

/** The caller a member forwarded, or undefined when the header is malformed. */
export function decodeCaller(header: string): Caller | undefined {
  try {
    const c = JSON.parse(Buffer.from(header, 'base64url').toString('utf8')) as Partial<Caller>;
    if (
      typeof c.name !== 'string' ||
      typeof c.method !== 'string' ||
      typeof c.role !== 'string' ||
      !Array.isArray(c.projects) ||
      !c.projects.every((p) => typeof p === 'string')
    )
      return undefined;
    return {
      method: c.method,
      name: c.name,
      role: c.role,
      projects: c.projects,
      ...(typeof c.fingerprint === 'string' && { fingerprint: c.fingerprint }),
    };
  } catch {
    return undefined;
  }
}

/** Requests this member passed on: their member audits them, not this one. */
const passedOn = new WeakSet<FastifyRequest>();

/** True when this member passed the request on to another (which answered it and audits it). */
export function wasPassedOn(request: FastifyRequest): boolean {
  return passedOn.has(request);
}

/** True when another member sent this request on (it must be answered here, never passed on). */
export function isForwarded(request: FastifyRequest): boolean {
  return request.headers[FORWARDED_BY_HEADER] !== undefined;
}

/** Hop-by-hop headers (RFC 9110 §7.6.1) and the credentials of the first hop: never passed on. */
const DROPPED = new Set([
  'host',
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'authorization',
  'cookie',
  FORWARDED_CALLER_HEADER,
  FORWARDED_BY_HEADER,
]);

function headersFor(request: FastifyRequest, here: string, member: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(request.headers)) {
    if (value === undefined || DROPPED.has(name)) continue;
    out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  out.host = member;
  out[FORWARDED_BY_HEADER] = here;
  if (request.caller) out[FORWARDED_CALLER_HEADER] = encodeCaller(request.caller);
  return out;
}

/** Response headers passed back: the same, less hop-by-hop ones. */
function responseHeaders(headers: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || name === 'connection' || name === 'keep-alive' || name === 'transfer-encoding')
      continue;
    out[name] = value;
  }
  return out;
}

/** Writes an error envelope on a hijacked reply (or destroys it when the answer already began). */
function failHijacked(reply: FastifyReply, error: unknown): void {
  const e = asTrivisorError(error);
  if (reply.raw.headersSent) {
    reply.raw.destroy();
    return;
  }
  const status = httpStatusOf(e.code);
  const body = JSON.stringify(errorResponse(e.message, status, e.code));
  reply.raw.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(body)),
  });
  reply.raw.end(body);
}

export interface Forwarder {
  /** This member's name. */
  here: string;
  /**
   * Passes the request as it came (its body not read yet) to `member` and streams the answer
   * back; WebSocket upgrades are spliced through once the owner switches protocols. A member
   * that cannot be reached is Unavailable naming it, answered before anything was sent.
   */
  proxy(request: FastifyRequest, reply: FastifyReply, member: string): Promise<void>;
  /**
   * Passes on a request whose JSON body was already parsed (a route that first had to read it
   * to know where it goes, a copy from another member's guest), the answer streamed back as
   * `proxy` does.
   */
  replay(request: FastifyRequest, reply: FastifyReply, member: string, path?: string): Promise<void>;
  /** Sends a request whose JSON body was already parsed; returns the metadata of `member`'s sync answer. */
  json<T>(request: FastifyRequest, member: string): Promise<T>;
  /** Asks `member` with a GET of `path` as this request's caller; the parsed envelope's metadata, or its error. */
  get<T>(request: FastifyRequest, member: string, path: string): Promise<T>;
  /** The other members that may be asked (not Offline). */
  others(): Promise<string[]>;
  /**
   * Opens `member`'s WebSocket at `path` as this request's caller and hands each text message
   * to `onMessage` until the returned function is called (or either end goes away).
   */
  stream(
    request: FastifyRequest,
    member: string,
    path: string,
    onMessage: (text: string) => void,
    /** Called once if the stream ends (or never opens) before it is stopped. */
    onEnd?: () => void,
  ): () => void;
}

export function createForwarder(forwarding: MemberForwarding): Forwarder {
  const connect = async (member: string): Promise<TLSSocket> => {
    // A member known to be down is not waited for (a dial to a powered-off host can hang for minutes).
    const status = await forwarding.statusOf?.(member);
    if (status !== undefined && UNREACHABLE_STATUSES.has(status)) {
      throw unavailable(`Member ${member} is ${status}: it cannot answer until it is Online again`);
    }
    try {
      return await forwarding.connect(member);
    } catch (e) {
      const error = asTrivisorError(e);
      // An unknown member is the caller's mistake, said as it is; anything else is the network's.
      if (error.code === 'NotFound') throw error;
      throw unavailable(`Member ${member} cannot be reached: ${error.message}`);
    }
  };

  /** One request with a JSON (or no) body; the envelope's metadata or its error. */
  const exchange = async <T>(
    request: FastifyRequest,
    member: string,
    method: string,
    path: string,
    body: unknown,
  ): Promise<T> => {
    const socket = await connect(member);
    const headers = headersFor(request, forwarding.here, member);
    delete headers['content-length'];
    delete headers['content-type'];
    const payload = body === undefined ? undefined : JSON.stringify(body);
    if (payload !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(payload));
    }
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpRequest({ createConnection: () => socket, method, path, headers }, resolve);
      req.on('error', (e) => {
        socket.destroy();
        reject(unavailable(`The request to member ${member} failed: ${e.message}`));
      });
      req.end(payload);
    });
    const chunks: Buffer[] = [];
    for await (const chunk of res) chunks.push(chunk as Buffer);
    socket.destroy();
    return metadataOfAnswer<T>(res.statusCode ?? 0, Buffer.concat(chunks), `Member ${member}`);
  };

  const upgrade = async (request: FastifyRequest, reply: FastifyReply, member: string): Promise<void> => {
    const upstream = await connect(member);
    const client = request.raw.socket as Socket;
    reply.hijack();
    const headers = headersFor(request, forwarding.here, member);
    // A WebSocket upgrade keeps its hop-by-hop pair: it is what asks the owner to switch.
    headers.connection = 'Upgrade';
    headers.upgrade = String(request.headers.upgrade);
    const head = [
      `GET ${request.url} HTTP/1.1`,
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v.replace(/[\r\n]/g, '')}`),
      '',
      '',
    ].join('\r\n');
    const end = () => {
      upstream.destroy();
      client.destroy();
    };
    upstream.on('error', end);
    upstream.on('close', end);
    client.on('error', end);
    client.on('close', end);
    upstream.write(head);
    // From here on the two sockets are one: the owner's 101 (or its refusal) and the frames.
    upstream.pipe(client);
    client.pipe(upstream);
  };

  const pass = async (
    request: FastifyRequest,
    reply: FastifyReply,
    member: string,
    parsed: boolean,
    path: string = request.url,
  ): Promise<void> => {
    passedOn.add(request);
    if (!parsed && request.headers.upgrade?.toLowerCase() === 'websocket')
      return upgrade(request, reply, member);
    const socket = await connect(member);
    reply.hijack();
    const headers = headersFor(request, forwarding.here, member);
    const payload = parsed && request.body != null ? JSON.stringify(request.body) : undefined;
    if (parsed) {
      delete headers['content-length'];
      delete headers['content-type'];
      if (payload !== undefined) {
        headers['content-type'] = 'application/json';
        headers['content-length'] = String(Buffer.byteLength(payload));
      }
    }

    await new Promise<void>((resolve) => {
      const upstream = httpRequest(
        { createConnection: () => socket, method: request.method, path, headers },
        (res) => {
          reply.raw.writeHead(res.statusCode ?? 502, responseHeaders(res.headers));
          res.pipe(reply.raw);
          res.on('end', () => {
            socket.destroy();
            resolve();
          });
          res.on('error', () => {
            reply.raw.destroy();
            resolve();
          });
        },
      );
      upstream.on('error', (e) => {
        socket.destroy();
        failHijacked(reply, unavailable(`The request to member ${member} broke off: ${e.message}`));
        resolve();
      });
      // The caller going away ends the owner's side too (a download, a follow).
      reply.raw.on('close', () => {
        if (!reply.raw.writableFinished) upstream.destroy();
      });
      if (parsed) upstream.end(payload);
      else (request.raw as Readable).pipe(upstream);
    });
  };

  return {
    here: forwarding.here,
    proxy: (request, reply, member) => pass(request, reply, member, false),
    replay: (request, reply, member, path) => pass(request, reply, member, true, path),
    json: (request, member) => {
      passedOn.add(request);
      return exchange(
        request,
        member,
        request.method,
        request.url,
        request.body === null ? undefined : request.body,
      );
    },
    get: (request, member, path) => exchange(request, member, 'GET', path, undefined),
    others: () => forwarding.others(),
    stream(request, member, path, onMessage, onEnd) {
      let closed = false;
      let ws: WebSocket | undefined;
      let ended = false;
      const end = () => {
        if (ended) return;
        ended = true;
        if (!closed) onEnd?.();
      };
      void connect(member)
        .then((socket) => {
          if (closed) {
            socket.destroy();
            return;
          }
          const headers = headersFor(request, forwarding.here, member);
          for (const name of [
            'upgrade',
            'sec-websocket-key',
            'sec-websocket-version',
            'sec-websocket-extensions',
          ])
            delete headers[name];
          ws = new WebSocket(`ws://${member}${path}`, { headers, createConnection: () => socket });
          ws.on('message', (data, isBinary) => {
            if (!isBinary) onMessage(data.toString());
          });
          ws.on('error', () => ws?.terminate());
          ws.on('close', end);
        })
        .catch(end);
      return () => {
        closed = true;
        ws?.terminate();
      };
    },
  };
}
