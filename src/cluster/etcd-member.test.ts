import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { fakeRunner } from '../../test/fakes/fake-runner.ts';
import { isTrivisorError } from '../core/errors.ts';
import { silentLogger } from '../host/logger.ts';
import {
  type EtcdMemberOptions,
  etcdArgv,
  type MemberRecord,
  PROGRESS_NOTIFY_INTERVAL_MS,
} from './etcd-member.ts';

const options = (extra: Partial<EtcdMemberOptions> = {}): EtcdMemberOptions => ({
  name: 'm1',
  stateDir: '/var/lib/trivisor',
  address: '198.18.0.2',
  runner: fakeRunner(),
  log: silentLogger(),
  ...extra,
});

const record: MemberRecord = {
  name: 'm1',
  clientUrl: 'http://198.18.0.2:2379',
  peerUrl: 'http://198.18.0.2:2380',
  initialCluster: 'm1=http://198.18.0.2:2380',
  initialClusterState: 'new',
  clusterToken: 'trivisor-m1-x',
};

const progressFlags = (argv: string[]) =>
  argv.filter((a) => a.startsWith('--experimental-watch-progress-notify-interval'));

describe("etcd's command line", () => {
  test('asks for watch progress notifications every minute, well within the informers’ 5-minute re-watch (decision 0087)', () => {
    const argv = etcdArgv(options(), record);
    assert.deepEqual(progressFlags(argv), ['--experimental-watch-progress-notify-interval=60000ms']);
    assert.ok(PROGRESS_NOTIFY_INTERVAL_MS <= 60_000);
    assert.equal(argv[0], 'etcd');
    assert.ok(argv.includes('--data-dir=/var/lib/trivisor/etcd/data'), argv.join(' '));
  });

  test('takes another interval in ms, and refuses one that is not a whole number of ms from 1', () => {
    assert.deepEqual(progressFlags(etcdArgv(options({ progressNotifyIntervalMs: 500 }), record)), [
      '--experimental-watch-progress-notify-interval=500ms',
    ]);
    for (const bad of [0, -1, 1.5]) {
      assert.throws(
        () => etcdArgv(options({ progressNotifyIntervalMs: bad }), record),
        (e: unknown) =>
          isTrivisorError(e) && e.code === 'InvalidArgument' && /progress notification/.test(e.message),
      );
    }
  });
});
