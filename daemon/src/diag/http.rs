//! Just enough HTTP/1.1 for a Prometheus scrape: one GET per connection, answered and closed.
//! The request head is read with a size and time bound; only its request line is looked at.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
