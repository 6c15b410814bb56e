import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createLogger, type LogForward, type LogLine } from './logger.ts';

test('warnings and errors are forwarded with their message, fields and bindings; info is not; a listener that logs does not loop', () => {
  const lines: LogLine[] = [];
  const forward: LogForward = {};
  const log = createLogger({ level: 'info', destination: '/dev/null', forward });
  log.warn({ guest: 'web1' }, 'before anyone listens');
  forward.to = (line) => {
    lines.push(line);
    log.warn('a listener that logs');
  };
  const child = log.child({ component: 'backup-scheduler' });
  child.info({ guest: 'web1' }, 'not forwarded');
  child.warn({ guest: 'web1', err: new Error('disk full') }, 'scheduled backup failed');
  log.error('plain message');
  assert.deepEqual(lines, [
    {
      level: 'warn',
      message: 'scheduled backup failed',
      context: { component: 'backup-scheduler', guest: 'web1', err: 'disk full' },
    },
    { level: 'error', message: 'plain message', context: {} },
  ]);
});
