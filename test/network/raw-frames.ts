import { spawn, spawnSync } from 'node:child_process';
import { isIP } from 'node:net';

/*
 * Raw Ethernet frames sent from and received in a network namespace (an AF_PACKET socket, through
 * the host's perl: busybox guests have no tool that sends a crafted frame, and this kernel has no
 * 8021q module to make a VLAN device). Each frame carries a marker `MARK:<name>` the receiver
 * looks for, so what arrived is known frame by frame.
 */

const mac = (m: string) => Buffer.from(m.split(':').map((x) => Number.parseInt(x, 16)));
const ip4 = (a: string) => Buffer.from(a.split('.').map(Number));
const u16 = (n: number) => Buffer.from([n >> 8, n & 255]);

function checksum(b: Buffer): number {
  let s = 0;
  for (let i = 0; i < b.length; i += 2) s += (b[i] ?? 0) * 256 + (b[i + 1] ?? 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >> 16);
  return ~s & 0xffff;
}

/** An IPv4 UDP packet (port 4000) carrying `payload`. */
export function ipv4Udp(src: string, dst: string, payload: string): Buffer {
  const data = Buffer.from(payload);
  const udp = Buffer.concat([u16(4000), u16(4000), u16(8 + data.length), u16(0), data]);
  const h = Buffer.concat([
    Buffer.from([0x45, 0]),
    u16(20 + udp.length),
    Buffer.from([0, 0, 0, 0, 64, 17, 0, 0]),
    ip4(src),
    ip4(dst),
  ]);
  h.writeUInt16BE(checksum(h), 10);
  return Buffer.concat([h, udp]);
}

/** An ARP request from (senderMac, senderIp) for targetIp, with `payload` after it. */
export function arpRequest(senderMac: string, senderIp: string, targetIp: string, payload: string): Buffer {
  return Buffer.concat([
    u16(1),
    u16(0x0800),
    Buffer.from([6, 4]),
    u16(1),
    mac(senderMac),
    ip4(senderIp),
    Buffer.alloc(6),
    ip4(targetIp),
    Buffer.from(payload),
  ]);
}

/** An IPv6 packet with no next header (59) carrying `payload`. */
export function ipv6(src: string, dst: string, payload: string): Buffer {
  const addr = (a: string) => {
    if (isIP(a) !== 6) throw new Error(`not IPv6: ${a}`);
    const [head = '', tail = ''] = a.split('::');
    const h = head ? head.split(':') : [];
    const t = tail ? tail.split(':') : [];
    const groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
    return Buffer.concat(groups.map((g) => u16(Number.parseInt(g, 16))));
  };
  const data = Buffer.from(payload);
  return Buffer.concat([
    Buffer.from([0x60, 0, 0, 0]),
    u16(data.length),
    Buffer.from([59, 64]),
    addr(src),
    addr(dst),
    data,
  ]);
}

/** An Ethernet frame; `vlan` puts an 802.1Q tag with that id before the ether type. */
export function frame(dst: string, src: string, etherType: number, body: Buffer, vlan?: number): Buffer {
  const tag = vlan === undefined ? Buffer.alloc(0) : Buffer.concat([u16(0x8100), u16(vlan)]);
  const f = Buffer.concat([mac(dst), mac(src), tag, u16(etherType), body]);
  return f.length >= 60 ? f : Buffer.concat([f, Buffer.alloc(60 - f.length)]);
}

const PERL_SOCKET = `
use strict; use Socket;
my ($mode, $if, @rest) = @ARGV;
socket(my $s, 17, SOCK_RAW, $mode eq 'recv' ? 0x0300 : 0) or die "socket: $!";
my $ifr = pack('a16 x16', $if);
ioctl($s, 0x8933, $ifr) or die "no interface $if: $!";
my $idx = unpack('x16 i', $ifr);
bind($s, pack('S n i S C C a8', 17, $mode eq 'recv' ? 3 : 0, $idx, 0, 0, 0, '')) or die "bind: $!";
if ($mode eq 'send') {
  for my $hex (@rest) { send($s, pack('H*', $hex), 0) or die "send: $!"; select(undef, undef, undef, 0.05); }
  exit 0;
}
$| = 1; print "ready\\n";
my %seen; my $end = time + $rest[0];
while (time < $end) {
  my $rin = ''; vec($rin, fileno($s), 1) = 1;
  next unless select(my $rout = $rin, undef, undef, 0.2);
  recv($s, my $buf, 4096, 0);
  $seen{$1} = 1 while $buf =~ /MARK:([A-Za-z0-9._-]+)/g;
}
print "$_\\n" for sort keys %seen;
`;

/** argv that runs a command in the network namespace at `netns` (a /proc/PID/ns/net path). */
const inNetns = (netns: string, argv: string[]) => ['nsenter', `--net=${netns}`, ...argv];

/** Sends the frames on `ifname` of the namespace; throws with perl's error. */
export function sendFrames(netns: string, ifname: string, frames: Buffer[]): void {
  const argv = inNetns(netns, [
    'perl',
    '-e',
    PERL_SOCKET,
    'send',
    ifname,
    ...frames.map((f) => f.toString('hex')),
  ]);
  const r = spawnSync(argv[0] ?? '', argv.slice(1), { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`sending frames: ${r.stderr || r.error?.message}`);
}

/**
 * Listens on `ifname` of the namespace for `seconds`; `ready` resolves once it listens, `markers`
 * with the markers of the frames it saw. The listener is killed with the test if it is killed.
 */
export function receiveFrames(netns: string, ifname: string, seconds: number) {
  const argv = inNetns(netns, ['perl', '-e', PERL_SOCKET, 'recv', ifname, String(seconds)]);
  const child = spawn(argv[0] ?? '', argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  let out = '';
  let err = '';
  child.stderr.on('data', (d) => {
    err += d;
  });
  let resolveReady: () => void = () => {};
  const ready = new Promise<void>((r) => {
    resolveReady = r;
  });
  child.stdout.on('data', (d) => {
    out += d;
    if (out.startsWith('ready\n')) resolveReady();
  });
  const markers = new Promise<Set<string>>((resolve, reject) => {
    child.on('close', (code) => {
      process.off('exit', kill);
      if (code !== 0) reject(new Error(`receiving frames: exit ${code}: ${err}`));
      else resolve(new Set(out.split('\n').slice(1).filter(Boolean)));
    });
  });
  // A listener that fails before it is ready must not leave `ready` waiting.
  markers.catch(() => resolveReady());
  return { ready, markers };
}
