//! The control socket: a Unix socket (mode 0600, so root only) that answers one JSON request per
//! line with one JSON response per line (`mesh_config::control`). Only the socket and the framing
//! live here; `dispatch` decides what serves each command.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_config::control::{Reply, Request, Response, PROTOCOL_VERSION};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::dispatch::{Dispatched, Services};
use crate::framing::{send, RequestLines};
use crate::error::{ControlError, DaemonError, RequestError};

/// The socket file; removed when dropped, so that every way out of `meshd run` cleans it up.
pub struct SocketFile {
    path: PathBuf,
    listener: Option<StdUnixListener>,
    /// False once another meshd took the socket over (`crate::upgrade`): it serves the file now.
    remove_on_drop: bool,
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
        let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => parent,
            None => Path::new("."),
        };
        // A missing folder is made root-only; an existing one (/run/meshd from systemd, /tmp) is
        // left as it is.
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(failed)?;
        // Bound inside a fresh root-only folder, made 0600 there, then renamed into place: the
        // socket is never reachable with the default mode, whatever the umask.
        let staging = tempfile_dir(parent).map_err(failed)?;
        let staged = staging.join("meshd.sock");
        let bound = StdUnixListener::bind(&staged)
            .and_then(|listener| {
                std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
                std::fs::rename(&staged, path)?;
                Ok(listener)
            })
            .map_err(failed);
        let _ = std::fs::remove_file(&staged);
        let _ = std::fs::remove_dir(&staging);
        Ok(SocketFile { path: path.to_path_buf(), listener: Some(bound?), remove_on_drop: true })
    }

    /// The listening socket a running meshd handed over (`crate::upgrade`), bound at `path`.
    pub fn adopt(path: &Path, listener: OwnedFd) -> Self {
        SocketFile { path: path.to_path_buf(), listener: Some(listener.into()), remove_on_drop: true }
    }

    /// A second descriptor of the listening socket, to hand to the meshd that takes over.
    pub fn duplicate_listener(&self) -> io::Result<OwnedFd> {
        let listener = self.listener.as_ref().ok_or_else(|| io::Error::other("control socket already serving"))?;
        listener.as_fd().try_clone_to_owned()
    }

    /// Leaves the file in place on drop: the meshd that took over serves it.
    pub fn leave_to_successor(&mut self) {
        self.remove_on_drop = false;
    }

    pub(crate) fn take_listener(&mut self) -> io::Result<UnixListener> {
        let listener = self.listener.take().ok_or_else(|| io::Error::other("control socket already serving"))?;
        listener.set_nonblocking(true)?;
        UnixListener::from_std(listener)
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if !self.remove_on_drop {
            return;
        }
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove the control socket");
        }
    }
}

/// A folder only root can enter, next to the socket, named after this process.
fn tempfile_dir(parent: &Path) -> io::Result<PathBuf> {
    let staging = parent.join(format!(".meshd-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    Ok(staging)
}

/// Control connections served at once; more are answered with an error and closed, so that a
/// stuck or hostile client cannot exhaust the daemon's descriptors and tasks.
pub const MAX_CONNECTIONS: usize = 32;

/// Serves requests until the runtime stops.
pub async fn serve(socket: &mut SocketFile, services: Arc<Services>) -> io::Result<()> {
    let listener = socket.take_listener()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = listener.accept().await?;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let services = services.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, services).await {
                tracing::debug!(%error, "control connection ended");
            }
            drop(slot);
        });
    }
}

/// The answer to a connection over `MAX_CONNECTIONS`.
async fn refuse_busy(mut stream: UnixStream) {
    let refused = RequestError::Busy { limit: MAX_CONNECTIONS };
    let _ = send(&mut stream, &response(Err(refused.into()))).await;
}

async fn serve_connection(stream: UnixStream, services: Arc<Services>) -> io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut lines = RequestLines::new(reader);
    while let Some(line) = lines.next_line().await? {
        let dispatched = match serde_json::from_str::<Request>(&line) {
            Ok(request) if request.version != PROTOCOL_VERSION => {
                let refused = RequestError::ProtocolVersion { theirs: request.version, ours: PROTOCOL_VERSION };
                Dispatched::Done(Err(refused.into()))
            }
            Ok(request) => crate::dispatch::dispatch(&services, request.command).await,
            Err(error) => Dispatched::Done(Err(RequestError::Unreadable(error).into())),
        };
        match dispatched {
            Dispatched::Done(result) => send(&mut writer, &response(result)).await?,
            // The connection now belongs to the stream, until the client hangs up.
            Dispatched::Follow(mut follower) => {
                while let Some(batch) = follower.next_batch(&mut lines).await? {
                    send(&mut writer, &Response::ok(Reply::DropStream(batch))).await?;
                }
                return Ok(());
            }
            Dispatched::Capture(request) => {
                return crate::diag::capture::stream(&services.state, request, &mut lines, &mut writer).await;
            }
        }
    }
    Ok(())
}

/// The reply, or the error reply with the error's message.
pub(crate) fn response(result: Result<Reply, ControlError>) -> Response {
    match result {
        Ok(reply) => Response::ok(reply),
        Err(error) => Response::error(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_socket_and_a_folder_made_for_it_are_root_only() {
        let base = std::env::temp_dir().join(format!("meshd-ctl-test-{}", std::process::id()));
        let path = base.join("run").join("meshd.sock");
        let socket = SocketFile::bind(&path).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().mode() & 0o777;
        assert_eq!(mode(&path), 0o600, "the socket");
        assert_eq!(mode(path.parent().unwrap()), 0o700, "the folder made for it");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["meshd.sock"], "no staging folder left behind");
        assert!(matches!(SocketFile::bind(&path), Err(DaemonError::ControlSocketInUse { .. })));
        drop(socket);
        assert!(!path.exists(), "removed when dropped");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[tokio::test]
    async fn a_connection_over_the_limit_is_told_why_and_closed() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        refuse_busy(ours).await;
        let mut lines = RequestLines::new(theirs);
        let answer: Response = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        let text = serde_json::to_string(&answer).unwrap();
        assert!(text.contains(&format!("serves {MAX_CONNECTIONS} control connections")), "{text}");
        assert_eq!(lines.next_line().await.unwrap(), None, "closed");
    }
}
