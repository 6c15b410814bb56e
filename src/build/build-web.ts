import path from 'node:path';
import { buildWeb, webDistOf } from './web-bundle.ts';

// `node src/build/build-web.ts`: builds the web UI of this checkout (setup's ensure_bundles).
// Its own file: web-bundle.ts is part of the daemon, whose bundle must not run this at start.
const root = path.resolve(import.meta.dirname, '../..');
const manifest = await buildWeb(root);
process.stdout.write(
  `Built the web UI into ${path.join(webDistOf(root), manifest.dir)} (first page: ${(manifest.initialGzipBytes / 1024).toFixed(1)} KiB of gzipped JavaScript)\n`,
);
