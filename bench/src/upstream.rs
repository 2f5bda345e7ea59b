//! The bench's upstream: a single-threaded HTTP/1.1 keep-alive server that
//! answers every request from memory, so that it is never the bottleneck and
//! is the same for every configuration. `GET /small` → a short JSON body and
//! `x-prediction: 0.42`; `GET /json` → 1 KiB of JSON with `"prediction": 0.42`;
//! anything else → 404. Pipelined requests are answered in order.

use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::bodies::{self, JSON_PATH, PREDICTION, SMALL_PATH};
use crate::http::find;

struct Answers {
    small: Vec<u8>,
    json: Vec<u8>,
    not_found: Vec<u8>,
}

impl Answers {
    fn new() -> Answers {
        Answers {
            small: bodies::response(&bodies::small_body(), &[("x-prediction", PREDICTION)]),
            json: bodies::response(&bodies::json_body(), &[]),
            not_found: b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
        }
    }

    fn for_request(&self, head: &[u8]) -> &[u8] {
        // "GET /path HTTP/1.1"
        let path = head.split(|b| *b == b' ').nth(1).unwrap_or_default();
        let path = path.split(|b| *b == b'?').next().unwrap_or_default();
        if path == SMALL_PATH.as_bytes() {
            &self.small
        } else if path == JSON_PATH.as_bytes() {
            &self.json
        } else {
            &self.not_found
        }
    }
}

/// Length of a request's body from its head (0 when absent).
fn content_length(head: &[u8]) -> usize {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Serves until killed. Prints `listening on 127.0.0.1:PORT` once it accepts.
pub fn serve(listen: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    rt.block_on(async {
        let listener = TcpListener::bind(listen).await?;
        let mut out = std::io::stdout();
        writeln!(out, "listening on {}", listener.local_addr()?)?;
        out.flush()?;
        let answers = Arc::new(Answers::new());
        loop {
            let (sock, _) = listener.accept().await?;
            let _ = sock.set_nodelay(true);
            tokio::spawn(connection(sock, answers.clone()));
        }
    })
}

async fn connection(mut sock: TcpStream, answers: Arc<Answers>) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(end) = find(&buf[start..], b"\r\n\r\n") {
            let head = &buf[start..start + end];
            let total = end + 4 + content_length(head);
            if buf.len() - start < total {
                break;
            }
            out.extend_from_slice(answers.for_request(head));
            start += total;
        }
        buf.drain(..start);
        if !out.is_empty() {
            if sock.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}
