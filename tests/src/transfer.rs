//! A 20 MB TCP transfer across the overlay, to 10.244.0.2:5001 (node n2), whose integrity the
//! test checks: both ends print the length and SHA-256 of the stream.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::netns::Netns;

/// Receives one TCP connection on 10.244.0.2:5001 and prints the length and SHA-256 of what came.
const RECEIVER: &str = "import socket, hashlib
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('10.244.0.2', 5001)); s.listen(1); print('ready', flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)";

/// Sends a deterministic 20 MB in 64 KiB writes with `sys.argv[1]` seconds between them, then
/// prints the length and SHA-256 of what it sent.
const SENDER: &str = "import socket, hashlib, sys, time
data = hashlib.sha256(b'meshd').digest() * (20 * 1024 * 1024 // 32)
pause = float(sys.argv[1])
c = socket.create_connection(('10.244.0.2', 5001))
for i in range(0, len(data), 1 << 16):
    c.sendall(data[i:i + (1 << 16)])
    if pause: time.sleep(pause)
c.close()
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)";

/// Sends 20 MB from `from` to the receiver in `to` (which must hold 10.244.0.2), pausing `pause`
/// seconds (e.g. "0.02") after each 64 KiB; `during` runs while the data travels. Returns what
/// the sender and the receiver printed ("length sha256"); equal when the stream arrived intact.
pub fn tcp_transfer(from: &Netns, to: &Netns, pause: &str, during: impl FnOnce()) -> (String, String) {
    let mut receiver = to.command(["python3", "-c", RECEIVER]).stdout(Stdio::piped()).spawn().expect("start receiver");
    let mut lines = BufReader::new(receiver.stdout.take().expect("receiver stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"), "the receiver listens");
    let sender = from.command(["python3", "-c", SENDER, pause]).stdout(Stdio::piped()).spawn().expect("start sender");
    during();
    let sent = sender.wait_with_output().expect("sender output");
    let received = lines.next().and_then(Result::ok).unwrap_or_default();
    let _ = receiver.wait();
    (String::from_utf8_lossy(&sent.stdout).trim().to_string(), received.trim().to_string())
}
