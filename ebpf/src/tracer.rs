//! Loads the BPF program, attaches it to `skb:kfree_skb` and hands each event, named and
//! symbolized, to a callback. Everything libbpf owns lives on the tracer's own thread, which
//! sleeps in epoll on the ring buffer between events.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use libbpf_rs::{ErrorKind, MapCore, MapFlags, Object, ObjectBuilder, RingBufferBuilder, TracepointCategory};

use crate::event::DropEvent;
use crate::kallsyms::Symbolizer;
use crate::reasons;

const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS: &str = "/sys/kernel/tracing";
/// Where libbpf looks when tracefs is not at its own mount point.
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
const TRACEPOINT_FORMAT: &str = "events/skb/kfree_skb/format";
const PROGRAM: &str = "on_kfree_skb";
const OVERLAY_MAP: &str = "overlay_ifindexes";
/// How long one wait for events lasts; only how fast the thread notices `stop`.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);
/// `MAX_PORTS` in the C program.
pub const MAX_PORTS: usize = 4;

/// What counts as the mesh's traffic.
#[derive(Debug, Clone)]
pub struct TracerConfig {
    /// The inode of the network namespace meshd runs in (`/proc/self/ns/net`).
    pub netns_inode: u32,
    /// UDP ports: IKE, NAT-T, VXLAN (at most `MAX_PORTS`).
    pub ports: Vec<u16>,
    /// The overlay interfaces.
    pub overlay_ifindexes: Vec<u32>,
    /// Mount tracefs at /sys/kernel/tracing when it is not mounted.
    pub mount_tracefs: bool,
}

/// One packet of the mesh that the kernel dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelDrop {
    pub at: SystemTime,
    pub reason_code: u32,
    /// The kernel's name, e.g. `NETFILTER_DROP`.
    pub reason: String,
    /// `function+0xoffset` that freed it.
    pub location: String,
    pub ifindex: u32,
    pub protocol: u8,
    pub addresses: Option<(IpAddr, IpAddr)>,
    pub ports: (u16, u16),
}

#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    #[error(
        "kernel drop tracing needs BTF and this kernel has none ({KERNEL_BTF} is missing): use a kernel built with CONFIG_DEBUG_INFO_BTF=y, or run meshd with --no-kernel-drops"
    )]
    NoBtf,
    #[error(
        "kernel drop tracing needs tracefs, and {0}: mount it (mount -t tracefs nodev {TRACEFS}) and restart meshd, or run meshd with --no-kernel-drops"
    )]
    NoTracefs(String),
    #[error(
        "not allowed to load BPF programs ({0}): run meshd as root or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN, or run it with --no-kernel-drops"
    )]
    Permission(String),
    #[error("the kernel refused the drop tracer ({0}); run meshd with --no-kernel-drops to do without it")]
    Kernel(String),
    #[error("the drop tracer's thread could not start ({0})")]
    Thread(String),
}

/// The running tracer; dropping it detaches the program.
pub struct Tracer {
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicU64>,
    /// New sets of overlay interfaces (a reload adds or removes overlays).
    overlays: mpsc::Sender<Vec<u32>>,
    thread: Option<JoinHandle<()>>,
}

impl Tracer {
    /// Checks what the tracer needs, loads and attaches it; `sink` gets every event.
    pub fn start(config: TracerConfig, sink: impl FnMut(KernelDrop) + Send + 'static) -> Result<Tracer, TracerError> {
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicU64::new(0));
        let (ready, started) = mpsc::channel();
        let (overlays, overlay_updates) = mpsc::channel();
        let thread = {
            let (stop, lost) = (stop.clone(), lost.clone());
            std::thread::Builder::new()
                .name("kernel-drops".into())
                .spawn(move || run(config, sink, &stop, &lost, ready, overlay_updates))
                .map_err(|e| TracerError::Thread(e.to_string()))?
        };
        let result = started.recv().unwrap_or_else(|_| Err(TracerError::Thread("it ended during setup".into())));
        let tracer = Tracer { stop, lost, overlays, thread: Some(thread) };
        result.map(|()| tracer)
    }

    /// Traces these overlay interfaces from now on (instead of the ones before).
    pub fn set_overlays(&self, ifindexes: Vec<u32>) {
        // A stopped tracer has nothing to update.
        let _ = self.overlays.send(ifindexes);
    }

    /// Events the kernel could not queue because the ring buffer was full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    config: TracerConfig,
    mut sink: impl FnMut(KernelDrop),
    stop: &AtomicBool,
    lost: &AtomicU64,
    ready: mpsc::Sender<Result<(), TracerError>>,
    overlay_updates: mpsc::Receiver<Vec<u32>>,
) {
    let setup = load(&config);
    let (object, _link, reason_names) = match setup {
        Ok(loaded) => loaded,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let mut symbols = Symbolizer::default();
    let mut on_event = |bytes: &[u8]| {
        if let Some(event) = DropEvent::new_checked(bytes) {
            sink(kernel_drop(&event, &reason_names, &mut symbols));
        }
        0
    };
    let events = object.maps().find(|m| m.name() == "events");
    let lost_map = object.maps().find(|m| m.name() == "lost");
    let mut builder = RingBufferBuilder::new();
    let ring = match events.as_ref().map(|map| builder.add(map, &mut on_event)) {
        Some(Ok(_)) => builder.build(),
        Some(Err(error)) => Err(error),
        None => Err(libbpf_rs::Error::from(std::io::Error::other("the object has no events map"))),
    };
    let ring = match ring {
        Ok(ring) => ring,
        Err(error) => {
            let _ = ready.send(Err(TracerError::Kernel(error.to_string())));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut overlays = config.overlay_ifindexes;
    while !stop.load(Ordering::Relaxed) {
        while let Ok(next) = overlay_updates.try_recv() {
            if let Err(error) = replace_overlays(&object, &overlays, &next) {
                tracing::warn!(%error, "the kernel drop tracer could not follow the new overlay interfaces");
            }
            overlays = next;
        }
        if let Err(error) = ring.poll(POLL_TIMEOUT) {
            if error.kind() != ErrorKind::Interrupted {
                tracing::warn!(%error, "reading kernel drop events failed; kernel drop tracing stops");
                return;
            }
        }
        if let Some(count) = lost_map.as_ref().and_then(lost_events) {
            lost.store(count, Ordering::Relaxed);
        }
    }
}

fn replace_overlays(object: &Object, old: &[u32], new: &[u32]) -> Result<(), libbpf_rs::Error> {
    let map = object
        .maps()
        .find(|m| m.name() == OVERLAY_MAP)
        .ok_or_else(|| libbpf_rs::Error::from(std::io::Error::other(format!("the object has no map {OVERLAY_MAP}"))))?;
    for gone in old.iter().filter(|i| !new.contains(i)) {
        // Already absent is as good as removed.
        let _ = map.delete(&gone.to_ne_bytes());
    }
    for ifindex in new {
        map.update(&ifindex.to_ne_bytes(), &[1], MapFlags::ANY)?;
    }
    Ok(())
}

fn lost_events(map: &libbpf_rs::Map<'_>) -> Option<u64> {
    let per_cpu = map.lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY).ok()??;
    Some(per_cpu.iter().filter_map(|v| v.get(..8)?.try_into().ok().map(u64::from_ne_bytes)).sum())
}

type Loaded = (Object, libbpf_rs::Link, std::collections::HashMap<u32, String>);

fn load(config: &TracerConfig) -> Result<Loaded, TracerError> {
    if !Path::new(KERNEL_BTF).exists() {
        return Err(TracerError::NoBtf);
    }
    let format_path = tracefs(config.mount_tracefs)?;
    let format = std::fs::read_to_string(&format_path)
        .map_err(|e| TracerError::NoTracefs(format!("{} cannot be read: {e}", format_path.display())))?;
    let reason_names = reasons::parse_format(&format);
    let refused = |error: libbpf_rs::Error| match error.kind() {
        ErrorKind::PermissionDenied => TracerError::Permission(error.to_string()),
        _ => TracerError::Kernel(format!("{error:#}")),
    };
    let open = ObjectBuilder::default().open_memory(crate::OBJECT).map_err(refused)?;
    let object = open.load().map_err(refused)?;
    configure(&object, config).map_err(refused)?;
    let program = object
        .progs_mut()
        .find(|p| p.name() == PROGRAM)
        .ok_or_else(|| TracerError::Kernel(format!("the object has no program {PROGRAM}")))?;
    let link = program.attach_tracepoint(TracepointCategory::Skb, "kfree_skb").map_err(refused)?;
    Ok((object, link, reason_names))
}

/// Writes the namespace, ports and overlay interfaces into the program's maps.
fn configure(object: &Object, config: &TracerConfig) -> Result<(), libbpf_rs::Error> {
    let mut settings = config.netns_inode.to_ne_bytes().to_vec();
    for index in 0..MAX_PORTS {
        settings.extend_from_slice(&config.ports.get(index).copied().unwrap_or(0).to_ne_bytes());
    }
    let missing = |name: &str| libbpf_rs::Error::from(std::io::Error::other(format!("the object has no map {name}")));
    let map = |name: &str| object.maps().find(|m| m.name() == name).ok_or_else(|| missing(name));
    map("tracer_settings")?.update(&0u32.to_ne_bytes(), &settings, MapFlags::ANY)?;
    replace_overlays(object, &[], &config.overlay_ifindexes)
}

/// The tracepoint's format file, mounting tracefs first when allowed and needed.
fn tracefs(mount: bool) -> Result<std::path::PathBuf, TracerError> {
    let found =
        [TRACEFS, DEBUGFS_TRACING].iter().map(|root| Path::new(root).join(TRACEPOINT_FORMAT)).find(|p| p.exists());
    if let Some(format) = found {
        return Ok(format);
    }
    if !mount {
        return Err(TracerError::NoTracefs(format!("it is not mounted at {TRACEFS}")));
    }
    nix::mount::mount(Some("nodev"), TRACEFS, Some("tracefs"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|e| TracerError::NoTracefs(format!("it is not mounted at {TRACEFS} and mounting it failed ({e})")))?;
    tracing::info!("mounted tracefs at {TRACEFS} for kernel drop tracing");
    let format = Path::new(TRACEFS).join(TRACEPOINT_FORMAT);
    if format.exists() {
        Ok(format)
    } else {
        Err(TracerError::NoTracefs(format!("{TRACEFS} has no skb:kfree_skb tracepoint (a kernel without it)")))
    }
}

fn kernel_drop(
    event: &DropEvent<'_>,
    names: &std::collections::HashMap<u32, String>,
    symbols: &mut Symbolizer,
) -> KernelDrop {
    let reason_code = event.reason();
    KernelDrop {
        at: SystemTime::now(),
        reason_code,
        reason: names.get(&reason_code).cloned().unwrap_or_else(|| format!("reason {reason_code}")),
        location: symbols.symbolize(event.location()),
        ifindex: event.ifindex(),
        protocol: event.protocol(),
        addresses: event.addresses(),
        ports: event.ports(),
    }
}
