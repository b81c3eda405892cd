#!/bin/sh
# Assembles the agent image's root filesystem in OUT_DIR: the stripped `mesh` binary, the eBPF
# object next to it (where the agent looks first), exactly the shared libraries the dynamic loader
# resolves for the binary (`ldd`), the loader itself, and the system CA bundle (the Kubernetes
# client loads the system roots whenever its configuration names no CA, e.g. a kubeconfig with
# an http server or a public CA, and fails when there are none). No shell, no package manager.
#
# Used by both builds, so their layouts cannot drift: the first stage of deploy/Dockerfile, and
# `cargo xtask image` (on the build host, where no base image can be pulled).
#
#   deploy/image-rootfs.sh target/release/mesh target/mesh-ebpf.o OUT_DIR
set -eu
if [ "$#" -ne 3 ]; then
    echo "usage: $0 MESH_BINARY EBPF_OBJECT OUT_DIR" >&2
    exit 2
fi
bin=$1
obj=$2
out=$3

# ldd first, on its own: a static binary or a missing library must stop the build, and a pipe
# would hide ldd's exit status.
libs=$(ldd "$bin")
if printf '%s\n' "$libs" | grep -q 'not found'; then
    printf 'image-rootfs: a library of %s is missing:\n%s\n' "$bin" "$libs" >&2
    exit 1
fi

rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/tmp"
chmod 1777 "$out/tmp"
# No debug info or symbol table (most of the release binary's size): read a backtrace or a core
# dump against the unstripped build of the same commit.
strip --strip-all -o "$out/usr/local/bin/mesh" "$bin"
cp "$obj" "$out/usr/local/bin/mesh-ebpf.o"
chmod 0644 "$out/usr/local/bin/mesh-ebpf.o"

# Debian's bundle, at the first path rustls-native-certs (openssl-probe) tries.
ca=/etc/ssl/certs/ca-certificates.crt
if [ ! -f "$ca" ]; then
    echo "image-rootfs: no $ca: install ca-certificates" >&2
    exit 1
fi
mkdir -p "$out/etc/ssl/certs"
cp -L "$ca" "$out$ca"

# `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and the loader's `/lib64/ld-linux-x86-64.so.2
# (0x...)`; linux-vdso has no file. Each is copied to the path ldd names (symlinks followed: on a
# merged-/usr host /lib is a link), where the loader's built-in search path finds it without an
# ld.so.cache.
printf '%s\n' "$libs" | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }' |
    while read -r lib; do
        mkdir -p "$out$(dirname "$lib")"
        cp -L "$lib" "$out$lib"
    done
