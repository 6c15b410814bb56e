import { scenarios } from './scenario-runner.ts';

/** The CRM's election and its races. */

scenarios([
  {
    title: 'at the start every member runs for election in the same pass: exactly one is elected',
    cluster: { members: ['h1', 'h2', 'h3'], quietUntilMs: 0, guests: [{ name: 'g1', on: 'h2' }] },
    untilMs: 2000,
    log: [
      '0.0 h1 lease granted (token 5)',
      '0.0 h2 lease granted (token 6)',
      '0.0 h3 lease granted (token 7)',
      '0.0 world: h1[] h2[] h3[]',
      '0.0 h2 starts g1',
      '0.0 h1 crm: elected',
      '0.0 h2 crm: another member was elected first',
      '0.0 h3 crm: another member was elected first',
      '2.0 world: h1[] h2[g1] h3[]',
    ],
  },
  {
    title:
      'the CRM’s election lease runs out between its read and its write: its recovery is refused, and the CRM elected next does it',
    cluster: { members: ['h1', 'h2', 'h3', 'h4'], guests: [{ name: 'g1', on: 'h4' }] },
    script: (sim) => {
      sim.at(5000, (w) => w.kill('h4'));
      sim.at(12_000, (w) => w.dropElection('h1'), 'race');
    },
    untilMs: 30_000,
    log: [
      '1.0 world: h1[] h2[] h3[] h4[g1]',
      '5.0 world: h4 dies',
      '10.0 store: the lease of h4 expired',
      '10.0 h1 crm: h4 lost (token 9); its HA guests are given to others after the margin (2 s on this clock)',
      '12.0 world: the election lease of h1 runs out',
      '12.0 h1 crm: g1 → h1 refused: its record, the election or a token changed',
      '13.0 h1 crm: elected',
      '13.0 h2 crm: another member was elected first',
      '13.0 h3 crm: another member was elected first',
      '14.0 h1 crm: h4 lost (token 9); its HA guests are given to others after the margin (2 s on this clock)',
      '16.0 h1 crm: g1 → h1 (rev 14; most free memory: 8.0 GiB of 8.0)',
      '16.5 h1 starts g1',
      '30.0 world: h1[g1] h2[] h3[] h4 down[]',
    ],
  },
  {
    title: 'a CRM whose host froze thaws into a reset: it never writes with its old election',
    cluster: {
      members: ['h1', 'h2', 'h3'],
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h2' },
      ],
    },
    script: (sim) => {
      sim.at(4000, (w) => w.pauseHost('h1'));
      sim.at(18_000, (w) => w.resumeHost('h1'));
    },
    untilMs: 25_000,
    log: [
      '1.0 world: h1[g1] h2[g2] h3[]',
      '4.0 world: h1 freezes',
      '9.0 store: the lease of h1 expired',
      '9.0 h2 crm: elected',
      '9.0 h3 crm: another member was elected first',
      '10.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '12.0 h2 crm: g1 → h3 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '12.5 h3 starts g1',
      '18.0 world: h1 thaws',
      '18.0 h1 watchdog reset the host (killed g1)',
      '25.0 world: h1 down[] h2[g2] h3[g1]',
    ],
  },
  {
    title:
      'a member cut off while it is the CRM and the only one with a lost member to recover: the new CRM waits its own margin',
    cluster: { members: ['h1', 'h2', 'h3'], guests: [{ name: 'g3', on: 'h3' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.kill('h3'));
      sim.at(9500, (w) => w.link('h1', 'down'));
    },
    untilMs: 25_000,
    log: [
      '1.0 world: h1[] h2[] h3[g3]',
      '3.0 world: h3 dies',
      '8.0 store: the lease of h3 expired',
      '8.0 h1 crm: h3 lost (token 7); its HA guests are given to others after the margin (2 s on this clock)',
      '9.5 world: the link of h1 is down',
      '12.0 h1 fenced: no HA guest ran here',
      '15.0 store: the lease of h1 expired',
      '15.0 h2 crm: elected',
      '16.0 h2 crm: h3 lost (token 7); its HA guests are given to others after the margin (2 s on this clock)',
      '18.0 h2 crm: g3 → h2 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '18.5 h2 starts g3',
      '25.0 world: h1[] h2[g3] h3 down[]',
    ],
  },
]);
