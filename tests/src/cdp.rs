//! A small Chrome DevTools Protocol client for tests: starts headless
//! Chromium (the local binary, no download) on a fresh profile, drives one
//! page over its WebSocket (navigate, evaluate JavaScript, click, type,
//! screenshot, answer `window.confirm`) and kills the browser's process
//! group by PID when dropped.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{chromium_bin, Proc, CHROMIUM_FLAGS};

/// A headless Chromium; its whole process group is killed when dropped.
pub struct Browser {
    proc: Proc,
    _profile: tempfile::TempDir,
    /// The DevTools HTTP/WebSocket port.
    pub port: u16,
}

impl Browser {
    /// Starts Chromium with the flags that keep it off the network, a fresh
    /// `--user-data-dir`, and a window of `width` × `height`.
    pub async fn launch(width: u32, height: u32) -> Result<Browser> {
        let profile = tempfile::Builder::new().prefix("canary-chromium-").tempdir()?;
        let mut cmd = Command::new(chromium_bin()?);
        cmd.args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--remote-debugging-port=0")
            .arg("--remote-debugging-address=127.0.0.1")
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: renderers and helpers go with it.
            .process_group(0);
        let mut proc = Proc::spawn("chromium", &mut cmd)?;
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(status) = proc.exited() {
                bail!("chromium exited at start-up ({status})");
            }
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u16>().ok()))
            {
                break port;
            }
            if Instant::now() > deadline {
                bail!("chromium wrote no DevToolsActivePort within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(Browser { proc, _profile: profile, port })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The first page target (the `about:blank` it started with).
    pub async fn page(&self) -> Result<Page> {
        let url = format!("http://127.0.0.1:{}/json/list", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let targets: Vec<Value> = reqwest::get(&url).await?.json().await?;
            if let Some(ws) =
                targets.iter().find(|t| t["type"] == "page").and_then(|t| t["webSocketDebuggerUrl"].as_str())
            {
                return Page::connect(ws).await;
            }
            if Instant::now() > deadline {
                bail!("no page target in {targets:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the browser's process group (by its PID) and reaps it.
    pub fn kill(&mut self) {
        let pgid = self.proc.pid();
        if crate::pid_alive(pgid) {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
        }
        self.proc.stop();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// One page, driven over its DevTools WebSocket.
pub struct Page {
    sink: Arc<tokio::sync::Mutex<Sink>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    /// Messages of the JavaScript dialogs (`confirm`, `alert`) the page opened.
    pub dialogs: Arc<Mutex<Vec<String>>>,
    /// Whether dialogs are accepted (OK) or dismissed (Cancel).
    pub accept_dialogs: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Page {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Page {
    async fn connect(ws_url: &str) -> Result<Page> {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.context("DevTools WebSocket")?;
        let (sink, mut stream) = ws.split();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let pending: Pending = Arc::default();
        let next_id = Arc::new(AtomicU64::new(1));
        let dialogs: Arc<Mutex<Vec<String>>> = Arc::default();
        let accept_dialogs = Arc::new(AtomicBool::new(false));
        let reader = {
            let (sink, pending, next_id, dialogs, accept) =
                (sink.clone(), pending.clone(), next_id.clone(), dialogs.clone(), accept_dialogs.clone());
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                    if let Some(id) = v["id"].as_u64() {
                        if let Some(tx) = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                            let _ = tx.send(v);
                        }
                    } else if v["method"] == "Page.javascriptDialogOpening" {
                        dialogs
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(v["params"]["message"].as_str().unwrap_or("").to_string());
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        let answer = json!({"id": id, "method": "Page.handleJavaScriptDialog",
                            "params": {"accept": accept.load(Ordering::Relaxed)}});
                        let _ = sink.lock().await.send(Message::Text(answer.to_string().into())).await;
                    }
                }
            })
        };
        let page = Page { sink, pending, next_id, dialogs, accept_dialogs, reader };
        page.call("Page.enable", json!({})).await?;
        page.call("Runtime.enable", json!({})).await?;
        Ok(page)
    }

    /// Sends a command and waits (up to 30 s) for its result.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let msg = json!({"id": id, "method": method, "params": params});
        self.sink.lock().await.send(Message::Text(msg.to_string().into())).await?;
        let reply = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| anyhow!("{method}: no answer within 30 s"))??;
        if let Some(e) = reply.get("error") {
            bail!("{method}: {e}");
        }
        Ok(reply["result"].clone())
    }

    /// Fixes the viewport (CSS pixels, scale 1).
    pub async fn set_viewport(&self, width: u32, height: u32) -> Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await?;
        Ok(())
    }

    /// Navigates and waits until the document has loaded.
    pub async fn goto(&self, url: &str) -> Result<()> {
        let r = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(e) = r["errorText"].as_str() {
            bail!("navigation to {url} failed: {e}");
        }
        self.wait_for("document.readyState === 'complete'", Duration::from_secs(20)).await
    }

    /// Evaluates an expression (awaiting a promise) and returns its value.
    pub async fn eval(&self, expression: &str) -> Result<Value> {
        let r = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true, "awaitPromise": true}))
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("`{expression}` threw: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls a boolean expression until it holds.
    pub async fn wait_for(&self, expression: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(expression).await?.as_bool() == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("`{expression}` still false after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The text of the element with this id (`None` if absent).
    pub async fn text(&self, id: &str) -> Result<Option<String>> {
        let v = self.eval(&format!("(e => e && e.textContent)(document.getElementById({}))", json!(id))).await?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// Clicks the middle of an element like a mouse would (pressed, released).
    pub async fn click(&self, selector: &str) -> Result<()> {
        let rect = self
            .eval(&format!(
                "(e => {{ if (!e) return null; e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})(document.querySelector({}))",
                json!(selector)
            ))
            .await?;
        let (x, y) = match (rect[0].as_f64(), rect[1].as_f64()) {
            (Some(x), Some(y)) => (x, y),
            _ => bail!("no element {selector} to click"),
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await?;
        }
        Ok(())
    }

    /// Types text into the focused element.
    pub async fn type_text(&self, text: &str) -> Result<()> {
        self.call("Input.insertText", json!({"text": text})).await?;
        Ok(())
    }

    /// A PNG of the viewport (or of the whole page with `full_page`).
    pub async fn screenshot(&self, full_page: bool) -> Result<Vec<u8>> {
        let r =
            self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": full_page})).await?;
        let data = r["data"].as_str().ok_or_else(|| anyhow!("no screenshot data"))?;
        Ok(base64::engine::general_purpose::STANDARD.decode(data)?)
    }
}

/// Mean and standard deviation of a PNG's grey levels (0..255): a blank
/// page has a deviation near 0.
pub fn png_grey_stats(png: &[u8]) -> Result<(f64, f64, u32, u32)> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    if info.bit_depth != png::BitDepth::Eight {
        bail!("expected 8-bit samples, got {:?}", info.bit_depth);
    }
    let channels = info.color_type.samples();
    let (mut sum, mut sum2, mut n) = (0f64, 0f64, 0f64);
    for px in buf[..info.buffer_size()].chunks(channels) {
        let grey = match channels {
            1 | 2 => f64::from(px[0]),
            _ => 0.299 * f64::from(px[0]) + 0.587 * f64::from(px[1]) + 0.114 * f64::from(px[2]),
        };
        sum += grey;
        sum2 += grey * grey;
        n += 1.0;
    }
    if n == 0.0 {
        bail!("empty image");
    }
    let mean = sum / n;
    Ok((mean, (sum2 / n - mean * mean).max(0.0).sqrt(), info.width, info.height))
}
