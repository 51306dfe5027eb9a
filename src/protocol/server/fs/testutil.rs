//! Test helpers: a temporary directory removed on drop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Root;
use super::resolve::Resolver;

/// A fresh directory under the system's temporary directory, removed with
/// everything in it on drop. Relative paths given to its helpers are taken
/// from it, and missing parent directories are created.
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub(crate) fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "filesrv-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        // A leftover from an earlier run with the same pid.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        TempDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn mkdir(&self, rel: &str) {
        std::fs::create_dir_all(self.path.join(rel)).unwrap();
    }

    pub(crate) fn write(&self, rel: &str, contents: &[u8]) {
        std::fs::write(self.parent_made(rel), contents).unwrap();
    }

    pub(crate) fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path.join(rel)).unwrap()
    }

    pub(crate) fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path.join(rel)).unwrap();
    }

    /// Creates the symlink `link` pointing at `target` (taken as it is).
    pub(crate) fn symlink(&self, target: impl AsRef<Path>, link: &str) {
        std::os::unix::fs::symlink(target, self.parent_made(link)).unwrap();
    }

    pub(crate) fn mkfifo(&self, rel: &str) {
        let path = self.parent_made(rel);
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &path,
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .unwrap();
    }

    /// Leaves a Unix socket file at `rel` (nothing listens on it).
    pub(crate) fn socket(&self, rel: &str) {
        std::os::unix::net::UnixListener::bind(self.parent_made(rel)).unwrap();
    }

    fn parent_made(&self, rel: &str) -> PathBuf {
        let path = self.path.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A served tree `root` beside an `outside` directory, with links of every
/// kind the resolvers must tell apart:
///
/// - `file.txt` ("hello"), `sub/inner` ("inner!"), and links inside the
///   root to them: `sub/up`, `to_sub` (a directory), `through_link`;
/// - links leading out: `escape` (a file), `escape_dir` (a directory),
///   `slash` (`/`), `absolute_inside` (absolute, though to `file.txt`),
///   `out_and_back` (`../root/file.txt`);
/// - `loop_a` and `loop_b` (a loop), `dangling`;
/// - `fifo`, `to_fifo` and `socket`.
pub(crate) fn link_tree() -> TempDir {
    let tmp = TempDir::new();
    tmp.write("outside/secret", b"secret");
    tmp.write("root/file.txt", b"hello");
    tmp.write("root/sub/inner", b"inner!");
    tmp.symlink("../file.txt", "root/sub/up");
    tmp.symlink("sub", "root/to_sub");
    tmp.symlink("to_sub/../file.txt", "root/through_link");
    tmp.symlink("../outside/secret", "root/escape");
    tmp.symlink("../outside", "root/escape_dir");
    tmp.symlink("/", "root/slash");
    tmp.symlink(tmp.path().join("root/file.txt"), "root/absolute_inside");
    tmp.symlink("../root/file.txt", "root/out_and_back");
    tmp.symlink("loop_b", "root/loop_a");
    tmp.symlink("loop_a", "root/loop_b");
    tmp.symlink("missing", "root/dangling");
    tmp.mkfifo("root/fifo");
    tmp.symlink("fifo", "root/to_fifo");
    tmp.socket("root/socket");
    tmp
}

/// `root` under `tmp` opened once with each resolver the kernel allows: the
/// walk always, `openat2` where it works.
pub(crate) fn roots(tmp: &TempDir) -> Vec<Root> {
    let dir = tmp.path().join("root");
    let detected = Root::open(&dir).unwrap();
    let walk = Root::open(&dir).unwrap().with_resolver(Resolver::Walk);
    let openat2 = (detected.resolver() == Resolver::Openat2).then_some(detected);
    std::iter::once(walk).chain(openat2).collect()
}
