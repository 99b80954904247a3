//! The control protocol's framing (`mesh_config::control`): one JSON request per line, of
//! bounded length, and one JSON response per line. Shared by the control socket (`ctl`) and the
//! streams that own a connection for a while (`drops --follow`, `capture`).

use std::io;

use mesh_config::control::Response;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// The longest request line; a longer one ends the connection (requests are a few hundred bytes).
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// Request lines of at most `MAX_REQUEST_LINE` bytes; the same `next_line` as tokio's `Lines`.
pub struct RequestLines<R> {
    reader: BufReader<R>,
    buffer: Vec<u8>,
}

impl<R: AsyncRead + Unpin> RequestLines<R> {
    pub fn new(reader: R) -> Self {
        RequestLines { reader: BufReader::new(reader), buffer: Vec::new() }
    }

    /// The next line without its end, `None` at the end of input; an error for a line longer
    /// than `MAX_REQUEST_LINE` or one that is not UTF-8.
    pub async fn next_line(&mut self) -> io::Result<Option<String>> {
        self.buffer.clear();
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                return match self.buffer.is_empty() {
                    true => Ok(None),
                    false => self.take_line().map(Some),
                };
            }
            let (taken, complete) = match available.iter().position(|byte| *byte == b'\n') {
                Some(end) => (end + 1, true),
                None => (available.len(), false),
            };
            self.buffer.extend_from_slice(&available[..taken]);
            self.reader.consume(taken);
            if self.buffer.len() > MAX_REQUEST_LINE + 1 {
                let message = format!("a control request longer than {MAX_REQUEST_LINE} bytes");
                return Err(io::Error::new(io::ErrorKind::InvalidData, message));
            }
            if complete {
                self.buffer.pop();
                return self.take_line().map(Some);
            }
        }
    }

    fn take_line(&mut self) -> io::Result<String> {
        if self.buffer.last() == Some(&b'\r') {
            self.buffer.pop();
        }
        String::from_utf8(std::mem::take(&mut self.buffer))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a control request that is not UTF-8"))
    }
}

/// Writes one response line.
pub async fn send<W: AsyncWrite + Unpin>(writer: &mut W, response: &Response) -> io::Result<()> {
    let mut text = serde_json::to_string(response).map_err(io::Error::other)?;
    text.push('\n');
    writer.write_all(text.as_bytes()).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all_lines(input: &[u8]) -> Vec<io::Result<Option<String>>> {
        let mut lines = RequestLines::new(input);
        let mut seen = Vec::new();
        loop {
            let line = lines.next_line().await;
            let last = !matches!(line, Ok(Some(_)));
            seen.push(line);
            if last {
                return seen;
            }
        }
    }

    #[tokio::test]
    async fn lines_end_at_newlines_and_at_the_end_of_input() {
        let lines = all_lines(b"{\"a\":1}\n{\"b\":2}\r\nlast").await;
        let lines: Vec<Option<String>> = lines.into_iter().map(|line| line.unwrap()).collect();
        let expected = [Some("{\"a\":1}"), Some("{\"b\":2}"), Some("last"), None];
        assert_eq!(lines, expected.map(|line| line.map(str::to_string)));
    }

    #[tokio::test]
    async fn a_request_line_over_the_limit_ends_the_connection() {
        let mut endless = vec![b'x'; MAX_REQUEST_LINE * 4];
        endless.push(b'\n');
        let lines = all_lines(&endless).await;
        let error = lines.last().unwrap().as_ref().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("longer than"), "{error}");
        // One byte under the limit is a request like any other.
        let mut longest = vec![b'y'; MAX_REQUEST_LINE];
        longest.push(b'\n');
        assert_eq!(all_lines(&longest).await[0].as_ref().unwrap().as_ref().map(String::len), Some(MAX_REQUEST_LINE));
    }

    #[tokio::test]
    async fn a_request_that_is_not_utf8_is_refused() {
        let lines = all_lines(b"\xff\xfe\n").await;
        assert_eq!(lines[0].as_ref().unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
