import { runDriverConformance } from '../drivers/conformance.ts';
import { makePvmFixture } from './pvm-fixture.ts';

runDriverConformance('pvm (User-Mode Linux)', () => makePvmFixture());
