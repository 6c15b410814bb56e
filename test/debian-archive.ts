import http from 'node:http';
import { hostDebianMirror } from '../src/images/debootstrap-image.ts';

/**
 * Why the Debian archive cannot be used from this machine, or undefined when it can.
 * debootstrap tests cannot run without it; they skip with this reason instead of failing
 * on a machine whose network is down.
 */
export async function debianArchiveUnreachable(): Promise<string | undefined> {
  const mirror = await hostDebianMirror();
  const url = `${mirror.replace(/\/$/, '')}/dists/bookworm/Release`;
  return new Promise((resolve) => {
    const req = http.request(url, { method: 'HEAD', timeout: 10_000 }, (res) => {
      res.resume();
      resolve(
        res.statusCode === 200 ? undefined : `the Debian archive answered ${res.statusCode} for ${url}`,
      );
    });
    req.on('timeout', () => req.destroy(new Error('no answer in 10 s')));
    req.on('error', (e) => resolve(`the Debian archive cannot be reached (${url}: ${e.message})`));
    req.end();
  });
}
