import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createWebSocketTickets } from './websocket-tickets.ts';

describe('websocket tickets', () => {
  test('a ticket opens its own path once, before it expires', () => {
    let now = 1_000;
    const tickets = createWebSocketTickets({ ttlMs: 10_000, now: () => now });
    const a = tickets.issue('/1.0/events');
    assert.equal(a.expiresInSeconds, 10);
    assert.equal(tickets.redeem(a.ticket, '/1.0/events'), true);
    assert.equal(tickets.redeem(a.ticket, '/1.0/events'), false, 'single use');
    const b = tickets.issue('/1.0/events');
    assert.equal(tickets.redeem(b.ticket, '/1.0/operations/x/websocket'), false, 'another path');
    assert.equal(tickets.redeem(b.ticket, '/1.0/events'), false, 'spent by the wrong attempt');
    const c = tickets.issue('/1.0/events');
    now += 10_001;
    assert.equal(tickets.redeem(c.ticket, '/1.0/events'), false, 'expired');
    assert.equal(tickets.redeem('made-up', '/1.0/events'), false);
  });

  test('at most maxOutstanding tickets are kept: the oldest go first', () => {
    const tickets = createWebSocketTickets({ maxOutstanding: 3 });
    const issued = Array.from({ length: 5 }, () => tickets.issue('/1.0/events').ticket);
    assert.equal(tickets.redeem(issued[0] ?? '', '/1.0/events'), false);
    assert.equal(tickets.redeem(issued[1] ?? '', '/1.0/events'), false);
    assert.equal(tickets.redeem(issued[4] ?? '', '/1.0/events'), true);
  });
});
