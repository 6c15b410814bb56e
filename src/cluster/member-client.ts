import { createHash, X509Certificate } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { connect, type PeerCertificate, type TLSSocket } from 'node:tls';
import { isErrorCode, TrivisorError, unavailable } from '../core/errors.ts';
import { memberNameOf } from './cluster-ca.ts';
import { splitAddress } from './cluster-files.ts';

/** This member's credentials: the cluster CA and the certificate it signed for this member (PEM). */
export interface MemberTls {
  ca: string;
  cert: string;
  key: string;
}

/** Another member, as its record names it. */
export interface MemberTarget {
  name: string;
  /** `IP:PORT` of its member API. */
  address: string;
}

/** An answer of another member's API: its status and its parsed JSON envelope. */
export interface MemberResponse<T = unknown> {
  status: number;
  /** `metadata` of a sync envelope. */
  metadata: T;
}

/**
 * The member-to-member API client (decision 0032): every call between members goes over
 * the cluster address with mutual TLS. This member presents its own certificate; the other
 * end must present a certificate that the cluster CA signed *for the member it is asked
 * as* (its CN is that member's name): a CA-signed certificate of another member, a
 * self-signed one, or none at all is refused before a byte of the request is written.
 * Forwarding (issue 12, part 4) builds on `request`.
 */
export interface MemberClient {
  /** One JSON request; an error envelope is thrown as its TrivisorError (code and message as the member sent them). */
  request<T>(target: MemberTarget, method: string, path: string, body?: unknown): Promise<MemberResponse<T>>;
  /** The TLS connection itself, verified, for callers that stream (forwarded exec, console). */
  connect(target: MemberTarget): Promise<TLSSocket>;
}

const DEFAULT_TIMEOUT_MS = 10_000;

export function createMemberClient(
  credentials: () => MemberTls,
  options: { timeoutMs?: number } = {},
): MemberClient {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const connectTo = async (target: MemberTarget): Promise<TLSSocket> => {
    const tls = credentials();
    const { host, port } = splitAddress(target.address);
    const socket = await handshake({ host, port, timeoutMs, ca: tls.ca, cert: tls.cert, key: tls.key });
    const peer = socket.getPeerCertificate(false);
    const name = peer?.raw ? memberNameOf(new X509Certificate(peer.raw)) : undefined;
    if (!socket.authorized || name !== target.name) {
      socket.destroy();
      throw unavailable(
        `Member ${target.name} at ${target.address} did not prove who it is (${
          socket.authorized
            ? `its certificate is member ${name ?? 'unknown'}'s`
            : `its certificate is not the cluster's: ${String(socket.authorizationError ?? 'none presented')}`
        }): nothing was sent`,
      );
    }
    return socket;
  };
  return {
    connect: connectTo,
    async request<T>(target: MemberTarget, method: string, path: string, body?: unknown) {
      const socket = await connectTo(target);
      return exchange<T>(socket, {
        method,
        path,
        body,
        where: `member ${target.name} at ${target.address}`,
        timeoutMs,
      });
    },
  };
}

/**
 * A request to a cluster member by a host that is not one yet (a joiner): no client
 * certificate, and the server's certificate must chain to the CA whose SHA-256 the join
 * token carries — checked before the request (with its secret) is written. Returns the
 * answer and that CA's certificate, which is how the joiner learns it.
 */
export async function requestWithPinnedCa<T>(
  address: string,
  options: { caFingerprint: string; method: string; path: string; body?: unknown; timeoutMs?: number },
): Promise<MemberResponse<T> & { caCert: string }> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const { host, port } = splitAddress(address);
  const socket = await handshake({ host, port, timeoutMs });
  const leaf = socket.getPeerCertificate(true);
  const issuer = issuerOf(leaf);
  let caCert: string | undefined;
  if (leaf?.raw && issuer?.raw) {
    const fingerprint = createHash('sha256').update(issuer.raw).digest('hex');
    const ca = new X509Certificate(issuer.raw);
    const server = new X509Certificate(leaf.raw);
    if (
      fingerprint === options.caFingerprint &&
      ca.ca &&
      server.checkIssued(ca) &&
      server.verify(ca.publicKey)
    ) {
      caCert = ca.toString();
    }
  }
  if (caCert === undefined) {
    socket.destroy();
    throw unavailable(
      `The server at ${address} is not a member of the cluster the join token names (its certificate does not chain to CA ${options.caFingerprint.slice(0, 16)}…): nothing was sent`,
    );
  }
  const answer = await exchange<T>(socket, {
    method: options.method,
    path: options.path,
    body: options.body,
    where: address,
    timeoutMs,
  });
  return { ...answer, caCert };
}

/** The certificate that issued `leaf` in the chain the server sent (not `leaf` itself). */
function issuerOf(leaf: (PeerCertificate & { issuerCertificate?: PeerCertificate }) | undefined) {
  const issuer = leaf?.issuerCertificate;
  return issuer && issuer !== leaf ? issuer : undefined;
}

/** A finished TLS handshake, or Unavailable in one line. Verification is the caller's. */
function handshake(target: {
  host: string;
  port: number;
  timeoutMs: number;
  ca?: string;
  cert?: string;
  key?: string;
}): Promise<TLSSocket> {
  const where = `${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}`;
  return new Promise((resolve, reject) => {
    const socket = connect({
      host: target.host,
      port: target.port,
      // Checked by the caller once the handshake is done, so that the reason can be told.
      rejectUnauthorized: false,
      ...(target.ca !== undefined && { ca: target.ca }),
      ...(target.cert !== undefined && { cert: target.cert }),
      ...(target.key !== undefined && { key: target.key }),
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(unavailable(`Cannot reach ${where}: no TLS handshake within ${target.timeoutMs} ms`));
    }, target.timeoutMs);
    socket.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(unavailable(`Cannot reach ${where}: ${hint(e)}`));
    });
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      // Whoever takes the socket listens for its errors; until then one must not crash the process.
      socket.on('error', () => {});
      resolve(socket);
    });
  });
}

/** One HTTP exchange over a verified socket; an error envelope becomes its TrivisorError. */
function exchange<T>(
  socket: TLSSocket,
  o: { method: string; path: string; body?: unknown; where: string; timeoutMs: number },
): Promise<MemberResponse<T>> {
  const payload = o.body === undefined ? undefined : JSON.stringify(o.body);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        createConnection: () => socket,
        method: o.method,
        path: o.path,
        timeout: o.timeoutMs,
        headers: {
          host: o.where,
          ...(payload !== undefined && {
            'content-type': 'application/json',
            'content-length': String(Buffer.byteLength(payload)),
          }),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (e) => reject(unavailable(`The answer of ${o.where} broke off: ${e.message}`)));
        res.on('end', () => {
          socket.destroy();
          const status = res.statusCode ?? 0;
          try {
            resolve({ status, metadata: metadataOfAnswer<T>(status, Buffer.concat(chunks), o.where) });
          } catch (e) {
            reject(e);
          }
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${o.timeoutMs} ms`)));
    req.on('error', (e) => {
      socket.destroy();
      reject(unavailable(`The request to ${o.where} failed: ${e.message}`));
    });
    req.end(payload);
  });
}

/**
 * The metadata of a member's answer, or its error envelope as the TrivisorError it names (its
 * code as the member sent it; guessed from the status only when it sent none).
 */
export function metadataOfAnswer<T>(status: number, body: Buffer, where: string): T {
  let envelope: { metadata?: unknown; error?: unknown; code?: unknown };
  try {
    envelope = JSON.parse(body.toString('utf8'));
  } catch {
    throw unavailable(`${where} answered ${status} without a JSON envelope`);
  }
  if (status >= 400) {
    const code = isErrorCode(envelope.code)
      ? envelope.code
      : status >= 500
        ? 'Unavailable'
        : 'InvalidArgument';
    throw new TrivisorError(
      code,
      typeof envelope.error === 'string' ? envelope.error : `${where} answered ${status}`,
    );
  }
  return envelope.metadata as T;
}

function hint(e: NodeJS.ErrnoException): string {
  if (e.code === 'ECONNREFUSED') return 'connection refused (is the member daemon running there?)';
  if (e.code === 'EHOSTUNREACH' || e.code === 'ENETUNREACH') return 'no route to that address';
  if (e.code === 'ECONNRESET') return 'the connection was reset (is it a member API port?)';
  if (e.code === 'EPROTO' || e.code?.startsWith('ERR_SSL')) return `the TLS handshake failed (${e.message})`;
  return e.message;
}
