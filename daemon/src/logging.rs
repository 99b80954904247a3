//! meshd's log: to stderr, with a filter `ikectl log level` changes at runtime (and may revert
//! by itself), and a copy of the last `RING_LINES` lines in memory for `ikectl bugreport`.

use std::collections::VecDeque;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use mesh_config::control::LogLevelReport;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Log lines kept for bug reports.
pub const RING_LINES: usize = 4000;
/// The levels `ikectl log level` accepts.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    /// The filter in effect, as text (EnvFilter cannot be cloned or shown back exactly).
    current: Mutex<String>,
    /// Bumped by every change, so that a pending revert knows it was overtaken.
    generation: AtomicU64,
    ring: Mutex<VecDeque<String>>,
}

static LOGGING: OnceLock<Logging> = OnceLock::new();

/// Installs the global subscriber: RUST_LOG (default "info") filters what reaches stderr and the ring.
pub fn init(json: bool) {
    let initial = std::env::var("RUST_LOG").ok().filter(|text| EnvFilter::try_new(text).is_ok());
    let initial = initial.unwrap_or_else(|| "info".to_string());
    let (filter, handle) = reload::Layer::new(EnvFilter::new(&initial));
    // One of the two writes stderr; the ring always keeps plain lines.
    let json_stderr = json.then(|| tracing_subscriber::fmt::layer().with_writer(io::stderr).json());
    let plain_stderr =
        (!json).then(|| tracing_subscriber::fmt::layer().with_writer(io::stderr).with_ansi(io::stderr().is_terminal()));
    let ring = tracing_subscriber::fmt::layer().with_writer(|| RingWriter).with_ansi(false);
    let logging = Logging {
        filter: handle,
        current: Mutex::new(initial),
        generation: AtomicU64::new(0),
        ring: Mutex::new(VecDeque::with_capacity(RING_LINES)),
    };
    if LOGGING.set(logging).is_ok() {
        tracing_subscriber::registry().with(filter).with(json_stderr).with(plain_stderr).with(ring).init();
    }
}

/// The last log lines, oldest first.
pub fn recent_lines() -> Vec<String> {
    match LOGGING.get() {
        Some(logging) => lock(&logging.ring).iter().cloned().collect(),
        None => Vec::new(),
    }
}

/// `ikectl log level LEVEL [--module M] [--for D]`: everything at `level`, or `meshd::M` at
/// `level` on top of the current filter; back to the current filter after `revert_after`.
pub fn set_level(level: &str, module: Option<&str>, revert_after: Option<Duration>) -> Result<LogLevelReport, String> {
    let logging = LOGGING.get().ok_or("this meshd's log cannot be changed at runtime (not started by meshd run)")?;
    let level = level.to_ascii_lowercase();
    if !LEVELS.contains(&level.as_str()) {
        return Err(format!("\"{level}\" is not a log level: use one of {}", LEVELS.join(", ")));
    }
    let previous = lock(&logging.current).clone();
    let filter = match module {
        None => level,
        Some(module)
            if !module.is_empty() && module.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == ':') =>
        {
            let target = if module.starts_with("meshd") { module.to_string() } else { format!("meshd::{module}") };
            format!("{previous},{target}={level}")
        }
        Some(module) => return Err(format!("\"{module}\" is not a module name: use e.g. ike, keying, datapath")),
    };
    let generation = logging.apply(&filter)?;
    tracing::info!(%filter, revert_after = ?revert_after, "log filter changed");
    if let Some(after) = revert_after {
        let back_to = previous.clone();
        std::thread::Builder::new()
            .name("meshd-log-revert".into())
            .spawn(move || {
                std::thread::sleep(after);
                let Some(logging) = LOGGING.get() else { return };
                // A later change (another `ikectl log level`) wins over this revert.
                if logging.generation.load(Ordering::SeqCst) == generation && logging.apply(&back_to).is_ok() {
                    tracing::info!(filter = %back_to, "log filter reverted");
                }
            })
            .map_err(|error| format!("cannot schedule the revert ({error}); the level stays changed"))?;
    }
    Ok(LogLevelReport {
        filter,
        reverts_to: revert_after.map(|_| previous),
        reverts_in_secs: revert_after.map(|after| after.as_secs()),
    })
}

impl Logging {
    /// Installs `filter`; returns the new generation.
    fn apply(&self, filter: &str) -> Result<u64, String> {
        let parsed =
            EnvFilter::try_new(filter).map_err(|error| format!("\"{filter}\" is not a log filter: {error}"))?;
        let mut current = lock(&self.current);
        self.filter.reload(parsed).map_err(|error| format!("the log filter could not be changed: {error}"))?;
        *current = filter.to_string();
        Ok(self.generation.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

/// A poisoned lock only means a thread panicked while logging; the lines are still good.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the ring's formatter writes: each write is one formatted event.
struct RingWriter;

impl Write for RingWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if let Some(logging) = LOGGING.get() {
            let mut ring = lock(&logging.ring);
            for line in String::from_utf8_lossy(bytes).lines() {
                if ring.len() == RING_LINES {
                    ring.pop_front();
                }
                ring.push_back(line.to_string());
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
