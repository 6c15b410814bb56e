import { scenarios } from './scenario-runner.ts';

/** Restarts that fail: retries with backoff on one member, then other members, then an error. */
const three = ['h1', 'h2', 'h3'];

scenarios([
  {
    title: 'a restart that fails twice is retried after 1 s, then 2 s, and runs at the third try',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'fill', on: 'h3', memoryGiB: 4 },
      ],
    },
    script: (sim) => {
      sim.at(1000, (w) => w.failStarts('h2', 'g1', 2));
      sim.at(5000, (w) => w.kill('h1'));
    },
    untilMs: 25_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[fill]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h2 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 cannot start g1: the driver failed',
      '14.0 h2 records 1 failed start(s) of g1',
      '14.5 h2 cannot start g1: the driver failed',
      '15.0 h2 records 2 failed start(s) of g1',
      '16.5 h2 starts g1',
      '17.0 h2 clears the failed starts of g1',
      '25.0 world: h1 down[] h2[g1] h3[fill]',
    ],
  },
  {
    title: 'a restart that fails three times on one member goes to another, where it runs',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'fill', on: 'h3', memoryGiB: 4 },
      ],
    },
    script: (sim) => {
      sim.at(1000, (w) => w.failStarts('h2', 'g1', 3));
      sim.at(5000, (w) => w.kill('h1'));
    },
    untilMs: 25_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[fill]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h2 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 cannot start g1: the driver failed',
      '14.0 h2 records 1 failed start(s) of g1',
      '14.5 h2 cannot start g1: the driver failed',
      '15.0 h2 records 2 failed start(s) of g1',
      '16.5 h2 cannot start g1: the driver failed',
      '17.0 h2 records 3 failed start(s) of g1',
      '17.0 h2 crm: g1 failed to start on h2 3 times: → h3 (most free memory: 4.0 GiB of 8.0)',
      '17.5 h3 starts g1',
      '25.0 world: h1 down[] h2[] h3[fill g1]',
    ],
  },
  {
    title: 'a guest that fails to start on every member is given up and reported in error',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'fill', on: 'h3', memoryGiB: 4 },
      ],
    },
    script: (sim) => {
      sim.at(1000, (w) => w.failStarts('h2', 'g1', 3));
      sim.at(1000, (w) => w.failStarts('h3', 'g1', 3));
      sim.at(5000, (w) => w.kill('h1'));
    },
    untilMs: 40_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[fill]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h2 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 cannot start g1: the driver failed',
      '14.0 h2 records 1 failed start(s) of g1',
      '14.5 h2 cannot start g1: the driver failed',
      '15.0 h2 records 2 failed start(s) of g1',
      '16.5 h2 cannot start g1: the driver failed',
      '17.0 h2 records 3 failed start(s) of g1',
      '17.0 h2 crm: g1 failed to start on h2 3 times: → h3 (most free memory: 4.0 GiB of 8.0)',
      '17.5 h3 cannot start g1: the driver failed',
      '18.0 h3 records 1 failed start(s) of g1',
      '18.5 h3 cannot start g1: the driver failed',
      '19.0 h3 records 2 failed start(s) of g1',
      '20.5 h3 cannot start g1: the driver failed',
      '21.0 h3 records 3 failed start(s) of g1',
      '21.0 h2 crm: g1 failed to start on h2, h3 and no other member can take it: given up',
      '40.0 world: h1 down[] h2[] h3[fill] g1: error',
    ],
  },
  {
    title: 'a guest that crashes and fails to start again on its own member is retried there, then moved',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.failStarts('h1', 'g1', 5));
      sim.at(3000, (w) => w.crash('g1'));
    },
    untilMs: 15_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 world: g1 crashes',
      '3.0 h1 cannot start g1: the driver failed',
      '3.5 h1 records 1 failed start(s) of g1',
      '4.0 h1 cannot start g1: the driver failed',
      '4.5 h1 records 2 failed start(s) of g1',
      '6.0 h1 cannot start g1: the driver failed',
      '6.5 h1 records 3 failed start(s) of g1',
      '7.0 h1 crm: g1 failed to start on h1 3 times: → h2 (most free memory: 8.0 GiB of 8.0)',
      '7.5 h2 starts g1',
      '15.0 world: h1[] h2[g1] h3[]',
    ],
  },
]);
