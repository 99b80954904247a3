#!/usr/bin/env bash
# Provisions one VM of the Vagrant lab (run as root by `vagrant up`): builds meshd from the
# repository synced to /meshd, installs it and its systemd unit, writes /etc/meshd/mesh.toml and
# the psk (MESHD_PSK), and (re)starts meshd. Arguments: NAME=ADDRESS of every node.
set -euo pipefail

: "${MESHD_PSK:?the lab pre-shared key (the Vagrantfile passes it)}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# clang, bpftool and libbpf build the kernel drop tracer (ebpf/); libbpf-sys links libelf and zlib.
apt-get install -y -qq build-essential pkg-config curl ca-certificates iproute2 iputils-ping \
    clang bpftool libbpf-dev libelf-dev zlib1g-dev >/dev/null

# Debian 12's rustc is older than the 1.85 meshd needs.
if [ ! -x /root/.cargo/bin/cargo ]; then
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
cd /meshd
CARGO_TARGET_DIR=/var/tmp/meshd-target /root/.cargo/bin/cargo build --release --locked -p meshd -p ikectl
install -m 0755 /var/tmp/meshd-target/release/meshd /usr/sbin/
install -m 0755 /var/tmp/meshd-target/release/ikectl /usr/bin/

/meshd/vagrant/write-mesh.sh /etc/meshd "$@"
# Every node finds itself by its address; check says which one it is.
meshd check --config /etc/meshd/mesh.toml

install -m 0644 /meshd/packaging/meshd.service /etc/systemd/system/meshd.service
systemctl daemon-reload
systemctl enable meshd
systemctl restart meshd
