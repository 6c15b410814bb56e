import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { FastifyRequest } from 'fastify';
import { isTrivisorError } from '../core/errors.ts';
import { createForwarder } from './forward.ts';

describe('the forwarder', () => {
  test('a request for an Offline or Standby member fails at once, Unavailable naming the member and its state, without dialling it', async () => {
    const dialled: string[] = [];
    const statuses: Record<string, string> = { m2: 'Offline', m3: 'Standby', m4: 'Online' };
    const forwarder = createForwarder({
      here: 'm1',
      others: async () => ['m4'],
      connect: async (member) => {
        dialled.push(member);
        throw new Error('connection refused');
      },
      statusOf: async (member) => statuses[member],
    });
    const request = { headers: {} } as FastifyRequest;
    for (const member of ['m2', 'm3']) {
      await assert.rejects(
        forwarder.get(request, member, '/1.0'),
        (e) =>
          isTrivisorError(e) &&
          e.code === 'Unavailable' &&
          e.message === `Member ${member} is ${statuses[member]}: it cannot answer until it is Online again`,
      );
    }
    assert.deepEqual(dialled, [], 'a member known to be down is not dialled');
    // An Online member is dialled; its failure is the network's.
    await assert.rejects(
      forwarder.get(request, 'm4', '/1.0'),
      (e) => isTrivisorError(e) && e.code === 'Unavailable' && /m4 cannot be reached/.test(e.message),
    );
    assert.deepEqual(dialled, ['m4']);
  });
});
