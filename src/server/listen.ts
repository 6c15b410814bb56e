import { chmod, lstat, mkdir, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { unavailable } from '../core/errors.ts';

/** True when something accepts connections on the unix socket at `path`. */
function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * Listens on a unix socket reachable by root only (0600). A socket file left
 * by a daemon that died is removed; one that still answers means another
 * daemon runs, which is refused rather than stolen.
 */
export async function listenUnix(app: FastifyInstance, socketPath: string): Promise<void> {
  await mkdir(dirname(socketPath), { recursive: true, mode: 0o700 });
  const existing = await lstat(socketPath).catch(() => null);
  if (existing) {
    if (!existing.isSocket()) {
      throw unavailable(`${socketPath} exists and is not a socket: move it away and start again`);
    }
    if (await socketAnswers(socketPath)) {
      throw unavailable(`Another daemon already listens on ${socketPath}: stop it first`);
    }
    await unlink(socketPath);
  }
  await app.listen({ path: socketPath });
  await chmod(socketPath, 0o600);
}

/** Listens on TCP; returns the bound address (port 0 picks a free one). */
export async function listenTcp(
  app: FastifyInstance,
  host: string,
  port: number,
): Promise<{ host: string; port: number }> {
  await app.listen({ host, port });
  const address = app.server.address();
  if (address === null || typeof address === 'string') return { host, port };
  return { host: address.address, port: address.port };
}
