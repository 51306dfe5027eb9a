//! Temporary upload files: created beside the target, renamed over it on
//! commit, removed on every other path.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{self, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{self, Pid};

use super::error::FsError;
use crate::protocol::wire::{ErrorCode, RESERVED_PREFIX, encode_name};

/// How deep [`remove_stale_temps`] descends below the root.
const MAX_CLEANUP_DEPTH: usize = 64;

/// How many fresh names [`TempFile::create`] tries before giving up.
const CREATE_ATTEMPTS: usize = 8;

/// How far ahead of the bytes written an upload holds disk space: after
/// each write, an upload has at most this much reserved but not written.
const RESERVE_AHEAD: u64 = 1 << 20;

/// An upload in progress: a temporary file in the target's directory.
///
/// Write the body to it, then [`commit`](TempFile::commit). Dropped without
/// a commit (a failed or abandoned upload), it removes its file.
#[derive(Debug)]
pub(crate) struct TempFile {
    dir: OwnedFd,
    temp_name: Vec<u8>,
    target_name: Vec<u8>,
    file: File,
    committed: bool,
    /// The declared size: nothing is reserved beyond it.
    size: u64,
    /// Bytes written so far, and bytes reserved on disk from the start.
    written: u64,
    reserved: u64,
}

impl TempFile {
    /// Creates a temporary file in `dir` for an upload to `target_name`.
    pub(super) fn create(dir: OwnedFd, target_name: &[u8]) -> Result<TempFile, FsError> {
        let replaced_mode = check_target(dir.as_fd(), target_name)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
        let mut attempts = 0;
        loop {
            let temp_name = unique_name();
            match fs::openat(
                &dir,
                temp_name.as_slice(),
                flags,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(fd) => {
                    // A replaced file keeps its permission bits (a 0600
                    // file stays 0600); set-id bits are dropped, as a
                    // write would drop them. A new file gets 0644 less
                    // the umask.
                    if let Some(mode) = replaced_mode {
                        let mode = Mode::from_raw_mode(mode & 0o777);
                        if let Err(errno) = fs::fchmod(&fd, mode) {
                            let _ = fs::unlinkat(&dir, temp_name.as_slice(), AtFlags::empty());
                            return Err(FsError::internal(errno));
                        }
                    }
                    return Ok(TempFile {
                        dir,
                        temp_name,
                        target_name: target_name.to_vec(),
                        file: File::from(fd),
                        committed: false,
                        size: 0,
                        written: 0,
                        reserved: 0,
                    });
                }
                Err(Errno::EXIST) if attempts < CREATE_ATTEMPTS => attempts += 1,
                Err(errno) => return Err(FsError::internal(errno)),
            }
        }
    }

    /// Expects a body of `size` bytes: refuses at once one that cannot
    /// fit in the file system's free space, and from then on reserves disk
    /// as the body is written, at most [`RESERVE_AHEAD`] bytes ahead of it,
    /// so that a body that never comes holds next to no disk.
    ///
    /// # Errors
    ///
    /// `internal`, with a message saying the disk is full, when `size` is
    /// more than the space left to unprivileged writers, or saying the
    /// file is too large, when it is more than the process may write to
    /// one file (`RLIMIT_FSIZE`).
    pub(crate) fn expect(&mut self, size: u64) -> Result<(), FsError> {
        self.size = size;
        let limit = process::getrlimit(process::Resource::Fsize).current;
        if limit.is_some_and(|limit| size > limit) {
            return Err(FsError::internal(Errno::FBIG));
        }
        let stat = fs::fstatvfs(&self.file).map_err(FsError::internal)?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if size > free {
            return Err(FsError::internal(Errno::NOSPC));
        }
        Ok(())
    }

    /// Reserves disk for the next `len` bytes and [`RESERVE_AHEAD`] more,
    /// within the declared size. A file system that cannot reserve space
    /// is not an error: the writes will tell.
    fn reserve_for(&mut self, len: usize) -> io::Result<()> {
        let needed = self.written.saturating_add(len as u64);
        if needed <= self.reserved || self.reserved >= self.size {
            return Ok(());
        }
        let through = needed.saturating_add(RESERVE_AHEAD).min(self.size);
        let flags = fs::FallocateFlags::KEEP_SIZE;
        match fs::fallocate(&self.file, flags, self.reserved, through - self.reserved) {
            Ok(()) => self.reserved = through,
            // Nothing to gain from asking again.
            Err(Errno::OPNOTSUPP | Errno::NOSYS) => self.reserved = self.size,
            Err(errno) => return Err(errno.into()),
        }
        Ok(())
    }

    /// The temporary file, for querying it.
    #[cfg(test)]
    pub(crate) fn as_file(&self) -> &File {
        &self.file
    }

    /// Puts the upload in place: flushes the file to disk, renames it over
    /// the target (replacing a symlink there, not writing through it), and
    /// flushes the directory, so the new file survives a crash.
    ///
    /// Readers of the target see the old file or the new one, never a mix.
    ///
    /// # Errors
    ///
    /// - `bad-request` when a directory took the target's place meanwhile;
    /// - `internal` when a flush or the rename fails. The temporary file is
    ///   removed unless the rename happened.
    pub(crate) fn commit(mut self) -> Result<(), FsError> {
        self.file.sync_all()?;
        fs::renameat(
            &self.dir,
            self.temp_name.as_slice(),
            &self.dir,
            self.target_name.as_slice(),
        )
        .map_err(|errno| match errno {
            Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST => {
                FsError::new(ErrorCode::BadRequest, "target is a directory")
            }
            _ => FsError::internal(errno),
        })?;
        self.committed = true;
        fs::fsync(&self.dir).map_err(FsError::internal)
    }
}

/// Writes go to the temporary file, with disk reserved just ahead of
/// them (see [`TempFile::expect`]).
impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reserve_for(buf.len())?;
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Err(errno) = fs::unlinkat(&self.dir, self.temp_name.as_slice(), AtFlags::empty()) {
            log::warn!(
                "cannot remove temporary upload file {}: {errno}",
                encode_name(&self.temp_name)
            );
        }
    }
}

/// Refuses a target name that is a directory, FIFO, socket or device, or
/// a regular file the server's user could not write; a writable regular
/// file, a symlink (to be replaced) or nothing at all is fine. Returns the
/// mode of the regular file it replaces.
fn check_target(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Option<u32>, FsError> {
    let stat = match fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Ok(None),
        Err(errno) => return Err(FsError::resolving(errno)),
    };
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile if may_write(&stat) => Ok(Some(stat.st_mode)),
        FileType::RegularFile => Err(FsError::new(
            ErrorCode::Forbidden,
            "permission denied: the file is not writable",
        )),
        FileType::Symlink => Ok(None),
        FileType::Directory => Err(FsError::new(ErrorCode::BadRequest, "target is a directory")),
        _ => Err(FsError::new(
            ErrorCode::BadRequest,
            "target is not a regular file",
        )),
    }
}

/// Whether the file's permission bits let the server's user write it:
/// the owner's bits if it owns the file, the group's if it is in the
/// file's group, the others' otherwise. Root's privilege to write any file
/// is not used: a read-only file stays read-only, whoever runs the server.
fn may_write(stat: &fs::Stat) -> bool {
    let (uid, gid) = (process::geteuid().as_raw(), process::getegid().as_raw());
    let in_group = || {
        process::getgroups().is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == stat.st_gid))
    };
    let bit = if stat.st_uid == uid {
        0o200
    } else if stat.st_gid == gid || in_group() {
        0o020
    } else {
        0o002
    };
    stat.st_mode & bit != 0
}

/// A temporary name unique per upload: `.filesrv-<pid>-<counter>-<time>`.
///
/// The pid lets [`remove_stale_temps`] spare other live servers' uploads;
/// the counter separates this process's uploads; the time separates this
/// pid's uploads from those of an earlier process with the same pid.
fn unique_name() -> Vec<u8> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let mut name = RESERVED_PREFIX.to_vec();
    name.extend_from_slice(format!("{}-{count}-{nanos:x}", std::process::id()).as_bytes());
    name
}

/// Whether a reserved name is one of our temporary files left by a
/// process that is gone: it has exactly the form [`unique_name`] gives,
/// and its pid is ours (we have just started) or runs no process. Any
/// other name with the prefix is the operator's, and is kept.
fn is_stale(name: &[u8]) -> bool {
    let Some(pid) = temp_name_pid(name) else {
        return false;
    };
    pid == process::getpid()
        || !matches!(process::test_kill_process(pid), Ok(()) | Err(Errno::PERM))
}

/// The pid of a name of the form `.filesrv-<pid>-<counter>-<hex time>`.
fn temp_name_pid(name: &[u8]) -> Option<Pid> {
    let rest = std::str::from_utf8(name.strip_prefix(RESERVED_PREFIX)?).ok()?;
    let mut fields = rest.split('-');
    let (pid, counter, time) = (fields.next()?, fields.next()?, fields.next()?);
    let digits = |text: &str, radix| !text.is_empty() && text.chars().all(|c| c.is_digit(radix));
    if fields.next().is_some() || !digits(counter, 10) || !digits(time, 16) || !digits(pid, 10) {
        return None;
    }
    Pid::from_raw(pid.parse().ok()?)
}

/// Removes stale temporary files in `dir` and the directories below it,
/// following no symlinks; returns how many it removed.
pub(super) fn remove_stale_temps(dir: OwnedFd) -> usize {
    remove_below(dir, 0)
}

fn remove_below(dir: OwnedFd, depth: usize) -> usize {
    let mut removed = 0;
    let Ok(mut entries) = fs::Dir::new(dir) else {
        return 0;
    };
    while let Some(entry) = entries.read() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(errno) => {
                log::warn!("cleanup: cannot read a directory: {errno}");
                break;
            }
        };
        let Ok(dir) = entries.fd() else { break };
        removed += remove_entry(dir, entry.file_name(), depth);
    }
    removed
}

/// Removes `name` in `dir` if it is a stale temporary file, or cleans it up
/// if it is a directory.
fn remove_entry(dir: BorrowedFd<'_>, name: &CStr, depth: usize) -> usize {
    let bytes = name.to_bytes();
    if bytes == b"." || bytes == b".." {
        return 0;
    }
    let Ok(stat) = fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return 0;
    };
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile if bytes.starts_with(RESERVED_PREFIX) && is_stale(bytes) => {
            match fs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) => 1,
                Err(errno) => {
                    log::warn!("cleanup: cannot remove {}: {errno}", encode_name(bytes));
                    0
                }
            }
        }
        FileType::Directory if depth < MAX_CLEANUP_DEPTH => {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match fs::openat(dir, name, flags, Mode::empty()) {
                Ok(subdir) => remove_below(subdir, depth + 1),
                Err(errno) => {
                    log::warn!(
                        "cleanup: skipping directory {}: {errno}",
                        encode_name(bytes)
                    );
                    0
                }
            }
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Root;
    use super::super::testutil::{TempDir, roots};
    use super::*;
    use crate::protocol::wire::RelPath;

    fn path(field: &str) -> RelPath {
        field.parse().unwrap()
    }

    #[test]
    fn commit_creates_and_replaces() {
        let tmp = TempDir::new("upload-commit");
        tmp.write("dir/old.txt", b"old contents");
        for root in roots(&tmp) {
            for (field, body) in [("dir/new.txt", &b"new"[..]), ("dir/old.txt", b"replaced")] {
                let mut temp = root.create_temp(&path(field)).unwrap();
                temp.write_all(body).unwrap();
                assert_eq!(tmp.temp_files("dir").len(), 1);
                temp.commit().unwrap();
                assert_eq!(tmp.read(field), body);
                assert!(tmp.temp_files("dir").is_empty());
            }
        }
    }

    #[test]
    fn drop_without_commit_removes_the_temp_file() {
        let tmp = TempDir::new("upload-drop");
        tmp.write("keep", b"kept");
        for root in roots(&tmp) {
            let mut temp = root.create_temp(&path("keep")).unwrap();
            temp.write_all(b"partial").unwrap();
            drop(temp);
            assert!(tmp.temp_files("").is_empty());
            assert_eq!(tmp.read("keep"), b"kept");
        }
    }

    #[test]
    fn concurrent_uploads_get_their_own_files() {
        let tmp = TempDir::new("upload-concurrent");
        for root in roots(&tmp) {
            let mut first = root.create_temp(&path("same")).unwrap();
            let mut second = root.create_temp(&path("same")).unwrap();
            assert_eq!(tmp.temp_files("").len(), 2);
            first.write_all(b"first").unwrap();
            second.write_all(b"second").unwrap();
            first.commit().unwrap();
            second.commit().unwrap();
            assert_eq!(tmp.read("same"), b"second");
            assert!(tmp.temp_files("").is_empty());
        }
    }

    #[test]
    fn commit_replaces_an_inner_symlink_and_refuses_an_escaping_one() {
        let tmp = TempDir::new("upload-symlink");
        for root in roots(&tmp) {
            tmp.write("../outside/secret", b"secret");
            tmp.write("inside", b"inside");
            tmp.symlink("../outside/secret", "escape");
            tmp.symlink("../outside/missing", "escape_missing");
            tmp.symlink("inside", "link");
            tmp.symlink(".", "dir_link");
            for field in ["escape", "escape_missing"] {
                let error = root.create_temp(&path(field)).unwrap_err();
                assert_eq!(error.code(), ErrorCode::Forbidden, "{field}");
            }
            for field in ["link", "dir_link"] {
                let mut temp = root.create_temp(&path(field)).unwrap();
                temp.write_all(b"uploaded").unwrap();
                temp.commit().unwrap();
                let metadata = std::fs::symlink_metadata(tmp.root().join(field)).unwrap();
                assert!(metadata.is_file(), "{field}");
                assert_eq!(tmp.read(field), b"uploaded");
            }
            assert_eq!(tmp.read("../outside/secret"), b"secret");
            assert_eq!(tmp.read("inside"), b"inside");
            for field in ["escape", "escape_missing", "link", "dir_link"] {
                std::fs::remove_file(tmp.root().join(field)).unwrap();
            }
        }
    }

    #[test]
    fn cleanup_removes_only_stale_temp_files() {
        let tmp = TempDir::new("upload-cleanup");
        let own = format!(".filesrv-{}-0-0", std::process::id());
        let gone = ".filesrv-999999999-0-0";
        let live = ".filesrv-1-0-0";
        // The operator's own files with the prefix are never ours to remove.
        let operator = [
            ".filesrv-garbage",
            ".filesrv-readme",
            ".filesrv-1-2",
            ".filesrv-x-1-2",
        ];
        for name in [own.as_str(), gone, live, "visible"]
            .into_iter()
            .chain(operator)
        {
            tmp.write(name, b"data");
        }
        tmp.write(&format!("a/b/{gone}"), b"");
        tmp.write(&format!("../outside/{gone}"), b"");
        tmp.symlink("../outside", "a/escape");
        tmp.symlink("visible", &format!("{gone}-link"));

        let root = Root::open(tmp.root()).unwrap();
        assert_eq!(root.cleanup_stale_temps().unwrap(), 3);
        let left = tmp.temp_files("");
        let mut expected: Vec<String> = operator.iter().map(ToString::to_string).collect();
        expected.extend([live.to_string(), format!("{gone}-link")]);
        expected.sort();
        assert_eq!(left, expected);
        assert!(tmp.temp_files("a/b").is_empty());
        assert_eq!(tmp.temp_files("../outside"), [gone]);
        assert_eq!(root.cleanup_stale_temps().unwrap(), 0);
    }

    #[test]
    fn temp_names_are_unique_and_reserved() {
        let first = unique_name();
        let second = unique_name();
        assert_ne!(first, second);
        assert!(first.starts_with(RESERVED_PREFIX));
        assert!(is_stale(&first), "our own pid counts as stale at start");
    }
}
