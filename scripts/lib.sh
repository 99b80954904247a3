# Shared by scripts/demo, scripts/test and scripts/bench: installs what they need, once.
# Sourced, not run.

# Debian packages the demo, the tests and the benchmark use.
MESHD_PACKAGES=(iproute2 iputils-ping iperf3 tshark nftables python3 procps build-essential pkg-config
    strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins
    systemd vagrant)
# The kernel drop tracer (ebpf/): clang builds the BPF program, bpftool dumps vmlinux.h, libbpf-dev
# has its headers; libbpf-rs builds libbpf itself and links libelf and zlib.
MESHD_PACKAGES+=(clang bpftool libbpf-dev libelf-dev zlib1g-dev)
# The metrics test scrapes with curl.
MESHD_PACKAGES+=(curl)
# The NAT rebinding test flushes the router's connection tracking with conntrack.
MESHD_PACKAGES+=(conntrack)
# The flow export test collects IPFIX with nfdump's nfcapd and reads it with nfdump.
MESHD_PACKAGES+=(nfdump)
# ikectl fleet's tests: ssh and ssh-keygen, and an sshd per lab namespace (its own config and keys;
# the system's ssh service is not used).
MESHD_PACKAGES+=(openssh-client openssh-server)

meshd_require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "$0: run this as root (it creates network namespaces and TAP interfaces): sudo $0 $*" >&2
        exit 1
    fi
}

meshd_install_packages() {
    local missing=()
    for package in "${MESHD_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing Debian packages: ${missing[*]}"
        # tshark asks whether non-root users may capture; answer no without a prompt.
        echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

meshd_require_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "$0: cargo is not installed. meshd needs Rust 1.85 or newer: install it with rustup (https://rustup.rs), then run this again." >&2
        exit 1
    fi
}

meshd_install_cargo_fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "==> installing cargo-fuzz"
        cargo install --locked cargo-fuzz >/dev/null
    fi
}
