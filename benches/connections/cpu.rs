//! The CPU time a server spent, from `/proc`: a figure that another
//! program's load on the machine disturbs far less than requests per
//! second do.
//!
//! Read per thread from `schedstat` (nanoseconds on a CPU), not from
//! `stat`, whose clock ticks are truncated per thread: 64 workers would
//! each lose up to 10 ms.

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

/// Where a server's CPU time is read.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cpu {
    /// The threads of this process whose name starts with `filesrv-`
    /// (a [`Server`](filesrv::protocol::Server) here: its accepting
    /// thread, workers, watcher, closer).
    ServerThreads,
    /// A process and its children (a `filesrv` binary, or nginx's master
    /// and workers).
    Process(u32),
}

impl Cpu {
    /// The time on a CPU so far.
    pub(crate) fn used(self) -> io::Result<Duration> {
        match self {
            Cpu::ServerThreads => {
                threads(Path::new("/proc/self"), |name| name.starts_with("filesrv-"))
            }
            Cpu::Process(pid) => {
                let dir = format!("/proc/{pid}");
                let mut total = threads(Path::new(&dir), |_| true)?;
                let children = fs::read_to_string(format!("{dir}/task/{pid}/children"))?;
                for child in children.split_whitespace() {
                    total += threads(Path::new(&format!("/proc/{child}")), |_| true)?;
                }
                Ok(total)
            }
        }
    }
}

/// The CPU time of the threads of the process at `dir` whose name
/// `wanted`; a thread that ends meanwhile is left out.
fn threads(dir: &Path, wanted: impl Fn(&str) -> bool) -> io::Result<Duration> {
    let mut total = Duration::ZERO;
    for task in fs::read_dir(dir.join("task"))? {
        let task = task?.path();
        let (Ok(name), Ok(schedstat)) = (
            fs::read_to_string(task.join("comm")),
            fs::read_to_string(task.join("schedstat")),
        ) else {
            continue;
        };
        if wanted(&name) {
            let nanos = schedstat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| io::Error::other(format!("bad schedstat: {schedstat}")))?;
            total += Duration::from_nanos(nanos);
        }
    }
    Ok(total)
}
