// The quick benchmarks of the storage group (test/bench/quick-checks.ts GROUPS).
import { quickGroupTest } from './quick-checks.ts';

quickGroupTest('storage');
