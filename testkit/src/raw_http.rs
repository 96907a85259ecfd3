//! Raw HTTP/1.1 over a std `TcpStream`: requests exactly as a test wants them (truncated, malformed,
//! stalled, dropped), and the reply as it comes. Blocking, with read timeouts.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A reply read off the wire.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn ret_code(&self) -> String {
        self.json()["retCode"].as_str().unwrap_or("<none>").to_owned()
    }

    /// The head without the headers that differ between any two replies (`date`).
    pub fn head_without_date(&self) -> String {
        self.head.lines().filter(|l| !l.to_ascii_lowercase().starts_with("date:")).collect::<Vec<_>>().join("\n")
    }
}

pub struct Raw {
    stream: TcpStream,
}

/// `http://127.0.0.1:8080/a?b` → (`127.0.0.1:8080`, `/a?b`).
pub fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    match rest.find('/') {
        Some(i) => (rest[..i].to_owned(), rest[i..].to_owned()),
        None => (rest.to_owned(), "/".to_owned()),
    }
}

/// The head of a POST with a body of `content_length` bytes.
pub fn post_head(path: &str, content_type: &str, content_length: usize) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {content_length}\r\n\r\n")
        .into_bytes()
}

impl Raw {
    pub fn connect(addr: &str) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream }
    }

    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
    }

    /// Writes bytes; an error means the server closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads one reply: the head, then `Content-Length` bytes of body (or up to the close).
    pub fn reply(&mut self) -> io::Result<RawReply> {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a reply"));
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let length = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
        });
        let mut body = buffer[head_end..].to_vec();
        loop {
            if length.is_some_and(|len| body.len() >= len) {
                break;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e),
            }
        }
        if let Some(len) = length {
            body.truncate(len);
        }
        Ok(RawReply { status, head, body })
    }

    /// Whether the server closes the connection (or resets it) within the read timeout.
    pub fn closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue, // a reply (e.g. 408) before the close
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return false,
                Err(_) => return true,
            }
        }
    }
}

/// Starts a POST of `body` to `url` on a fresh connection and sends only its first `sent` bytes:
/// the request stays open, as a client that stalls or is cut off mid-body leaves it.
pub fn send_partly(url: &str, content_type: &str, body: &[u8], sent: usize) -> Raw {
    let (addr, path) = split_url(url);
    let mut raw = Raw::connect(&addr);
    raw.send(&post_head(&path, content_type, body.len())).unwrap();
    raw.send(&body[..sent]).unwrap();
    raw
}

/// One request on a fresh connection, and its reply.
pub fn exchange(addr: &str, request: &[u8]) -> io::Result<RawReply> {
    let mut raw = Raw::connect(addr);
    raw.send(request)?;
    raw.reply()
}
