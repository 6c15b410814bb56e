import assert from 'node:assert/strict';
import { scenarios } from './scenario-runner.ts';

/** The store itself lost (etcd without quorum, on every member at once), and records changed under the CRM. */
const three = ['h1', 'h2', 'h3'];

scenarios([
  {
    title:
      'etcd lost on all members: each fences only its own HA guests, nobody restarts anything while it is gone; once back the guests are placed again',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h2' },
        { name: 'plain', on: 'h3', ha: false },
      ],
    },
    script: (sim) => {
      sim.at(5000, (w) => w.storeDown());
      sim.at(20_000, (w) => w.storeUp());
    },
    untilMs: 40_000,
    log: [
      '1.0 world: h1[g1] h2[g2] h3[plain]',
      '5.0 world: the store lost its quorum',
      '7.0 h1 fenced: killed g1',
      '7.0 h2 fenced: killed g2',
      '7.0 h3 fenced: no HA guest ran here',
      '20.0 world: the store is back',
      '20.0 h1 lease granted (token 13)',
      '20.0 h2 lease granted (token 15)',
      '20.0 h3 lease granted (token 17)',
      '20.0 h1 crm: gives up its election of an earlier lease',
      '21.0 h1 crm: elected',
      '21.0 h2 crm: another member was elected first',
      '21.0 h3 crm: another member was elected first',
      '22.0 h1 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '22.0 h1 crm: h2 lost (token 6); its HA guests are given to others after the margin (2 s on this clock)',
      '24.0 h1 crm: g1 → h1 (rev 19; most free memory: 7.0 GiB of 8.0)',
      '24.0 h1 crm: g2 → h2 (rev 19; most free memory: 7.0 GiB of 8.0)',
      '24.5 h1 starts g1',
      '24.5 h2 starts g2',
      '40.0 world: h1[g1] h2[g2] h3[plain]',
    ],
    after: (sim) => assert.deepEqual(sim.runningOn('plain'), ['h3']),
  },
  {
    title: 'etcd lost for 1.5 s (less than the fencing window less a renewal period): nothing happens',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h2' },
      ],
    },
    script: (sim) => {
      sim.at(5000, (w) => w.storeDown());
      sim.at(6500, (w) => w.storeUp());
    },
    untilMs: 15_000,
    log: [
      '1.0 world: h1[g1] h2[g2] h3[]',
      '5.0 world: the store lost its quorum',
      '6.5 world: the store is back',
      '15.0 world: h1[g1] h2[g2] h3[]',
    ],
  },
  {
    title:
      'etcd lost while the CRM waits out the margin for a dead member: the CRM forgets what it saw, and waits a whole margin again once etcd is back',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h2' },
      ],
    },
    script: (sim) => {
      sim.at(3000, (w) => w.kill('h1'));
      sim.at(10_000, (w) => w.storeDown());
      sim.at(11_500, (w) => w.storeUp());
    },
    untilMs: 25_000,
    log: [
      '1.0 world: h1[g1] h2[g2] h3[]',
      '3.0 world: h1 dies',
      '8.0 store: the lease of h1 expired',
      '8.0 h2 crm: elected',
      '8.0 h3 crm: another member was elected first',
      '9.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '10.0 world: the store lost its quorum',
      '11.5 world: the store is back',
      '12.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '14.0 h2 crm: g1 → h3 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '14.5 h3 starts g1',
      '25.0 world: h1 down[] h2[g2] h3[g1]',
    ],
  },
  {
    title:
      'etcd lost while a move transfers: the source fences, the move is given up, and the guest is placed again once etcd is back',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(4000, (w) => w.move('g1', 'h2'));
      sim.at(5000, (w) => w.storeDown());
      sim.at(12_000, (w) => w.storeUp());
    },
    untilMs: 30_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '4.0 h1 moves g1 to h2 (migration)',
      '5.0 world: the store lost its quorum',
      '6.0 g1 switched over from h1 to h2',
      '7.0 h1 fenced: no HA guest ran here',
      '7.0 h2 fenced: killed g1',
      '7.0 h3 fenced: no HA guest ran here',
      '12.0 world: the store is back',
      '12.0 h1 lease granted (token 12)',
      '12.0 h2 lease granted (token 14)',
      '12.0 h3 lease granted (token 16)',
      '12.0 h1 crm: gives up its election of an earlier lease',
      '13.0 h1 crm: elected',
      '13.0 h2 crm: another member was elected first',
      '13.0 h3 crm: another member was elected first',
      '14.0 h1 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '16.0 h1 crm: g1 → h1 (rev 18; most free memory: 8.0 GiB of 8.0)',
      '16.5 h1 starts g1',
      '30.0 world: h1[g1] h2[] h3[]',
    ],
  },
  {
    title: 'a guest deleted between the CRM’s read and its write is not recreated: the write is refused',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h1' },
      ],
    },
    script: (sim) => {
      sim.at(5000, (w) => w.kill('h1'));
      sim.at(13_000, (w) => w.remove('g1'), 'race');
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1 g2] h2[] h3[]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 world: g1 is deleted',
      '13.0 h2 crm: g1 → h2 refused: its record, the election or a token changed',
      '13.0 h2 crm: g2 → h3 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '13.5 h3 starts g2',
      '20.0 world: h1 down[] h2[] h3[g2]',
    ],
    after: (sim) => assert.equal(sim.record('g1'), undefined),
  },
  {
    title:
      'a guest edited between the CRM’s read and its write: the write is refused and the next pass places it with its new memory',
    cluster: {
      members: [{ name: 'h1' }, { name: 'h2', memoryGiB: 4 }, { name: 'h3', memoryGiB: 16 }],
      guests: [{ name: 'g1', on: 'h1', memoryGiB: 2 }],
    },
    script: (sim) => {
      sim.at(5000, (w) => w.kill('h1'));
      sim.at(13_000, (w) => w.edit('g1', { memoryBytes: 12 * 1024 ** 3 }), 'race');
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 world: g1 is edited (memoryBytes)',
      '13.0 h2 crm: g1 → h3 refused: its record, the election or a token changed',
      '14.0 h2 crm: g1 → h3 (rev 13; most free memory: 16.0 GiB of 16.0)',
      '14.5 h3 starts g1',
      '20.0 world: h1 down[] h2[] h3[g1]',
    ],
  },
  {
    title: 'ha.enabled turned off during the recovery: the guest stays on its lost member',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(5000, (w) => w.kill('h1'));
      sim.at(12_000, (w) => w.edit('g1', { ha: false }));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '12.0 world: g1 is edited (ha)',
      '20.0 world: h1 down[] h2[] h3[]',
    ],
    after: (sim) => assert.equal(sim.record('g1')?.owner, 'h1'),
  },
  {
    title: 'a guest asked to stop during the recovery is not started anywhere',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(5000, (w) => w.kill('h1'));
      sim.at(12_000, (w) => w.edit('g1', { want: 'stopped' }));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '12.0 world: g1 is edited (want)',
      '20.0 world: h1 down[] h2[] h3[]',
    ],
  },
  {
    title: 'a guest deleted on a live member is stopped there',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => sim.at(5000, (w) => w.remove('g1')),
    untilMs: 8000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: g1 is deleted',
      '5.0 h1 stops g1: its record is gone',
      '8.0 world: h1[] h2[] h3[]',
    ],
  },
  {
    title:
      'the member chosen fences between the CRM’s read and its write: the write is refused (its token changed) and the guest goes elsewhere',
    cluster: {
      members: [{ name: 'h1' }, { name: 'h2' }, { name: 'h3', memoryGiB: 4 }],
      guests: [{ name: 'g1', on: 'h1' }],
    },
    script: (sim) => {
      sim.at(5000, (w) => w.kill('h1'));
      sim.at(13_000, (w) => w.fence('h2'), 'race');
    },
    untilMs: 25_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 world: the HA agent of h2 is asked to fence',
      '13.0 h2 fenced: no HA guest ran here',
      '13.0 h2 crm: g1 → h2 refused: its record, the election or a token changed',
      '14.0 h2 lease granted (token 14)',
      '14.0 h2 crm: gives up its election of an earlier lease',
      '15.0 h2 crm: elected',
      '15.0 h3 crm: another member was elected first',
      '16.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '18.0 h2 crm: g1 → h2 (rev 16; most free memory: 8.0 GiB of 8.0)',
      '18.5 h2 starts g1',
      '25.0 world: h1 down[] h2[g1] h3[]',
    ],
  },
  {
    title:
      'the member chosen dies between the CRM’s read and its write: its lease is still there, so it is given the guest, and the guest is given again once that lease expired',
    cluster: {
      members: [{ name: 'h1' }, { name: 'h2', memoryGiB: 4 }, { name: 'h3' }],
      guests: [{ name: 'g1', on: 'h1' }],
    },
    script: (sim) => {
      sim.at(5000, (w) => w.kill('h1'));
      sim.at(13_000, (w) => w.kill('h3'), 'race');
    },
    untilMs: 30_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 world: h3 dies',
      '13.0 h2 crm: g1 → h3 (rev 12; most free memory: 8.0 GiB of 8.0)',
      '19.0 store: the lease of h3 expired',
      '19.0 h2 crm: h3 lost (token 7); its HA guests are given to others after the margin (2 s on this clock)',
      '21.0 h2 crm: g1 → h2 (rev 14; most free memory: 4.0 GiB of 4.0)',
      '21.5 h2 starts g1',
      '30.0 world: h1 down[] h2[g1] h3 down[]',
    ],
  },
]);
