import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { createCtStorage } from '../../src/drivers/ct/ct-storage.ts';
import { silentLogger } from '../../src/host/logger.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { makeCtFixture, TEST_IDMAP_BASE } from './ct-fixture.ts';
import { runStorageConformance } from './storage-conformance.ts';

runStorageConformance('ct (overlay upper-layer copies)', async () => {
  const fixture = await makeCtFixture();
  const storage = createCtStorage({
    runner: hostRunner(),
    log: silentLogger(),
    stateDir: fixture.stateDir,
    idmapBase: TEST_IDMAP_BASE,
  });
  return {
    ...fixture,
    storage,
    async makeDebris(spec) {
      await mkdir(join(fixture.stateDir, 'guests', spec.name, 'snapshots', '.tmp-half', 'upper'), {
        recursive: true,
      });
    },
  };
});
