//! The one dispatch of control commands: each `Command` of `mesh_config::control` goes to the
//! service that answers it (one match arm per command; a new command is a new arm). The socket
//! and the framing are `ctl`'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use mesh_config::control::{Command, DropReport, FlushReport, OverlayStatus, PingReport, Reply, SaList, Spi, Status};
use mesh_config::MeshConfig;

use crate::diag::bugreport;
use crate::diag::capture::CaptureRequest;
use crate::diag::follow::{self, Follower};
use crate::diag::kernel::KernelDrops;
use crate::diag::query::QueryService;
use crate::diag::{ping, trace, Sources};
use crate::error::{ControlError, RequestError};
use crate::keying::Keying;
use crate::manual;
use crate::reload::Reloader;
use crate::report;
use crate::sadb::manager::SaManager;
use crate::state::MeshState;
use crate::topology::PeerId;

/// How long `sa flush` waits for renegotiated SAs.
const FLUSH_WAIT: Duration = Duration::from_secs(10);
/// How often `sa flush` looks whether the SAs are back.
const FLUSH_CHECK: Duration = Duration::from_millis(50);

/// What the control commands are answered from.
pub struct Services {
    pub state: Arc<MeshState>,
    /// The running mesh file (the reloader replaces it).
    pub config: Arc<ArcSwap<MeshConfig>>,
    pub keying: Arc<Keying>,
    pub sas: Arc<SaManager>,
    pub reloader: Arc<Reloader>,
    pub overlays: Arc<ArcSwap<Vec<OverlayStatus>>>,
    pub kernel_drops: Arc<KernelDrops>,
    /// Asks peers for their view (`ikectl ping`).
    pub query: Arc<QueryService>,
    pub started: Instant,
    pub workers: usize,
}

/// What a command turned into.
pub enum Dispatched {
    /// One reply (or error) line.
    Done(Result<Reply, ControlError>),
    /// `drops --follow`: a reply line whenever drops are recorded, until the client hangs up.
    Follow(Follower),
    /// `capture`: reply lines of decrypted frames, until the count or the client hangs up.
    Capture(CaptureRequest),
}

/// Serves `command`.
pub async fn dispatch(services: &Arc<Services>, command: Command) -> Dispatched {
    let state = &services.state;
    let done = match command {
        Command::Status => Ok(Reply::Status(services.status())),
        Command::SaList { peer } => services.sa_list(peer.as_deref()).map(Reply::SaList),
        Command::SaFlush { peer } => services.flush_and_wait(peer.as_deref()).await.map(Reply::SaFlush),
        Command::Peers => Ok(Reply::Peers(report::peers(state, &services.keying))),
        Command::Fdb => Ok(Reply::Fdb(report::fdb(state))),
        Command::Drops { peer, kernel } => services.drops(peer.as_deref(), kernel).map(Reply::Drops),
        Command::DropsFollow { peer, after, kernel_after } => match services.peer_filter(peer.as_deref()) {
            Ok(_) => {
                let start = follow::Start { after, kernel_after };
                let kernel_drops = services.kernel_drops.clone();
                return Dispatched::Follow(Follower::new(state.clone(), kernel_drops, peer, start));
            }
            Err(error) => Err(error),
        },
        // A reload waits for the datapath workers to pause: not on the runtime's thread.
        Command::Reload => {
            let reloader = services.reloader.clone();
            match tokio::task::spawn_blocking(move || reloader.reload()).await {
                Ok(reloaded) => reloaded.map(Reply::Reload).map_err(ControlError::from),
                Err(source) => Err(RequestError::Aborted { what: "reload", source }.into()),
            }
        }
        Command::Ping { peer, count, size } => services.ping(&peer, count, size).await.map(Reply::Ping),
        Command::Capture { peer, overlay, count, snaplen } => {
            return Dispatched::Capture(CaptureRequest { peer, overlay, count, snaplen });
        }
        Command::BugReport => Ok(Reply::BugReport(bugreport::collect(services).await)),
        Command::LogLevel { level, module, for_secs } => {
            let revert_after = for_secs.map(Duration::from_secs);
            let changed = crate::logging::set_level(&level, module.as_deref(), revert_after);
            changed.map(Reply::LogLevel).map_err(|refused| RequestError::Refused(refused).into())
        }
        Command::SaKeys => Ok(Reply::SaKeys(crate::diag::keys::sa_keys(state))),
        // A trace runs `ip`: not on the runtime's thread.
        Command::Trace { target, overlay } => {
            let services = services.clone();
            let traced = tokio::task::spawn_blocking(move || {
                let overlays = services.overlays.load_full();
                let sources = Sources { state: &services.state, keying: &services.keying, overlays: &overlays };
                trace::trace(&sources, &target, overlay.as_deref())
            });
            match traced.await {
                Ok(traced) => traced.map(Reply::Trace).map_err(ControlError::from),
                Err(source) => Err(RequestError::Aborted { what: "trace", source }.into()),
            }
        }
    };
    Dispatched::Done(done)
}

impl Services {
    /// `ikectl sa list [--peer]`.
    pub(crate) fn sa_list(&self, peer: Option<&str>) -> Result<SaList, ControlError> {
        let peer = self.peer_filter(peer)?;
        Ok(SaList { ike_sas: self.keying.ike_sas(peer), child_sas: report::sa_list(&self.state, peer) })
    }

    /// `ikectl drops [--peer] [--kernel]`.
    pub(crate) fn drops(&self, name: Option<&str>, kernel: bool) -> Result<DropReport, ControlError> {
        let peer = self.peer_filter(name)?;
        let topology = self.state.topology();
        let mut report = self.state.drops.report(|id| topology.peer_name(id), peer);
        report.kernel = kernel.then(|| self.kernel_drops.report(name));
        Ok(report)
    }

    /// `ikectl ping NODE`: probes through the SA and the peer's own view.
    pub(crate) async fn ping(&self, peer: &str, count: u32, size: u32) -> Result<Box<PingReport>, ControlError> {
        let overlays = self.overlays.load_full();
        let config = self.config.load_full();
        let sources = Sources { state: &self.state, keying: &self.keying, overlays: &overlays };
        let pinged = ping::ping(sources, &self.query, &config, peer, count, size).await;
        Ok(Box::new(pinged?))
    }

    /// The peer named `name`, or every peer for `None`.
    pub(crate) fn peer_filter(&self, name: Option<&str>) -> Result<Option<PeerId>, ControlError> {
        let topology = self.state.topology();
        let resolved = name.map(|name| topology.resolve_peer(name)).transpose();
        Ok(resolved.map_err(RequestError::UnknownPeer)?)
    }

    pub(crate) fn status(&self) -> Box<Status> {
        let topology = self.state.topology();
        let overlays = self.overlays.load();
        Box::new(Status {
            node: topology.node_name.clone(),
            mesh: topology.mesh_name.clone(),
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            config_path: self.config.load().path.display().to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            underlay_address: topology.local_address,
            workers: self.workers,
            peers_configured: topology.peers.len(),
            peers_with_sas: report::peers_with_sas(&self.state),
            overlays: crate::pmtu::status::overlays(&self.state, &overlays),
            drops_total: self.state.drops.total(),
            warnings: crate::pmtu::status::warnings(&self.state, &overlays),
            public_key: self.keying.public_key().map(|key| key.fingerprint()),
        })
    }

    /// `sa flush`, then waits (up to `FLUSH_WAIT`) until IKE peers have SAs both ways again.
    async fn flush_and_wait(&self, peer: Option<&str>) -> Result<FlushReport, ControlError> {
        let started = Instant::now();
        let only = self.peer_filter(peer)?;
        let mut report = self.flush(only)?;
        let ike_peers: Vec<PeerId> = self
            .state
            .topology()
            .peers
            .iter()
            .map(|p| p.id)
            .filter(|p| self.keying.is_ike_peer(*p) && only.is_none_or(|o| o == *p))
            .collect();
        if ike_peers.is_empty() {
            return Ok(report);
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
            tokio::time::sleep(FLUSH_CHECK).await;
        }
        if report.traffic_back_ms.is_none() {
            report.advice = Some(format!(
                "no new SAs within {}s: see `ikectl peers` (keying column) and the meshd log",
                FLUSH_WAIT.as_secs()
            ));
        }
        Ok(report)
    }

    /// Removes the SAs of `only` (or all peers), reinstalls manual ones and renegotiates IKE ones.
    fn flush(&self, only: Option<PeerId>) -> Result<FlushReport, ControlError> {
        let removed = self.sas.remove_peer(only);
        let reinstalled = manual::install(&self.config.load(), &self.sas, only)?;
        let topology = self.state.topology();
        for peer in topology.peers.iter().filter(|p| only.is_none_or(|o| o == p.id)) {
            self.keying.flush(peer.id);
        }
        let target = only.map_or_else(|| "every peer".to_string(), |p| topology.peer(p).name.clone());
        tracing::info!(
            peer = %target,
            removed = removed.len(),
            reinstalled = reinstalled.len(),
            "SAs flushed"
        );
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
}
