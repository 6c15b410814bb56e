import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createAgentPool } from '../../src/drivers/vm/vm-agent.ts';
import { createVmStorage } from '../../src/drivers/vm/vm-storage.ts';
import { silentLogger } from '../../src/host/logger.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { runStorageConformance } from '../drivers/storage-conformance.ts';
import { makeVmFixture } from './vm-fixture.ts';

runStorageConformance('vm (QEMU, TCG; internal qcow2 snapshots)', async () => {
  const agents = createAgentPool();
  const fixture = await makeVmFixture({ agents });
  const runner = hostRunner();
  const storage = createVmStorage(
    { runner, log: silentLogger(), stateDir: fixture.stateDir, idmapBase: 1_000_000 },
    { agents },
  );
  return {
    ...fixture,
    storage,
    async freezeLikeACrash(spec) {
      const dir = join(fixture.stateDir, 'guests', spec.name);
      await writeFile(join(dir, 'fsfreeze.pending'), '');
      await agents.use(
        join(fixture.stateDir, 'run', 'vm', spec.name, 'agent.sock'),
        { timeoutMs: 10_000 },
        (c) => c.command('guest-fsfreeze-freeze', undefined, { timeoutMs: 60_000 }),
      );
    },
    async makeDebris(spec) {
      const dir = join(fixture.stateDir, 'guests', spec.name);
      await runner.run(['qemu-img', 'snapshot', '-c', '.tmp-half', join(dir, 'root.qcow2')]);
      await writeFile(join(dir, '.tmp-disk-0000.qcow2'), 'half');
      await mkdir(join(dir, '.tmp-vm-import-0000'));
    },
  };
});
