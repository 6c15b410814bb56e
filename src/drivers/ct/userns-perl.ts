/**
 * A perl sub for the ct helpers (overlay-rootfs.ts, ct-volumes.ts) that makes a
 * user namespace with the given map (uid_map and gid_map lines, `INNER OUTER
 * COUNT` each, separated by `,`) and returns an open handle on it, for
 * mount_setattr(MOUNT_ATTR_IDMAP): a child unshares (x86_64 unshare = 272,
 * CLONE_NEWUSER), the parent writes its maps and opens /proc/CHILD/ns/user,
 * then lets it exit. The handle keeps the namespace; an idmapped mount keeps a
 * copy of the map, not the namespace.
 */
export const USERNS_PERL = `
sub idmap_userns {
  my ($map) = @_;
  $map =~ s/,/\\n/g;
  pipe(my $r1, my $w1) or die "pipe: $!\\n";
  pipe(my $r2, my $w2) or die "pipe: $!\\n";
  my $child = fork() // die "fork: $!\\n";
  if ($child == 0) {
    close($r1); close($w2);
    syscall(272, 0x10000000) == 0 or die "unshare(CLONE_NEWUSER): $!\\n";
    syswrite($w1, 'u'); close($w1);
    sysread($r2, my $x, 1);
    exit 0;
  }
  close($w1); close($r2);
  sysread($r1, my $x, 1) == 1 or die "the user namespace helper died\\n";
  for my $f ('uid_map', 'gid_map') {
    open(my $m, '>', "/proc/$child/$f") or die "open $f: $!\\n";
    syswrite($m, "$map\\n") or die "write $f: $!\\n";
    close($m) or die "write $f: $!\\n";
  }
  open(my $ns, '<', "/proc/$child/ns/user") or die "open the user namespace: $!\\n";
  close($w2);
  waitpid($child, 0);
  return $ns;
}
`;
