//! A temporary directory for tests, removed on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system's temporary directory, removed with
/// everything in it on drop.
///
/// `root()` is its subdirectory `root`, the tree a test serves; `path()` is
/// the whole, so that a test can put files *outside* the served root, next
/// to it. The helpers take paths relative to the root, and create missing
/// parent directories: `"sub/file.txt"` is inside, `"../outside/secret"`
/// is in the sibling directory `outside`, spelled as a link from the root
/// to it would be.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/filesrv-<label>-<pid>-<n>/root`.
    pub fn new(label: &str) -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "filesrv-{label}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        // A leftover from an earlier run with the same pid.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(path.join("root")).unwrap();
        TempDir(path)
    }

    /// The whole directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The directory to serve.
    pub fn root(&self) -> PathBuf {
        self.path().join("root")
    }

    /// Writes a file at `rel`, creating parent directories.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.parent_made(rel);
        fs::write(&path, contents).unwrap();
        path
    }

    /// The contents of the file at `rel`.
    pub fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.root().join(rel)).unwrap()
    }

    /// Creates the symlink `rel` pointing at `target` (taken as it is).
    pub fn symlink(&self, target: impl AsRef<Path>, rel: &str) {
        std::os::unix::fs::symlink(target, self.parent_made(rel)).unwrap();
    }

    /// Makes a FIFO at `rel`.
    pub fn mkfifo(&self, rel: &str) {
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            self.parent_made(rel),
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .unwrap();
    }

    /// The names in the directory at `rel`, sorted.
    pub fn names(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root().join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The upload temporary files (reserved prefix `.filesrv-`) in the
    /// directory at `rel`, sorted.
    pub fn temp_files(&self, rel: &str) -> Vec<String> {
        let mut names = self.names(rel);
        names.retain(|name| name.starts_with(".filesrv-"));
        names
    }

    fn parent_made(&self, rel: &str) -> PathBuf {
        let path = self.root().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.path());
    }
}
