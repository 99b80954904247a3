//! `ikectl capture`: meshd's decrypted overlay frames as pcapng, to a file or (`-w -`) to
//! stdout, so that `ikectl capture -w - | tshark -r -` works. One pcapng interface per overlay
//! and direction; each packet's comment names the peer, VNI and SPI.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use mesh_config::control::{CaptureStart, CapturedFrame, Command, Direction, Reply};

use crate::client::{ClientError, Connection};
use crate::pcapng::{self, Packet, PacketDirection};

pub struct CaptureOptions {
    pub peer: Option<String>,
    pub overlay: Option<String>,
    pub count: Option<u64>,
    pub snaplen: u32,
    /// A file, or "-" for stdout.
    pub write: String,
}

pub fn run(socket: &Path, options: CaptureOptions) -> Result<(), ClientError> {
    let command = Command::Capture {
        peer: options.peer,
        overlay: options.overlay,
        count: options.count,
        snaplen: options.snaplen,
    };
    let mut connection = Connection::open(socket, command)?;
    let start = match connection.receive()? {
        Reply::CaptureStart(start) => start,
        _ => return Err(unexpected()),
    };
    let to_stdout = options.write == "-";
    let mut out: Box<dyn Write> = match to_stdout {
        true => Box::new(io::stdout().lock()),
        false => Box::new(
            File::create(&options.write)
                .map_err(|error| ClientError(format!("cannot create {}: {error}", options.write)))?,
        ),
    };
    let mut buffer = Vec::new();
    pcapng::section_header(&mut buffer, concat!("ikectl ", env!("CARGO_PKG_VERSION")));
    headers(&mut buffer, &start);
    let (mut captured, mut dropped) = (0u64, 0u64);
    let wanted = options.count.unwrap_or(u64::MAX);
    loop {
        // A reader that went away (`| tshark -c 5`) ends the capture quietly.
        if out.write_all(&buffer).and_then(|_| out.flush()).is_err() {
            return Ok(());
        }
        buffer.clear();
        if captured >= wanted {
            break;
        }
        let batch = match connection.receive()? {
            Reply::CaptureFrames(batch) => batch,
            _ => return Err(unexpected()),
        };
        dropped = batch.dropped;
        for frame in &batch.frames {
            append(&mut buffer, frame, &start)?;
        }
        captured += batch.frames.len() as u64;
    }
    if !to_stdout {
        eprintln!("{captured} frames written to {}", options.write);
    }
    if dropped > 0 {
        eprintln!(
            "ikectl: {dropped} frames were left out of the capture (more than meshd's capture rate limit, \
             or ikectl read too slowly); traffic was not affected. Narrow it with --peer or --overlay."
        );
    }
    Ok(())
}

/// One interface description per overlay and direction, named like "overlay0/in".
fn headers(buffer: &mut Vec<u8>, start: &CaptureStart) {
    for interface in &start.interfaces {
        let name = format!("{}/{}", interface.overlay, interface.direction);
        let description = format!(
            "meshd node {} overlay {} VNI {} {}",
            start.node,
            interface.overlay,
            interface.vni,
            match interface.direction {
                Direction::In => "received from peers (decrypted)",
                Direction::Out => "sent to peers (before encryption)",
            }
        );
        pcapng::interface_description(buffer, &name, &description, start.snaplen);
    }
}

fn append(buffer: &mut Vec<u8>, frame: &CapturedFrame, start: &CaptureStart) -> Result<(), ClientError> {
    let data = unhex(&frame.data).ok_or_else(unexpected)?;
    let interface = start.interfaces.get(frame.interface as usize).ok_or_else(unexpected)?;
    let (direction, towards) = match interface.direction {
        Direction::In => (PacketDirection::Inbound, "from"),
        Direction::Out => (PacketDirection::Outbound, "to"),
    };
    let comment =
        format!("{} peer {} overlay {} vni {} spi {}", towards, frame.peer, interface.overlay, frame.vni, frame.spi);
    let packet = Packet {
        interface: frame.interface,
        at_unix_ns: frame.at_unix_ns,
        original_len: frame.original_len,
        data: &data,
        direction,
        comment: &comment,
    };
    pcapng::enhanced_packet(buffer, &packet);
    Ok(())
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok()).collect()
}

fn unexpected() -> ClientError {
    ClientError("meshd answered something else than captured frames; use the ikectl that came with this meshd".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_decodes_or_refuses() {
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
