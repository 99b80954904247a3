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
# The Debian package's tests: lintian checks the .deb, promtool (prometheus) the alert rules.
MESHD_PACKAGES+=(lintian prometheus)

# What building meshd itself needs (scripts/package): a C toolchain and the eBPF build.
MESHD_BUILD_PACKAGES=(build-essential pkg-config clang bpftool libbpf-dev libelf-dev zlib1g-dev)

# cargo-deb builds the Debian package; pinned, so that every machine builds the same package.
MESHD_CARGO_DEB_VERSION=3.8.0
# cargo-nextest runs the tests (.config/nextest.toml): its test priorities need 0.9.91.
MESHD_CARGO_NEXTEST_MIN_VERSION=0.9.91

meshd_require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "$0: run this as root (it creates network namespaces and TAP interfaces): from a root shell (su -), or sudo $0 $* where sudo is installed" >&2
        exit 1
    fi
}

# Installs the Debian packages named (default: MESHD_PACKAGES) that are missing.
meshd_install_packages() {
    local wanted=("$@") missing=()
    [ ${#wanted[@]} -gt 0 ] || wanted=("${MESHD_PACKAGES[@]}")
    for package in "${wanted[@]}"; do
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

meshd_install_cargo_nextest() {
    local installed
    installed=$(cargo nextest --version 2>/dev/null | awk 'NR == 1 {print $2}')
    if [ -z "$installed" ] || [ "$(printf '%s\n%s\n' "$MESHD_CARGO_NEXTEST_MIN_VERSION" "$installed" | sort -V | head -n 1)" != "$MESHD_CARGO_NEXTEST_MIN_VERSION" ]; then
        echo "==> installing cargo-nextest (found: ${installed:-none}, needed: $MESHD_CARGO_NEXTEST_MIN_VERSION or newer)"
        cargo install --locked cargo-nextest >/dev/null
    fi
}

meshd_install_cargo_deb() {
    if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $MESHD_CARGO_DEB_VERSION" ]; then
        echo "==> installing cargo-deb $MESHD_CARGO_DEB_VERSION"
        cargo install --locked cargo-deb --version "$MESHD_CARGO_DEB_VERSION" >/dev/null
    fi
}
