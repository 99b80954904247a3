//! tshark captures inside a lab namespace, and reading them back (optionally decrypting ESP).
//!
//! Decryption (checked against this machine's TShark 4.0.17): ESP is decrypted with
//! ```text
//! -o esp.enable_encryption_decode:TRUE
//! -o esp.enable_authentication_check:TRUE      (optional: esp.icv_good / esp.icv_bad)
//! -o 'uat:esp_sa:"IPv4","198.18.0.1","198.18.0.2","0x00001102","AES-GCM with 16 octet ICV [RFC4106]","0x<64 hex key><8 hex salt>","NULL",""'
//! -d udp.port==4790,vxlan
//! ```
//! One `-o uat:esp_sa:` per SA (each adds a row). The eight fields are: protocol ("IPv4" or
//! "IPv6"), source address, destination address ("*" is a wildcard), SPI (0x-hex), encryption
//! algorithm (the exact display string), encryption key (0x-hex, key followed by the 4-byte
//! salt), authentication algorithm ("NULL" for AEADs), authentication key (empty).
//! ESP-in-UDP on port 4500 is dissected as "UDP Encapsulation of IPsec Packets" -> ESP with
//! no option needed; VXLAN on 4790 needs the `-d udp.port==4790,vxlan` decode-as.
//! TShark 4.0 has no ChaCha20-Poly1305 ESP decryption (Wireshark 4.2 added
//! "ChaCha20 with Poly1305 [RFC7634]"): only AES-GCM SAs can be decrypted here.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;

use crate::netns::Netns;
use crate::util::{describe_output, hex, send_signal, wait_until};

/// What tshark needs to decrypt one ESP SA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspSaKeys {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub spi: u32,
    /// meshd's cipher name: "aes256gcm16" or "chacha20poly1305".
    pub cipher: String,
    /// Key followed by the 4-byte salt.
    pub key: Vec<u8>,
}

impl EspSaKeys {
    /// The tshark encryption algorithm string for this cipher.
    pub fn tshark_algorithm(&self) -> &'static str {
        match self.cipher.as_str() {
            "aes256gcm16" => "AES-GCM with 16 octet ICV [RFC4106]",
            // Only Wireshark >= 4.2 knows this one.
            "chacha20poly1305" => "ChaCha20 with Poly1305 [RFC7634]",
            other => panic!("no tshark ESP algorithm for cipher {other:?}"),
        }
    }

    /// The value of `-o uat:esp_sa:<row>`.
    pub fn tshark_uat_row(&self) -> String {
        let proto = match self.src {
            IpAddr::V4(_) => "IPv4",
            IpAddr::V6(_) => "IPv6",
        };
        format!(
            "\"{proto}\",\"{}\",\"{}\",\"0x{:08x}\",\"{}\",\"0x{}\",\"NULL\",\"\"",
            self.src,
            self.dst,
            self.spi,
            self.tshark_algorithm(),
            hex(&self.key)
        )
    }
}

/// The tshark options that decrypt `sas` and dissect UDP 4790 as VXLAN.
pub fn tshark_decrypt_args(sas: &[EspSaKeys]) -> Vec<String> {
    let mut args = vec![
        "-o".to_string(),
        "esp.enable_encryption_decode:TRUE".to_string(),
        "-o".to_string(),
        "esp.enable_authentication_check:TRUE".to_string(),
    ];
    for sa in sas {
        args.push("-o".into());
        args.push(format!("uat:esp_sa:{}", sa.tshark_uat_row()));
    }
    args.extend(["-d".to_string(), "udp.port==4790,vxlan".to_string()]);
    args
}

/// A running (or stopped) tshark capture into a pcap file in a tempdir.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
    stderr: Arc<Mutex<String>>,
    netns: String,
    iface: String,
    _dir: TempDir,
}

impl Capture {
    /// `tshark -i IFACE -w FILE -F pcap` in `ns`; returns once tshark says "Capturing on"
    /// (panics after 15 s).
    pub fn start(ns: &Netns, iface: &str) -> Capture {
        Capture::start_with_filter(ns, iface, None)
    }

    /// Like [`Capture::start`] with a capture filter (`-f`, BPF syntax).
    pub fn start_with_filter(ns: &Netns, iface: &str, filter: Option<&str>) -> Capture {
        let dir = tempfile::Builder::new().prefix("meshd-cap-").tempdir().expect("tempdir");
        let file = dir.path().join(format!("{}-{iface}.pcap", ns.name()));
        let mut command = ns.command(["tshark", "-n", "-q", "-i", iface, "-F", "pcap", "-w"]);
        command.arg(&file);
        if let Some(filter) = filter {
            command.args(["-f", filter]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tshark (is it installed? apt-get install -y tshark)");
        let stderr_pipe = child.stderr.take().expect("tshark stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr_pipe);
                let mut line = String::new();
                let mut ready_tx = Some(ready_tx);
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if line.contains("Capturing on") {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    stderr.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
        }
        let mut capture = Capture {
            child: Some(child),
            file,
            stderr,
            netns: ns.name().to_string(),
            iface: iface.to_string(),
            _dir: dir,
        };
        if ready_rx.recv_timeout(Duration::from_secs(15)).is_err() {
            capture.stop();
            panic!(
                "tshark in {} on {iface} did not start capturing within 15 s; stderr:\n{}",
                capture.netns,
                capture.stderr()
            );
        }
        // tshark says "Capturing on" a few milliseconds before the packet socket really sees
        // traffic (measured: the first ~10 ms of packets are missing), so let it settle.
        std::thread::sleep(Duration::from_millis(300));
        capture
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// What tshark printed to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stops the capture (SIGINT, as ^C: tshark flushes the file and exits). Idempotent.
    /// Waits 300 ms first so packets still in flight are written.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            std::thread::sleep(Duration::from_millis(300));
            send_signal(child.id(), libc::SIGINT);
            if wait_until(Duration::from_secs(10), || child.try_wait().ok().flatten()).is_none() {
                eprintln!("tshark in {} on {} ignored SIGINT: killing it", self.netns, self.iface);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// `tshark -n -r FILE extra...` (stops the capture first); panics when tshark fails.
    pub fn read(&mut self, extra: &[&str]) -> String {
        self.stop();
        let output = Command::new("tshark")
            .arg("-n")
            .arg("-r")
            .arg(&self.file)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run tshark -r");
        if !output.status.success() {
            panic!("tshark -r {} {} failed\n{}", self.file.display(), extra.join(" "), describe_output(&output));
        }
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Like [`Capture::read`] with ESP decryption for `sas` and VXLAN on UDP 4790 (see the
    /// module docs for the option strings).
    pub fn read_decrypted(&mut self, sas: &[EspSaKeys], extra: &[&str]) -> String {
        let mut args = tshark_decrypt_args(sas);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.read(&args)
    }

    /// The captured frames (link layer included), in order; frame number `n` of tshark is
    /// element `n - 1`.
    pub fn frames(&mut self) -> Vec<Vec<u8>> {
        self.stop();
        let mut bytes = Vec::new();
        fs::File::open(&self.file).and_then(|mut f| f.read_to_end(&mut bytes)).expect("read pcap");
        parse_pcap(&bytes)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Parses a classic libpcap file (either byte order, micro- or nanosecond magic).
pub fn parse_pcap(bytes: &[u8]) -> Vec<Vec<u8>> {
    assert!(bytes.len() >= 24, "pcap file shorter than its header ({} bytes)", bytes.len());
    let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let little = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        other => panic!("not a libpcap file (magic {other:#010x}); capture with -F pcap"),
    };
    let read_u32 = |at: usize| {
        let b: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen = read_u32(at + 8) as usize;
        let start = at + 16;
        if start + caplen > bytes.len() {
            break; // truncated last record
        }
        frames.push(bytes[start..start + caplen].to_vec());
        at = start + caplen;
    }
    frames
}
