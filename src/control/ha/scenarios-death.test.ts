import assert from 'node:assert/strict';
import { scenarios } from './scenario-runner.ts';
import { recoveryWindowMs } from './timings.ts';
import { DEFAULT_TIMINGS } from './types.ts';

/** Members that die, whole or in part (the daemon alone), and come back. */
const three = ['h1', 'h2', 'h3'];

/** The start came inside decision 0044's window after the death (plus the start's own tick). */
function inWindow(log: string[], diedAtMs: number, start: string) {
  const line = log.find((l) => l.endsWith(start));
  assert.ok(line, `no ${start} in the log`);
  const startedAtMs = Number(line.split(' ')[0]) * 1000;
  const { earliestMs, latestMs } = recoveryWindowMs(DEFAULT_TIMINGS);
  assert.ok(startedAtMs - diedAtMs >= earliestMs, `started ${startedAtMs - diedAtMs} ms after the death`);
  assert.ok(startedAtMs - diedAtMs <= latestMs + 500, `started ${startedAtMs - diedAtMs} ms after the death`);
}

scenarios([
  {
    title:
      'a dead member’s HA guests run on the survivors after its lease expired plus the margin, highest priority first',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1', priority: 1 },
        { name: 'g2', on: 'h1', priority: 5 },
        { name: 'g3', on: 'h2' },
      ],
    },
    script: (sim) => sim.at(5000, (w) => w.kill('h1')),
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1 g2] h2[g3] h3[]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g2 → h3 (rev 14; most free memory: 8.0 GiB of 8.0)',
      '13.0 h2 crm: g1 → h2 (rev 14; most free memory: 7.0 GiB of 8.0)',
      '13.5 h2 starts g1',
      '13.5 h3 starts g2',
      '20.0 world: h1 down[] h2[g1 g3] h3[g2]',
    ],
  },
  {
    title: 'a dead member’s guest without ha.enabled stays recorded on it and is not started anywhere',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'plain', on: 'h1', ha: false },
      ],
    },
    script: (sim) => sim.at(5000, (w) => w.kill('h1')),
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1 plain] h2[] h3[]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h2 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 starts g1',
      '20.0 world: h1 down[] h2[g1] h3[]',
    ],
    after: (sim) => assert.equal(sim.record('plain')?.owner, 'h1'),
  },
  {
    title: 'a stopped HA guest of a dead member is not started elsewhere',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'off', on: 'h1', want: 'stopped' },
      ],
    },
    script: (sim) => sim.at(5000, (w) => w.kill('h1')),
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h2 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 starts g1',
      '20.0 world: h1 down[] h2[g1] h3[]',
    ],
  },
  {
    title:
      'the elected CRM’s member dies: another is elected once the election key’s lease expires, and waits the whole margin itself',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h2' },
      ],
    },
    script: (sim) => sim.at(3000, (w) => w.kill('h1')),
    untilMs: 16_000,
    log: [
      '1.0 world: h1[g1] h2[g2] h3[]',
      '3.0 world: h1 dies',
      '8.0 store: the lease of h1 expired',
      '8.0 h2 crm: elected',
      '8.0 h3 crm: another member was elected first',
      '9.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '11.0 h2 crm: g1 → h3 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '11.5 h3 starts g1',
      '16.0 world: h1 down[] h2[g2] h3[g1]',
    ],
  },
  {
    title: 'a dead member that boots again after its guests moved starts none of them and takes a new token',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h1' },
      ],
    },
    script: (sim) => {
      sim.at(5000, (w) => w.kill('h1'));
      sim.at(20_000, (w) => w.boot('h1'));
    },
    untilMs: 30_000,
    log: [
      '1.0 world: h1[g1 g2] h2[] h3[]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h2 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '13.0 h2 crm: g2 → h3 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 starts g1',
      '13.5 h3 starts g2',
      '20.0 h1 boots',
      '20.0 h1 lease granted (token 16)',
      '30.0 world: h1[] h2[g1] h3[g2]',
    ],
  },
  {
    title:
      'a member that boots again inside the margin is a new incarnation: its old guests are placed anew, possibly on it',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(5000, (w) => w.kill('h1'));
      sim.at(11_000, (w) => w.boot('h1'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h1 boots',
      '11.0 h1 lease granted (token 13)',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h2 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 starts g1',
      '20.0 world: h1[] h2[g1] h3[]',
    ],
  },
  {
    title: 'two members of five die at once: their HA guests spread over the three survivors',
    cluster: {
      members: ['h1', 'h2', 'h3', 'h4', 'h5'],
      guests: [
        { name: 'a1', on: 'h1', priority: 3 },
        { name: 'a2', on: 'h1', priority: 2 },
        { name: 'b1', on: 'h2', priority: 1 },
        { name: 'b2', on: 'h2' },
        { name: 'c1', on: 'h3' },
      ],
    },
    script: (sim) => {
      sim.at(5000, (w) => w.kill('h1'));
      sim.at(5000, (w) => w.kill('h2'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[a1 a2] h2[b1 b2] h3[c1] h4[] h5[]',
      '5.0 world: h1 dies',
      '5.0 world: h2 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 store: the lease of h2 expired',
      '10.0 h3 crm: elected',
      '10.0 h4 crm: another member was elected first',
      '10.0 h5 crm: another member was elected first',
      '11.0 h3 crm: h1 lost (token 7); its HA guests are given to others after the margin (2 s on this clock)',
      '11.0 h3 crm: h2 lost (token 8); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h3 crm: a1 → h4 (rev 21; most free memory: 8.0 GiB of 8.0)',
      '13.0 h3 crm: a2 → h5 (rev 21; most free memory: 8.0 GiB of 8.0)',
      '13.0 h3 crm: b1 → h3 (rev 21; most free memory: 7.0 GiB of 8.0)',
      '13.0 h3 crm: b2 → h4 (rev 21; most free memory: 7.0 GiB of 8.0)',
      '13.5 h3 starts b1',
      '13.5 h4 starts a1',
      '13.5 h4 starts b2',
      '13.5 h5 starts a2',
      '20.0 world: h1 down[] h2 down[] h3[b1 c1] h4[a1 b2] h5[a2]',
    ],
  },
  {
    title: 'all members but one die: the last one takes what fits',
    cluster: {
      members: [{ name: 'h1' }, { name: 'h2' }, { name: 'h3', memoryGiB: 4 }],
      guests: [
        { name: 'g1', on: 'h1', memoryGiB: 2, priority: 2 },
        { name: 'g2', on: 'h2', memoryGiB: 2, priority: 1 },
        { name: 'g3', on: 'h2', memoryGiB: 2 },
      ],
    },
    script: (sim) => {
      sim.at(5000, (w) => w.kill('h1'));
      sim.at(6000, (w) => w.kill('h2'));
    },
    untilMs: 22_000,
    log: [
      '1.0 world: h1[g1] h2[g2 g3] h3[]',
      '5.0 world: h1 dies',
      '6.0 world: h2 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h3 crm: elected',
      '11.0 store: the lease of h2 expired',
      '11.0 h3 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '11.0 h3 crm: h2 lost (token 6); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h3 crm: g3 cannot be placed: No member can take a ct guest with 2.0 GiB and 1 CPUs: h1 is Offline; h2 is Offline; h3 has 0.0 GiB of memory free, the guest needs 2.0',
      '13.0 h3 crm: g1 → h3 (rev 15; most free memory: 4.0 GiB of 4.0)',
      '13.0 h3 crm: g2 → h3 (rev 15; most free memory: 2.0 GiB of 4.0)',
      '13.5 h3 starts g1',
      '13.5 h3 starts g2',
      '22.0 world: h1 down[] h2 down[] h3[g1 g2]',
    ],
  },
  {
    title: 'death just after a renewal: the guest starts elsewhere 9 s later, inside the recovery window',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => sim.at(4500, (w) => w.kill('h1')),
    untilMs: 16_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '4.5 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h2 (rev 12; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 starts g1',
      '16.0 world: h1 down[] h2[g1] h3[]',
    ],
    after: (sim) => inWindow(sim.log, 4500, 'h2 starts g1'),
  },
  {
    title: 'death just before a renewal: the guest starts elsewhere 8.5 s later, inside the recovery window',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => sim.at(4000, (w) => w.kill('h1')),
    untilMs: 16_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '4.0 world: h1 dies',
      '9.0 store: the lease of h1 expired',
      '9.0 h2 crm: elected',
      '9.0 h3 crm: another member was elected first',
      '10.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '12.0 h2 crm: g1 → h2 (rev 12; most free memory: 8.0 GiB of 8.0)',
      '12.5 h2 starts g1',
      '16.0 world: h1 down[] h2[g1] h3[]',
    ],
    after: (sim) => inWindow(sim.log, 4000, 'h2 starts g1'),
  },
  {
    title: 'a guest that crashes on a live member is started again there; nothing moves',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => sim.at(4000, (w) => w.crash('g1')),
    untilMs: 12_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '4.0 world: g1 crashes',
      '4.0 h1 starts g1',
      '12.0 world: h1[g1] h2[] h3[]',
    ],
  },
  {
    title: 'a member’s daemon killed -9 with its guests left running: nothing moves, its guests still run',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h1', ha: false },
      ],
    },
    script: (sim) => sim.at(3000, (w) => w.killDaemon('h1')),
    untilMs: 60_000,
    log: [
      '1.0 world: h1[g1 g2] h2[] h3[]',
      '3.0 world: the daemon of h1 is killed',
      '8.0 h2 crm: elected',
      '8.0 h3 crm: another member was elected first',
      '60.0 world: h1[g1 g2] h2[] h3[]',
    ],
    after: (sim) => assert.deepEqual(sim.runningOn('g1'), ['h1']),
  },
  {
    title: 'a killed daemon that starts again finds its guests where it left them',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.killDaemon('h1'));
      sim.at(9000, (w) => w.startDaemon('h1'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 world: the daemon of h1 is killed',
      '8.0 h2 crm: elected',
      '8.0 h3 crm: another member was elected first',
      '9.0 world: the daemon of h1 starts',
      '20.0 world: h1[g1] h2[] h3[]',
    ],
  },
  {
    title:
      'the elected CRM’s daemon is killed: its election key goes with the daemon’s lease, another CRM takes over, nothing moves',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h2' },
      ],
    },
    script: (sim) => {
      sim.at(3000, (w) => w.killDaemon('h1'));
      sim.at(12_000, (w) => w.kill('h2'));
    },
    untilMs: 30_000,
    log: [
      '1.0 world: h1[g1] h2[g2] h3[]',
      '3.0 world: the daemon of h1 is killed',
      '8.0 h2 crm: elected',
      '8.0 h3 crm: another member was elected first',
      '12.0 world: h2 dies',
      '17.0 store: the lease of h2 expired',
      '17.0 h3 crm: elected',
      '18.0 h3 crm: h2 lost (token 6); its HA guests are given to others after the margin (2 s on this clock)',
      '20.0 h3 crm: g2 → h3 (rev 15; most free memory: 8.0 GiB of 8.0)',
      '20.5 h3 starts g2',
      '30.0 world: h1[g1] h2 down[] h3[g2]',
    ],
  },
  {
    title:
      'a guest given to a member whose daemon is dead fails to start there three times, then goes to another member',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'fill', on: 'h2', memoryGiB: 4 },
      ],
    },
    script: (sim) => {
      sim.at(2000, (w) => w.killDaemon('h3'));
      sim.at(5000, (w) => w.kill('h1'));
    },
    untilMs: 30_000,
    log: [
      '1.0 world: h1[g1] h2[fill] h3[]',
      '2.0 world: the daemon of h3 is killed',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h3 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '13.5 h3 cannot start g1: the daemon is down',
      '14.0 h3 records 1 failed start(s) of g1',
      '14.5 h3 cannot start g1: the daemon is down',
      '15.0 h3 records 2 failed start(s) of g1',
      '16.5 h3 cannot start g1: the daemon is down',
      '17.0 h3 records 3 failed start(s) of g1',
      '17.0 h2 crm: g1 failed to start on h3 3 times: → h2 (most free memory: 4.0 GiB of 8.0)',
      '17.5 h2 starts g1',
      '30.0 world: h1 down[] h2[fill g1] h3[]',
    ],
  },
]);
