//! `meshd run` and `meshd check`: assemble the node from its config, run until told to stop,
//! and leave nothing behind.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use mesh_config::MeshConfig;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tun_rs::SyncDevice;

use crate::ctl::{self, SocketFile};
use crate::datapath::{Datapath, IkeInbox};
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
pub fn run(options: RunOptions) -> Result<(), DaemonError> {
    let (config, topology) = load(&options.config, options.node.as_deref())?;
    let (node_key, mismatch) = load_node_key(&config, &topology, options.key.as_deref())?;
    if let Some(mismatch) = mismatch {
        tracing::error!("{mismatch}; peers will refuse this node's AUTH");
    }
    // Bind first: a second meshd must fail before it touches any interface.
    let mut socket = SocketFile::bind(&options.ctl_socket)?;
    let state = Arc::new(MeshState::new(topology));
    manual_nonces::use_state_dir(&options.state_dir).map_err(DaemonError::Thread)?;
    let sas = Arc::new(SaManager::new(state.clone()));
    let installed = manual::install(&config, &sas, None)?;

    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS);
    let mut overlays = Vec::new();
    let mut queues: Vec<Vec<SyncDevice>> = (0..workers).map(|_| Vec::new()).collect();
    let topology = state.topology_full();
    for overlay in &topology.overlays {
        let (devices, status) = bring_up(overlay, &topology, &config, workers, options.tuning.offload)?;
        for (queue, device) in queues.iter_mut().zip(devices) {
            queue.push(device);
        }
        overlays.push(status);
    }
    let keying = Arc::new(Keying::new(&config, sas.clone(), node_key.clone(), Instant::now())?);
    let (inbox, inbox_receiver) = IkeInbox::channel();
    let mut datapath = Datapath::start(state.clone(), queues, Some(inbox.clone()), options.tuning)?;
    tracing::info!(
        node = %topology.node_name,
        address = %topology.local_address,
        peers = topology.peers.len(),
        manual_sas = installed.len(),
        workers = datapath.workers(),
        "meshd running"
    );
    let udp_4500 = datapath.take_udp_4500();
    let datapath_esp_out = datapath.esp_out();
    let proposal_cipher = config.ike.proposals.first().map(|p| p.cipher);
    let query = QueryService::bind(topology.local_address).map_err(|source| DaemonError::Query {
        address: topology.local_address,
        port: query::QUERY_PORT,
        source,
    })?;
    let config = Arc::new(ArcSwap::from_pointee(config));
    let overlays = Arc::new(ArcSwap::from_pointee(overlays));
    let kernel_drops = Arc::new(KernelDrops::start(state.clone(), options.kernel_drops));
    let query = Arc::new(query);
    let workers = datapath.workers();
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
            datapath: Some(datapath),
            ike_inbox: inbox,
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

    follow_underlay(keying.clone());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::ControlSocket { path: options.ctl_socket.clone(), source })?;
    let served = runtime.block_on(async {
        tokio::spawn(expire_fdb(state.clone()));
        if let Some(inbox) = state.pmtu.take_receiver() {
            tokio::spawn(path_mtu.run(inbox));
        }
        let local = topology.local_address;
        let sockets = keying::bind(local, udp_4500).map_err(|source| DaemonError::Underlay {
            address: local,
            encap: topology.encap,
            source,
        })?;
        if let Some(notices) = state.sa_notices.take_receiver() {
            tokio::spawn(sas.clone().run(notices, keying.clone()));
        }
        tokio::spawn(keying::run(keying.clone(), sockets, inbox_receiver));
        // Registered before anything can send it: SIGHUP's default action would end meshd.
        let hangup = signal(SignalKind::hangup())
            .map_err(|source| DaemonError::ControlSocket { path: options.ctl_socket.clone(), source })?;
        tokio::spawn(reload_on_hangup(hangup, reloader.clone()));
        let responder =
            query::Responder { query, config: config.clone(), state: state.clone(), keying: keying.clone() };
        tokio::spawn(query::serve(responder));
        if let Some(address) = config.load().metrics.listen {
            let listener = metrics::bind(address).await.map_err(|source| DaemonError::Metrics { address, source })?;
            tracing::info!(%address, "serving Prometheus metrics at /metrics");
            let scraped = metrics::Scraped { state: state.clone(), keying: keying.clone(), kernel_drops, overlays };
            tokio::spawn(metrics::serve(listener, Arc::new(scraped)));
        }
        crate::flows::export::start(&state, &config.load().flows).await?;
        let served = tokio::select! {
            served = ctl::serve(&mut socket, services) => served,
            signal = wait_for_stop_signal() => signal,
        };
        served.map_err(|source| DaemonError::ControlSocket { path: options.ctl_socket.clone(), source })
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

/// Renegotiates with peers that have no IKE SA as soon as the kernel reports a link or route up
/// (a thread of its own: reading rtnetlink blocks). Without it, meshd retries on its timers.
fn follow_underlay(keying: Arc<Keying>) {
    let mut events = match pmtu::route::UnderlayEvents::open() {
        Ok(events) => events,
        Err(error) => {
            tracing::warn!(%error, "not following link and route changes; IKE retries on its timers only");
            return;
        }
    };
    let follow = move || loop {
        match events.wait() {
            Ok(true) => keying.underlay_changed(),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "reading link and route changes failed; IKE retries on its timers only");
                return;
            }
        }
    };
    if let Err(error) = std::thread::Builder::new().name("meshd-underlay".to_string()).spawn(follow) {
        tracing::warn!(%error, "not following link and route changes; IKE retries on its timers only");
    }
}
