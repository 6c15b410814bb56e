import { createHash, X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';
import { TrivisorApiError } from './api-error.ts';

/** Where a TLS connection goes and what it must find there. */
export interface TlsTarget {
  host: string;
  port: number;
  /** The server certificate's SHA-256 (hex) that must be presented, else nothing is sent. */
  pin?: string;
  /** Presented when the server asks (trusted client certificates authenticate like tokens). */
  clientCertificate?: { cert: string; key: string };
  timeoutMs?: number;
}

/** For messages: `https://HOST:PORT`. */
const where = (t: TlsTarget) => `https://${t.host.includes(':') ? `[${t.host}]` : t.host}:${t.port}`;

/**
 * A TLS connection that is handed over only once the handshake is done and, with a pin,
 * only if the server presented exactly the pinned certificate: no byte of a request (and so
 * no token) is written before that check. Without a pin, the certificate must verify against
 * the system's CAs, as any HTTPS client's would.
 */
export async function connectTls(target: TlsTarget): Promise<TLSSocket> {
  const { socket, fingerprint } = await handshake(target, { verifyWithCas: target.pin === undefined });
  if (target.pin !== undefined && fingerprint !== target.pin) {
    socket.destroy();
    throw new TrivisorApiError(
      `The server at ${where(target)} presented a certificate with fingerprint ${fingerprint ?? 'none'}, not the pinned ${target.pin}: someone may be intercepting the connection, so nothing was sent. If the server's certificate was replaced on purpose, remove the remote and add it again`,
      { status: 0, code: 'Unavailable' },
    );
  }
  return socket;
}

/** The certificate a server presents (PEM) and its fingerprint; nothing is sent to it. */
export async function fetchServerCertificate(
  target: Omit<TlsTarget, 'pin'>,
): Promise<{ certificate: string; fingerprint: string }> {
  // Any certificate will do here: the caller shows its fingerprint and decides.
  const { socket, fingerprint, certificate } = await handshake(target, { verifyWithCas: false });
  socket.destroy();
  if (!fingerprint || !certificate) throw unavailable(`${where(target)} presented no certificate`);
  return { certificate, fingerprint };
}

function handshake(
  target: TlsTarget,
  options: { verifyWithCas: boolean },
): Promise<{ socket: TLSSocket; fingerprint?: string; certificate?: string }> {
  const timeoutMs = target.timeoutMs ?? 20_000;
  return new Promise((resolve, reject) => {
    const socket = connect({
      host: target.host,
      port: target.port,
      ...(isIP(target.host) === 0 && { servername: target.host }),
      rejectUnauthorized: options.verifyWithCas,
      ...(target.clientCertificate && {
        cert: target.clientCertificate.cert,
        key: target.clientCertificate.key,
      }),
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(unavailable(`Cannot reach ${where(target)}: no TLS handshake within ${timeoutMs} ms`));
    }, timeoutMs);
    const onError = (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(unavailable(`Cannot reach ${where(target)}: ${hint(e)}`, e));
    };
    socket.once('error', onError);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      // Whoever takes the socket listens for its errors; until then one must not crash the process.
      socket.on('error', () => {});
      const raw = socket.getPeerCertificate(false)?.raw;
      if (!raw) {
        resolve({ socket });
        return;
      }
      resolve({
        socket,
        fingerprint: createHash('sha256').update(raw).digest('hex'),
        certificate: new X509Certificate(raw).toString(),
      });
    });
  });
}

function hint(e: NodeJS.ErrnoException): string {
  if (e.code === 'ECONNREFUSED') return 'connection refused (is the daemon listening there?)';
  if (e.code === 'ENOTFOUND') return 'no such host';
  if (e.code === 'ECONNRESET') return 'the connection was reset (is it a TLS port?)';
  if (e.code === 'EPROTO' || e.code?.startsWith('ERR_SSL')) return `the TLS handshake failed (${e.message})`;
  return e.message;
}

const unavailable = (message: string, cause?: unknown) =>
  new TrivisorApiError(message, { status: 0, code: 'Unavailable', ...(cause !== undefined && { cause }) });
