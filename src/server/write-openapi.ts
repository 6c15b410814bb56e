import { writeFile } from 'node:fs/promises';
import { notSupported } from '../core/errors.ts';
import type { Services } from '../services/types.ts';
import { buildServer } from './build-server.ts';

/** Services that are never called: building the routes is all the OpenAPI document needs. */
function stubServices(): Services {
  const never = (): never => {
    throw notSupported('Stub services do nothing');
  };
  const stub = new Proxy({}, { get: () => never });
  return { guests: stub, images: stub, operations: stub, events: stub, host: stub } as unknown as Services;
}

/** The OpenAPI document of the API, as docs/openapi.json holds it. */
export async function renderOpenApi(): Promise<string> {
  const app = await buildServer(stubServices(), { auth: { type: 'none' } });
  await app.ready();
  const text = `${JSON.stringify(app.swagger(), null, 2)}\n`;
  await app.close();
  return text;
}

if (import.meta.main) {
  const target = process.argv[2];
  if (!target) {
    process.stderr.write(
      'Error: give the output path, e.g. node src/server/write-openapi.ts docs/openapi.json\n',
    );
    process.exit(1);
  }
  await writeFile(target, await renderOpenApi());
}
