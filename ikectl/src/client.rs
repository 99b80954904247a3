//! Talking to `meshd` over its control socket.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use mesh_config::control::{Command, Outcome, Reply, Request, Response, PROTOCOL_VERSION};

/// A failure, as the one line ikectl prints.
#[derive(Debug)]
pub struct ClientError(pub String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn connect_error(path: &Path, error: io::Error) -> ClientError {
    let path = path.display();
    ClientError(match error.kind() {
        io::ErrorKind::NotFound => {
            format!("no meshd control socket at {path}: is meshd running? (start it with `meshd run --config mesh.toml`, or pass --socket PATH)")
        }
        io::ErrorKind::PermissionDenied => {
            format!(
                "permission denied on {path}: the control socket is root's only; run ikectl as root (sudo ikectl ...)"
            )
        }
        io::ErrorKind::ConnectionRefused => {
            format!("nothing answers on {path}: meshd is not running (a stale socket file); start meshd again")
        }
        _ => format!("cannot connect to meshd at {path}: {error}"),
    })
}

/// Sends one command and returns meshd's reply.
pub fn request(socket: &Path, command: Command) -> Result<Reply, ClientError> {
    Connection::open(socket, command)?.receive()
}

/// A connection that has sent its command and reads meshd's answers, one line each (a stream
/// such as `drops --follow` sends many).
pub struct Connection<'a> {
    socket: &'a Path,
    reader: BufReader<UnixStream>,
}

impl<'a> Connection<'a> {
    pub fn open(socket: &'a Path, command: Command) -> Result<Self, ClientError> {
        let mut stream = UnixStream::connect(socket).map_err(|e| connect_error(socket, e))?;
        let mut line = serde_json::to_string(&Request::new(command)).map_err(|e| ClientError(e.to_string()))?;
        line.push('\n');
        stream.write_all(line.as_bytes()).map_err(|e| broken(socket, e))?;
        Ok(Connection { socket, reader: BufReader::new(stream) })
    }

    /// The next answer.
    pub fn receive(&mut self) -> Result<Reply, ClientError> {
        let socket = self.socket;
        let mut answer = String::new();
        self.reader.read_line(&mut answer).map_err(|e| broken(socket, e))?;
        if answer.is_empty() {
            return Err(ClientError(format!(
                "meshd at {} closed the connection without answering; see its log",
                socket.display()
            )));
        }
        let response: Response = serde_json::from_str(&answer).map_err(|e| {
            ClientError(format!("cannot read meshd's answer ({e}); ikectl and meshd are probably different versions"))
        })?;
        if response.version != PROTOCOL_VERSION {
            return Err(ClientError(format!(
                "meshd speaks control protocol version {}, this ikectl {PROTOCOL_VERSION}: use the ikectl that came with this meshd",
                response.version
            )));
        }
        match response.outcome {
            Outcome::Ok(reply) => Ok(reply),
            Outcome::Error(message) => Err(ClientError(message)),
        }
    }
}

fn broken(socket: &Path, error: io::Error) -> ClientError {
    ClientError(format!("meshd at {} stopped answering: {error}", socket.display()))
}
