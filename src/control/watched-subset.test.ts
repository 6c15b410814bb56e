import assert from 'node:assert/strict';
import { test } from 'node:test';
import { silentLogger } from '../host/logger.ts';
import type { KvStore } from '../store/kv.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { watchSubset } from './watched-subset.ts';

test('a watched subset keeps the picked records current, and a first list that failed is tried again at the next ready()', async () => {
  const memory = createMemoryStore();
  let failLists = 1;
  const list = (prefix: string) =>
    failLists-- > 0 ? Promise.reject(new Error('store away')) : memory.list(prefix);
  const store: KvStore = new Proxy(memory, {
    get(target, prop) {
      if (prop === 'list') return list;
      const v = Reflect.get(target, prop);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  await memory.put('/p/a', '1');
  await memory.put('/p/b', '20');
  const subset = watchSubset({
    store,
    prefix: '/p/',
    pick: (kv) => (kv.value.length > 1 ? kv.value : undefined),
    log: silentLogger(),
  });
  try {
    await assert.rejects(subset.ready(), /store away/);
    await subset.ready();
    assert.deepEqual([...subset.picked()], [['/p/b', '20']]);
    await memory.put('/p/a', '11');
    await memory.put('/p/b', '2');
    await memory.put('/p/c', '33');
    await memory.delete('/p/c');
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual([...subset.picked()], [['/p/a', '11']]);
  } finally {
    subset.stop();
    await memory.close();
  }
});
