import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createWebSocketTickets } from './websocket-tickets.ts';

describe('websocket tickets', () => {
  test('a ticket opens its own path once, before it expires', () => {
    let now = 1_000;
    const tickets = createWebSocketTickets({ ttlMs: 10_000, now: () => now });
    const a = tickets.issue('/1.0/events', true);
    assert.equal(a.expiresInSeconds, 10);
    assert.equal(tickets.redeem(a.ticket, '/1.0/events'), true);
    assert.equal(tickets.redeem(a.ticket, '/1.0/events'), undefined, 'single use');
    const b = tickets.issue('/1.0/events', true);
    assert.equal(tickets.redeem(b.ticket, '/1.0/operations/x/websocket'), undefined, 'another path');
    assert.equal(tickets.redeem(b.ticket, '/1.0/events'), undefined, 'spent by the wrong attempt');
    const c = tickets.issue('/1.0/events', true);
    now += 10_001;
    assert.equal(tickets.redeem(c.ticket, '/1.0/events'), undefined, 'expired');
    assert.equal(tickets.redeem('made-up', '/1.0/events'), undefined);
  });

  test('a ticket opens the socket as the caller who asked for it', () => {
    const tickets = createWebSocketTickets<{ name: string }>();
    const viewer = { name: 'viewer' };
    const { ticket } = tickets.issue('/1.0/events', viewer);
    assert.equal(tickets.redeem(ticket, '/1.0/events'), viewer);
  });

  test('at most maxOutstanding tickets are kept: the oldest go first', () => {
    const tickets = createWebSocketTickets({ maxOutstanding: 3 });
    const issued = Array.from({ length: 5 }, () => tickets.issue('/1.0/events', true).ticket);
    assert.equal(tickets.redeem(issued[0] ?? '', '/1.0/events'), undefined);
    assert.equal(tickets.redeem(issued[1] ?? '', '/1.0/events'), undefined);
    assert.equal(tickets.redeem(issued[4] ?? '', '/1.0/events'), true);
  });
});
