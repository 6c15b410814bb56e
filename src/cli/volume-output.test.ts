import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Guest } from '../core/types.ts';
import { guestInfo } from './output.ts';

test('info lists the volumes attached to a guest, with their mount paths', () => {
  const g: Guest = {
    name: 'web1',
    project: 'default',
    model: 'ct',
    status: 'Stopped',
    image: 'f'.repeat(64),
    imageAlias: 'busybox',
    config: {},
    host: 'h1',
    createdAt: '2026-01-01T00:00:00.000Z',
    disks: {
      data: { type: 'disk', pool: 'default', source: 'data', path: '/srv/data' },
      disk1: { type: 'disk', pool: 'fast', source: 'disk1' },
    },
    state: { pid: null, startedAt: null, uptimeSeconds: null, usage: null, restartCount: 0 },
  };
  const text = guestInfo(g);
  assert.match(
    text,
    /\nVolumes:\n {2}data: default\/data at \/srv\/data\n {2}disk1: fast\/disk1\nConfig: \(none\)\n$/,
  );
});
