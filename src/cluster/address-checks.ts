import { connect, createServer, isIP, type Server } from 'node:net';
import { conflict, failedPrecondition, invalidArgument } from '../core/errors.ts';

/**
 * Whether this host can listen on `host` at every one of `ports`: the address is one of
 * its own and nothing listens there yet. Checked before a bootstrap or join changes
 * anything, so a wrong `--address` is one line and nothing else.
 */
export async function assertBindable(host: string, ports: number[]): Promise<void> {
  for (const port of ports) {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => {
        if (e.code === 'EADDRNOTAVAIL') {
          reject(
            invalidArgument(
              `${host} is not an address of this host: give the address other members reach this host at (see ip address)`,
            ),
          );
        } else if (e.code === 'EADDRINUSE') {
          reject(
            conflict(`Port ${port} on ${host} is already in use: free it, or give --address ${host}:PORT`),
          );
        } else {
          reject(invalidArgument(`Cannot listen on ${host}:${port}: ${e.message}`));
        }
      });
      server.listen({ host, port, exclusive: true }, () => resolve());
    });
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** A listener that answers every connection with `nonce` (the joining host's reachability proof). */
export interface ProbeListener {
  close(): Promise<void>;
}

/**
 * Listens on the joining host's cluster address for the member that handles the join:
 * that member connects to it and must read the nonce the joiner sent it, which proves
 * that members can reach the joiner there (no NAT, no firewall, not someone else's
 * address). Nothing else is served: the connection carries the nonce only.
 */
export async function serveProbe(host: string, port: number, nonce: string): Promise<ProbeListener> {
  const server: Server = createServer((socket) => {
    socket.on('error', () => {});
    socket.end(`${nonce}\n`);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port, exclusive: true }, () => resolve());
  });
  return {
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/**
 * Connects to `host:port` and reads the nonce a joining host serves there; FailedPrecondition
 * in one line when it cannot be reached or answers something else.
 */
export function probeReachable(
  host: string,
  port: number,
  nonce: string,
  options: { timeoutMs?: number; member: string },
): Promise<void> {
  const where = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  const refuse = (why: string) =>
    failedPrecondition(
      `Member ${options.member} cannot reach the joining host at ${where} (${why}): give --address as the address other members reach it at. Nothing was changed`,
    );
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    let text = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(refuse(`no answer within ${(options.timeoutMs ?? 5000) / 1000} s`));
    }, options.timeoutMs ?? 5000);
    socket.on('data', (d: Buffer) => {
      text += d.toString('utf8');
      if (text.length > 256) socket.destroy();
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(refuse(e.code === 'ECONNREFUSED' ? 'connection refused' : (e.code ?? e.message)));
    });
    socket.on('close', () => {
      clearTimeout(timer);
      if (text.trim() === nonce) resolve();
      else reject(refuse('something else answers there'));
    });
  });
}

/**
 * A cluster's addresses are of one family (decision 0101): the managed networks' VXLAN runs over
 * them, and a Linux VXLAN device sends from one local address, IPv4 or IPv6. A host joining with
 * an address of the other family is refused before anything changes (FailedPrecondition, one
 * line). `members` are the members' addresses (`IP:PORT`, `[IPv6]:PORT`), with their names when
 * known.
 */
export function assertSameFamily(
  host: string,
  members: ReadonlyArray<{ name?: string; address: string }>,
): void {
  const family = isIP(host);
  const other = members.find((m) => {
    const f = isIP(hostOf(m.address));
    return f !== 0 && f !== family;
  });
  if (!other) return;
  const theirs = family === 6 ? 'IPv4' : 'IPv6';
  throw failedPrecondition(
    `The cluster's members are on ${theirs} addresses (${other.name ? `${other.name} at ` : ''}${other.address}) and ${host} is not: every member's address is of one family (the managed networks' VXLAN runs over them); give --address as an ${theirs} address of this host. Nothing was changed`,
  );
}

/** The IP of `IP:PORT`, `[IPv6]:PORT` or a bare IP. */
function hostOf(address: string): string {
  const v6 = /^\[([^\]]+)\](?::\d+)?$/.exec(address);
  if (v6?.[1]) return v6[1];
  if (isIP(address) !== 0) return address;
  return address.replace(/:\d+$/, '');
}
