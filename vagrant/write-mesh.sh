#!/usr/bin/env bash
# Writes DIR/mesh.toml and DIR/psk (from MESHD_PSK) for the Vagrant lab: one node per
# NAME=ADDRESS argument, IKE between all of them, overlay ovl0 (VNI 4242) with 10.244.0.N/24 on
# the Nth node.
#   MESHD_PSK=... write-mesh.sh DIR NAME=ADDRESS...
set -euo pipefail

dir=${1:?usage: MESHD_PSK=KEY $0 DIR NAME=ADDRESS...}
shift
: "${MESHD_PSK:?set MESHD_PSK to the lab pre-shared key (at least 32 bytes)}"
install -d -m 0700 "$dir"
(umask 077 && printf '%s\n' "$MESHD_PSK" >"$dir/psk")

{
    printf '[mesh]\nname = "vagrant"\npsk_file = "psk"\n'
    for node in "$@"; do
        printf '\n[[node]]\nname = "%s"\naddress = "%s"\n' "${node%%=*}" "${node#*=}"
    done
    printf '\n[[overlay]]\nname = "ovl0"\nvni = 4242\n[overlay.address]\n'
    index=1
    for node in "$@"; do
        printf '%s = "10.244.0.%d/24"\n' "${node%%=*}" "$index"
        index=$((index + 1))
    done
} >"$dir/mesh.toml.new"
mv "$dir/mesh.toml.new" "$dir/mesh.toml"
