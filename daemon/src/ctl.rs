//! The control socket: a Unix socket (mode 0600, so root only) that answers one JSON request per
//! line with one JSON response per line (`mesh_config::control`). Only the socket and the framing
//! live here; `dispatch` decides what serves each command.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_config::control::{Reply, Request, Response, PROTOCOL_VERSION};
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::dispatch::{Dispatched, Services};
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
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(failed)?;
        }
        let listener = StdUnixListener::bind(path).map_err(failed)?;
        let socket = SocketFile { path: path.to_path_buf(), listener: Some(listener), remove_on_drop: true };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
        Ok(socket)
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

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
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

/// Serves requests until the runtime stops.
pub async fn serve(socket: &mut SocketFile, services: Arc<Services>) -> io::Result<()> {
    let listener = socket.take_listener()?;
    loop {
        let (stream, _) = listener.accept().await?;
        let services = services.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, services).await {
                tracing::debug!(%error, "control connection ended");
            }
        });
    }
}

async fn serve_connection(stream: UnixStream, services: Arc<Services>) -> io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
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

/// Writes one response line.
pub(crate) async fn send<W: AsyncWrite + Unpin>(writer: &mut W, response: &Response) -> io::Result<()> {
    let mut text = serde_json::to_string(response).map_err(io::Error::other)?;
    text.push('\n');
    writer.write_all(text.as_bytes()).await?;
    writer.flush().await
}
