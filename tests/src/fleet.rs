//! Simulated Envoy admin endpoints: many local HTTP servers on 127.0.0.1
//! answering every request with a recorded `/stats?format=json` body (see
//! `tests/fixtures/README.md`), or hanging, or answering garbage. For the
//! many-Envoys test and the controller scale bench; real Envoys are used
//! wherever a handful is enough.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The recorded admin answer: rollout [`FIXTURE_ROLLOUT`], epoch
/// [`FIXTURE_EPOCH`], active ECDS version [`FIXTURE_VERSION`].
pub fn fixture_path() -> PathBuf {
    crate::root().join("tests/fixtures/envoy-stats.json")
}

pub const FIXTURE_ROLLOUT: &str = "fixture";
pub const FIXTURE_EPOCH: u64 = 1;
pub const FIXTURE_VERSION: &str = "fixture/1";

pub fn fixture() -> Result<Vec<u8>> {
    let path = fixture_path();
    std::fs::read(&path).with_context(|| format!("cannot read the recorded stats {}", path.display()))
}

/// How one simulated endpoint answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with this body.
    Stats(Arc<Vec<u8>>),
    /// Accepts, reads, never answers.
    Hang,
    /// 200 with a body that is not stats.
    Garbage,
}

/// Simulated endpoints, stopped when dropped.
pub struct Fleet {
    pub ports: Vec<u16>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// One listener per behaviour, each on a free port of 127.0.0.1.
    pub async fn start(behaviours: Vec<Behaviour>) -> Result<Fleet> {
        let mut ports = Vec::with_capacity(behaviours.len());
        let mut tasks = Vec::with_capacity(behaviours.len());
        for behaviour in behaviours {
            let listener = TcpListener::bind("127.0.0.1:0").await.context("bind a simulated endpoint")?;
            ports.push(listener.local_addr()?.port());
            tasks.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(answer(stream, behaviour.clone()));
                }
            }));
        }
        Ok(Fleet { ports, tasks })
    }

    /// `http://127.0.0.1:PORT` of every endpoint, in order.
    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn answer(mut stream: TcpStream, behaviour: Behaviour) {
    // The request head (a GET has no body); the answer does not depend on it.
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body: &[u8] = match &behaviour {
        Behaviour::Stats(body) => body,
        Behaviour::Garbage => b"<html>not stats</html>",
        Behaviour::Hang => {
            let _held = stream;
            std::future::pending::<()>().await;
            return;
        }
    };
    let header = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(header.as_bytes()).await.is_ok() && stream.write_all(body).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}
