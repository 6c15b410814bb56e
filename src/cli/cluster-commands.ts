import { readFile } from 'node:fs/promises';
import { type Command, Option } from 'commander';
import { createClient, type TrivisorClient } from '../client/client.ts';
import type { ClusterMemberInfo, ClusterMove, RebalanceResult } from '../client/cluster-client.ts';
import { invalidArgument } from '../core/errors.ts';
import { formatBytes } from '../core/sizes.ts';
import { EVACUATE_MODES, type EvacuateMode } from '../core/types.ts';
import { type GlobalOptions, remoteOf } from './context.ts';
import { type OutputFormat, renderData, renderTable } from './output.ts';
import { waitWithProgress } from './progress.ts';

/** The cluster is the host's, not a project's: no `?project=` is sent. */
function hostClient(cmd: Command): TrivisorClient {
  const { project: _, ...globals } = cmd.optsWithGlobals<GlobalOptions>();
  return createClient(remoteOf(globals).target);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * After a bootstrap or join the daemon restarts on the cluster's store: waits until it
 * answers again as member `name` and that member is Online, so that the command ends
 * with a cluster that works (or one line saying what did not come up).
 */
async function waitOnline(cmd: Command, name: string, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = 'the daemon did not answer';
  while (Date.now() < deadline) {
    await sleep(500);
    try {
      const client = hostClient(cmd);
      const info = await client.clusterInfo();
      if (!info.enabled) {
        last = 'the daemon has not restarted yet';
        continue;
      }
      const member = (await client.listMembers()).find((m) => m.name === name);
      if (member?.status === 'Online') return;
      last = `member ${name} is ${member?.status ?? 'not listed'}`;
    } catch (e) {
      last = (e as Error).message;
    }
  }
  throw new Error(
    `The daemon did not come back as an online member within ${timeoutMs / 1000} s (${last}): see its log`,
  );
}

const cpuOf = (m: ClusterMemberInfo) => (m.cpu ? `${m.cpu.used.toFixed(1)}/${m.cpu.cpus}` : '-');
const memoryOf = (m: ClusterMemberInfo) =>
  m.memory ? `${formatBytes(m.memory.usedBytes)}/${formatBytes(m.memory.totalBytes)}` : '-';

/** A move's row: when, what, where, why, and the figures that justified it. */
const moveRow = (m: ClusterMove | RebalanceResult['planned'][number]) => [
  new Date(m.atMs).toISOString().replace(/\.\d+Z$/, 'Z'),
  m.guest,
  `${m.from} → ${m.to}`,
  `${m.how} (${m.model})`,
  m.reason,
  `${m.imbalanceBefore.toFixed(3)} → ${m.imbalanceAfter.toFixed(3)}`,
  `${m.benefitSeconds.toFixed(1)} s / ${m.costSeconds.toFixed(2)} s`,
  'result' in m ? (m.result === 'moved' ? 'moved' : `failed: ${m.error ?? ''}`) : 'planned',
];
const MOVE_HEADERS = ['PLANNED', 'GUEST', 'MOVE', 'HOW', 'REASON', 'IMBALANCE', 'BENEFIT/COST', 'RESULT'];

/** KEY=VALUE or KEY VALUE pairs of `cluster set`. */
function settingsOf(args: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  if (args.length === 2 && !args[0]?.includes('=')) return { [args[0] as string]: args[1] as string };
  for (const a of args) {
    const i = a.indexOf('=');
    if (i <= 0) throw invalidArgument(`${JSON.stringify(a)} is not KEY=VALUE (or give one KEY VALUE)`);
    out[a.slice(0, i)] = a.slice(i + 1);
  }
  return out;
}

/** cluster bootstrap|add|join|list|remove (decision 0032). */
export function addClusterCommands(program: Command): void {
  const cluster = program.command('cluster').description('Form a cluster of hosts and manage its members');

  cluster
    .command('bootstrap')
    .description(
      'Make this host the first member of a new cluster: its store moves into etcd, its guests keep running',
    )
    .requiredOption(
      '--address <ip[:port]>',
      'the address other members reach this host at (port 8444 by default)',
    )
    .option('--etcd <urls>', 'use an existing etcd (comma-separated client URLs) instead of running one')
    .option('--etcd-ca <file>', "the existing etcd's CA certificate (PEM)")
    .option('--etcd-cert <file>', 'a client certificate the existing etcd accepts (PEM)')
    .option('--etcd-key <file>', "that certificate's key (PEM)")
    .action(
      async (
        opts: { address: string; etcd?: string; etcdCa?: string; etcdCert?: string; etcdKey?: string },
        cmd: Command,
      ) => {
        if (!opts.etcd && (opts.etcdCa || opts.etcdCert || opts.etcdKey)) {
          throw invalidArgument('--etcd-ca, --etcd-cert and --etcd-key go with --etcd URL,...');
        }
        if (Boolean(opts.etcdCert) !== Boolean(opts.etcdKey)) {
          throw invalidArgument('Give --etcd-cert and --etcd-key together');
        }
        const read = (file: string | undefined) =>
          file ? readFile(file, 'utf8') : Promise.resolve(undefined);
        const [ca, cert, key] = await Promise.all([
          read(opts.etcdCa),
          read(opts.etcdCert),
          read(opts.etcdKey),
        ]);
        const etcd = opts.etcd
          ? {
              endpoints: opts.etcd
                .split(',')
                .map((u) => u.trim())
                .filter(Boolean),
              ...(ca !== undefined && { ca }),
              ...(cert !== undefined && { cert }),
              ...(key !== undefined && { key }),
            }
          : undefined;
        const info = await hostClient(cmd).bootstrapCluster({ address: opts.address, ...(etcd && { etcd }) });
        process.stderr.write(`Bootstrapping: the daemon restarts on etcd as member ${info.member}…\n`);
        await waitOnline(cmd, info.member ?? '');
        process.stdout.write(
          `Cluster bootstrapped: member ${info.member} at ${info.address} (CA fingerprint ${info.caFingerprint})\n`,
        );
      },
    );

  cluster
    .command('add')
    .description('Make a single-use join token for a new member (printed alone on stdout)')
    .argument('<name>', 'the new member’s name')
    .option('--expiry <duration>', 'how long the token lasts (90s, 3h, 1d)', '3h')
    .action(async (name: string, opts: { expiry: string }, cmd: Command) => {
      const made = await hostClient(cmd).createJoinToken(name, { expiry: opts.expiry });
      process.stderr.write(
        `Join token for member ${made.name}, good once until ${made.expiresAt}: on the new host run trivisor cluster join TOKEN --address IP\n`,
      );
      process.stdout.write(`${made.token}\n`);
    });

  cluster
    .command('join')
    .description('Join this host to a cluster (it must hold no guests, volumes or networks)')
    .argument('<token>', 'what trivisor cluster add printed on a member')
    .requiredOption(
      '--address <ip[:port]>',
      'the address other members reach this host at (port 8444 by default)',
    )
    .action(async (token: string, opts: { address: string }, cmd: Command) => {
      const info = await hostClient(cmd).joinCluster(token, opts.address);
      process.stderr.write(`Joining: the daemon restarts on the cluster's store as member ${info.member}…\n`);
      await waitOnline(cmd, info.member ?? '');
      process.stdout.write(`Joined the cluster as member ${info.member} at ${info.address}\n`);
    });

  cluster
    .command('list')
    .alias('ls')
    .description('List the members: status, roles, guests, measured CPU and memory')
    .addOption(
      new Option('-f, --format <format>', 'output format')
        .choices(['table', 'json', 'yaml'])
        .default('table'),
    )
    .action(async (opts: { format: OutputFormat }, cmd: Command) => {
      const members = await hostClient(cmd).listMembers();
      if (opts.format !== 'table') {
        process.stdout.write(renderData(members, opts.format));
        return;
      }
      process.stdout.write(
        renderTable(
          ['NAME', 'ADDRESS', 'STATUS', 'ROLES', 'GUESTS', 'HA', 'CPU', 'MEMORY', 'VERSION'],
          members.map((m) => [
            m.name,
            m.address,
            m.status,
            m.roles.join(','),
            String(m.guests),
            m.ha ? `${m.ha.guests}${m.ha.live ? '' : ' (no HA lease)'}` : '-',
            cpuOf(m),
            memoryOf(m),
            m.version,
          ]),
        ),
      );
      for (const m of members) if (m.ha?.warning) process.stdout.write(`Warning: ${m.ha.warning}\n`);
    });

  cluster
    .command('remove')
    .alias('rm')
    .description('Remove a member (refused while it holds guests, unless --force)')
    .argument('<name>')
    .option('--force', 'remove it even though it holds guests (they stay recorded on it)')
    .action(async (name: string, opts: { force?: boolean }, cmd: Command) => {
      await hostClient(cmd).removeMember(name, { force: opts.force === true });
    });

  cluster
    .command('evacuate')
    .description(
      'Empty a member for maintenance: its guests move to other members (or stop, as cluster.evacuate or --action say); it gets no new ones',
    )
    .argument('<name>')
    .addOption(
      new Option(
        '--action <mode>',
        'for guests without cluster.evacuate: auto (a running vm live, others cold), live-migrate, migrate (cold), stop',
      ).choices([...EVACUATE_MODES]),
    )
    .action(async (name: string, opts: { action?: EvacuateMode }, cmd: Command) => {
      const client = hostClient(cmd);
      const op = await client.changeMemberState(name, {
        action: 'evacuate',
        ...(opts.action !== undefined && { mode: opts.action }),
      });
      await waitWithProgress(client, op, { label: `Evacuating ${name}` });
    });

  cluster
    .command('restore')
    .description(
      'Bring an evacuated member back: the guests it had return to it, those it stopped start again',
    )
    .argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const client = hostClient(cmd);
      const op = await client.changeMemberState(name, { action: 'restore' });
      await waitWithProgress(client, op, { label: `Restoring ${name}` });
    });

  // The rebalancer (decision 0053).
  cluster
    .command('set')
    .description('Set cluster-wide keys: cluster set cluster.rebalance.threshold=20 (or KEY VALUE)')
    .argument('<settings...>')
    .action(async (args: string[], _opts: unknown, cmd: Command) => {
      await hostClient(cmd).updateClusterConfig(settingsOf(args));
    });

  cluster
    .command('unset')
    .description('Unset cluster-wide keys (they take their defaults again)')
    .argument('<keys...>')
    .action(async (names: string[], _opts: unknown, cmd: Command) => {
      await hostClient(cmd).updateClusterConfig(Object.fromEntries(names.map((k) => [k, null])));
    });

  cluster
    .command('show')
    .description('Show the cluster-wide keys that are set')
    .action(async (_opts: unknown, cmd: Command) => {
      const config = await hostClient(cmd).clusterConfig();
      for (const [k, v] of Object.entries(config)) process.stdout.write(`${k}: ${v}\n`);
    });

  cluster
    .command('moves')
    .description(
      "The rebalancer's recent moves, newest first: imbalance before and after, benefit, cost, constraints",
    )
    .addOption(
      new Option('-f, --format <format>', 'output format')
        .choices(['table', 'json', 'yaml'])
        .default('table'),
    )
    .action(async (opts: { format: OutputFormat }, cmd: Command) => {
      const moves = await hostClient(cmd).clusterMoves();
      if (opts.format !== 'table') {
        process.stdout.write(renderData(moves, opts.format));
        return;
      }
      process.stdout.write(renderTable(MOVE_HEADERS, moves.map(moveRow)));
      for (const m of moves) {
        process.stdout.write(`${m.guest}: ${m.summary}\n  constraints: ${m.constraints.join('; ')}\n`);
      }
    });

  cluster
    .command('rebalance')
    .description(
      'Run one rebalancing cycle now (the moves one at a time), or only print its plan (--dry-run)',
    )
    .option('--dry-run', 'print the plan without moving anything')
    .addOption(
      new Option('-f, --format <format>', 'output format')
        .choices(['table', 'json', 'yaml'])
        .default('table'),
    )
    .action(async (opts: { dryRun?: boolean; format: OutputFormat }, cmd: Command) => {
      const r = await hostClient(cmd).rebalanceCluster({ dryRun: opts.dryRun === true });
      if (opts.format !== 'table') {
        process.stdout.write(renderData(r, opts.format));
        return;
      }
      process.stdout.write(
        `Imbalance ${r.imbalanceBefore.toFixed(3)} → ${r.imbalanceAfter.toFixed(3)} (planned); ${r.planned.length} move(s) planned${r.dryRun ? ', none made (dry run)' : `, ${r.moved.filter((m) => m.result === 'moved').length} made`}\n`,
      );
      const rows = r.dryRun ? r.planned : r.moved;
      if (rows.length > 0) process.stdout.write(renderTable(MOVE_HEADERS, rows.map(moveRow)));
      for (const m of rows) process.stdout.write(`${m.guest}: ${m.summary}\n`);
      // Power management (decision 0055): what this cycle powers on, and empties to power off.
      for (const o of r.power?.powerOn ?? []) process.stdout.write(`Power on ${o.member}: ${o.reason}\n`);
      for (const o of r.power?.powerOff ?? []) process.stdout.write(`Power off ${o.member}: ${o.reason}\n`);
      for (const n of r.notes) process.stdout.write(`Note: ${n}\n`);
      const failed = r.moved.find((m) => m.result === 'failed');
      if (failed) throw new Error(`Moving ${failed.guest} failed: ${failed.error ?? 'unknown error'}`);
    });
}
