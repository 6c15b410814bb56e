import { createServer } from 'node:net';
import { conflict } from '../../core/errors.ts';
import { withRevert } from '../../core/revert.ts';
import type { LiveMigration } from '../live-migration.ts';
import { exists, type VmContext } from './vm-context.ts';
import type { VmLaunch } from './vm-launch.ts';
import {
  finishIncoming,
  type MigrationQmp,
  migrateOut,
  prepareIncoming,
  resumeSource,
} from './vm-migration.ts';

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

/** Removes a migration's filter (nothing when there is none). */
export const dropMigrationFilter = (guest: string): string =>
  `add table inet ${migrationTable(guest)}\ndelete table inet ${migrationTable(guest)}\n`;

/** The vm driver's live migration (decision 0042): QEMU's, over QMP, the disk mirrored over NBD. */
export function createVmLiveMigration(c: VmContext, launch: VmLaunch): LiveMigration {
  const { self, pathsOf, withQmp, log, runner, migratingOut } = c;
  const nft = (script: string) => runner.run(['nft', '-f', '-'], { input: script });
  return {
    async prepareIncoming(spec, image, options) {
      if (await exists(pathsOf(spec).dir)) {
        throw conflict(
          `This member already has files of guest ${spec.name} (${pathsOf(spec).dir}): a live move needs an empty place; remove them first`,
        );
      }
      return withRevert(async (r) => {
        r.add(() => self().delete(spec));
        // The disk is the one a new guest gets: an overlay on the same image's base disk, of the
        // spec's size; the source's mirror fills in only its own clusters (sync=top).
        await self().create(spec, image);
        const process = await launch.startIncoming(spec, image);
        const nbdPort = await freeTcpPort(options.host);
        let migrationPort = await freeTcpPort(options.host);
        if (migrationPort === nbdPort) migrationPort = await freeTcpPort(options.host);
        const endpoints = { host: options.host, nbdPort, migrationPort };
        // Filtered before QEMU listens: there is no moment when anyone else could connect.
        r.add(() => nft(dropMigrationFilter(spec.name)).then(() => undefined));
        await nft(migrationFilter(spec.name, { from: options.from, ports: [nbdPort, migrationPort] }));
        await withQmp(spec, (q) => prepareIncoming(q, endpoints));
        log.info({ guest: spec.name, ...endpoints }, 'waiting for a live migration');
        return { process, endpoints };
      });
    },
    async finishIncoming(spec) {
      await withQmp(spec, (q) => finishIncoming(q));
      await nft(dropMigrationFilter(spec.name));
    },
    async dropIncoming(spec) {
      await nft(dropMigrationFilter(spec.name));
    },
    async migrateOut(spec, options) {
      // A connection per command: QEMU serves one QMP client at a time, and the rest of the daemon
      // (liveness checks, usage) must not wait for a migration's end to be answered.
      const qmp: MigrationQmp = {
        execute: <T>(command: string, args?: Record<string, unknown>, opts?: { timeoutMs?: number }) =>
          withQmp(spec, (q) => q.execute<T>(command, args, opts)),
      };
      // Until it is resumed here or its QEMU is gone, a paused source is this migration's to decide.
      migratingOut.add(spec.name);
      try {
        return await migrateOut(qmp, {
          to: options.to,
          downtimeLimitMs: options.downtimeLimitMs,
          sync: 'top',
          signal: options.signal,
          ...(options.onProgress && { onProgress: options.onProgress }),
        });
      } catch (e) {
        // migrateOut resumed the guest here before it threw.
        migratingOut.delete(spec.name);
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
  };
}
