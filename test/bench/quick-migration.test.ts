// The quick benchmarks of the migration group (test/bench/quick-checks.ts GROUPS).
import { quickGroupTest } from './quick-checks.ts';

quickGroupTest('migration');
