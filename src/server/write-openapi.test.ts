import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { renderOpenApi } from './write-openapi.ts';

test('docs/openapi.json is up to date with the route schemas (run `npm run openapi` to refresh it)', async () => {
  const committed = await readFile(new URL('../../docs/openapi.json', import.meta.url), 'utf8');
  const current = await renderOpenApi();
  assert.ok(committed === current, 'docs/openapi.json is stale: run `npm run openapi` and commit the result');
  const doc = JSON.parse(current) as { paths: Record<string, unknown> };
  assert.ok(doc.paths['/1.0/guests/{name}/exec'], 'the exec route is documented');
});
