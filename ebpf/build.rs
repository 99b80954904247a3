//! Compiles the BPF program with clang against a vmlinux.h that bpftool dumps from the build
//! machine's kernel BTF (CO-RE relocations make the object run on other kernels with BTF).

use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAM: &str = "src/bpf/kfree_skb.bpf.c";
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

fn run(command: &mut Command, what: &str, fix: &str) {
    let output = command.output().unwrap_or_else(|error| panic!("{what}: cannot run {command:?} ({error}); {fix}"));
    if !output.status.success() {
        panic!("{what} failed: {command:?}\n{}\n{fix}", String::from_utf8_lossy(&output.stderr));
    }
}

fn target_arch_define() -> &'static str {
    match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "-D__TARGET_ARCH_arm64",
        _ => "-D__TARGET_ARCH_x86",
    }
}

fn main() {
    println!("cargo:rerun-if-changed={PROGRAM}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let vmlinux = out.join("vmlinux.h");
    if !Path::new(KERNEL_BTF).exists() {
        panic!("{KERNEL_BTF} is missing: building the kernel drop tracer needs a kernel with BTF (CONFIG_DEBUG_INFO_BTF=y)");
    }
    let header = std::fs::File::create(&vmlinux).expect("create vmlinux.h in OUT_DIR");
    run(
        Command::new("bpftool").args(["btf", "dump", "file", KERNEL_BTF, "format", "c"]).stdout(header),
        "bpftool btf dump",
        "install bpftool (apt-get install bpftool; scripts/lib.sh installs it)",
    );
    let object = out.join("kfree_skb.bpf.o");
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default());
    run(
        Command::new("clang")
            .args(["-g", "-O2", "-target", "bpf", target_arch_define()])
            .arg("-I")
            .arg(&out)
            .arg("-I")
            .arg(multiarch)
            .args(["-c", PROGRAM, "-o"])
            .arg(&object),
        "clang -target bpf",
        "install clang and libbpf-dev (apt-get install clang libbpf-dev; scripts/lib.sh installs them)",
    );
}
