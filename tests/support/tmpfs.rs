//! A small tmpfs mounted for a test, unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted over a directory, unmounted on drop (after whatever
/// was declared before it in the same scope is dropped).
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes on `dir`; `None` where this process
    /// may not mount (not root, or in a container without the right).
    pub(crate) fn mount(dir: &Path, size: u64) -> Option<Tmpfs> {
        if !rustix::process::geteuid().is_root() {
            return None;
        }
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "filesrv-test"])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
