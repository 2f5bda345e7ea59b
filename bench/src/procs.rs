//! Every process the bench starts is registered here by PID, killed when its
//! handle drops (normal end, error, panic) and by the SIGINT/SIGTERM/SIGHUP
//! handler (Ctrl-C), which kills each registered PID and exits.

use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context, Result};

const SLOTS: usize = 128;
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: AtomicI32 = AtomicI32::new(0);
/// Lock-free, so the signal handler may read it.
static PIDS: [AtomicI32; SLOTS] = [EMPTY; SLOTS];

fn register(pid: i32) {
    for slot in &PIDS {
        if slot.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return;
        }
    }
}

fn unregister(pid: i32) {
    for slot in &PIDS {
        let _ = slot.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Kills every registered process (SIGKILL). Async-signal-safe.
pub fn kill_all() {
    for slot in &PIDS {
        let pid = slot.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

extern "C" fn on_signal(signal: libc::c_int) {
    kill_all();
    let msg = b"\ncanary-bench: interrupted; every process it started was killed\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is valid.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(128 + signal);
    }
}

/// Ctrl-C (and SIGTERM, SIGHUP) kill what was started, then exit.
pub fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe {
            libc::signal(signal, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    }
}

/// A started process, killed and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        let child = cmd.spawn().with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        register(child.id() as i32);
        Ok(Proc { name: name.to_string(), child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for it to exit by itself.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        let status = self.child.wait()?;
        unregister(self.pid() as i32);
        Ok(status)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unregister(self.pid() as i32);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
