import assert from 'node:assert/strict';
import { scenarios } from './scenario-runner.ts';

/** Moves (migrations and evacuations) and failures during them: a guest being moved is never restarted twice. */
const three = ['h1', 'h2', 'h3'];

scenarios([
  {
    title: 'a move completes: the destination runs the guest and records itself as its owner',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => sim.at(3000, (w) => w.move('g1', 'h3')),
    untilMs: 8000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 moves g1 to h3 (migration)',
      '5.0 g1 switched over from h1 to h3',
      '5.5 h3 owns g1: the move is done',
      '8.0 world: h1[] h2[] h3[g1]',
    ],
    after: (sim) => assert.equal(sim.record('g1')?.owner, 'h3'),
  },
  {
    title:
      'the source dies during the transfer: the destination drops what it received, and the guest is restarted once, after the margin',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.move('g1', 'h2'));
      sim.at(4000, (w) => w.kill('h1'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 moves g1 to h2 (migration)',
      '4.0 world: h1 dies',
      '4.0 move of g1 to h2 aborted: h1 stopped sending',
      '9.0 store: the lease of h1 expired',
      '9.0 h2 crm: elected',
      '9.0 h3 crm: another member was elected first',
      '10.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '12.0 h2 crm: g1 → h2, the destination of its move (rev 13)',
      '12.5 h2 starts g1',
      '20.0 world: h1 down[] h2[g1] h3[]',
    ],
  },
  {
    title: 'the source dies after the switch-over: the destination finishes the move by itself',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.move('g1', 'h2'));
      sim.at(5500, (w) => w.kill('h1'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 moves g1 to h2 (migration)',
      '5.0 g1 switched over from h1 to h2',
      '5.5 world: h1 dies',
      '5.5 h2 owns g1: the move is done',
      '11.0 store: the lease of h1 expired',
      '11.0 h2 crm: elected',
      '11.0 h3 crm: another member was elected first',
      '20.0 world: h1 down[] h2[g1] h3[]',
    ],
  },
  {
    title:
      'the source dies after the switch-over while the destination cannot write: the CRM gives the guest to the destination, which already runs it',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.move('g1', 'h2'));
      sim.at(5500, (w) => w.killDaemon('h2'));
      sim.at(5500, (w) => w.kill('h1'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 moves g1 to h2 (migration)',
      '5.0 g1 switched over from h1 to h2',
      '5.5 world: the daemon of h2 is killed',
      '5.5 world: h1 dies',
      '11.0 store: the lease of h1 expired',
      '11.0 h3 crm: elected',
      '12.0 h3 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '14.0 h3 crm: g1 → h2, the destination of its move (rev 13)',
      '20.0 world: h1 down[] h2[g1] h3[]',
    ],
    after: (sim) => assert.deepEqual(sim.runningOn('g1'), ['h2']),
  },
  {
    title: 'the destination dies during the transfer: the move is given up and the guest stays on its source',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.move('g1', 'h2'));
      sim.at(4000, (w) => w.kill('h2'));
    },
    untilMs: 15_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 moves g1 to h2 (migration)',
      '4.0 world: h2 dies',
      '4.0 move of g1 to h2 aborted: h2 stopped receiving',
      '4.0 h1 keeps g1: its move is over',
      '9.0 store: the lease of h2 expired',
      '15.0 world: h1[g1] h2 down[] h3[]',
    ],
  },
  {
    title:
      'the destination dies after the switch-over: once it is surely fenced the CRM ends the move and the source starts the guest again',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.move('g1', 'h2'));
      sim.at(5500, (w) => w.kill('h2'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 moves g1 to h2 (migration)',
      '5.0 g1 switched over from h1 to h2',
      '5.5 world: h2 dies',
      '11.0 store: the lease of h2 expired',
      '11.0 h1 crm: h2 lost (token 6); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h1 crm: g1 stays on h1: the destination of its move, h2, was lost',
      '13.5 h1 starts g1',
      '20.0 world: h1[g1] h2 down[] h3[]',
    ],
  },
  {
    title:
      'the source is cut off during the transfer: it fences, the move stops, and the guest goes to the destination once the source is lost',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.move('g1', 'h2'));
      sim.at(4000, (w) => w.link('h1', 'down'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 moves g1 to h2 (migration)',
      '4.0 world: the link of h1 is down',
      '4.0 move of g1 to h2 aborted: the link between them broke',
      '6.0 h1 fenced: killed g1',
      '9.0 store: the lease of h1 expired',
      '9.0 h2 crm: elected',
      '9.0 h3 crm: another member was elected first',
      '10.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '12.0 h2 crm: g1 → h2, the destination of its move (rev 13)',
      '12.5 h2 starts g1',
      '20.0 world: h1[] h2[g1] h3[]',
    ],
  },
  {
    title:
      'the source’s daemon is killed during the transfer: the move stops, the guest keeps running at its source, and the daemon ends the move when it starts again',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.move('g1', 'h2'));
      sim.at(4000, (w) => w.killDaemon('h1'));
      sim.at(12_000, (w) => w.startDaemon('h1'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 moves g1 to h2 (migration)',
      '4.0 world: the daemon of h1 is killed',
      '4.0 move of g1 to h2 aborted: h1 stopped sending',
      '9.0 h2 crm: elected',
      '9.0 h3 crm: another member was elected first',
      '12.0 world: the daemon of h1 starts',
      '12.0 h1 keeps g1: its move is over',
      '20.0 world: h1[g1] h2[] h3[]',
    ],
  },
  {
    title: 'a move to the member that owns the guest is refused',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => sim.at(3000, (w) => w.move('g1', 'h1')),
    untilMs: 5000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 cannot move g1 to h1: it is there already',
      '5.0 world: h1[g1] h2[] h3[]',
    ],
  },
  {
    title: 'a move asked of a member whose daemon is down is refused',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(2000, (w) => w.killDaemon('h1'));
      sim.at(3000, (w) => w.move('g1', 'h2'));
    },
    untilMs: 6000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '2.0 world: the daemon of h1 is killed',
      '3.0 h1 cannot move g1 to h2 now',
      '6.0 world: h1[g1] h2[] h3[]',
    ],
  },
  {
    title:
      'a member evacuated moves its guests one at a time, highest priority first, to members not evacuated',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1', priority: 1 },
        { name: 'g2', on: 'h1', priority: 7 },
        { name: 'plain', on: 'h1', ha: false },
      ],
    },
    script: (sim) => sim.at(2000, (w) => w.evacuate('h1')),
    untilMs: 15_000,
    log: [
      '1.0 world: h1[g1 g2 plain] h2[] h3[]',
      '2.0 world: h1 is evacuated',
      '2.0 h1 moves g2 to h2 (evacuation)',
      '4.0 g2 switched over from h1 to h2',
      '4.5 h2 owns g2: the move is done',
      '6.0 h1 moves g1 to h3 (evacuation)',
      '8.0 g1 switched over from h1 to h3',
      '8.5 h3 owns g1: the move is done',
      '10.0 h1 moves plain to h2 (evacuation)',
      '12.0 plain switched over from h1 to h2',
      '12.5 h2 owns plain: the move is done',
      '15.0 world: h1[] h2[g2 plain] h3[g1]',
    ],
  },
  {
    title:
      'evacuation during a failure: the lost member’s guests avoid the evacuated one, whose own guests leave for the third',
    cluster: {
      members: ['h1', 'h2', 'h3'],
      guests: [
        { name: 'a', on: 'h1' },
        { name: 'b', on: 'h2' },
      ],
    },
    script: (sim) => {
      sim.at(3000, (w) => w.kill('h1'));
      sim.at(5000, (w) => w.evacuate('h2'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[a] h2[b] h3[]',
      '3.0 world: h1 dies',
      '5.0 world: h2 is evacuated',
      '6.0 h2 moves b to h3 (evacuation)',
      '8.0 store: the lease of h1 expired',
      '8.0 b switched over from h2 to h3',
      '8.0 h2 crm: elected',
      '8.0 h3 crm: another member was elected first',
      '8.5 h3 owns b: the move is done',
      '9.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '11.0 h2 crm: a → h3 (rev 16; most free memory: 7.0 GiB of 8.0)',
      '11.5 h3 starts a',
      '20.0 world: h1 down[] h2[] h3[a b]',
    ],
  },
  {
    title:
      'the target of an evacuation dies during the move: the guest stays, and leaves for another member on the next try',
    cluster: {
      members: ['h1', 'h2', 'h3'],
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'fill', on: 'h3', memoryGiB: 2 },
      ],
    },
    script: (sim) => {
      sim.at(2000, (w) => w.evacuate('h1'));
      sim.at(3000, (w) => w.kill('h2'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[fill]',
      '2.0 world: h1 is evacuated',
      '2.0 h1 moves g1 to h2 (evacuation)',
      '3.0 world: h2 dies',
      '3.0 move of g1 to h2 aborted: h2 stopped receiving',
      '3.0 h1 keeps g1: its move is over',
      '4.0 h1 moves g1 to h2 (evacuation)',
      '4.5 move of g1 to h2 aborted: h2 stopped receiving',
      '4.5 h1 keeps g1: its move is over',
      '6.0 h1 moves g1 to h2 (evacuation)',
      '6.5 move of g1 to h2 aborted: h2 stopped receiving',
      '6.5 h1 keeps g1: its move is over',
      '8.0 store: the lease of h2 expired',
      '8.0 h1 moves g1 to h3 (evacuation)',
      '10.0 g1 switched over from h1 to h3',
      '10.5 h3 owns g1: the move is done',
      '20.0 world: h1[] h2 down[] h3[fill g1]',
    ],
  },
  {
    title:
      'the destination freezes just after the switch-over: its watchdog, armed since the move began, resets it before the source starts the guest again',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.move('g1', 'h2'));
      sim.at(5000, (w) => w.pauseHost('h2'), 'race');
      sim.at(20_000, (w) => w.resumeHost('h2'));
    },
    untilMs: 25_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 moves g1 to h2 (migration)',
      '5.0 g1 switched over from h1 to h2',
      '5.0 world: h2 freezes',
      '11.0 store: the lease of h2 expired',
      '11.0 h1 crm: h2 lost (token 6); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h1 crm: g1 stays on h1: the destination of its move, h2, was lost',
      '13.5 h1 starts g1',
      '20.0 world: h2 thaws',
      '20.0 h2 watchdog reset the host (killed g1)',
      '25.0 world: h1[g1] h2 down[] h3[]',
    ],
  },
  {
    title:
      'the destination is fenced during the transfer and at once takes a new lease: the move, bound to its old one, is given up',
    cluster: {
      // A fast clock makes its agent look twice per tick: it is back with a new token before the mover's next step.
      members: [{ name: 'h1' }, { name: 'h2', clockRate: 2 }, { name: 'h3' }],
      guests: [{ name: 'g1', on: 'h1' }],
    },
    script: (sim) => {
      sim.at(3000, (w) => w.move('g1', 'h2'));
      sim.at(4000, (w) => w.fence('h2'), 'race');
    },
    untilMs: 12_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 moves g1 to h2 (migration)',
      '4.0 world: the HA agent of h2 is asked to fence',
      '4.0 h2 fenced: no HA guest ran here',
      '4.5 h2 lease granted (token 12)',
      '4.5 move of g1 to h2 aborted: h2 was fenced',
      '4.5 h1 keeps g1: its move is over',
      '12.0 world: h1[g1] h2[] h3[]',
    ],
  },
  {
    title:
      'a move asked while the CRM is about to restart the guest elsewhere (its source was fenced and holds a new token) is refused; the guest is restarted once',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.fence('h1'));
      sim.at(5000, (w) => w.move('g1', 'h2'));
    },
    untilMs: 15_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 world: the HA agent of h1 is asked to fence',
      '3.0 h1 fenced: killed g1',
      '3.0 h1 lease granted (token 11)',
      '3.0 h1 crm: gives up its election of an earlier lease',
      '4.0 h1 crm: elected',
      '4.0 h2 crm: another member was elected first',
      '4.0 h3 crm: another member was elected first',
      '5.0 h1 cannot move g1 to h2: Member h1 does not hold the HA lease guest g1 was given under: HA may be restarting it elsewhere; retry once its HA agent runs',
      '5.0 h1 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '7.0 h1 crm: g1 → h2 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '7.5 h2 starts g1',
      '15.0 world: h1[] h2[g1] h3[]',
    ],
  },
  {
    title:
      'the source and the destination both die during the transfer: the guest is restarted once, on the third member',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.move('g1', 'h2'));
      sim.at(4000, (w) => {
        w.kill('h1');
        w.kill('h2');
      });
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 moves g1 to h2 (migration)',
      '4.0 world: h1 dies',
      '4.0 world: h2 dies',
      '4.0 move of g1 to h2 aborted: h1 stopped sending',
      '9.0 store: the lease of h1 expired',
      '9.0 store: the lease of h2 expired',
      '9.0 h3 crm: elected',
      '10.0 h3 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '12.0 h3 crm: g1 → h3 (rev 14; most free memory: 8.0 GiB of 8.0)',
      '12.5 h3 starts g1',
      '20.0 world: h1 down[] h2 down[] h3[g1]',
    ],
    after: (sim) => assert.deepEqual(sim.runningOn('g1'), ['h3']),
  },
  {
    title:
      "the CRM's relocation of a guest that fails to start races a move of it begun between the CRM's read and its write: the CRM's write is refused, the move wins",
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(2000, (w) => {
        w.failStarts('h1', 'g1', 9);
        w.crash('g1');
      });
      // 6.0 s: the CRM relocates g1 after its third failed start (its decision is read, not yet written).
      sim.at(6000, (w) => w.move('g1', 'h3'), 'race');
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '2.0 world: g1 crashes',
      '2.0 h1 cannot start g1: the driver failed',
      '2.5 h1 records 1 failed start(s) of g1',
      '3.0 h1 cannot start g1: the driver failed',
      '3.5 h1 records 2 failed start(s) of g1',
      '5.0 h1 cannot start g1: the driver failed',
      '5.5 h1 records 3 failed start(s) of g1',
      '6.0 h1 moves g1 to h3 (migration)',
      '6.0 h1 crm: g1 → h2 refused: its record, the election or a token changed',
      '8.0 g1 switched over from h1 to h3',
      '8.5 h3 owns g1: the move is done',
      '9.0 h3 starts g1',
      '20.0 world: h1[] h2[] h3[g1]',
    ],
    after: (sim) => {
      assert.deepEqual(sim.runningOn('g1'), ['h3']);
      assert.equal(sim.record('g1')?.owner, 'h3');
    },
  },
  {
    title:
      "the source dies at the tick of the switch-over, between the CRM's read and its write: the destination records itself as the owner, nothing restarts the guest",
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.move('g1', 'h2'));
      sim.at(5000, (w) => w.kill('h1'), 'race');
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 moves g1 to h2 (migration)',
      '5.0 g1 switched over from h1 to h2',
      '5.0 world: h1 dies',
      '5.5 h2 owns g1: the move is done',
      '11.0 store: the lease of h1 expired',
      '11.0 h2 crm: elected',
      '11.0 h3 crm: another member was elected first',
      '20.0 world: h1 down[] h2[g1] h3[]',
    ],
  },
]);
