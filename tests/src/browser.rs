//! Headless Chromium (screenshots and console messages) and PNG colour counts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::*;

/// Debian's Chromium (installed by `scripts/setup.sh browser`) or `CANARY_CHROMIUM`.
pub fn chromium_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CANARY_CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    let p = PathBuf::from("/usr/bin/chromium");
    if p.exists() {
        return Ok(p);
    }
    bail!("no Chromium at /usr/bin/chromium: run `bash scripts/setup.sh browser` or set CANARY_CHROMIUM")
}

/// The flags that keep headless Chromium off the (closed) network.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
];

/// Loads `url` in headless Chromium, saves a screenshot to `png`, and returns
/// the console messages Chromium logged (`CONSOLE` lines of its stderr).
/// Chromium is killed if it takes longer than 60 s.
pub fn chromium_screenshot(url: &str, png: &Path, width: u32, height: u32) -> Result<Vec<String>> {
    let profile = tempfile::tempdir()?;
    let mut cmd = Command::new(chromium_bin()?);
    cmd.args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--enable-logging=stderr", "--v=0"])
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn("chromium", &mut cmd)?;
    let stderr = proc.child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
        }
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while proc.exited().is_none() {
        if Instant::now() > deadline {
            proc.stop();
            bail!("chromium took more than 60 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = reader.join().unwrap_or_default();
    if !png.exists() {
        bail!("chromium wrote no screenshot of {url}:\n{text}");
    }
    Ok(text.lines().filter(|l| l.contains("CONSOLE")).map(str::to_owned).collect())
}

/// Distinct colours in a PNG (a blank page has one or two).
pub fn png_colours(png: &Path) -> Result<usize> {
    let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(png)?));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    let bpp = info.color_type.samples() * usize::from(info.bit_depth as u8).div_ceil(8);
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(bpp.max(1)).collect();
    Ok(colours.len())
}
