//! Just enough HTTP/1.1 for a Prometheus scrape: one GET per connection, answered and closed.
//! The request head is read with a size and time bound; only its request line is looked at.

use std::time::Duration;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Larger request heads are refused.
pub const MAX_HEAD_LEN: usize = 8192;
/// A client gets this long to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read the answer: one that never reads cannot hold a slot.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const HEAD_END: &[u8] = b"\r\n\r\n";

/// What a request line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLine<'a> {
    pub method: &'a str,
    /// Without the query string.
    pub path: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("the request line is not METHOD SP PATH SP HTTP/1.x")]
    Malformed,
    #[error("the request head is larger than {MAX_HEAD_LEN} bytes")]
    TooLarge,
}

/// Parses the first line of a request head (`GET /metrics HTTP/1.1`).
pub fn parse_request_line(head: &[u8]) -> Result<RequestLine<'_>, BadRequest> {
    let line_end = head.windows(2).position(|w| w == b"\r\n").ok_or(BadRequest::Malformed)?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| BadRequest::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(BadRequest::Malformed);
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Ok(RequestLine { method, path })
}

/// Connections served at once, and from one client address: a client that opens connections
/// and sends nothing (slowloris) holds at most its own share for the read timeout; more from it,
/// or beyond the total, are closed at once instead of queueing everybody behind them.
const CONCURRENT_SCRAPES: usize = 16;
const SCRAPES_PER_CLIENT: usize = 2;

/// Who holds how many connections.
#[derive(Debug, Default)]
struct ClientSlots {
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's share, given back when dropped.
struct ClientSlot {
    slots: Arc<ClientSlots>,
    client: IpAddr,
}

impl ClientSlots {
    fn take(self: &Arc<Self>, client: IpAddr) -> Option<ClientSlot> {
        let mut held = self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let total: usize = held.values().sum();
        let mine = held.entry(client).or_default();
        if *mine >= SCRAPES_PER_CLIENT || total >= CONCURRENT_SCRAPES {
            return None;
        }
        *mine += 1;
        Some(ClientSlot { slots: self.clone(), client })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = held.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.client);
            }
        }
    }
}

/// Accepts connections until the runtime stops, answering each with `respond`.
pub async fn serve<R>(listener: TcpListener, respond: R)
where
    R: Fn(Result<RequestLine<'_>, BadRequest>) -> (u16, &'static str, String) + Send + Sync + 'static,
{
    let respond = Arc::new(respond);
    let slots = Arc::new(ClientSlots::default());
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "accepting a metrics connection failed");
                continue;
            }
        };
        let Some(slot) = slots.take(client.ip()) else {
            tracing::debug!(%client, "metrics connection refused: that client (or everybody) holds every slot");
            continue;
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, |request| respond(request)).await {
                tracing::debug!(%error, "metrics connection ended");
            }
            drop(slot);
        });
    }
}

/// Reads one request head from `stream`, calls `respond` with its line, writes the answer
/// (status, content type, body) and closes.
pub async fn answer(
    mut stream: TcpStream,
    respond: impl FnOnce(Result<RequestLine<'_>, BadRequest>) -> (u16, &'static str, String),
) -> std::io::Result<()> {
    let mut head = vec![0u8; MAX_HEAD_LEN];
    let mut len = 0;
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !head[..len].windows(HEAD_END.len()).any(|w| w == HEAD_END) {
            if len == head.len() {
                return Err(BadRequest::TooLarge);
            }
            match stream.read(&mut head[len..]).await {
                Ok(0) | Err(_) => return Err(BadRequest::Malformed),
                Ok(n) => len += n,
            }
        }
        Ok(())
    })
    .await;
    let request = match read {
        Ok(Ok(())) => parse_request_line(&head[..len]),
        Ok(Err(error)) => Err(error),
        // A silent client gets nothing.
        Err(_) => return Ok(()),
    };
    let head_only = matches!(request, Ok(RequestLine { method: "HEAD", .. }));
    let (status, content_type, body) = respond(request);
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(&body);
    }
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the client did not read the answer in time"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let get = parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(get, RequestLine { method: "GET", path: "/metrics" });
        assert_eq!(parse_request_line(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").unwrap().path, "/metrics");
        assert_eq!(parse_request_line(b"HEAD / HTTP/1.1\r\n\r\n").unwrap().method, "HEAD");
    }

    #[test]
    fn slots_are_bounded_per_client_and_in_all() {
        let slots = Arc::new(ClientSlots::default());
        let client = |n: u8| IpAddr::from([127, 0, 0, n]);
        let mine: Vec<ClientSlot> = (0..SCRAPES_PER_CLIENT).filter_map(|_| slots.take(client(1))).collect();
        assert_eq!(mine.len(), SCRAPES_PER_CLIENT);
        assert!(slots.take(client(1)).is_none(), "one client holds at most its share");
        let others: Vec<ClientSlot> = (2..=u8::MAX).filter_map(|n| slots.take(client(n))).collect();
        assert_eq!(others.len(), CONCURRENT_SCRAPES - SCRAPES_PER_CLIENT, "and all of them the total");
        drop(mine);
        assert!(slots.take(client(1)).is_some(), "slots come back when connections end");
    }

    /// A client that opens connections and never sends a request (slowloris) must not keep
    /// another client's scrape waiting.
    #[test]
    fn a_slow_client_cannot_starve_another() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            tokio::spawn(serve(listener, |_| (200, "text/plain", "up\n".to_string())));
            let mut idle = Vec::new();
            for _ in 0..16 {
                idle.push(TcpStream::connect(address).await.unwrap());
            }
            let other = tokio::net::TcpSocket::new_v4().unwrap();
            other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let mut scrape = other.connect(address).await.unwrap();
            scrape.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
            let mut answer = String::new();
            let read = tokio::time::timeout(Duration::from_secs(2), scrape.read_to_string(&mut answer)).await;
            assert!(read.is_ok(), "the other client's scrape waited for the idle connections");
            assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
            drop(idle);
        });
    }

    #[test]
    fn malformed_lines() {
        for bad in [
            &b"GET /metrics HTTP/1.1"[..],
            b"GET /metrics\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"\xff /metrics HTTP/1.1\r\n\r\n",
            b"",
        ] {
            assert_eq!(parse_request_line(bad), Err(BadRequest::Malformed), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
