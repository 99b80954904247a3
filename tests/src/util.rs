//! Small helpers shared by the lab modules and the tests.

use std::fs::File;
use std::io::Read;
use std::process::Output;
use std::time::{Duration, Instant};

/// Panics unless the test runs as root. Integration tests must fail loudly without root,
/// never pass silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "integration tests need root (network namespaces): run them as root, \
             e.g. sudo -E cargo test -p meshd-lab"
        );
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or `None` after `timeout`.
pub fn wait_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n` bytes from the kernel's random source.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("read /dev/urandom");
    bytes
}

/// Lowercase hex, no prefix.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses hex digits (no prefix) into bytes; panics on bad input (test helper).
pub fn unhex(text: &str) -> Vec<u8> {
    let text = text.trim();
    assert!(text.len() & 1 == 0, "odd number of hex digits: {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap_or_else(|_| panic!("bad hex: {text:?}")))
        .collect()
}

/// A command's result as text, for panic messages.
pub fn describe_output(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    )
}

/// Sends `signal` to `pid`; errors (no such process) are ignored.
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) only takes plain integers; a pid that no longer exists gives ESRCH, which
    // we ignore. pid > 0, so this never signals a process group.
    unsafe {
        libc::kill(pid, signal);
    }
}
