import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { conflict, failedPrecondition } from '../../core/errors.ts';
import { withRevert } from '../../core/revert.ts';
import type { ProcessRunner } from '../../host/runner.ts';
import type { IncomingEndpoints, LiveMigration, MigrationTls } from '../live-migration.ts';
import type { QmpCallOptions } from './qmp-client.ts';
import { exists, type VmContext } from './vm-context.ts';
import type { VmLaunch } from './vm-launch.ts';
import {
  finishIncoming,
  MIGRATION_QMP_TIMEOUT_MS,
  type MigrationQmp,
  migrateOut,
  prepareIncoming,
  recoverSource,
  resumeSource,
  undoLeftovers,
} from './vm-migration.ts';
import { removeRuntimeDir } from './vm-runtime-dir.ts';

/**
 * A TCP port free on `host` now. QEMU binds it itself a moment later (as the guest's uid, in the
 * member's network namespace); another process taking it meanwhile makes the prepare fail, and
 * the move with it, in one line.
 */
export function freeTcpPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen({ host, port: 0, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** The nftables table (family inet) that lets only the source reach a migration's two ports. */
export const migrationTable = (guest: string): string => `trivisor-migration-${guest}`;

/**
 * The NBD export and the migration stream are plain TCP (decision 0042): while they listen, only
 * the source member's address may open a connection to their ports; anything else (another
 * host, a local process) is dropped before it reaches QEMU. One table per guest, replaced whole.
 */
export function migrationFilter(guest: string, options: { from: string; ports: readonly number[] }): string {
  const table = migrationTable(guest);
  const family = options.from.includes(':') ? 'ip6' : 'ip';
  return (
    `add table inet ${table}\ndelete table inet ${table}\ntable inet ${table} {\n` +
    '  chain input {\n    type filter hook input priority filter - 1; policy accept;\n' +
    `    tcp dport { ${options.ports.join(', ')} } ${family} saddr != ${options.from} drop\n` +
    `    tcp dport { ${options.ports.join(', ')} } meta nfproto != ${family === 'ip' ? 'ipv4' : 'ipv6'} drop\n` +
    '  }\n}\n'
  );
}

/**
 * `ss -K`: aborts this host's TCP connections to a migration's destination ports (the kernel's
 * SOCK_DESTROY; run in the member's network namespace, where the guest's QEMU is): the NBD export's
 * and the RAM stream's, open or still being opened. A destination that hangs answers nothing, not
 * even a reset: QEMU's sends and connects would wait for as long as TCP retries (decision 0042,
 * amended: a hung destination). Only those two ports of that address: they are this migration's.
 */
export function dropConnectionsArgv(to: IncomingEndpoints): string[] {
  const ports = [to.nbdPort, to.migrationPort].filter((p) => p > 0);
  const dports = ports.flatMap((p, i) => [...(i > 0 ? ['or'] : []), 'dport', '=', `:${p}`]);
  return ['ss', '-tnK', 'dst', to.host.includes(':') ? `[${to.host}]` : to.host, '(', ...dports, ')'];
}

/** Removes a migration's filter (nothing when there is none). */
export const dropMigrationFilter = (guest: string): string =>
  `add table inet ${migrationTable(guest)}\ndelete table inet ${migrationTable(guest)}\n`;

/**
 * TLS for one migration (decision 0042): a CA made for it alone (its key gone once it has signed),
 * a server certificate for the destination's address and a client certificate for the source.
 * Nothing else trusts that CA (not etcd, not the member API, which trust the cluster's): a QEMU
 * taken over by its guest, which holds one of these keys, can use it for nothing but this
 * migration. Made with Debian's openssl, as the cluster's own certificates are.
 */
export async function makeMigrationCredentials(
  runner: ProcessRunner,
  options: { host: string },
): Promise<{ caCert: string; server: { cert: string; key: string }; client: { cert: string; key: string } }> {
  const dir = await mkdtemp(join(tmpdir(), 'trivisor-migration-ca-'));
  try {
    const f = (name: string) => join(dir, name);
    const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-sha256'];
    await runner.run([
      ...['openssl', 'req', '-x509', '-new', ...newKey, '-days', '2'],
      ...['-subj', '/O=Trivisor/CN=live migration', '-keyout', f('ca.key'), '-out', f('ca.pem')],
    ]);
    const leaf = async (name: 'server' | 'client', ext: string[]) => {
      await runner.run([
        ...['openssl', 'req', '-new', ...newKey, '-subj', `/O=Trivisor/CN=migration ${name}`],
        ...['-keyout', f(`${name}.key`), '-out', f(`${name}.csr`)],
      ]);
      await writeFile(f(`${name}.ext`), `${ext.join('\n')}\n`);
      await runner.run([
        ...['openssl', 'x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key')],
        ...['-set_serial', `0x${randomBytes(16).toString('hex')}`, '-days', '2', '-sha256'],
        ...['-extfile', f(`${name}.ext`), '-out', f(`${name}.pem`)],
      ]);
      return {
        cert: await readFile(f(`${name}.pem`), 'utf8'),
        key: await readFile(f(`${name}.key`), 'utf8'),
      };
    };
    const usage = [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature,keyEncipherment',
    ];
    const server = await leaf('server', [
      ...usage,
      'extendedKeyUsage=serverAuth',
      `subjectAltName=IP:${options.host}`,
    ]);
    const client = await leaf('client', [...usage, 'extendedKeyUsage=clientAuth']);
    return { caCert: await readFile(f('ca.pem'), 'utf8'), server, client };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Runs `load` with a directory of QEMU's credential files (`files`: name → PEM) that only `uid`
 * (the guest's QEMU) can read; QEMU reads them when its tls-creds object is made, and the
 * directory goes right after.
 */
async function withCredentialsDir<T>(
  uid: number,
  files: Record<string, string>,
  load: (dir: string) => Promise<T>,
): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'trivisor-migration-tls-'));
  try {
    for (const [name, pem] of Object.entries(files)) {
      await writeFile(join(dir, name), pem, { mode: 0o600 });
      await chown(join(dir, name), uid, uid);
    }
    await chmod(dir, 0o700);
    await chown(dir, uid, uid);
    return await load(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const noop = (): void => {};

/** The vm driver's live migration (decision 0042): QEMU's, over QMP, the disk mirrored over NBD. */
export function createVmLiveMigration(c: VmContext, launch: VmLaunch): LiveMigration {
  const { self, pathsOf, withQmp, log, runner, migratingOut, readUid } = c;
  const uidOf = async (spec: Parameters<typeof readUid>[0]): Promise<number> => {
    const uid = await readUid(spec);
    if (uid === undefined) throw failedPrecondition(`Guest ${spec.name} has no QEMU uid on this member`);
    return uid;
  };
  const nft = (script: string) => runner.run(['nft', '-f', '-'], { input: script });
  return {
    async prepareIncoming(spec, image, options) {
      const p = pathsOf(spec);
      if (options.sharedDisk) {
        // The guest's directory is the pool's, linked here, and the source's QEMU uses it: only a
        // QEMU of this member's own would be in the way (its runtime directory is this member's).
        if (!(await exists(p.disk))) {
          throw failedPrecondition(
            `Guest ${spec.name}'s disk ${p.disk} is not to be seen on this member: check the shared pool's mount`,
          );
        }
        if (await c.liveQemu(spec)) {
          throw conflict(
            `This member runs a QEMU of guest ${spec.name} already (${p.runDir}): a live move needs none here`,
          );
        }
      } else if (await exists(p.dir)) {
        throw conflict(
          `This member already has files of guest ${spec.name} (${p.dir}): a live move needs an empty place; remove them first`,
        );
      }
      return withRevert(async (r) => {
        if (options.sharedDisk) {
          r.add(() => stopIncoming(spec));
        } else {
          r.add(() => self().delete(spec));
          // The disk is the one a new guest gets: an overlay on the same image's base disk, of the
          // spec's size; the source's mirror fills in only its own clusters (sync=top).
          await self().create(spec, image);
          // A live move's snapshots go in before QEMU opens the disk (decision 0088): each an
          // internal snapshot, the active layer left empty over the base for the mirror (sync=top).
          if (options.fill) await options.fill();
        }
        const process = await launch.startIncoming(spec, image);
        const nbdPort = options.sharedDisk ? 0 : await freeTcpPort(options.host);
        let migrationPort = await freeTcpPort(options.host);
        if (migrationPort === nbdPort) migrationPort = await freeTcpPort(options.host);
        const endpoints = { host: options.host, nbdPort, migrationPort };
        // Filtered before QEMU listens: there is no moment when anyone else could connect.
        r.add(() => nft(dropMigrationFilter(spec.name)).then(() => undefined));
        const ports = options.sharedDisk ? [migrationPort] : [nbdPort, migrationPort];
        await nft(migrationFilter(spec.name, { from: options.from, ports }));
        const creds = await makeMigrationCredentials(runner, { host: options.host });
        const files = {
          'ca-cert.pem': creds.caCert,
          'server-cert.pem': creds.server.cert,
          'server-key.pem': creds.server.key,
        };
        await withCredentialsDir(await uidOf(spec), files, (tlsDir) =>
          withQmp(
            spec,
            (q) => prepareIncoming(q, endpoints, { tlsDir, ...(options.sharedDisk && { sharedDisk: true }) }),
            // Its greeting too may be slow while the host is loaded (its commands wait as long).
            { timeoutMs: MIGRATION_QMP_TIMEOUT_MS },
          ),
        );
        log.info(
          { guest: spec.name, ...endpoints, sharedDisk: options.sharedDisk === true },
          'waiting for a live migration',
        );
        const tls: MigrationTls = { caCert: creds.caCert, ...creds.client };
        return { process, endpoints, tls };
      });
    },
    async finishIncoming(spec) {
      await withQmp(spec, (q) => finishIncoming(q), { timeoutMs: MIGRATION_QMP_TIMEOUT_MS });
      await nft(dropMigrationFilter(spec.name));
    },
    async dropIncoming(spec) {
      await stopIncoming(spec);
      await nft(dropMigrationFilter(spec.name));
    },
    async migrateOut(spec, options) {
      // A connection per command: QEMU serves one QMP client at a time, and the rest of the daemon
      // (liveness checks, usage) must not wait for a migration's end to be answered.
      // Each connection's greeting waits as long as the command it carries (QEMU is as busy then).
      const qmp: MigrationQmp = {
        execute: <T>(command: string, args?: Record<string, unknown>, opts?: QmpCallOptions) =>
          withQmp(
            spec,
            (q) => q.execute<T>(command, args, opts),
            opts?.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {},
          ),
      };
      // Until it is resumed here or its QEMU is gone, a paused source is this migration's to decide.
      migratingOut.add(spec.name);
      let begun = false;
      try {
        const files = {
          'ca-cert.pem': options.tls.caCert,
          'client-cert.pem': options.tls.cert,
          'client-key.pem': options.tls.key,
        };
        // The files go once migrateOut's first command (object-add) has loaded them.
        let loaded: () => void = () => {};
        const read = new Promise<void>((resolve) => {
          loaded = resolve;
        });
        // Both sides must agree: a disk mirrored into nothing, or one left unmirrored, loses writes.
        if ((options.to.nbdPort === 0) !== (options.sharedDisk === true)) {
          throw failedPrecondition(
            options.sharedDisk
              ? `The destination exports a disk of guest ${spec.name}, which is on a shared pool: it does not see the pool as shared`
              : `The destination exports no disk of guest ${spec.name}, whose disk is this member's own`,
          );
        }
        // An earlier migration's pieces still in this QEMU (its undo could not end the mirror job
        // in time: the destination stopped answering, its member lost) go first; pieces that
        // cannot go refuse the move in one line, nothing begun.
        const earlier = await undoLeftovers(qmp, { waitMs: 10_000 });
        if (earlier.left.length > 0) {
          throw failedPrecondition(
            `An earlier migration of guest ${spec.name} left pieces in its QEMU that cannot go yet (${earlier.left.join('; ')}): retry in a minute`,
          );
        }
        if (earlier.undone.length > 0) {
          log.info({ guest: spec.name, undone: earlier.undone }, "an earlier migration's pieces removed");
        }
        const uid = await uidOf(spec);
        const started = await withCredentialsDir(uid, files, async (tlsDir) => {
          begun = true;
          const migrating = migrateOut(qmp, {
            to: options.to,
            downtimeLimitMs: options.downtimeLimitMs,
            ...(options.stallLimitMs !== undefined && { stallMs: options.stallLimitMs }),
            sync: options.sharedDisk ? 'shared' : 'top',
            tlsDir,
            onTlsLoaded: loaded,
            signal: options.signal,
            dropConnections: async () => {
              const r = await runner.run(dropConnectionsArgv(options.to), { timeoutMs: 10_000 });
              // ss lists what it aborted under its header line.
              const aborted = r.stdout.trim().split('\n').slice(1);
              if (aborted.length > 0) {
                log.info(
                  { guest: spec.name, aborted },
                  "the migration's connections to the destination aborted",
                );
              }
            },
            ...(options.onProgress && { onProgress: options.onProgress }),
          });
          // Failing before it loaded them ends the wait too.
          await Promise.race([read, migrating.then(noop, noop)]);
          // Wrapped: the migration goes on after the files are gone.
          return { migrating };
        });
        return await started.migrating;
      } catch (e) {
        // migrateOut resumed the guest here before it threw.
        migratingOut.delete(spec.name);
        if (begun) {
          log.info(
            { guest: spec.name, err: e instanceof Error ? e.message : String(e) },
            'the live migration stopped and undone here: the guest runs on',
          );
        }
        throw e;
      }
    },
    async resumeSource(spec) {
      try {
        await withQmp(spec, (q) => resumeSource(q));
      } finally {
        migratingOut.delete(spec.name);
      }
    },
    async recoverSource(spec) {
      try {
        // A QEMU that is gone has nothing to undo: the guest's controller starts it again.
        if (!(await c.liveQemu(spec))) return [];
        // A connection per command, as for migrateOut: a wait for a job does not hold QMP.
        const qmp: MigrationQmp = {
          execute: <T>(command: string, args?: Record<string, unknown>) =>
            withQmp(spec, (q) => q.execute<T>(command, args, { timeoutMs: MIGRATION_QMP_TIMEOUT_MS }), {
              timeoutMs: MIGRATION_QMP_TIMEOUT_MS,
            }),
        };
        const undone = await recoverSource(qmp);
        if (undone.length > 0)
          log.info({ guest: spec.name, undone }, "a dead daemon's live move undone in QEMU");
        return undone;
      } finally {
        migratingOut.delete(spec.name);
      }
    },
    async releaseSource(spec) {
      await stopIncoming(spec);
      migratingOut.delete(spec.name);
    },
  };

  /**
   * Ends this member's QEMU of the guest, never run or paused after its migration, and removes
   * its runtime directory; the guest's own files are not touched (on a shared pool they are the
   * guest's wherever it runs).
   */
  async function stopIncoming(spec: Parameters<typeof readUid>[0]): Promise<void> {
    const q = await c.liveQemu(spec);
    if (q) await c.killQemu(spec, q);
    if (!(await c.cleanUpRuntime(spec))) throw c.unrecordedQemu(spec);
    await removeRuntimeDir(pathsOf(spec));
  }
}
