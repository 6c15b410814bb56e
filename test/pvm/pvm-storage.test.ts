import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type PvmAgentMap, pvmAgentOf } from '../../src/drivers/pvm/pvm-agent-pool.ts';
import { createPvmStorage } from '../../src/drivers/pvm/pvm-storage.ts';
import { silentLogger } from '../../src/host/logger.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { runStorageConformance } from '../drivers/storage-conformance.ts';
import { makePvmFixture, TEST_IDMAP_BASE } from './pvm-fixture.ts';

runStorageConformance('pvm (User-Mode Linux; COW file copies)', async () => {
  const agents: PvmAgentMap = new Map();
  const fixture = await makePvmFixture({ agents });
  const storage = createPvmStorage(
    { runner: hostRunner(), log: silentLogger(), stateDir: fixture.stateDir, idmapBase: TEST_IDMAP_BASE },
    { agents },
  );
  return {
    ...fixture,
    storage,
    async freezeLikeACrash(spec) {
      const dir = join(fixture.stateDir, 'guests', spec.name);
      await writeFile(join(dir, 'fsfreeze.pending'), '');
      const run = join(fixture.stateDir, 'run', 'pvm', spec.name);
      const paths = { toGuest: join(run, 'agent.in'), fromGuest: join(run, 'agent.out') };
      const agent = await pvmAgentOf(agents, spec.name, { paths, timeoutMs: 10_000 });
      await agent.client.command('guest-fsfreeze-freeze', undefined, { timeoutMs: 60_000 });
    },
    async makeDebris(spec) {
      const dir = join(fixture.stateDir, 'guests', spec.name);
      await mkdir(join(dir, 'snapshots', '.tmp-half-0000'), { recursive: true });
      await writeFile(join(dir, 'snapshots', '.tmp-half-0000', 'root.cow'), 'half');
      await writeFile(join(dir, 'disk', '.tmp-disk-0000'), 'half');
    },
  };
});
