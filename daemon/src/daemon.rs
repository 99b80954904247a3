//! `meshd run` and `meshd check`: assemble the node from its config, run until told to stop,
//! and leave nothing behind.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::tap::TapQueue;
use arc_swap::ArcSwap;
use mesh_config::MeshConfig;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;

use crate::ctl::{self, SocketFile};
use crate::datapath::{Announcer, IkeInbox, Prepared};
// For the command line (src/main.rs), which sets it from its options.
pub use crate::datapath::WorkerTuning;
use crate::diag::kernel::KernelDrops;
use crate::diag::metrics;
use crate::diag::query::{self, QueryService};
use crate::dispatch::Services;
use crate::error::DaemonError;
use crate::ike::crypto::NodeKey;
use crate::keying::{self, Keying};
use crate::manual_nonces;
use crate::node_identity;
use crate::overlay_tap::bring_up;
use crate::reload::{Reloader, Running};
use crate::sadb::manager::SaManager;
use crate::state::MeshState;
use crate::topology::Topology;
use crate::upgrade::{self, Takeover};
use crate::{manual, netif, pmtu};

/// How often learned FDB entries are checked for age.
const FDB_EXPIRY_INTERVAL: Duration = Duration::from_secs(10);
/// At most this many datapath workers, whatever the core count.
const MAX_WORKERS: usize = 8;

pub struct RunOptions {
    pub config: PathBuf,
    pub node: Option<String>,
    /// `--key`: this node's private key file instead of the mesh file's `key_file`.
    pub key: Option<PathBuf>,
    pub ctl_socket: PathBuf,
    /// Trace the kernel's drops of mesh traffic with eBPF.
    pub kernel_drops: bool,
    /// TAP offloads (off only for debugging and comparison) and busy polling of the workers.
    pub tuning: WorkerTuning,
    /// Where manual SAs keep their sequence numbers across restarts (manual_nonces.rs).
    pub state_dir: PathBuf,
    /// Take over from the meshd running with the same control socket (`crate::upgrade`).
    pub upgrade: bool,
}

/// How long a stopping meshd gives its IKE DELETEs to leave before the runtime stops.
const GOODBYE_TIME: Duration = Duration::from_millis(200);

/// How `meshd run` ends.
enum Ending {
    /// SIGTERM or SIGINT: peers are told.
    Stopped,
    /// A new meshd took everything over.
    HandedOver,
}

/// Loads the config and finds which node this host is.
fn load(config: &std::path::Path, node: Option<&str>) -> Result<(MeshConfig, Topology), DaemonError> {
    let config = MeshConfig::load(config)?;
    let local_addresses = netif::local_addresses().map_err(DaemonError::HostAddresses)?;
    let node = config.local_node(node, &local_addresses)?;
    let topology = Topology::new(&config, &node.name, node.address).map_err(DaemonError::Topology)?;
    Ok((config, topology))
}

/// `meshd check`: validates the config (and that this host is one of its nodes, with its
/// private key when it has public keys); returns a summary.
pub fn check(
    config: &std::path::Path,
    node: Option<&str>,
    key: Option<&std::path::Path>,
) -> Result<String, DaemonError> {
    let (config, topology) = load(config, node)?;
    let (node_key, mismatch) = load_node_key(&config, &topology, key)?;
    if let Some(mismatch) = mismatch {
        return Err(mismatch.into());
    }
    let authentication = match node_key {
        Some(key) => format!("signs with the Ed25519 key {}", key.public_key().fingerprint()),
        None => "authenticates with the pre-shared key".to_string(),
    };
    Ok(format!(
        "{}: OK: mesh \"{}\", {} nodes, {} overlays, {} manual SAs; this host is node {} ({}) and {authentication}",
        config.path.display(),
        config.mesh.name,
        config.nodes.len(),
        config.overlays.len(),
        config.manual_sas.len(),
        topology.node_name,
        topology.local_address
    ))
}

/// This node's key (see `node_identity::load`).
fn load_node_key(
    config: &MeshConfig,
    topology: &Topology,
    explicit: Option<&std::path::Path>,
) -> Result<(Option<Arc<NodeKey>>, Option<mesh_config::ConfigError>), DaemonError> {
    let node =
        config.node(&topology.node_name).ok_or_else(|| DaemonError::Topology("this node left the mesh file".into()))?;
    Ok(node_identity::load(config, node, explicit)?)
}

/// `meshd run`: runs in the foreground until SIGTERM or SIGINT; SIGHUP reloads the config.
pub fn run(mut options: RunOptions) -> Result<(), DaemonError> {
    let (config, topology) = load(&options.config, options.node.as_deref())?;
    let (node_key, mismatch) = load_node_key(&config, &topology, options.key.as_deref())?;
    if let Some(mismatch) = mismatch {
        tracing::error!("{mismatch}; peers will refuse this node's AUTH");
    }
    let inheritance = match options.upgrade {
        true => inherit(&options.ctl_socket, &topology)?,
        false => None,
    };
    let handover_path = upgrade::socket_path(&options.ctl_socket);
    let failed_socket = |source| DaemonError::ControlSocket { path: options.ctl_socket.clone(), source };
    // Bind first: a second meshd must fail before it touches any interface.
    let (mut socket, handover_socket) = match &inheritance {
        Some(inherited) => (
            SocketFile::adopt(&options.ctl_socket, inherited.ctl.try_clone().map_err(failed_socket)?),
            SocketFile::adopt(&handover_path, inherited.handover.try_clone().map_err(failed_socket)?),
        ),
        None => (SocketFile::bind(&options.ctl_socket)?, upgrade::bind(&options.ctl_socket)?),
    };
    let state = Arc::new(MeshState::new(topology));
    manual_nonces::use_state_dir(&options.state_dir).map_err(DaemonError::Thread)?;
    let sas = Arc::new(SaManager::new(state.clone()));
    // With a handover the SAs come last, when the running meshd's workers stop.
    let manual_sas = match &inheritance {
        Some(_) => 0,
        None => manual::install(&config, &sas, None)?.len(),
    };

    let (mut inheritance, queues, overlays) = match inheritance {
        Some(mut inherited) => {
            if inherited.offer.offload != options.tuning.offload {
                tracing::warn!(offload = inherited.offer.offload, "keeping the TAP offloads of the running meshd");
                options.tuning.offload = inherited.offer.offload;
            }
            let queues = std::mem::take(&mut inherited.queues);
            let overlays = std::mem::take(&mut inherited.offer.overlays);
            (Some(inherited), queues, overlays)
        }
        None => {
            let (queues, overlays) = bring_up_overlays(&state, &config, options.tuning.offload)?;
            (None, queues, overlays)
        }
    };
    let topology = state.topology_full();
    // Slow (it loads an eBPF program): before the workers start, so that during a handover the
    // running meshd's workers are not paused for it.
    let kernel_drops = Arc::new(KernelDrops::start(state.clone(), options.kernel_drops));
    let keying = Arc::new(Keying::new(&config, sas.clone(), node_key.clone(), Instant::now())?);
    let (inbox, inbox_receiver) = IkeInbox::channel();
    let mut prepared = match inheritance.as_mut() {
        Some(inherited) => Prepared::adopt(&state, queues, std::mem::take(&mut inherited.underlay))?,
        None => Prepared::bind(&state, queues)?,
    };
    let udp_4500 = prepared.take_udp_4500();
    let datapath_esp_out = prepared.esp_out();
    let announcer = Announcer::new(prepared.esp_out());
    let proposal_cipher = config.ike.proposals.first().map(|p| p.cipher);
    let query = match inheritance.as_mut() {
        Some(inherited) => inherited.query.try_clone().and_then(|fd| QueryService::adopt(fd.into())),
        None => QueryService::bind(topology.local_address),
    }
    .map_err(|source| DaemonError::Query { address: topology.local_address, port: query::QUERY_PORT, source })?;
    let config = Arc::new(ArcSwap::from_pointee(config));
    let overlays = Arc::new(ArcSwap::from_pointee(overlays));
    let query = Arc::new(query);
    let workers = prepared.workers();
    let reloader = Arc::new(Reloader {
        config: config.clone(),
        state: state.clone(),
        keying: keying.clone(),
        sas: sas.clone(),
        overlays: overlays.clone(),
        kernel_drops: kernel_drops.clone(),
        running: Mutex::new(Running {
            config_path: options.config.clone(),
            key_file: options.key.clone(),
            node_key,
            datapath: None,
            ike_inbox: inbox.clone(),
            tuning: options.tuning,
        }),
    });
    let services = Arc::new(Services {
        state: state.clone(),
        config: config.clone(),
        keying: keying.clone(),
        sas: sas.clone(),
        reloader: reloader.clone(),
        overlays: overlays.clone(),
        kernel_drops: kernel_drops.clone(),
        query: query.clone(),
        started: Instant::now(),
        workers,
    });
    let path_mtu = pmtu::driver::Driver::new(&state, datapath_esp_out, keying.clone(), proposal_cipher);

    follow_underlay(keying.clone(), state.clone());

    let failed_query = |source| DaemonError::Query { address: topology.local_address, port: query::QUERY_PORT, source };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(failed_socket)?;
    let served = runtime.block_on(async {
        tokio::spawn(expire_fdb(state.clone()));
        if let Some(inbox) = state.pmtu.take_receiver() {
            tokio::spawn(path_mtu.run(inbox));
        }
        let local = topology.local_address;
        let underlay_error = |source| DaemonError::Underlay { address: local, encap: topology.encap, source };
        let sockets = match inheritance.as_mut() {
            Some(inherited) => {
                let own_4500 = inherited.ike_own_4500.take().map(std::net::UdpSocket::from);
                let port_500 = inherited.ike_500.try_clone().map_err(underlay_error)?;
                keying::adopt(port_500.into(), own_4500, udp_4500)
            }
            None => keying::bind(local, udp_4500),
        }
        .map_err(underlay_error)?;
        let mut donor = upgrade::Donor {
            reloader: reloader.clone(),
            ctl: socket.duplicate_listener().map_err(failed_socket)?,
            handover: handover_socket.duplicate_listener().map_err(failed_socket)?,
            query: query.handover_fd().map_err(failed_query)?,
            metrics: None,
            ike: sockets.handover_fds().map_err(underlay_error)?,
        };
        if let Some(notices) = state.sa_notices.take_receiver() {
            tokio::spawn(sas.clone().run(notices, keying.clone()));
        }
        // Registered before anything can send it: SIGHUP's default action would end meshd.
        let hangup = signal(SignalKind::hangup())
            .map_err(|source| DaemonError::ControlSocket { path: options.ctl_socket.clone(), source })?;
        tokio::spawn(reload_on_hangup(hangup, reloader.clone()));
        let upgrade_signal = signal(SignalKind::user_defined2()).map_err(failed_socket)?;
        tokio::spawn(upgrade_on_usr2(upgrade_signal));
        let responder =
            query::Responder { query, config: config.clone(), state: state.clone(), keying: keying.clone() };
        tokio::spawn(query::serve(responder));
        if let Some(address) = config.load().metrics.listen {
            let inherited = inheritance.as_mut().and_then(|inherited| inherited.metrics.take());
            let listener = metrics::bind_or_adopt(address, inherited)
                .await
                .map_err(|source| DaemonError::Metrics { address, source })?;
            donor.metrics =
                Some(listener.as_fd().try_clone_to_owned().map_err(|source| DaemonError::Metrics { address, source })?);
            tracing::info!(%address, "serving Prometheus metrics at /metrics");
            let scraped = metrics::Scraped { state: state.clone(), keying: keying.clone(), kernel_drops, overlays };
            tokio::spawn(metrics::serve(listener, Arc::new(scraped)));
        }
        crate::flows::export::start(&state, &config.load().flows).await?;
        let handed_over = Arc::new(Notify::new());
        tokio::spawn(upgrade::serve(handover_socket, Arc::new(donor), handed_over.clone()));
        // Everything else runs: now the workers (with a handover: the running meshd's stop
        // here, and forwarding pauses until these start).
        let (installed, ike_sas) = match inheritance.as_mut() {
            Some(inherited) => inherited.take_sas(&sas, &keying)?,
            None => (manual_sas, 0),
        };
        reloader.run_datapath(prepared.start(state.clone(), Some(inbox), options.tuning)?);
        // IKE starts only now: with a handover, the endpoint must not initiate before it has
        // the IKE SAs of the running meshd.
        tokio::spawn(keying::run(keying.clone(), sockets, announcer, inbox_receiver));
        let taken_over = inheritance.is_some();
        // systemd tracks this process from now on (before the old one exits: it hears this
        // first); with a plain start, this says it is ready.
        upgrade::tell_service_manager(&format!("MAINPID={}\nREADY=1", std::process::id()));
        if let Some(inherited) = inheritance.take() {
            inherited.confirmation.confirm()?;
        }
        tracing::info!(
            node = %topology.node_name,
            address = %topology.local_address,
            peers = topology.peers.len(),
            sas = installed,
            ike_sas,
            workers,
            taken_over,
            "meshd running"
        );
        let ending = tokio::select! {
            served = ctl::serve(&mut socket, services) => served.map(|()| Ending::Stopped),
            signal = wait_for_stop_signal() => signal.map(|()| Ending::Stopped),
            () = handed_over.notified() => Ok(Ending::HandedOver),
        };
        match ending.map_err(failed_socket)? {
            Ending::Stopped => {
                keying.leave_all_peers();
                tokio::time::sleep(GOODBYE_TIME).await;
            }
            Ending::HandedOver => socket.leave_to_successor(),
        }
        Ok(())
    });
    reloader.shutdown();
    // The replay marks of the last moments, so that a restart refuses those packets too.
    if let Some(store) = manual_nonces::store() {
        store.persist();
    }
    drop(socket);
    tracing::info!("meshd stopped");
    served
}

/// `--upgrade`: what the running meshd hands over, or `None` when it cannot (then it has been
/// stopped, telling its peers, and this meshd starts afresh).
fn inherit(ctl_socket: &std::path::Path, topology: &Topology) -> Result<Option<upgrade::Inheritance>, DaemonError> {
    match upgrade::take_over(ctl_socket)? {
        Takeover::Inherited(mut inherited) => match inherited.misfit(topology) {
            Some(why) => Err(inherited.confirmation.decline(why).into()),
            None => Ok(Some(*inherited)),
        },
        Takeover::Impossible(why) => {
            tracing::warn!("no handover ({why}); restarting instead");
            upgrade::stop_running(ctl_socket)?;
            Ok(None)
        }
    }
}

/// Creates every overlay's TAP with one queue per worker; returns each worker's queues and
/// what `ikectl status` shows of the overlays.
fn bring_up_overlays(
    state: &MeshState,
    config: &MeshConfig,
    offload: bool,
) -> Result<(Vec<Vec<TapQueue>>, Vec<mesh_config::control::OverlayStatus>), DaemonError> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS);
    let mut overlays = Vec::new();
    let mut queues: Vec<Vec<TapQueue>> = (0..workers).map(|_| Vec::new()).collect();
    let topology = state.topology_full();
    for overlay in &topology.overlays {
        let (devices, status) = bring_up(overlay, &topology, config, workers, offload)?;
        for (queue, device) in queues.iter_mut().zip(devices) {
            queue.push(device);
        }
        overlays.push(status);
    }
    Ok((queues, overlays))
}

/// Reloads on every SIGHUP, like `ikectl reload` (the outcome goes to the log).
async fn reload_on_hangup(mut hangup: Signal, reloader: Arc<Reloader>) {
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading {}", reloader.config.load().path.display());
        let reloader = reloader.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || reloader.reload()).await {
            tracing::error!(%error, "the reload panicked");
        }
    }
}

/// Starts the successor on every SIGUSR2 (a package upgrade); it takes this meshd over.
async fn upgrade_on_usr2(mut usr2: Signal) {
    while usr2.recv().await.is_some() {
        upgrade::start_successor();
    }
}

async fn expire_fdb(state: Arc<MeshState>) {
    let mut interval = tokio::time::interval(FDB_EXPIRY_INTERVAL);
    loop {
        interval.tick().await;
        let now = state.clock.now_ms();
        for overlay in &state.topology().overlays {
            overlay.fdb.expire(now);
        }
    }
}

async fn wait_for_stop_signal() -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
        _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
    }
    Ok(())
}

/// Follows the kernel's reports of link, address and route changes (a thread of its own:
/// reading rtnetlink blocks): the path-MTU driver looks the routes up again (for probe ceilings
/// and `mtu = "auto"`), and peers without an IKE SA are tried at once when a link or route comes
/// up. Without it, IKE retries on its timers and the driver reads the routes by the clock.
fn follow_underlay(keying: Arc<Keying>, state: Arc<MeshState>) {
    let not_followed = |error: &dyn std::fmt::Display| tracing::warn!(%error, "not following link and route changes; IKE retries on its timers, routes are read every few seconds");
    let mut events = match pmtu::route::UnderlayEvents::open() {
        Ok(events) => events,
        Err(error) => return not_followed(&error),
    };
    state.pmtu.follow_underlay(true);
    let follower = state.clone();
    let follow = move || loop {
        match events.wait() {
            Ok(change) => {
                if change.changed {
                    follower.pmtu.underlay_changed();
                }
                if change.appeared {
                    keying.underlay_changed();
                }
            }
            Err(error) => {
                follower.pmtu.follow_underlay(false);
                return not_followed(&error);
            }
        }
    };
    if let Err(error) = std::thread::Builder::new().name("meshd-underlay".to_string()).spawn(follow) {
        state.pmtu.follow_underlay(false);
        not_followed(&error);
    }
}
