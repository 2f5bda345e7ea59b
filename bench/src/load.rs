//! Load generators. Saturation: `wrk` (Debian's 4.1), pinned with `taskset`,
//! one thread, a Lua script giving every request a random `x-user-id`.
//! Latency: an open-loop fixed-rate client (wrk has no `-R`; wrk2 is not in
//! Debian; a Lua `delay()` makes each connection wait *after* its response,
//! which is closed-loop and hides queueing). A pacer thread emits the
//! scheduled send times at the fixed rate whatever the answers do; connection
//! tasks take the next one when free. Latency is taken from the write of the
//! request to the last byte of the response, and also from the scheduled time
//! (which adds any wait for a free connection: the coordinated-omission-free
//! figure).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{dechunk, parse_head};
use crate::procs::Proc;

/// The wrk script: random user per request, a machine-readable summary.
pub const WRK_SCRIPT: &str = r#"-- written by canary-bench: requests for 1000 random users, built once
-- per thread so that wrk spends no time formatting them.
local reqs, n, i = {}, 1000, 0
init = function(args)
  math.randomseed(42)
  for k = 1, n do
    reqs[k] = wrk.format(nil, nil, { ["Host"] = "127.0.0.1", ["x-user-id"] = "user-" .. math.random(1, 100000) })
  end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH_RESULT requests=%.0f duration_us=%.0f connect=%.0f read=%.0f write=%.0f status=%.0f timeout=%.0f p50_us=%.0f p99_us=%.0f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#;

/// One wrk run.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_s: f64,
    /// Connect, read, write, timeout errors and responses with status >= 400.
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

fn parse_wrk(stdout: &str) -> Result<WrkResult> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_RESULT "))
        .ok_or_else(|| anyhow!("wrk printed no BENCH_RESULT line:\n{stdout}"))?;
    let get = |k: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no {k} in {line:?}"))
    };
    Ok(WrkResult {
        requests: get("requests")? as u64,
        duration_s: get("duration_us")? / 1e6,
        errors: (get("connect")? + get("read")? + get("write")? + get("status")? + get("timeout")?) as u64,
        p50_us: get("p50_us")?,
        p99_us: get("p99_us")?,
    })
}

/// Runs wrk against 127.0.0.1:port/path for `secs` whole seconds.
pub fn wrk(cpu: usize, port: u16, path: &str, secs: u64, connections: usize, script: &Path) -> Result<WrkResult> {
    let mut proc = Proc::spawn(
        "wrk",
        Command::new("taskset")
            .args(["-c", &cpu.to_string(), "wrk", "-t1", "-c", &connections.to_string()])
            .args(["-d", &format!("{secs}s"), "--timeout", "5s", "-s"])
            .arg(script)
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = proc.child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout)?;
    }
    if let Some(mut err) = proc.child.stderr.take() {
        std::io::Read::read_to_string(&mut err, &mut stderr)?;
    }
    let status = proc.wait()?;
    if !status.success() {
        bail!("wrk failed ({status}): {stderr}{stdout}");
    }
    parse_wrk(&stdout)
}

/// Writes the wrk script into `dir`.
pub fn write_wrk_script(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("bench.lua");
    std::fs::File::create(&path)?.write_all(WRK_SCRIPT.as_bytes())?;
    Ok(path)
}

/// One fixed-rate run.
#[derive(Debug, Clone, Default)]
pub struct FixedRate {
    pub target_rate: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub completed: u64,
    pub errors: u64,
    /// Request write → last response byte, ns, per 200 response.
    pub latency_ns: Vec<u32>,
    /// Scheduled send time → last response byte, ns.
    pub latency_sched_ns: Vec<u32>,
}

type Ticks = Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>>;

/// Sends GET path to 127.0.0.1:port at `rate` per second for `duration`
/// over up to `connections` keep-alive connections.
pub fn fixed_rate(port: u16, path: &str, rate: f64, duration: Duration, connections: usize) -> Result<FixedRate> {
    if !rate.is_finite() || rate <= 0.0 {
        bail!("rate must be > 0");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let streams = rt.block_on(async {
        let mut v = vec![];
        for _ in 0..connections {
            let s = TcpStream::connect(("127.0.0.1", port)).await.context("fixed-rate client: connect")?;
            s.set_nodelay(true)?;
            v.push(s);
        }
        anyhow::Ok(v)
    })?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let rx: Ticks = Arc::new(tokio::sync::Mutex::new(rx));
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + duration;
    let pacer = std::thread::spawn(move || {
        // Wake-ups as exact as the kernel allows (default slack is 50 µs).
        // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's slack.
        unsafe {
            libc::prctl(
                libc::PR_SET_TIMERSLACK,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            );
        }
        let mut sent = 0u64;
        loop {
            let at = start + Duration::from_nanos((sent as f64 * 1e9 / rate) as u64);
            if at >= end {
                break;
            }
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send(at).is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let path: Arc<str> = Arc::from(path);
    let outcome = rt.block_on(async {
        let tasks: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                tokio::spawn(connection(s, port, path.clone(), rx.clone(), 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1)))
            })
            .collect();
        let mut out = FixedRate::default();
        let deadline = tokio::time::Instant::from_std(end + Duration::from_secs(10));
        for t in tasks {
            match tokio::time::timeout_at(deadline, t).await {
                Ok(Ok((lat, lat_sched, errors))) => {
                    out.latency_ns.extend(lat);
                    out.latency_sched_ns.extend(lat_sched);
                    out.errors += errors;
                }
                _ => out.errors += 1,
            }
        }
        out
    });
    let sent = pacer.join().map_err(|_| anyhow!("pacer thread panicked"))?;
    Ok(FixedRate {
        target_rate: rate,
        duration_s: duration.as_secs_f64(),
        sent,
        completed: outcome.latency_ns.len() as u64 + outcome.errors,
        ..outcome
    })
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

async fn connection(mut s: TcpStream, port: u16, path: Arc<str>, rx: Ticks, seed: u64) -> (Vec<u32>, Vec<u32>, u64) {
    let (mut lat, mut lat_sched, mut errors) = (vec![], vec![], 0u64);
    let mut rng = seed;
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let scheduled = {
            let mut ticks = rx.lock().await;
            ticks.recv().await
        };
        let Some(scheduled) = scheduled else { break };
        rng = xorshift(rng);
        let req = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-user-id: user-{}\r\n\r\n", rng % 100_000 + 1);
        let sent = Instant::now();
        let status = exchange(&mut s, req.as_bytes(), &mut buf, &mut chunk).await;
        let done = Instant::now();
        match status {
            Ok(200) => {
                lat.push((done - sent).as_nanos().min(u32::MAX as u128) as u32);
                lat_sched.push((done - scheduled).as_nanos().min(u32::MAX as u128) as u32);
            }
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                match TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(new) => {
                        let _ = new.set_nodelay(true);
                        s = new;
                    }
                    Err(_) => break,
                }
            }
        }
    }
    (lat, lat_sched, errors)
}

async fn exchange(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>, chunk: &mut [u8]) -> Result<u16> {
    s.write_all(req).await?;
    buf.clear();
    loop {
        let n = s.read(chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(buf)? {
            let rest = &buf[head.len..];
            let complete =
                if head.chunked { dechunk(rest).is_some() } else { rest.len() >= head.content_length.unwrap_or(0) };
            if complete {
                return Ok(head.status);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_summary_is_parsed() {
        let out = "Running 1s test\nBENCH_RESULT requests=1200 duration_us=1000500 connect=0 read=1 write=0 status=2 timeout=0 p50_us=850 p99_us=2100\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!((r.requests, r.errors), (1200, 3));
        assert!((r.duration_s - 1.0005).abs() < 1e-9);
        assert_eq!((r.p50_us, r.p99_us), (850.0, 2100.0));
        assert!(parse_wrk("no summary").is_err());
    }
}
