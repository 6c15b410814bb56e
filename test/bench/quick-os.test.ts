// The quick benchmarks of the os group (test/bench/quick-checks.ts GROUPS).
import { quickGroupTest } from './quick-checks.ts';

quickGroupTest('os');
