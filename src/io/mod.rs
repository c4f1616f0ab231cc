//! I/O engines for the WAL, behind one narrow trait.
//!
//! An [`Engine`] runs a shard's event loop on its (pinned) thread and opens
//! [`WalFile`]s that only append, sync and close. Three real engines:
//! - `glommio`: glommio's io_uring executor, files through its buffered file API;
//! - `tokio-uring`: tokio-uring's io_uring runtime;
//! - `portable`: `pwrite`/`fdatasync` on a plain thread, for kernels or
//!   containers where io_uring is blocked, and for non-Linux development.
//!
//! [`fault::FaultEngine`] wraps the portable engine and injects fsync errors,
//! torn writes and ENOSPC for tests. Column files are written by the
//! applier (off the commit path) through [`crate::disk`], not an engine; the
//! portable engine's files go through [`crate::disk`] too, so it is the
//! engine a simulated disk runs with.

pub mod fault;
mod glommio_engine;
mod portable;
mod uring;

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

pub use fault::{FaultEngine, FaultPlan};
pub use glommio_engine::GlommioEngine;
pub use portable::run_tokio_local;
pub use portable::PortableEngine;
pub use uring::TokioUringEngine;

/// A WAL file opened by an engine. Lives on one shard thread.
pub trait WalFile {
    /// Writes all of `buf` at `pos`. Returns the buffer (when the engine gives
    /// it back) so the caller can reuse its allocation.
    fn write_all_at(
        &self,
        buf: Vec<u8>,
        pos: u64,
    ) -> impl Future<Output = (io::Result<()>, Vec<u8>)>;
    /// `fdatasync`: returns once the written bytes are on stable storage.
    fn sync_data(&self) -> impl Future<Output = io::Result<()>>;
}

/// A task for a shard's executor: created on the shard thread, never moved.
pub type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

/// Which event loop (and so which network API) a shard's executor runs:
/// glommio's own io_uring reactor, or tokio's (tokio-uring runs its ring
/// inside a tokio current-thread runtime; the portable engine runs a plain
/// one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetStack {
    Glommio,
    Tokio,
}

/// Spawns `task` on the executor running the current thread. Call only from
/// inside [`Engine::run`] of an engine with this `stack`.
pub fn spawn_local(stack: NetStack, task: LocalTask) {
    match stack {
        NetStack::Glommio => drop(glommio::spawn_local(task).detach()),
        NetStack::Tokio => drop(tokio::task::spawn_local(task)),
    }
}

/// Sleeps on the executor running the current thread.
pub async fn sleep(stack: NetStack, d: std::time::Duration) {
    match stack {
        NetStack::Glommio => {
            glommio::timer::sleep(d).await;
        }
        NetStack::Tokio => tokio::time::sleep(d).await,
    }
}

/// An I/O engine: an executor for one shard thread plus its file operations.
pub trait Engine: Clone + Send + Sync + 'static {
    type File: WalFile + 'static;

    fn name(&self) -> &'static str;

    /// The event loop `run` drives, for network I/O and spawning tasks.
    fn net_stack(&self) -> NetStack;

    /// Runs the future made by `make` to completion on the current thread,
    /// inside this engine's executor, pinned to `core` when given.
    fn run<T, F>(&self, core: Option<usize>, make: impl FnOnce() -> F) -> io::Result<T>
    where
        F: Future<Output = T>;

    /// Creates a new, empty file (fails if it exists).
    fn create(&self, path: &Path) -> impl Future<Output = io::Result<Self::File>>;
}

/// Which engine to use, as configured.
#[derive(Clone, Debug)]
pub enum EngineChoice {
    /// glommio when io_uring works here, then tokio-uring, else portable.
    Auto,
    Glommio,
    TokioUring,
    Portable,
    /// Test support: the portable engine with injected faults.
    Fault(Arc<FaultPlan>),
}

impl FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "glommio" => Ok(EngineChoice::Glommio),
            "tokio-uring" => Ok(EngineChoice::TokioUring),
            "portable" => Ok(EngineChoice::Portable),
            _ => Err(format!(
                "unknown I/O engine {s:?} (expected auto, glommio, tokio-uring or portable)"
            )),
        }
    }
}

impl fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Glommio => "glommio",
            EngineChoice::TokioUring => "tokio-uring",
            EngineChoice::Portable => "portable",
            EngineChoice::Fault(_) => "fault",
        })
    }
}

/// The engine in use, after `auto` was resolved, and why it was picked.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub choice: EngineChoice,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
#[error("I/O engine {engine} cannot run here: {why}")]
pub struct EngineUnavailable {
    pub engine: &'static str,
    pub why: String,
}

/// Checks that the kernel lets this process set up an io_uring.
pub fn probe_io_uring() -> Result<(), String> {
    io_uring::IoUring::new(8)
        .map(drop)
        .map_err(|e| format!("io_uring_setup failed: {e}"))
}

/// Resolves `auto` and checks an explicit choice can run here.
pub fn resolve(choice: &EngineChoice) -> Result<Resolved, EngineUnavailable> {
    let uring = probe_io_uring();
    let need_uring = |engine: &'static str| {
        uring.clone().map_err(|why| EngineUnavailable {
            engine,
            why: format!("{why}; use --io-engine portable"),
        })
    };
    match choice {
        EngineChoice::Auto => Ok(match &uring {
            Ok(()) => match GlommioEngine.probe() {
                Ok(()) => Resolved {
                    choice: EngineChoice::Glommio,
                    reason: "io_uring is available and a glommio executor starts".into(),
                },
                Err(e) => Resolved {
                    choice: EngineChoice::TokioUring,
                    reason: format!("io_uring is available but glommio cannot start ({e})"),
                },
            },
            Err(why) => Resolved {
                choice: EngineChoice::Portable,
                reason: format!("io_uring is not available ({why})"),
            },
        }),
        EngineChoice::Glommio => {
            need_uring("glommio")?;
            GlommioEngine.probe().map_err(|e| EngineUnavailable {
                engine: "glommio",
                why: e.to_string(),
            })?;
            Ok(Resolved {
                choice: choice.clone(),
                reason: "configured".into(),
            })
        }
        EngineChoice::TokioUring => {
            need_uring("tokio-uring")?;
            Ok(Resolved {
                choice: choice.clone(),
                reason: "configured".into(),
            })
        }
        EngineChoice::Portable | EngineChoice::Fault(_) => Ok(Resolved {
            choice: choice.clone(),
            reason: "configured".into(),
        }),
    }
}

/// Pins the current thread to `core` (modulo the number of cores).
pub fn pin_current_thread(core: Option<usize>) {
    let Some(core) = core else { return };
    let Some(ids) = core_affinity::get_core_ids() else {
        return;
    };
    if ids.is_empty() {
        return;
    }
    let id = ids[core % ids.len()];
    if !core_affinity::set_for_current(id) {
        tracing::warn!(core = id.id, "could not pin shard thread to its core");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_choices_and_rejects_unknown() {
        for s in ["auto", "glommio", "tokio-uring", "portable"] {
            assert_eq!(s.parse::<EngineChoice>().unwrap().to_string(), s);
        }
        let e = "uring".parse::<EngineChoice>().unwrap_err();
        assert!(
            e.contains("expected auto, glommio, tokio-uring or portable"),
            "{e}"
        );
    }

    #[test]
    fn auto_says_what_it_picked_and_why() {
        let r = resolve(&EngineChoice::Auto).unwrap();
        assert!(!r.reason.is_empty());
        assert!(!matches!(r.choice, EngineChoice::Auto));
    }
}
