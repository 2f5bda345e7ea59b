//! Just enough HTTP/1.1 for the bench: parsing a response head, and a
//! blocking one-shot GET for Envoy's admin API and for probes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response's status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub content_length: Option<usize>,
    pub chunked: bool,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses a response head; `Ok(None)` while the blank line has not arrived.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>> {
    let Some(end) = find(buf, b"\r\n\r\n") else { return Ok(None) };
    let text = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let mut head = Head { status, len: end + 4, content_length: None, chunked: false, headers: vec![] };
    for line in lines {
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        if k == "content-length" {
            head.content_length = v.parse().ok();
        } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            head.chunked = true;
        }
        head.headers.push((k, v));
    }
    Ok(Some(head))
}

/// Decodes a complete chunked body; `None` if it is not complete yet.
pub fn dechunk(mut buf: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![];
    loop {
        let line_end = find(buf, b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        buf = &buf[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if buf.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&buf[..size]);
        buf = &buf[size + 2..];
    }
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One GET to 127.0.0.1:port on a fresh connection.
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_secs(10);
    let mut s = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = vec![];
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf)? {
            let rest = &buf[head.len..];
            if head.chunked {
                if let Some(body) = dechunk(rest) {
                    return Ok(Response { head, body });
                }
            } else if let Some(cl) = head.content_length {
                if rest.len() >= cl {
                    let body = rest[..cl].to_vec();
                    return Ok(Response { head, body });
                }
            } else if n == 0 {
                let body = rest.to_vec();
                return Ok(Response { head, body });
            }
        }
        if n == 0 {
            bail!("connection to {addr} closed before a complete response to GET {path}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_is_parsed_once_complete() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n").unwrap().is_none());
        let h =
            parse_head(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc").unwrap().unwrap();
        assert_eq!((h.status, h.len, h.content_length, h.chunked), (503, 63, Some(3), false));
        assert_eq!(h.header("x-a"), Some("b"));
        let h = parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").unwrap().unwrap();
        assert!(h.chunked);
    }

    #[test]
    fn chunked_bodies_decode_only_when_complete() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(), Some(&b"abcde"[..]));
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nd"), None);
    }
}
