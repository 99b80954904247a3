//! The handover protocol's framing: each message is a 4-byte big-endian length and that many
//! bytes of JSON; the message that carries descriptors has them attached (SCM_RIGHTS) to its
//! length prefix, so they arrive with the first byte of the message.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::ike::IkeHandover;
use crate::sadb::snapshot::SadbSnapshot;
use crate::sys;
use mesh_config::control::OverlayStatus;

/// Raised whenever what crosses the socket changes meaning; a meshd that speaks another
/// version is not handed anything (the new one falls back to a restart that tells peers).
pub const HANDOVER_VERSION: u32 = 1;
/// The kernel's limit of descriptors in one SCM_RIGHTS message (SCM_MAX_FD).
pub const MAX_FDS: usize = 253;
/// No message of the protocol comes near this; a larger length is a confused peer.
const MAX_MESSAGE_LEN: usize = 64 << 20;

/// New meshd -> running meshd.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Hand everything over, for a meshd of `version`.
    TakeOver { version: u32 },
    /// Everything but the workers is set up: stop forwarding and send the SAs.
    Ready,
    /// The offer was adopted: stop touching the descriptors and exit.
    TakenOver,
    /// The offer cannot be used (why): resume forwarding.
    Declined(String),
}

/// Running meshd -> new meshd.
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    /// What comes with the descriptors; see [`Offer`]. The running meshd still forwards.
    Offer(Box<Offer>),
    /// The workers and IKE stopped: every SA as it is now.
    State(Box<State>),
    /// Nothing is handed over (why); the running meshd keeps forwarding.
    Refused(String),
}

/// What the running meshd hands over besides its descriptors. The descriptors come in this
/// order: the control socket, the handover socket, the diagnostic query socket, the metrics
/// listener if there is one, UDP 500, UDP 4500 if IKE has its own,
/// the underlay sockets (one per worker for ESP in UDP, the one raw socket for raw ESP), then
/// the TAP queues, worker by worker, in the order of `overlays`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Offer {
    pub node: String,
    pub encap: mesh_config::Encap,
    pub workers: usize,
    /// The TAP queues carry virtio-net headers (offloads on): the new meshd must agree.
    pub offload: bool,
    pub overlays: Vec<OverlayStatus>,
    pub ike_own_4500: bool,
    /// The metrics listener comes too (`[metrics] listen`).
    pub metrics: bool,
}

/// The SAs as they are when the running meshd stops: the Child SAs of the SADB and the IKE SAs
/// of the endpoint (those with nothing under way).
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    pub sadb: SadbSnapshot,
    pub ike: IkeHandover,
}

fn frame(message: &impl Serialize) -> io::Result<(Vec<u8>, [u8; 4])> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(io::Error::other)?;
    Ok((body, len.to_be_bytes()))
}

/// Sends `message`, with `fds` attached when there are any.
pub fn send(stream: &mut UnixStream, message: &impl Serialize, fds: &[RawFd]) -> io::Result<()> {
    let (mut body, len) = frame(message)?;
    if fds.is_empty() {
        stream.write_all(&len)?;
    } else {
        if fds.len() > MAX_FDS {
            return Err(io::Error::other(format!(
                "{} descriptors to hand over, more than the kernel passes at once ({MAX_FDS})",
                fds.len()
            )));
        }
        let rights = [ControlMessage::ScmRights(fds)];
        let sent = sendmsg::<()>(stream.as_raw_fd(), &[IoSlice::new(&len)], &rights, MsgFlags::empty(), None)?;
        if sent != len.len() {
            stream.write_all(&len[sent..])?;
        }
    }
    let written = stream.write_all(&body);
    // The offer carries SA keys: no copy outlives the send.
    body.zeroize();
    written
}

/// Receives one message and the descriptors that came with it.
pub fn receive<T: DeserializeOwned>(stream: &mut UnixStream) -> io::Result<(T, Vec<OwnedFd>)> {
    let mut len = [0u8; 4];
    let (read, fds) = sys::recv_with_fds::<MAX_FDS>(stream.as_fd(), &mut len)?;
    if read == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    stream.read_exact(&mut len[read..])?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(io::Error::other(format!("a handover message of {len} bytes; the other meshd is confused")));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    let message = serde_json::from_slice(&body).map_err(io::Error::other);
    body.zeroize();
    Ok((message?, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_and_its_descriptors_arrive_together() {
        let (mut sender, mut receiver) = UnixStream::pair().unwrap();
        let (pipe_read, pipe_write) = nix::unistd::pipe().unwrap();
        let why = "a reason".to_string();
        send(&mut sender, &Request::Declined(why.clone()), &[pipe_write.as_raw_fd()]).unwrap();
        drop(pipe_write);
        let (request, fds) = receive::<Request>(&mut receiver).unwrap();
        assert!(matches!(request, Request::Declined(got) if got == why));
        assert_eq!(fds.len(), 1);
        // The descriptor that came is the pipe's write end.
        nix::unistd::write(&fds[0], b"through").unwrap();
        let mut buf = [0u8; 7];
        nix::unistd::read(&pipe_read, &mut buf).unwrap();
        assert_eq!(&buf, b"through");
        // Messages without descriptors carry none.
        send(&mut sender, &Request::TakenOver, &[]).unwrap();
        let (request, fds) = receive::<Request>(&mut receiver).unwrap();
        assert!(matches!(request, Request::TakenOver) && fds.is_empty());
    }

    #[test]
    fn a_peer_that_hangs_up_is_an_unexpected_end() {
        let (sender, mut receiver) = UnixStream::pair().unwrap();
        drop(sender);
        let error = receive::<Request>(&mut receiver).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn an_absurd_length_is_refused_before_reading_it() {
        let (mut sender, mut receiver) = UnixStream::pair().unwrap();
        sender.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let error = receive::<Request>(&mut receiver).unwrap_err();
        assert!(error.to_string().contains("confused"), "{error}");
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        let (mut sender, _receiver) = UnixStream::pair().unwrap();
        let fds = vec![sender.as_raw_fd(); MAX_FDS + 1];
        assert!(send(&mut sender, &Request::TakenOver, &fds).is_err());
    }
}
