// The quick benchmarks of the ct group (test/bench/quick-checks.ts GROUPS).
import { quickGroupTest } from './quick-checks.ts';

quickGroupTest('ct');
