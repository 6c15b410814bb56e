// The quick benchmarks of the engines group (test/bench/quick-checks.ts GROUPS).
import { quickGroupTest } from './quick-checks.ts';

quickGroupTest('engines');
