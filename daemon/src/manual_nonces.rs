//! Sequence numbers of manual SAs across restarts, flushes, reloads and crashes.
//!
//! A manual SA keeps its key for ever, and its sequence number is the AES-GCM / ChaCha20-Poly1305
//! IV: starting again at 1 would repeat (key, IV) pairs, which gives an observer the XOR of
//! plaintexts and, for GCM, the authentication key. So each outbound manual SA resumes above a
//! high-water mark kept in the state directory, reserved `RESERVE` numbers ahead and written
//! and fsynced before any number of the reservation is used; the datapath stops at the
//! reservation (`SequenceExhausted` drops) rather than go past it while the next one is written.
//! Each inbound manual SA resumes its replay window above the highest sequence number it had
//! accepted, written every `PERSIST_INTERVAL` and when meshd stops.
//!
//! One file per SA and direction, named by SPI and a fingerprint of the key, so a new key starts
//! afresh and the files never hold key material.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use aws_lc_rs::digest;

use crate::sadb::{InboundSa, OutboundSa};

/// Where the marks live unless `meshd run --state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/meshd";
/// Sequence numbers reserved per write. Each restart skips at most this many: a 32-bit SA
/// survives about 4,000 restarts before its sequence numbers run out and it needs a new key.
pub const RESERVE: u64 = 1 << 20;
/// How often reservations are extended and inbound marks written.
pub const PERSIST_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
#[error("cannot keep the sequence numbers of manual SA {spi:#010x} in {}: {source}; make the state directory writable by meshd (--state-dir, default {DEFAULT_STATE_DIR}), or meshd would reuse AES-GCM/ChaCha20 nonces", path.display())]
pub struct NonceStoreError {
    spi: u32,
    path: PathBuf,
    source: std::io::Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Outbound,
    Inbound,
}

/// The marks of this process's manual SAs, and the SAs to keep them for.
#[derive(Debug)]
pub struct NonceStore {
    dir: PathBuf,
    outbound: Mutex<Vec<(PathBuf, Weak<OutboundSa>)>>,
    inbound: Mutex<Vec<(PathBuf, u64, Weak<InboundSa>)>>,
    /// A meshd that takes this one over (`crate::upgrade`) keeps the marks now: this one
    /// writes none, lest it put back an older mark over the new one's.
    handed_over: AtomicBool,
}

static STORE: OnceLock<NonceStore> = OnceLock::new();
/// The thread that writes the marks; it sleeps without a timer while no manual SA is installed
/// (an IKE-only node never wakes it) and is woken when one is tracked.
static PERSISTER: OnceLock<std::thread::Thread> = OnceLock::new();

/// Keeps the marks in `dir` (created with mode 0700 at the first mark) for the rest of the
/// process, and writes them every `PERSIST_INTERVAL`; `meshd run` calls it once, before
/// installing manual SAs.
pub fn use_state_dir(dir: &Path) -> std::io::Result<()> {
    // A second call keeps the first directory.
    let _ = STORE.set(NonceStore::open(dir));
    let persister = std::thread::Builder::new().name("manual-nonces".into()).spawn(|| loop {
        if store().is_none_or(NonceStore::keeps_nothing) {
            std::thread::park();
        }
        std::thread::sleep(PERSIST_INTERVAL);
        if let Some(store) = store() {
            store.persist();
        }
    })?;
    let _ = PERSISTER.set(persister.thread().clone());
    Ok(())
}

fn wake_persister() {
    if let Some(persister) = PERSISTER.get() {
        persister.unpark();
    }
}

/// The store of this process; `None` without a state directory (unit tests, fuzzing).
pub fn store() -> Option<&'static NonceStore> {
    STORE.get()
}

impl NonceStore {
    pub fn open(dir: &Path) -> NonceStore {
        NonceStore {
            dir: dir.to_path_buf(),
            outbound: Mutex::default(),
            inbound: Mutex::default(),
            handed_over: AtomicBool::new(false),
        }
    }

    fn path(&self, direction: Direction, spi: u32, key: &[u8]) -> PathBuf {
        let tag = match direction {
            Direction::Outbound => "out",
            Direction::Inbound => "in",
        };
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(b"meshd manual SA sequence mark\0");
        context.update(tag.as_bytes());
        context.update(&spi.to_be_bytes());
        context.update(key);
        let fingerprint: String = context.finish().as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("manual-{tag}-{spi:08x}-{fingerprint}"))
    }

    /// Where an outbound manual SA starts: (last number used at most, reserved up to). The
    /// reservation is on disk when this returns.
    pub fn resume_outbound(&self, spi: u32, key: &[u8]) -> Result<(u64, u64), NonceStoreError> {
        let path = self.path(Direction::Outbound, spi, key);
        let failed = |source| NonceStoreError { spi, path: path.clone(), source };
        let floor = read_mark(&path).map_err(failed)?;
        let reserved = floor.saturating_add(RESERVE);
        write_mark(&path, reserved).map_err(failed)?;
        Ok((floor, reserved))
    }

    /// Keeps extending `sa`'s reservation while it is installed.
    pub fn track_outbound(&self, spi: u32, key: &[u8], sa: &Arc<OutboundSa>) {
        let path = self.path(Direction::Outbound, spi, key);
        let mut tracked = self.outbound.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // The SA this one replaces (a flush or reload) must not extend its reservation into
        // this one's numbers while a worker still holds it.
        tracked.retain(|(other, sa)| sa.strong_count() > 0 && *other != path);
        tracked.push((path, Arc::downgrade(sa)));
        wake_persister();
    }

    /// The highest sequence number an inbound manual SA had accepted (0: none).
    pub fn resume_inbound(&self, spi: u32, key: &[u8]) -> Result<u64, NonceStoreError> {
        let path = self.path(Direction::Inbound, spi, key);
        read_mark(&path).map_err(|source| NonceStoreError { spi, path, source })
    }

    /// Keeps writing `sa`'s highest accepted number while it is installed.
    pub fn track_inbound(&self, spi: u32, key: &[u8], sa: &Arc<InboundSa>) {
        let path = self.path(Direction::Inbound, spi, key);
        let floor = sa.replay().highest();
        let mut tracked = self.inbound.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tracked.retain(|(other, _, sa)| sa.strong_count() > 0 && *other != path);
        tracked.push((path, floor, Arc::downgrade(sa)));
        wake_persister();
    }

    /// Whether no tracked SA is installed any more (or none ever was).
    fn keeps_nothing(&self) -> bool {
        let outbound = self.outbound.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let inbound = self.inbound.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        outbound.iter().all(|(_, sa)| sa.strong_count() == 0) && inbound.iter().all(|(_, _, sa)| sa.strong_count() == 0)
    }

    /// The SAs go to a meshd that takes this one over, its workers stopped: writes the marks
    /// as they are now, for the new meshd to resume from, and none after.
    pub fn hand_over(&self) {
        self.persist();
        self.handed_over.store(true, Ordering::SeqCst);
    }

    /// The handover failed: this meshd keeps its SAs, and their marks, again.
    pub fn take_back(&self) {
        self.handed_over.store(false, Ordering::SeqCst);
        self.persist();
    }

    /// Extends reservations that are half used and writes inbound marks that moved; every
    /// `PERSIST_INTERVAL` and once more when meshd stops. Failures are logged: an outbound SA
    /// then stops at its reservation instead of reusing numbers.
    pub fn persist(&self) {
        if self.handed_over.load(Ordering::SeqCst) {
            return;
        }
        let outbound = self.outbound.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        for (path, sa) in outbound {
            let Some(sa) = sa.upgrade() else { continue };
            let reserved = sa.reserved();
            if reserved.saturating_sub(sa.last_sequence()) > RESERVE / 2 {
                continue;
            }
            // Past the last number too: a failed handover skips sequence numbers ahead.
            let next = reserved.max(sa.last_sequence()).saturating_add(RESERVE);
            match write_mark(&path, next) {
                Ok(()) => sa.reserve_until(next),
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "cannot extend a manual SA's sequence reservation; it stops sending at {reserved}")
                }
            }
        }
        let mut inbound = self.inbound.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (path, written, sa) in inbound.iter_mut() {
            let Some(sa) = sa.upgrade() else { continue };
            let highest = sa.replay().highest();
            if highest > *written {
                match write_mark(path, highest) {
                    Ok(()) => *written = highest,
                    Err(error) => {
                        tracing::error!(path = %path.display(), %error, "cannot keep a manual SA's replay mark")
                    }
                }
            }
        }
    }
}

/// The mark in `path`, 0 when there is none yet.
fn read_mark(path: &Path) -> std::io::Result<u64> {
    match fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a sequence number; never delete or edit it by hand (give the SA a new key instead)",
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error),
    }
}

/// Replaces the mark atomically and durably: a temporary file, fsync, rename, fsync the folder.
fn write_mark(path: &Path, mark: u64) -> std::io::Result<()> {
    let folder = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new().recursive(true).mode(0o700).create(folder)?;
    let temporary = path.with_extension("new");
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
    writeln!(file, "{mark}")?;
    file.sync_all()?;
    fs::rename(&temporary, path)?;
    fs::File::open(folder)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = &[7; 36];

    fn temporary_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("meshd-nonces-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn every_resume_starts_above_everything_reserved_before() {
        let dir = temporary_dir("resume");
        let store = NonceStore::open(&dir);
        assert_eq!(store.resume_outbound(0x1102, KEY).unwrap(), (0, RESERVE));
        // A crash, a flush, a reload: the next install starts past the whole reservation.
        let again = NonceStore::open(&dir);
        assert_eq!(again.resume_outbound(0x1102, KEY).unwrap(), (RESERVE, 2 * RESERVE));
        // Another key or SPI is another nonce space.
        assert_eq!(again.resume_outbound(0x1102, &[8; 36]).unwrap(), (0, RESERVE));
        assert_eq!(again.resume_outbound(0x1103, KEY).unwrap(), (0, RESERVE));
        let names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| n.starts_with("manual-out-0000110")), "{names:?}");
        let mode = fs::metadata(&dir).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reservations_grow_before_they_are_used_up_and_inbound_marks_follow_acceptance() {
        use crate::esp::Sealer;
        use crate::sadb::tests::{inbound, key, params};
        let dir = temporary_dir("persist");
        let store = NonceStore::open(&dir);
        let (floor, reserved) = store.resume_outbound(0x1102, KEY).unwrap();
        let sealer = Sealer::new(mesh_config::Cipher::Aes256Gcm16, &key()).unwrap();
        let sa = Arc::new(OutboundSa::resumed(params(0x1102, 0, false), sealer, floor, reserved));
        store.track_outbound(0x1102, KEY, &sa);
        store.persist();
        assert_eq!(sa.reserved(), RESERVE, "not half used yet");
        while sa.last_sequence() < RESERVE / 2 {
            sa.next_sequence().unwrap();
        }
        store.persist();
        assert_eq!(sa.reserved(), 2 * RESERVE);
        assert_eq!(read_mark(&store.path(Direction::Outbound, 0x1102, KEY)).unwrap(), 2 * RESERVE, "on disk first");

        let received = Arc::new(inbound(0x1201, 0));
        store.track_inbound(0x1201, KEY, &received);
        received.replay().accept(42).unwrap();
        store.persist();
        assert_eq!(store.resume_inbound(0x1201, KEY).unwrap(), 42);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_store_that_handed_its_sas_over_writes_no_mark_until_it_takes_them_back() {
        use crate::sadb::tests::inbound;
        let dir = temporary_dir("handover");
        let store = NonceStore::open(&dir);
        let received = Arc::new(inbound(0x1201, 0));
        store.track_inbound(0x1201, KEY, &received);
        received.replay().accept(42).unwrap();
        store.hand_over();
        assert_eq!(store.resume_inbound(0x1201, KEY).unwrap(), 42, "written for the new meshd to resume from");
        // The new meshd keeps the mark now; an older one from here would overwrite its own.
        received.replay().accept(50).unwrap();
        store.persist();
        assert_eq!(store.resume_inbound(0x1201, KEY).unwrap(), 42);
        store.take_back();
        assert_eq!(store.resume_inbound(0x1201, KEY).unwrap(), 50, "a failed handover: this meshd keeps them again");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_mark_is_refused_not_reset() {
        let dir = temporary_dir("damaged");
        let store = NonceStore::open(&dir);
        store.resume_outbound(0x1102, KEY).unwrap();
        let path = store.path(Direction::Outbound, 0x1102, KEY);
        fs::write(&path, "garbage").unwrap();
        let error = store.resume_outbound(0x1102, KEY).unwrap_err().to_string();
        assert!(error.contains("never delete or edit it"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_state_dir_is_an_error_with_the_fix() {
        let store = NonceStore::open(Path::new("/proc/meshd-no-such-dir"));
        let error = store.resume_outbound(0x1102, KEY).unwrap_err().to_string();
        assert!(error.contains("make the state directory writable"), "{error}");
    }
}
