import { CONFIG_DISK_MAGIC } from '../core/guest-files.ts';

/**
 * The text of `/.trivisor/init`, the first program the kernel of a `vm` or
 * `pvm` guest runs. It only uses the kit's own busybox and libraries, so it
 * works whatever the image holds, and it never fails the boot: every step is
 * best effort and the image's init always runs at the end.
 */
export function guestKitInitScript(options: { loaderName: string }): string {
  const { loaderName } = options;
  return `#!/.trivisor/busybox sh
# Trivisor guest kit: prepares a vm/pvm guest, starts the guest agent, then runs the image's init.
K=/.trivisor
BB=$K/busybox
LD="$K/lib/${loaderName} --library-path $K/lib"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Debian's static busybox has no mountpoint applet.
mounted() { $BB awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts 2>/dev/null; }

$BB mkdir -p /proc /sys /dev 2>/dev/null
mounted /proc || $BB mount -t proc -o nosuid,nodev,noexec proc /proc
mounted /sys || $BB mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mounted /dev || $BB mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
$BB mkdir -p /dev/pts 2>/dev/null
mounted /dev/pts || $BB mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts 2>/dev/null
$BB mount -o remount,rw / 2>/dev/null

# The test hook lets the kit be run in a sandbox on the host, where /proc/cmdline is the host's.
CMDLINE=\${TRIVISOR_KIT_CMDLINE:-$($BB cat /proc/cmdline)}
HOSTNAME_ARG=
AGENT=
MODEL=
ROOT_ARG=
NICS_ARG=
CONFIG_DEV=
for arg in $CMDLINE; do
  case "$arg" in
    trivisor.hostname=*) HOSTNAME_ARG=\${arg#trivisor.hostname=} ;;
    trivisor.agent=*) AGENT=\${arg#trivisor.agent=} ;;
    trivisor.model=*) MODEL=\${arg#trivisor.model=} ;;
    root=*) ROOT_ARG=\${arg#root=} ;;
    trivisor.nics=*) NICS_ARG=\${arg#trivisor.nics=} ;;
    trivisor.config=*) CONFIG_DEV=\${arg#trivisor.config=} ;;
  esac
done

# Grow the root file system to its device: the COW disk may be larger than the base disk (limits.disk).
ROOTDEV=
MAJMIN=$($BB awk '$5 == "/" { m = $3 } END { print m }' /proc/self/mountinfo 2>/dev/null)
if [ -n "$MAJMIN" ] && [ -r "/sys/dev/block/$MAJMIN/uevent" ]; then
  NAME=$($BB sed -n 's/^DEVNAME=//p' "/sys/dev/block/$MAJMIN/uevent")
  [ -n "$NAME" ] && [ -b "/dev/$NAME" ] && ROOTDEV=/dev/$NAME
fi
if [ -z "$ROOTDEV" ] && [ -b "$ROOT_ARG" ]; then ROOTDEV=$ROOT_ARG; fi
if [ -n "$ROOTDEV" ]; then
  $LD $K/bin/resize2fs "$ROOTDEV" >/dev/null 2>&1 || echo "trivisor: cannot grow the root file system on $ROOTDEV"
fi

if [ -n "$HOSTNAME_ARG" ]; then
  $BB hostname "$HOSTNAME_ARG"
  [ -d /etc ] && echo "$HOSTNAME_ARG" > /etc/hostname
fi

# NICs get the names the host gave them (NAME@MAC,…), whatever order the kernel found them in:
# first out of the way, then to their names, so that two can swap. The image's init learns them
# from TRIVISOR_NICS (its DHCP client runs on those).
if [ -n "$NICS_ARG" ]; then
  NICS=
  i=0
  for pair in $(echo "$NICS_ARG" | $BB tr , ' '); do
    for dev in /sys/class/net/*; do
      [ "$($BB cat "$dev/address" 2>/dev/null)" = "\${pair#*@}" ] || continue
      [ "\${dev##*/}" = "\${pair%%@*}" ] || $BB ip link set dev "\${dev##*/}" name "tvnic$i"
    done
    i=$((i + 1))
  done
  i=0
  for pair in $(echo "$NICS_ARG" | $BB tr , ' '); do
    [ -e "/sys/class/net/tvnic$i" ] && $BB ip link set dev "tvnic$i" name "\${pair%%@*}"
    NICS="$NICS \${pair%%@*}"
    i=$((i + 1))
  done
  export TRIVISOR_NICS="\${NICS# }"
fi

# The agent's state lives on a tmpfs of the kit's own, so the image's /run is left alone.
$BB mkdir -p $K/run 2>/dev/null
mounted $K/run || $BB mount -t tmpfs -o mode=0700,size=4m tmpfs $K/run

# Injected files (files.* config keys) come on a small read-only ext4 disk: a manifest
# (MODE UID GID NAME PATH per line) and the files, copied into place at every boot.
if [ -n "$CONFIG_DEV" ]; then
  C=$K/run/config
  i=0
  while [ ! -b "$CONFIG_DEV" ] && [ $i -lt 50 ]; do $BB sleep 0.1; i=$((i + 1)); done
  $BB mkdir -p $C
  if $BB mount -t ext4 -o ro,nosuid,nodev,noexec "$CONFIG_DEV" $C 2>/dev/null; then
    if [ "$($BB head -n 1 $C/manifest 2>/dev/null)" = "${CONFIG_DISK_MAGIC}" ]; then
      $BB tail -n +2 $C/manifest | while read -r mode uid gid name path; do
        if [ -d "$path" ]; then echo "trivisor: cannot inject $path: it is a directory"; continue; fi
        $BB mkdir -p "\${path%/*}" 2>/dev/null
        tmp="\${path%/*}/.\${path##*/}.trivisor-new"
        $BB rm -f "$tmp"
        if ! { $BB cp "$C/$name" "$tmp" && $BB chown "$uid:$gid" "$tmp" && $BB chmod "$mode" "$tmp" &&
          $BB mv -f "$tmp" "$path"; }; then
          $BB rm -f "$tmp"
          echo "trivisor: cannot inject $path"
        fi
      done
    else
      echo "trivisor: $CONFIG_DEV is not a Trivisor config disk"
    fi
    $BB umount $C
  else
    echo "trivisor: cannot mount the config disk $CONFIG_DEV"
  fi
  $BB rmdir $C 2>/dev/null
fi
case "$AGENT" in
  '') METHOD= ;;
  unix:*) METHOD=unix-listen; AGENT=\${AGENT#unix:} ;;
  *) if [ "$MODEL" = pvm ]; then METHOD=isa-serial; else METHOD=virtio-serial; fi ;;
esac
if [ -n "$METHOD" ]; then
  # In the background: a virtio port may appear only after this script has moved on.
  (
    i=0
    while [ "$METHOD" != unix-listen ] && [ ! -e "$AGENT" ] && [ $i -lt 600 ]; do
      # Without udev nobody names virtio ports: link the one the host called like the agent's path.
      for port in /sys/class/virtio-ports/*; do
        [ -r "$port/name" ] && [ "/dev/virtio-ports/$($BB cat "$port/name")" = "$AGENT" ] || continue
        $BB mkdir -p /dev/virtio-ports
        $BB ln -sf "../\${port##*/}" "$AGENT"
      done
      [ -e "$AGENT" ] && break
      $BB sleep 0.1
      i=$((i + 1))
    done
    exec $BB setsid $LD $K/bin/qemu-ga -m $METHOD -p "$AGENT" -t $K/run -f $K/run/qemu-ga.pid \\
      -l $K/run/qemu-ga.log
  ) </dev/null >/dev/null 2>&1 &
fi

echo "trivisor: init"
INIT=$($BB cat $K/image-init 2>/dev/null)
[ -n "$INIT" ] || INIT=/sbin/init
eval "set -- $INIT"
# A root shell on the console for \`trivisor console\` (the images bring no getty for it), started
# again when it exits; cttyhack makes the console its controlling terminal (job control, Ctrl-C).
# Not with \`&\`: a background job of this shell would ignore SIGINT, and so would every shell
# and command under it. systemd runs its own getty on the console: then the kit keeps out of the way.
# Nor in the tests' sandbox on the host (TRIVISOR_KIT_CMDLINE), where the console is the host's.
if [ -z "$TRIVISOR_KIT_CMDLINE" ] && [ "$($BB basename "$($BB readlink -f "$1" 2>/dev/null)")" != systemd ]; then
  SH=/bin/sh
  [ -x "$SH" ] || SH="$BB sh"
  $BB start-stop-daemon -S -b -m -p $K/run/console-shell.pid -x $BB -- sh -c \
    'exec </dev/console >/dev/console 2>&1; while :; do $0 setsid $0 cttyhack $1 -l; $0 sleep 1; done' \
    "$BB" "$SH"
fi
# A failed exec would end pid 1 and panic the kernel: check first, and fall back to a shell.
if [ -x "$1" ] || command -v "$1" >/dev/null 2>&1; then exec "$@"; fi
echo "trivisor: cannot run the image's init ($INIT): starting a shell"
exec $BB sh
`;
}
