import { connect, type NetConnectOpts, type Socket } from 'node:net';
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';

/**
 * A GET whose successful body is written into a sink, read from the socket into one buffer,
 * reused (decision 0105): Node's HTTP client hands each piece of a body to JavaScript as a new
 * buffer, copied out of the socket's own new buffer, and for a 405 MB backup download that
 * parsing and its garbage were most of the CLI's CPU (1.1 s of 2.3 s busy, and 0.4 s of garbage
 * collection). Here the status line and headers are parsed by hand, the body (Content-Length,
 * chunked, or up to the close) is handed to the sink as slices of the read buffer, and the
 * socket reads again only once the sink is done with them. HTTP/1.1 only, one request per
 * connection; over a unix socket or plain TCP (TLS keeps Node's client).
 */

/** Bytes of the one buffer the socket reads into. */
const READ_BYTES = 1 << 20;
/** A response's status line and headers larger than this are refused (Node's client allows 16 KiB). */
const MAX_HEAD_BYTES = 64 << 10;

/** What `requestIntoSink` answers: as the transport's RawResponse. */
export interface SinkResponse {
  status: number;
  headers: Record<string, string | string[]>;
  /** An error answer's (>= 400) body; empty for one written into the sink. */
  body: Buffer;
}

export interface SinkRequest {
  /** A unix socket's path, or a host and port. */
  to: { path: string } | { host: string; port: number };
  /** The request target (path and query). */
  path: string;
  /** The Host header. */
  host: string;
  headers: Record<string, string>;
  sink: Writable;
  /** Called with the size of each piece of the body as it arrives. */
  onBytes?: ((bytes: number) => void) | undefined;
  signal?: AbortSignal | undefined;
}

/** Thrown for an answer that is not HTTP/1.x as this reader knows it. */
export class BadResponse extends Error {}

/** Parses a response head (status line, headers; without the blank line). */
export function parseHead(text: string): { status: number; headers: Record<string, string | string[]> } {
  const lines = text.split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0] ?? '');
  if (!m) throw new BadResponse(`The server did not answer in HTTP/1.1: ${JSON.stringify(lines[0] ?? '')}`);
  const headers: Record<string, string | string[]> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw new BadResponse(`The server sent a malformed header line: ${JSON.stringify(line)}`);
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    const had = headers[name];
    if (name === 'set-cookie') headers[name] = [...((had as string[] | undefined) ?? []), value];
    else headers[name] = had === undefined ? value : `${had as string}, ${value}`;
  }
  return { status: Number(m[1]), headers };
}

/**
 * A body's decoder: `push` answers the body's bytes in a piece of what the socket read (slices
 * of it, no copy), `done` says the body is complete.
 */
export class BodyDecoder {
  private readonly chunked: boolean;
  /** Fixed length: bytes left (-1: up to the close). Chunked: bytes left of the current chunk. */
  private left: number;
  private state: 'size' | 'data' | 'crlf' | 'trailer' | 'done';
  private line = '';

  constructor(headers: Record<string, string | string[]>, noBody: boolean) {
    const te = String(headers['transfer-encoding'] ?? '').toLowerCase();
    this.chunked = !noBody && te.split(',').some((t) => t.trim() === 'chunked');
    const length = headers['content-length'];
    if (noBody) this.left = 0;
    else if (this.chunked) this.left = 0;
    else if (length !== undefined) {
      this.left = Number(length);
      if (!Number.isSafeInteger(this.left) || this.left < 0) {
        throw new BadResponse(`The server sent a bad Content-Length: ${JSON.stringify(length)}`);
      }
    } else this.left = -1;
    this.state = this.chunked ? 'size' : this.left === 0 ? 'done' : 'data';
  }

  get done(): boolean {
    return this.state === 'done';
  }

  /** Whether a body read up to the connection's close is complete then. */
  get endsAtClose(): boolean {
    return !this.chunked && this.left === -1;
  }

  push(bytes: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let at = 0;
    while (at < bytes.length) {
      if (this.state === 'done') throw new BadResponse('The server sent more than the body');
      if (!this.chunked) {
        const n = this.left < 0 ? bytes.length - at : Math.min(this.left, bytes.length - at);
        out.push(bytes.subarray(at, at + n));
        at += n;
        if (this.left >= 0) {
          this.left -= n;
          if (this.left === 0) this.state = 'done';
        }
        continue;
      }
      if (this.state === 'data') {
        const n = Math.min(this.left, bytes.length - at);
        out.push(bytes.subarray(at, at + n));
        at += n;
        this.left -= n;
        if (this.left === 0) this.state = 'crlf';
        continue;
      }
      // A line: a chunk's size, the CRLF after its data, or a trailer line.
      const nl = bytes.indexOf(10, at);
      const end = nl < 0 ? bytes.length : nl + 1;
      this.line += bytes.toString('latin1', at, end);
      at = end;
      if (this.line.length > 4096) throw new BadResponse('The server sent a malformed chunked body');
      if (nl < 0) break;
      const line = this.line.replace(/\r?\n$/, '');
      this.line = '';
      if (this.state === 'crlf') {
        if (line !== '') throw new BadResponse('The server sent a malformed chunked body');
        this.state = 'size';
      } else if (this.state === 'size') {
        const size = /^([0-9a-fA-F]{1,12})[ \t]*(?:;.*)?$/.exec(line);
        if (!size) throw new BadResponse('The server sent a malformed chunked body');
        this.left = Number.parseInt(size[1] as string, 16);
        this.state = this.left === 0 ? 'trailer' : 'data';
      } else if (line === '') this.state = 'done';
    }
    return out.filter((b) => b.length > 0);
  }
}

/**
 * Sends a GET and, for a successful (< 400) answer, writes its body into `sink` (ended once the
 * body is complete; destroyed on a failure); an error answer's body is returned whole. Rejects
 * with `connectError(e)` when the server cannot be reached, with the signal's reason once it is
 * aborted, with the sink's error, and when the connection ends before the body does.
 */
export function requestIntoSink(
  request: SinkRequest,
  connectError: (e: NodeJS.ErrnoException) => Error,
): Promise<SinkResponse> {
  const { sink, onBytes, signal } = request;
  return new Promise<SinkResponse>((resolve, reject) => {
    signal?.throwIfAborted();
    const buffer = Buffer.allocUnsafe(READ_BYTES);
    let head: Buffer | undefined = Buffer.alloc(0);
    let response: SinkResponse | undefined;
    let decoder: BodyDecoder | undefined;
    const errorBody: Buffer[] = [];
    let connected = false;
    let settled = false;
    let sinkEnding = false;
    const fail = (e: unknown) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      if (response && response.status < 400) sink.destroy(e as Error);
      reject(signal?.aborted ? signal.reason : e);
    };
    const onAbort = () => fail(signal?.reason);
    const complete = () => {
      const res = response as SinkResponse;
      socket.destroy();
      if (res.status >= 400) {
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        resolve({ ...res, body: Buffer.concat(errorBody) });
        return;
      }
      sinkEnding = true;
      sink.end();
      finished(sink).then(() => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        resolve(res);
      }, fail);
    };
    /** Hands the body's pieces on; answers whether the socket may read again at once. */
    const body = (bytes: Buffer): boolean => {
      const d = decoder as BodyDecoder;
      const pieces = d.push(bytes);
      if ((response as SinkResponse).status >= 400) {
        for (const p of pieces) errorBody.push(Buffer.from(p));
        if (d.done) complete();
        return true;
      }
      if (pieces.length === 0) {
        if (d.done) complete();
        return true;
      }
      // The pieces are slices of the read buffer: the socket reads again once the sink is done with them.
      let count = pieces.length;
      const written = (e?: Error | null) => {
        if (e) return fail(e);
        if (--count > 0 || settled) return;
        if (d.done) complete();
        else socket.resume();
      };
      for (const p of pieces) {
        onBytes?.(p.length);
        sink.write(p, written);
      }
      return false;
    };
    const onData = (n: number): boolean => {
      if (settled) return false;
      try {
        const bytes = buffer.subarray(0, n);
        if (decoder) return body(bytes);
        head = Buffer.concat([head as Buffer, bytes]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) {
          if (head.length > MAX_HEAD_BYTES)
            throw new BadResponse('The server sent a response head too large');
          return true;
        }
        const parsed = parseHead(head.toString('latin1', 0, end));
        const rest = head.subarray(end + 4);
        head = undefined;
        if (parsed.status < 200) {
          // An interim answer (100 Continue): the real one follows.
          head = rest;
          return rest.length > 0 ? onData(0) : true;
        }
        response = { ...parsed, body: Buffer.alloc(0) };
        decoder = new BodyDecoder(parsed.headers, parsed.status === 204 || parsed.status === 304);
        if (decoder.done) {
          complete();
          return false;
        }
        // `rest` is in the head's own copy, not in the read buffer.
        return rest.length > 0 ? body(rest) : true;
      } catch (e) {
        fail(e);
        return false;
      }
    };
    const options = {
      ...request.to,
      onread: {
        buffer,
        // Returning false pauses the socket, until `resume`.
        callback: (n: number) => onData(n),
      },
    };
    const socket: Socket = connect(options as NetConnectOpts);
    signal?.addEventListener('abort', onAbort, { once: true });
    // The sink's failure is this request's (and its 'error', once destroyed, has a listener).
    sink.on('error', fail);
    socket.on('connect', () => {
      connected = true;
    });
    socket.on('error', (e: NodeJS.ErrnoException) => fail(connected ? e : connectError(e)));
    socket.on('close', () => {
      if (settled || sinkEnding) return;
      if (decoder?.endsAtClose) return complete();
      fail(new Error('The daemon closed the connection before the end of its answer'));
    });
    const lines = [`GET ${request.path} HTTP/1.1`, `Host: ${request.host}`, 'Connection: close'];
    for (const [name, value] of Object.entries(request.headers)) lines.push(`${name}: ${value}`);
    // Not `end`: a server may take a half-closed connection for a client that went away.
    socket.write(`${lines.join('\r\n')}\r\n\r\n`);
  });
}
