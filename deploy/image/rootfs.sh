#!/usr/bin/env bash
# A minimal root file system for the CPU image's base, made from this machine's own files (no
# registry, no package download): the system libraries pspace-core and the launcher load (the
# dynamic loader's answer for every library outside the venv), CA certificates for https://
# stores, and the folders a process expects. Written to OUT as a folder;
# `tar -C OUT -c . | docker import - pspace-rootfs:local` makes it an image (`make image-cpu`).
#
# usage: deploy/image/rootfs.sh OUT
set -euo pipefail
out=${1:?usage: rootfs.sh OUT}
root=$(cd "$(dirname "$0")/../.." && pwd)
site=$root/.venv/lib/python3.11/site-packages
rm -rf "$out"
mkdir -p "$out/etc" "$out/tmp" "$out/lib64"
chmod 1777 "$out/tmp"
for bin in "$root/target/release/pspace-core" "$root/target/release/pspace"; do
  LD_LIBRARY_PATH="$site/torch/lib:$site/nvidia/cu13/lib" ldd "$bin"
done | awk '$3 ~ /^\// && $3 !~ /\.venv/ {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | sort -u |
  while read -r lib; do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
  done
# /lib64/ld-linux-x86-64.so.2 is what the binaries' interpreter path names.
if [ -e /lib64/ld-linux-x86-64.so.2 ] && [ ! -e "$out/lib64/ld-linux-x86-64.so.2" ]; then
  cp -L /lib64/ld-linux-x86-64.so.2 "$out/lib64/"
fi
[ -d /etc/ssl/certs ] && mkdir -p "$out/etc/ssl" && cp -rL /etc/ssl/certs "$out/etc/ssl/" 2>/dev/null || true
printf 'root:x:0:0:root:/root:/sbin/nologin\npspace:x:65532:65532:pspace:/scratch:/sbin/nologin\n' > "$out/etc/passwd"
printf 'root:x:0:\npspace:x:65532:\n' > "$out/etc/group"
printf 'hosts: files dns\n' > "$out/etc/nsswitch.conf"
du -sh "$out" | awk '{print "rootfs.sh: " $1}'
