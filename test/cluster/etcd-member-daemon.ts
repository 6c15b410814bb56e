/**
 * The daemon's side of a managed etcd member, in a process of its own so that a test can
 * kill it with -9 (test/cluster/etcd-member.test.ts). Given the member's options as JSON
 * (or, with `--own-run`, making a test run of its own to hold the state dir), it starts
 * the member (bootstrapping it the first time), prints `{"stateDir","pid"}` as one JSON
 * line, then waits to be killed.
 */
import { join } from 'node:path';
import { bootstrapEtcdMember, type EtcdMemberOptions } from '../../src/cluster/etcd-member.ts';
import { silentLogger } from '../../src/host/logger.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { makeRunDirSync } from '../leftovers.ts';

type Given = Omit<EtcdMemberOptions, 'runner' | 'log' | 'stateDir'> & { stateDir?: string };

const given = JSON.parse(process.argv[2] ?? '{}') as Given;
const ownRun = process.argv.includes('--own-run');
const stateDir = ownRun
  ? join(makeRunDirSync('etcd-killed', { stateDir: 'state' }), 'state')
  : given.stateDir;
if (!stateDir) throw new Error('usage: etcd-member-daemon.ts OPTIONS_JSON [--own-run]');
const member = await bootstrapEtcdMember({ ...given, stateDir, runner: hostRunner(), log: silentLogger() });
process.stdout.write(`${JSON.stringify({ stateDir, pid: member.process()?.pid })}\n`);
// Killed here, as a daemon killed with -9 would be.
setInterval(() => {}, 60_000);
