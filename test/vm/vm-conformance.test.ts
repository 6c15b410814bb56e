import { runDriverConformance } from '../drivers/conformance.ts';
import { makeVmFixture } from './vm-fixture.ts';

runDriverConformance('vm (QEMU, TCG)', () => makeVmFixture());
