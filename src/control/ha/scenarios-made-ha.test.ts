import assert from 'node:assert/strict';
import { scenarios } from './scenario-runner.ts';

/**
 * Guests made HA a moment ago, whose record the elected CRM has not written yet (issue 13 §4,
 * decision 0075 amended): left running where they are until it does, and a move that begins
 * first records them itself, already marked moving, so that neither the CRM's bookkeeping nor a
 * member's death half way can give them to a second member.
 */
const three = ['h1', 'h2', 'h3'];
const fresh = { name: 'g1', on: 'h1', recorded: false };

scenarios([
  {
    title: 'a running guest made HA is left running until the CRM records it on its member',
    cluster: { members: three, guests: [fresh], quietUntilMs: 0 },
    untilMs: 3000,
    log: [
      '0.0 h1 lease granted (token 5)',
      '0.0 h2 lease granted (token 6)',
      '0.0 h3 lease granted (token 7)',
      '0.0 world: h1[g1] h2[] h3[]',
      '0.0 h1 crm: elected',
      '0.0 h2 crm: another member was elected first',
      '0.0 h3 crm: another member was elected first',
      '1.0 h1 crm: records g1 on h1 (token 5)',
      '3.0 world: h1[g1] h2[] h3[]',
    ],
    after: (sim) => assert.equal(sim.record('g1')?.owner, 'h1'),
  },
  {
    title:
      'a guest made HA moves before the CRM recorded it: the mover records it already moving, and the destination owns it after the switch-over',
    cluster: { members: three, guests: [fresh], quietUntilMs: 0 },
    script: (sim) => sim.at(500, (w) => w.move('g1', 'h3')),
    untilMs: 6000,
    log: [
      '0.0 h1 lease granted (token 5)',
      '0.0 h2 lease granted (token 6)',
      '0.0 h3 lease granted (token 7)',
      '0.0 world: h1[g1] h2[] h3[]',
      '0.0 h1 crm: elected',
      '0.0 h2 crm: another member was elected first',
      '0.0 h3 crm: another member was elected first',
      '0.5 h1 records g1 (made HA a moment ago) as moving',
      '0.5 h1 moves g1 to h3 (migration)',
      '2.5 g1 switched over from h1 to h3',
      '3.0 h3 owns g1: the move is done',
      '6.0 world: h1[] h2[] h3[g1]',
    ],
    after: (sim) => {
      assert.deepEqual(sim.runningOn('g1'), ['h3']);
      assert.equal(sim.record('g1')?.owner, 'h3');
    },
  },
  {
    title:
      "the mover records a guest made HA between the CRM's read and its write: the CRM's record is refused and the move goes on",
    cluster: { members: three, guests: [fresh], quietUntilMs: 0 },
    script: (sim) => sim.at(1000, (w) => w.move('g1', 'h2'), 'race'),
    untilMs: 6000,
    log: [
      '0.0 h1 lease granted (token 5)',
      '0.0 h2 lease granted (token 6)',
      '0.0 h3 lease granted (token 7)',
      '0.0 world: h1[g1] h2[] h3[]',
      '0.0 h1 crm: elected',
      '0.0 h2 crm: another member was elected first',
      '0.0 h3 crm: another member was elected first',
      '1.0 h1 records g1 (made HA a moment ago) as moving',
      '1.0 h1 moves g1 to h2 (migration)',
      '1.0 h1 crm: g1 was recorded meanwhile',
      '3.0 g1 switched over from h1 to h2',
      '3.5 h2 owns g1: the move is done',
      '6.0 world: h1[] h2[g1] h3[]',
    ],
  },
  {
    title: 'a move after the CRM recorded a guest made HA marks that record',
    cluster: { members: three, guests: [fresh], quietUntilMs: 0 },
    script: (sim) => sim.at(2000, (w) => w.move('g1', 'h2')),
    untilMs: 6000,
    log: [
      '0.0 h1 lease granted (token 5)',
      '0.0 h2 lease granted (token 6)',
      '0.0 h3 lease granted (token 7)',
      '0.0 world: h1[g1] h2[] h3[]',
      '0.0 h1 crm: elected',
      '0.0 h2 crm: another member was elected first',
      '0.0 h3 crm: another member was elected first',
      '1.0 h1 crm: records g1 on h1 (token 5)',
      '2.0 h1 moves g1 to h2 (migration)',
      '4.0 g1 switched over from h1 to h2',
      '4.5 h2 owns g1: the move is done',
      '6.0 world: h1[] h2[g1] h3[]',
    ],
  },
  {
    title:
      'the source of a guest made HA dies during its unrecorded move: the guest is restarted once, on the destination of its move, after the margin',
    cluster: { members: three, guests: [fresh], quietUntilMs: 0 },
    script: (sim) => {
      sim.at(500, (w) => w.move('g1', 'h2'));
      sim.at(1500, (w) => w.kill('h1'));
    },
    untilMs: 20_000,
    log: [
      '0.0 h1 lease granted (token 5)',
      '0.0 h2 lease granted (token 6)',
      '0.0 h3 lease granted (token 7)',
      '0.0 world: h1[g1] h2[] h3[]',
      '0.0 h1 crm: elected',
      '0.0 h2 crm: another member was elected first',
      '0.0 h3 crm: another member was elected first',
      '0.5 h1 records g1 (made HA a moment ago) as moving',
      '0.5 h1 moves g1 to h2 (migration)',
      '1.5 world: h1 dies',
      '1.5 move of g1 to h2 aborted: h1 stopped sending',
      '7.0 store: the lease of h1 expired',
      '7.0 h2 crm: elected',
      '7.0 h3 crm: another member was elected first',
      '8.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '10.0 h2 crm: g1 → h2, the destination of its move (rev 12)',
      '10.5 h2 starts g1',
      '20.0 world: h1 down[] h2[g1] h3[]',
    ],
    after: (sim) => assert.deepEqual(sim.runningOn('g1'), ['h2']),
  },
  {
    title:
      'the source of a guest made HA dies right after the switch-over of its move: the destination keeps it and nothing restarts it',
    cluster: { members: three, guests: [fresh], quietUntilMs: 0 },
    script: (sim) => {
      sim.at(500, (w) => w.move('g1', 'h2'));
      sim.at(2500, (w) => w.kill('h1'), 'race');
    },
    untilMs: 20_000,
    log: [
      '0.0 h1 lease granted (token 5)',
      '0.0 h2 lease granted (token 6)',
      '0.0 h3 lease granted (token 7)',
      '0.0 world: h1[g1] h2[] h3[]',
      '0.0 h1 crm: elected',
      '0.0 h2 crm: another member was elected first',
      '0.0 h3 crm: another member was elected first',
      '0.5 h1 records g1 (made HA a moment ago) as moving',
      '0.5 h1 moves g1 to h2 (migration)',
      '2.5 g1 switched over from h1 to h2',
      '2.5 world: h1 dies',
      '3.0 h2 owns g1: the move is done',
      '8.0 store: the lease of h1 expired',
      '8.0 h2 crm: elected',
      '8.0 h3 crm: another member was elected first',
      '20.0 world: h1 down[] h2[g1] h3[]',
    ],
    after: (sim) => assert.deepEqual(sim.runningOn('g1'), ['h2']),
  },
]);
