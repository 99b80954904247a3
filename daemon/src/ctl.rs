//! The control socket: a Unix socket (mode 0600, so root only) that answers one JSON request per
//! line with one JSON response per line (`mesh_config::control`).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use mesh_config::control::{
    Command, Direction, DropBatch, FdbEntry, FlushReport, OverlayStatus, PeerInfo, ReplayInfo, Reply, Request,
    Response, SaInfo, SaList, Spi, Status, PROTOCOL_VERSION,
};
use mesh_config::MeshConfig;
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::diag::kernel::KernelDrops;
use crate::error::DaemonError;
use crate::keying::Keying;
use crate::manual;
use crate::reload::Reloader;
use crate::sadb::{SaCounters, SaParams};
use crate::state::MeshState;
use crate::topology::PeerId;

/// The socket file; removed when dropped, so that every way out of `meshd run` cleans it up.
pub struct SocketFile {
    path: PathBuf,
    listener: Option<StdUnixListener>,
}

impl SocketFile {
    /// Binds `path`, refusing when a live meshd answers there and replacing a stale file.
    pub fn bind(path: &Path) -> Result<Self, DaemonError> {
        let failed = |source| DaemonError::ControlSocket { path: path.to_path_buf(), source };
        if path.exists() {
            match StdUnixStream::connect(path) {
                Ok(_) => return Err(DaemonError::ControlSocketInUse { path: path.to_path_buf() }),
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "removing stale control socket");
                    std::fs::remove_file(path).map_err(failed)?;
                }
                Err(error) => return Err(failed(error)),
            }
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(failed)?;
        }
        let listener = StdUnixListener::bind(path).map_err(failed)?;
        let socket = SocketFile { path: path.to_path_buf(), listener: Some(listener) };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
        Ok(socket)
    }

    fn take_listener(&mut self) -> io::Result<UnixListener> {
        let listener = self.listener.take().ok_or_else(|| io::Error::other("control socket already serving"))?;
        listener.set_nonblocking(true)?;
        UnixListener::from_std(listener)
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove the control socket");
        }
    }
}

/// How long `sa flush` waits for renegotiated SAs.
const FLUSH_WAIT: Duration = Duration::from_secs(10);

/// What the control plane answers from.
pub struct Control {
    pub state: Arc<MeshState>,
    /// The running mesh file; a reload replaces it.
    pub config: ArcSwap<MeshConfig>,
    pub keying: Arc<Keying>,
    pub started: Instant,
    pub workers: usize,
    pub overlays: ArcSwap<Vec<OverlayStatus>>,
    /// Held while a reload runs, so that reloads never overlap.
    pub reloader: Mutex<Reloader>,
    pub kernel_drops: KernelDrops,
    /// Asks peers for their view (`ikectl ping`) and answers theirs.
    pub query: crate::diag::query::QueryService,
}

/// Serves requests until the runtime stops.
pub async fn serve(socket: &mut SocketFile, control: Arc<Control>) -> io::Result<()> {
    let listener = socket.take_listener()?;
    loop {
        let (stream, _) = listener.accept().await?;
        let control = control.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, control).await {
                tracing::debug!(%error, "control connection ended");
            }
        });
    }
}

async fn serve_connection(stream: UnixStream, control: Arc<Control>) -> io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    while let Some(line) = lines.next_line().await? {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) if request.version != PROTOCOL_VERSION => Response::error(format!(
                "ikectl speaks control protocol version {}, this meshd speaks {PROTOCOL_VERSION}: use the ikectl that came with this meshd",
                request.version
            )),
            Ok(Request { command: Command::SaFlush { peer }, .. }) => control.flush_and_wait(peer.as_deref()).await,
            Ok(Request { command: Command::DropsFollow { peer, after, kernel_after }, .. }) => {
                let from = crate::diag::follow::Start { after, kernel_after };
                return crate::diag::follow::stream(&control, peer.as_deref(), from, &mut lines, &mut writer).await;
            }
            Ok(Request { command: Command::Reload, .. }) => {
                // A reload waits for the datapath workers to pause: not on the runtime's thread.
                let reloading = control.clone();
                match tokio::task::spawn_blocking(move || reloading.reload()).await {
                    Ok(Ok(plan)) => Response::ok(Reply::Reload(plan)),
                    Ok(Err(message)) => Response::error(message),
                    Err(error) => Response::error(format!("the reload failed ({error}); see the meshd log")),
                }
            }
            Ok(Request { command: Command::Ping { peer, count, size }, .. }) => {
                match crate::diag::ping::ping(&control, &peer, count, size).await {
                    Ok(report) => Response::ok(Reply::Ping(Box::new(report))),
                    Err(message) => Response::error(message),
                }
            }
            // A trace runs `ip`: not on the runtime's thread.
            Ok(Request { command: command @ Command::Trace { .. }, .. }) => {
                let tracing = control.clone();
                tokio::task::spawn_blocking(move || tracing.handle(command))
                    .await
                    .unwrap_or_else(|error| Response::error(format!("the trace failed ({error}); see the meshd log")))
            }
            Ok(request) => control.handle(request.command),
            Err(error) => Response::error(format!(
                "meshd could not read the request ({error}); use the ikectl that came with this meshd"
            )),
        };
        send(&mut writer, &response).await?;
    }
    Ok(())
}

/// Writes one response line.
pub async fn send<W: AsyncWrite + Unpin>(writer: &mut W, response: &Response) -> io::Result<()> {
    let mut text = serde_json::to_string(response).map_err(io::Error::other)?;
    text.push('\n');
    writer.write_all(text.as_bytes()).await?;
    writer.flush().await
}

impl Control {
    pub fn handle(&self, command: Command) -> Response {
        let result = match command {
            Command::Status => Ok(Reply::Status(Box::new(self.status()))),
            Command::SaList { peer } => self.peer_filter(peer.as_deref()).map(|peer| {
                let ike_sas = self.keying.ike_sas(&self.state, peer);
                Reply::SaList(SaList { ike_sas, child_sas: self.sa_list(peer) })
            }),
            Command::SaFlush { peer } => {
                self.peer_filter(peer.as_deref()).and_then(|peer| self.flush(peer)).map(Reply::SaFlush)
            }
            Command::Peers => Ok(Reply::Peers(self.peers())),
            Command::Fdb => Ok(Reply::Fdb(self.fdb())),
            Command::Drops { peer: name, kernel } => self.peer_filter(name.as_deref()).map(|peer| {
                let topology = self.state.topology();
                let mut report = self.state.drops.report(|id| topology.peer_name(id), peer);
                report.kernel = kernel.then(|| self.kernel_drops.report(name.as_deref()));
                Reply::Drops(report)
            }),
            // Without the stream: what is newer right now.
            Command::DropsFollow { peer, after, kernel_after } => self
                .peer_filter(peer.as_deref())
                .map(|_| Reply::DropStream(self.drops_since(peer.as_deref(), after, kernel_after))),
            Command::Reload => self.reload().map(Reply::Reload),
            // It waits for probes and the peer's answer: only the socket's async path serves it.
            Command::Ping { .. } => Err("ping is served on the control socket only".to_string()),
            Command::Trace { target, overlay } => {
                crate::diag::trace::trace(self, &target, overlay.as_deref()).map(Reply::Trace)
            }
        };
        match result {
            Ok(reply) => Response::ok(reply),
            Err(message) => Response::error(message),
        }
    }

    /// The drops (and, with `kernel_after`, kernel drops) recorded after those ids.
    pub fn drops_since(&self, peer: Option<&str>, after: u64, kernel_after: Option<u64>) -> DropBatch {
        let topology = self.state.topology();
        let kernel = kernel_after.map(|after| self.kernel_drops.since(after, peer)).unwrap_or_default();
        let only = match peer.map(|name| topology.resolve_peer(name)) {
            None => None,
            Some(Ok(id)) => Some(id),
            // A follower of a peer that a reload removed sees nothing more of it, not everyone's.
            Some(Err(_)) => return DropBatch { drops: Vec::new(), kernel },
        };
        let drops = self.state.drops.since(after, |id| topology.peer_name(id), only);
        DropBatch { drops, kernel }
    }

    /// Peers with an SA in both directions.
    pub fn peers_with_sas(&self) -> usize {
        let tables = self.state.sadb.load();
        let both_ways =
            |peer: PeerId| tables.outbound(peer).is_some() && tables.inbound_sas().any(|sa| sa.params.peer == peer);
        self.state.topology().peers.iter().filter(|peer| both_ways(peer.id)).count()
    }

    pub fn peer_filter(&self, name: Option<&str>) -> Result<Option<PeerId>, String> {
        name.map(|name| self.state.topology().resolve_peer(name)).transpose()
    }

    fn status(&self) -> Status {
        let topology = self.state.topology();
        let peers_with_sas = self.peers_with_sas();
        Status {
            node: topology.node_name.clone(),
            mesh: topology.mesh_name.clone(),
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            config_path: self.config.load().path.display().to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            underlay_address: topology.local_address,
            workers: self.workers,
            peers_configured: topology.peers.len(),
            peers_with_sas,
            overlays: crate::pmtu::status::overlays(&self.state, &self.overlays.load()),
            drops_total: self.state.drops.total(),
            warnings: crate::pmtu::status::warnings(&self.state, &self.overlays.load()),
            public_key: self.keying.public_key().map(|key| key.fingerprint()),
        }
    }

    fn sa_info(&self, params: &SaParams, direction: Direction, counters: &SaCounters) -> SaInfo {
        let clock = &self.state.clock;
        SaInfo {
            peer: self.state.topology().peer_name(params.peer),
            direction,
            spi: Spi(params.spi),
            cipher: params.cipher,
            mode: params.mode,
            encap: params.encap,
            origin: params.origin,
            esn: params.esn,
            age_secs: clock.secs_since(params.created_ms).unwrap_or(0),
            packets: counters.packets.load(Ordering::Relaxed),
            bytes: counters.bytes.load(Ordering::Relaxed),
            last_used_secs: clock.secs_since(counters.last_used_ms.load(Ordering::Relaxed)),
            replay: None,
            sequence: None,
            drops: counters.drops.snapshot(),
        }
    }

    fn sa_list(&self, only: Option<PeerId>) -> Vec<SaInfo> {
        let tables = self.state.sadb.load();
        let wanted = |peer: PeerId| only.is_none_or(|o| o == peer);
        let outbound = tables.outbound_sas().filter(|sa| wanted(sa.params.peer)).map(|sa| SaInfo {
            sequence: Some(sa.last_sequence()),
            ..self.sa_info(&sa.params, Direction::Out, &sa.counters)
        });
        let inbound = tables.inbound_sas().filter(|sa| wanted(sa.params.peer)).map(|sa| {
            let replay = sa.replay().state();
            SaInfo {
                replay: Some(ReplayInfo {
                    highest_sequence: replay.highest,
                    window_size: replay.size,
                    received_in_window: replay.received,
                }),
                ..self.sa_info(&sa.params, Direction::In, &sa.counters)
            }
        });
        let mut list: Vec<SaInfo> = outbound.chain(inbound).collect();
        list.sort_by(|a, b| {
            (&a.peer, a.direction == Direction::In, a.spi).cmp(&(&b.peer, b.direction == Direction::In, b.spi))
        });
        list
    }

    /// `sa flush`, then waits (up to `FLUSH_WAIT`) until IKE peers have SAs both ways again.
    async fn flush_and_wait(&self, peer: Option<&str>) -> Response {
        let started = Instant::now();
        let (only, mut report) = match self.peer_filter(peer).and_then(|only| self.flush(only).map(|r| (only, r))) {
            Ok(flushed) => flushed,
            Err(message) => return Response::error(message),
        };
        let ike_peers: Vec<PeerId> = self
            .state
            .topology()
            .peers
            .iter()
            .map(|p| p.id)
            .filter(|p| self.keying.is_ike_peer(*p) && only.is_none_or(|o| o == *p))
            .collect();
        if ike_peers.is_empty() {
            return Response::ok(Reply::SaFlush(report));
        }
        while started.elapsed() < FLUSH_WAIT {
            let tables = self.state.sadb.load();
            let back = ike_peers
                .iter()
                .all(|p| tables.outbound(*p).is_some() && tables.inbound_sas().any(|sa| sa.params.peer == *p));
            if back {
                report.traffic_back_ms = Some(started.elapsed().as_millis() as u64);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if report.traffic_back_ms.is_none() {
            report.advice = Some(format!(
                "no new SAs within {}s: see `ikectl peers` (keying column) and the meshd log",
                FLUSH_WAIT.as_secs()
            ));
        }
        Response::ok(Reply::SaFlush(report))
    }

    /// Removes the SAs of `only` (or all peers), reinstalls manual ones and renegotiates IKE ones.
    fn flush(&self, only: Option<PeerId>) -> Result<FlushReport, String> {
        let removed = self.state.sadb.remove(only);
        let topology = self.state.topology();
        for peer in topology.peers.iter().filter(|p| only.is_none_or(|o| o == p.id)) {
            self.keying.flush(peer.id);
        }
        let reinstalled = manual::install(&self.config.load(), &self.state, only).map_err(|e| e.to_string())?;
        let target = only.map_or_else(|| "every peer".to_string(), |p| topology.peer(p).name.clone());
        tracing::info!(peer = %target, removed = removed.len(), reinstalled = reinstalled.len(), "SAs flushed");
        let advice = (!reinstalled.is_empty()).then(|| {
            format!(
                "manual SAs start again at sequence number 1: flush them on {target} too \
                 (ikectl sa flush --peer {}), or it drops this node's packets as replays",
                topology.node_name
            )
        });
        Ok(FlushReport {
            removed: removed.into_iter().map(Spi).collect(),
            reinstalled: reinstalled.into_iter().map(Spi).collect(),
            advice,
            traffic_back_ms: None,
        })
    }

    fn peers(&self) -> Vec<PeerInfo> {
        let tables = self.state.sadb.load();
        let clock = &self.state.clock;
        let topology = self.state.topology();
        topology
            .peers
            .iter()
            .map(|peer| {
                let mut inbound_spis: Vec<Spi> =
                    tables.inbound_sas().filter(|sa| sa.params.peer == peer.id).map(|sa| Spi(sa.params.spi)).collect();
                inbound_spis.sort();
                let counters = &peer.counters;
                let path = peer.path_mtu.report();
                PeerInfo {
                    name: peer.name.clone(),
                    address: peer.address,
                    mode: peer.mode,
                    encap: topology.encap,
                    outbound_spi: tables.outbound(peer.id).map(|sa| Spi(sa.params.spi)),
                    inbound_spis,
                    tx_packets: counters.tx_packets.load(Ordering::Relaxed),
                    tx_bytes: counters.tx_bytes.load(Ordering::Relaxed),
                    rx_packets: counters.rx_packets.load(Ordering::Relaxed),
                    rx_bytes: counters.rx_bytes.load(Ordering::Relaxed),
                    last_rx_secs: clock.secs_since(counters.last_rx_ms.load(Ordering::Relaxed)),
                    drops: self.state.drops.peer_total(peer.id),
                    keying: self.keying.state_of(peer.id).unwrap_or_else(|| "manual".to_string()),
                    path_mtu: path.path_mtu,
                    overlay_mtu: path.overlay_mtu,
                    path_mtu_source: path.path_mtu.map(|_| path.source.to_string()),
                    path_mtu_search: path.search.map(str::to_string),
                }
            })
            .collect()
    }

    fn fdb(&self) -> Vec<FdbEntry> {
        let topology = &*self.state.topology();
        topology
            .overlays
            .iter()
            .flat_map(|overlay| {
                overlay.fdb.entries().into_iter().map(move |(mac, peer, seen_ms)| FdbEntry {
                    overlay: overlay.name.clone(),
                    vni: overlay.vni,
                    mac: mac.to_string(),
                    peer: topology.peer_name(peer),
                    age_secs: self.state.clock.secs_since(seen_ms).unwrap_or(0),
                })
            })
            .collect()
    }
}
