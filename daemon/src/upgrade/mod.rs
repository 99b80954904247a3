//! Hitless restart (`meshd run --upgrade`): a new meshd takes the running one's TAP queues,
//! sockets and SAs over instead of renegotiating, so no overlay packet is lost.
//!
//! The running meshd listens on a handover socket next to its control socket (mode 0600 in a
//! directory of mode 0700; only root connects). The new meshd asks it to hand over
//! ([`wire::Request::TakeOver`]); the running one sends, still forwarding, its descriptors
//! (SCM_RIGHTS): the control, handover and diagnostic sockets, the metrics listener, the IKE
//! sockets, the underlay sockets and every TAP queue. The new meshd sets everything up but its
//! workers and says it is ready ([`wire::Request::Ready`]); only then does the running one stop
//! its workers (as a reload does, at a batch boundary) and send a snapshot of the SADB (keys,
//! sequence numbers skipped ahead, replay windows). The new meshd installs it, starts its
//! workers and confirms ([`wire::Request::TakenOver`]); the running one exits without touching
//! the descriptors again. Forwarding pauses only from the stop to the new workers' start, and
//! packets meanwhile wait in the TAP queues and socket buffers. If the new meshd declines or
//! goes away first, the running one forwards again (past the sequence numbers the new one may
//! have used). Key material crosses only this socket, never a file.
//!
//! The IKE SAs cross too (`crate::ike::IkeHandover`: keys, SPIs, message IDs, Child SA timers),
//! so peers notice nothing. Only an IKE SA with an exchange under way at that moment (a rekey, a
//! liveness check) is left behind; the new meshd negotiates that peer anew after the reconnect
//! interval (with INITIAL_CONTACT, so the peer drops the old one), and the Child SAs handed
//! over carry the traffic until then (their inbound halves are retired after `ORPHAN_GRACE`).
//!
//! When no handover is possible (nothing answers on the handover socket: a meshd from before
//! handovers, or one that crashed), [`stop_running`] stops the running meshd, which deletes its
//! IKE SAs telling each peer, and the new meshd starts afresh.

pub mod wire;

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_config::control::SaOrigin;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::Pid;
use tokio::sync::Notify;

use self::wire::{Answer, Offer, Request, State, HANDOVER_VERSION};
use crate::ctl::SocketFile;
use crate::error::DaemonError;
use crate::keying::Keying;
use crate::manual_nonces;
use crate::reload::Reloader;
use crate::sadb::manager::SaManager;
use crate::sadb::snapshot::SEQUENCE_FAILED_HANDOVER_SKIP;
use crate::tap::TapQueue;

/// How long the running meshd waits for the new one's request, and the new one for the offer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the running meshd, its workers stopped, waits for the new one to start its own.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Child SAs handed over without their IKE SA live on (that peer is renegotiated
/// with after the reconnect interval).
const ORPHAN_GRACE: Duration = Duration::from_secs(30);
/// How long the fallback waits for a running meshd to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("cannot prepare the handover socket {}: {source}; give --ctl-socket a path in a directory root owns", path.display())]
    Socket { path: PathBuf, source: io::Error },
    #[error("the handover from the running meshd failed: {0}; it keeps forwarding, see its log")]
    Exchange(io::Error),
    #[error("the running meshd's state does not fit this one: {0}; start with the same mesh file and --node, or stop the running meshd and start this one without --upgrade")]
    Unfit(String),
    #[error("cannot stop the running meshd (pid {pid}): {problem}; stop it by hand (systemctl stop meshd) and start this one without --upgrade")]
    Stop { pid: i32, problem: String },
}

/// The handover socket of the meshd whose control socket is `ctl_socket`: in a directory of
/// its own next to it, so that the directory's mode can keep everyone but root out.
pub fn socket_path(ctl_socket: &Path) -> PathBuf {
    let mut dir = ctl_socket.as_os_str().to_owned();
    dir.push(".handover");
    PathBuf::from(dir).join("socket")
}

/// Binds the handover socket (mode 0600) in its directory (mode 0700).
pub fn bind(ctl_socket: &Path) -> Result<SocketFile, DaemonError> {
    let path = socket_path(ctl_socket);
    let failed = |source| HandoverError::Socket { path: path.clone(), source };
    if let Some(dir) = path.parent() {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
            }
            Err(error) => return Err(failed(error).into()),
        }
    }
    SocketFile::bind(&path)
}

/// Only root (or the user meshd runs as) may take meshd over.
fn check_peer(stream: &UnixStream) -> io::Result<()> {
    let credentials = getsockopt(&stream.as_fd(), PeerCredentials)?;
    let ours = nix::unistd::geteuid().as_raw();
    match credentials.uid() {
        0 => Ok(()),
        uid if uid == ours => Ok(()),
        uid => Err(io::Error::other(format!("uid {uid} may not take meshd over"))),
    }
}

// ----- the running meshd -----

/// What the running meshd hands over besides the datapath: second descriptors of the sockets
/// its control plane serves on.
pub struct Donor {
    pub reloader: Arc<Reloader>,
    pub ctl: OwnedFd,
    pub handover: OwnedFd,
    pub query: OwnedFd,
    pub metrics: Option<OwnedFd>,
    /// UDP 500, and 4500 when IKE has its own (raw ESP).
    pub ike: Vec<OwnedFd>,
}

/// Serves the handover socket until a handover succeeds; then notifies `handed_over` and stops.
pub async fn serve(mut socket: SocketFile, donor: Arc<Donor>, handed_over: Arc<Notify>) -> io::Result<()> {
    let listener = socket.take_listener()?;
    loop {
        let (stream, _) = listener.accept().await?;
        let mut stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        let donor = donor.clone();
        let outcome = tokio::task::spawn_blocking(move || hand_over(&donor, &mut stream)).await;
        match outcome {
            Ok(Ok(true)) => {
                socket.leave_to_successor();
                handed_over.notify_one();
                return Ok(());
            }
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "handover failed; still forwarding"),
            Err(error) => tracing::error!(%error, "the handover panicked"),
        }
    }
}

/// One handover request; true when the new meshd took over.
fn hand_over(donor: &Donor, stream: &mut UnixStream) -> io::Result<bool> {
    check_peer(stream)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    match wire::receive::<Request>(stream)?.0 {
        Request::TakeOver { version } if version == HANDOVER_VERSION => {}
        Request::TakeOver { version } => {
            let why = format!("the running meshd speaks handover version {HANDOVER_VERSION}, this one {version}");
            wire::send(stream, &Answer::Refused(why), &[])?;
            return Ok(false);
        }
        other => return Err(io::Error::other(format!("expected a takeover request, got {other:?}"))),
    }
    let reloader = &donor.reloader;
    // Held until the end: no reload changes the datapath in between.
    let Some(datapath) = reloader.hand_over() else {
        wire::send(stream, &Answer::Refused("the running meshd's datapath is stopped".to_string()), &[])?;
        return Ok(false);
    };
    let topology = reloader.state.topology_full();
    let offer = Offer {
        node: topology.node_name.clone(),
        encap: topology.encap,
        workers: datapath.workers(),
        offload: datapath.tuning().offload,
        overlays: reloader.overlays.load().to_vec(),
        ike_own_4500: donor.ike.len() > 1,
        metrics: donor.metrics.is_some(),
    };
    let workers = datapath.fds()?;
    let control = [&donor.ctl, &donor.handover, &donor.query].into_iter().chain(&donor.metrics).chain(&donor.ike);
    let fds: Vec<RawFd> = control.chain(&workers).map(AsRawFd::as_raw_fd).collect();
    wire::send(stream, &Answer::Offer(Box::new(offer)), &fds)?;
    // The new meshd sets itself up while this one still forwards.
    stream.set_read_timeout(Some(ADOPT_TIMEOUT))?;
    match wire::receive::<Request>(stream)?.0 {
        Request::Ready => {}
        Request::Declined(why) => return Err(io::Error::other(format!("the new meshd declined: {why}"))),
        other => return Err(io::Error::other(format!("expected the new meshd to be ready, got {other:?}"))),
    }
    let started = Instant::now();
    datapath.stop_and(|| {
        // The manual SAs' sequence-number marks as they are now: the new meshd resumes from
        // them and keeps them from here on.
        let nonces = manual_nonces::store();
        if let Some(store) = nonces {
            store.hand_over();
        }
        // From here this meshd's endpoint sends nothing for the IKE SAs handed over.
        let state = Answer::State(Box::new(State { sadb: reloader.sas.export(), ike: reloader.keying.hand_over() }));
        let confirmed = wire::send(stream, &state, &[]).and_then(|()| match wire::receive::<Request>(stream)?.0 {
            Request::TakenOver => Ok(()),
            other => Err(io::Error::other(format!("expected a confirmation, got {other:?}"))),
        });
        if confirmed.is_err() {
            // Forwarding and keying again, past the sequence numbers and message IDs the new
            // meshd may have used.
            reloader.sas.skip_outbound_sequences(SEQUENCE_FAILED_HANDOVER_SKIP);
            if let Some(store) = nonces {
                store.take_back();
            }
            if let Answer::State(state) = state {
                if let Err(error) = reloader.keying.take_over(&state.ike) {
                    tracing::error!(%error, "cannot take the IKE SAs back; they are renegotiated");
                }
            }
        }
        confirmed
    })?;
    tracing::info!(paused_ms = started.elapsed().as_millis() as u64, "handed over to the new meshd; exiting");
    Ok(true)
}

// ----- the new meshd -----

/// What a running meshd handed over.
pub struct Inheritance {
    pub offer: Offer,
    pub ctl: OwnedFd,
    pub handover: OwnedFd,
    pub query: OwnedFd,
    pub metrics: Option<OwnedFd>,
    pub ike_500: OwnedFd,
    pub ike_own_4500: Option<OwnedFd>,
    /// The underlay sockets, as `Prepared::adopt` takes them.
    pub underlay: Vec<OwnedFd>,
    /// Each worker's queue of every overlay, in the order of `offer.overlays`.
    pub queues: Vec<Vec<TapQueue>>,
    /// Where to confirm: until then the running meshd is ready to forward again.
    pub confirmation: Confirmation,
}

/// The connection to the running meshd, waiting for the new one's word. Dropping it without
/// `confirm` makes the running meshd forward again.
pub struct Confirmation(UnixStream);

/// Whether a handover can happen.
pub enum Takeover {
    Inherited(Box<Inheritance>),
    /// Why not: nothing answers, or the running meshd cannot hand over.
    Impossible(String),
}

fn out_of_turn(what: &str) -> HandoverError {
    HandoverError::Exchange(io::Error::other(format!("the running meshd sent {what}")))
}

/// Asks the meshd running with `ctl_socket` to hand everything over.
pub fn take_over(ctl_socket: &Path) -> Result<Takeover, HandoverError> {
    let path = socket_path(ctl_socket);
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(error) if matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
            return Ok(Takeover::Impossible(format!("nothing answers on {}: {error}", path.display())));
        }
        Err(source) => return Err(HandoverError::Socket { path, source }),
    };
    stream.set_read_timeout(Some(REQUEST_TIMEOUT + ADOPT_TIMEOUT)).map_err(HandoverError::Exchange)?;
    wire::send(&mut stream, &Request::TakeOver { version: HANDOVER_VERSION }, &[]).map_err(HandoverError::Exchange)?;
    let (answer, fds) = match wire::receive::<Answer>(&mut stream) {
        Ok(received) => received,
        // It went away without a word: it was dying, or speaks no handover at all.
        Err(error) if matches!(error.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset) => {
            return Ok(Takeover::Impossible(format!("the running meshd hung up: {error}")));
        }
        Err(error) => return Err(HandoverError::Exchange(error)),
    };
    let offer = match answer {
        Answer::Refused(why) => return Ok(Takeover::Impossible(why)),
        Answer::Offer(offer) => *offer,
        Answer::State(_) => return Err(out_of_turn("the SAs before an offer")),
    };
    let mut confirmation = Confirmation(stream);
    let underlay_count = match offer.encap {
        mesh_config::Encap::Udp => offer.workers,
        mesh_config::Encap::Esp => 1,
    };
    let control_count = 4 + usize::from(offer.metrics) + usize::from(offer.ike_own_4500);
    let expected = control_count + underlay_count + offer.workers * offer.overlays.len();
    if fds.len() != expected {
        let why = format!("{} descriptors came, {expected} were announced", fds.len());
        return Err(confirmation.decline(why));
    }
    let mut fds = fds.into_iter();
    // Counted above: every `next` finds one.
    let mut next = || fds.next().ok_or_else(|| HandoverError::Exchange(io::Error::other("descriptors missing")));
    let ctl = next()?;
    let handover = next()?;
    let query = next()?;
    let metrics = if offer.metrics { Some(next()?) } else { None };
    let ike_500 = next()?;
    let ike_own_4500 = if offer.ike_own_4500 { Some(next()?) } else { None };
    let underlay = (0..underlay_count).map(|_| next()).collect::<Result<_, _>>()?;
    let mut queues = Vec::with_capacity(offer.workers);
    for _ in 0..offer.workers {
        queues.push((0..offer.overlays.len()).map(|_| next().map(TapQueue::adopt)).collect::<Result<_, _>>()?);
    }
    let inheritance =
        Inheritance { offer, ctl, handover, query, metrics, ike_500, ike_own_4500, underlay, queues, confirmation };
    Ok(Takeover::Inherited(Box::new(inheritance)))
}

impl Inheritance {
    /// Whether the running meshd is the node `topology` describes, with the same overlays in
    /// the same order (each worker holds its queues in that order); why not, if it is not.
    pub fn misfit(&self, topology: &crate::topology::Topology) -> Option<String> {
        let offer = &self.offer;
        let ours: Vec<&str> = topology.overlays.iter().map(|o| o.name.as_str()).collect();
        let theirs: Vec<&str> = offer.overlays.iter().map(|o| o.name.as_str()).collect();
        if offer.node != topology.node_name {
            Some(format!("it is node {}, this one {}", offer.node, topology.node_name))
        } else if offer.encap != topology.encap {
            Some(format!("it uses encap {:?}, this mesh file {:?}", offer.encap, topology.encap))
        } else if ours != theirs {
            Some(format!("it has overlays {theirs:?}, this mesh file {ours:?}"))
        } else {
            None
        }
    }
}

impl Inheritance {
    /// Everything but the workers and IKE is set up: has the running meshd stop forwarding and
    /// keying, and takes its SAs as they are now; returns how many Child and IKE SAs. Then start
    /// the workers at once, and `confirm`.
    pub fn take_sas(&mut self, sas: &SaManager, keying: &Keying) -> Result<(usize, usize), HandoverError> {
        let stream = &mut self.confirmation.0;
        wire::send(stream, &Request::Ready, &[]).map_err(HandoverError::Exchange)?;
        let state = match wire::receive::<Answer>(stream).map_err(HandoverError::Exchange)?.0 {
            Answer::State(state) => state,
            Answer::Refused(why) => return Err(out_of_turn(&format!("a refusal ({why}) instead of the SAs"))),
            Answer::Offer(_) => return Err(out_of_turn("a second offer instead of the SAs")),
        };
        let child_sas = sas
            .import(&state.sadb)
            .map_err(|error| self.confirmation.decline(format!("cannot install its SAs: {error}")))?;
        let ike_sas = keying
            .take_over(&state.ike)
            .map_err(|error| self.confirmation.decline(format!("cannot take its IKE SAs: {error}")))?;
        // Child SAs whose IKE SA stayed behind carry traffic until that peer is renegotiated
        // with; then their inbound halves go (the outbound ones are replaced).
        let topology = sas.state().topology_full();
        for record in state.sadb.inbound.iter().filter(|r| r.sa.origin == SaOrigin::Ike) {
            if let Some(peer) =
                topology.peer_by_name(&record.sa.peer).filter(|_| !state.ike.owns_inbound(record.sa.spi))
            {
                keying.retire_inbound(peer, record.sa.spi, ORPHAN_GRACE);
            }
        }
        Ok((child_sas, ike_sas))
    }
}

impl Confirmation {
    /// Tells the running meshd that this one forwards now: it exits.
    pub fn confirm(mut self) -> Result<(), HandoverError> {
        wire::send(&mut self.0, &Request::TakenOver, &[]).map_err(HandoverError::Exchange)
    }

    /// Tells the running meshd that its state cannot be used (`why`): it forwards again.
    pub fn decline(&mut self, why: String) -> HandoverError {
        // Best effort: it resumes either way once this connection closes.
        let _ = wire::send(&mut self.0, &Request::Declined(why.clone()), &[]);
        HandoverError::Unfit(why)
    }
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) `state`, e.g. that this process is the
/// service's main process now and ready; nothing when meshd does not run under systemd.
pub fn tell_service_manager(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = path.to_string_lossy().into_owned();
    let address = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = UnixDatagram::unbound()
        .and_then(|socket| address.and_then(|address| socket.send_to_addr(state.as_bytes(), &address)));
    if let Err(error) = sent {
        tracing::warn!(%error, notify_socket = %path, "cannot notify systemd");
    }
}

/// SIGUSR2 (a package upgrade, see packaging/meshd.service): starts the meshd binary now
/// installed with this process's arguments and `--upgrade`; it takes this one over, and this
/// one exits. The successor's exit is logged should it fail.
pub fn start_successor() {
    let mut args = std::env::args_os();
    let Some(program) = args.next() else { return };
    let mut args: Vec<std::ffi::OsString> = args.filter(|arg| arg != "--upgrade").collect();
    args.push("--upgrade".into());
    match std::process::Command::new(&program).args(&args).spawn() {
        Ok(mut child) => {
            tracing::info!(pid = child.id(), program = %program.to_string_lossy(), "SIGUSR2: starting the successor");
            std::thread::spawn(move || match child.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => tracing::error!(%status, "the successor meshd failed; this one keeps running"),
                Err(error) => tracing::error!(%error, "cannot wait for the successor meshd"),
            });
        }
        Err(error) => {
            tracing::error!(%error, program = %program.to_string_lossy(), "SIGUSR2: cannot start the successor")
        }
    }
}

/// Whether `pid` still runs: it exists and is no zombie waiting for its parent.
fn running(pid: Pid) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')));
    kill(pid, None).is_ok() && !zombie
}

/// The fallback: stops the meshd that serves `ctl_socket`, if one does (SIGTERM: it deletes
/// its IKE SAs, telling each peer, and removes its sockets), and waits until it is gone.
pub fn stop_running(ctl_socket: &Path) -> Result<(), HandoverError> {
    let Ok(stream) = UnixStream::connect(ctl_socket) else {
        // Nothing serves it: the old meshd is gone (crashed); peers drop its state when our
        // IKE_AUTH carries INITIAL_CONTACT.
        return Ok(());
    };
    let credentials = getsockopt(&stream.as_fd(), PeerCredentials)
        .map_err(|error| HandoverError::Stop { pid: 0, problem: error.to_string() })?;
    drop(stream);
    let pid = Pid::from_raw(credentials.pid());
    let failed = |problem: String| HandoverError::Stop { pid: pid.as_raw(), problem };
    tracing::info!(pid = pid.as_raw(), "stopping the running meshd (no handover possible)");
    kill(pid, Signal::SIGTERM).map_err(|error| failed(error.to_string()))?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while running(pid) {
        if Instant::now() > deadline {
            return Err(failed(format!("still running {} s after SIGTERM", STOP_TIMEOUT.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
