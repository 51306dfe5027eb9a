//! The served directory and the file operations confined beneath it.

use std::fmt;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self, AtFlags, FileType, Mode, OFlags, Stat as RawStat};
use rustix::io::Errno;

use super::error::FsError;
use super::listing::Listing;
use super::resolve::Resolver;
use super::upload::{self, TempFile};
use crate::protocol::wire::{EntryKind, ErrorCode, RESERVED_PREFIX, RelPath, Stat, encode_name};

/// The served directory, held open: every path is resolved beneath it on
/// file descriptors.
///
/// Resolution follows symlinks at every level but never above the root, and
/// holds against a symlink swapped in while it runs: it uses `openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` where the kernel has it, and an
/// `O_NOFOLLOW` component walk elsewhere. Outcomes map to reply codes:
///
/// - no such file, or a component that is not a directory: `not-found`;
/// - a path leading outside the root, even to a name that does not exist
///   there: `forbidden`;
/// - permission denied: `forbidden`;
/// - a symlink loop, or more than 40 symlinks in one path: `forbidden`, as
///   the server declines to resolve it (the kernel reports a `/proc` magic
///   link the same way);
/// - a FIFO, socket or device where a file is needed: `bad-request`;
/// - any other I/O error: `internal`.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
    resolver: Resolver,
}

impl Root {
    /// Opens the directory to serve.
    ///
    /// # Errors
    ///
    /// The error of opening `path` as a directory.
    pub(crate) fn open(path: impl AsRef<Path>) -> io::Result<Root> {
        let fd = fs::open(
            path.as_ref(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let resolver = Resolver::detect(fd.as_fd());
        Ok(Root { fd, resolver })
    }

    /// The directory `path` beneath this root, as a root of its own: a
    /// user's root. It is resolved by the same rules as every request, so
    /// it can never lie outside this root.
    ///
    /// # Errors
    ///
    /// As listed on [`Root`]; a path that is not a directory is
    /// `not-found`.
    pub(crate) fn open_beneath(&self, path: &RelPath) -> Result<Root, FsError> {
        let fd = self.resolve(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok(Root {
            fd,
            resolver: self.resolver,
        })
    }

    /// Opens a regular file for reading (GET).
    ///
    /// The file is opened with `O_NONBLOCK`, so a FIFO never blocks, and its
    /// type is checked on the opened descriptor.
    ///
    /// # Errors
    ///
    /// As listed on [`Root`]; a directory, FIFO, socket or device is
    /// `bad-request`.
    pub(crate) fn open_file(&self, path: &RelPath) -> Result<(File, Metadata), FsError> {
        let flags = OFlags::RDONLY | OFlags::NONBLOCK;
        let file = File::from(self.resolve(path, flags)?);
        let metadata = file.metadata()?;
        if metadata.is_file() {
            Ok((file, metadata))
        } else if metadata.is_dir() {
            Err(FsError::new(ErrorCode::BadRequest, "is a directory"))
        } else {
            Err(FsError::new(ErrorCode::BadRequest, "not a regular file"))
        }
    }

    /// Describes a regular file or directory (STAT); the root is a directory.
    ///
    /// # Errors
    ///
    /// As listed on [`Root`]; a FIFO, socket or device is `bad-request`.
    pub(crate) fn stat(&self, path: &RelPath) -> Result<Stat, FsError> {
        let (_, stat) = self.resolve_stat(path)?;
        let kind = kind_of(&stat).ok_or_else(|| {
            FsError::new(ErrorCode::BadRequest, "not a regular file or directory")
        })?;
        Ok(Stat {
            kind,
            size: size_of(&stat),
            mtime: u64::try_from(stat.st_mtime).unwrap_or(0),
        })
    }

    /// Lists a directory (LIST), sorted bytewise by raw name.
    ///
    /// Left out: `.` and `..`, names with the reserved
    /// prefix `.filesrv-`, hidden names (starting with `.`) unless
    /// `hidden`, FIFOs, sockets and devices, symlinks that
    /// are broken, loop or lead outside the root, and entries that vanish
    /// while the listing runs. Other symlinks show as their target's type and
    /// size.
    ///
    /// # Errors
    ///
    /// As listed on [`Root`]; a path that is not a directory is
    /// `bad-request`; a directory with more than `max_entries` entries to
    /// show (0: no cap) is `too-large`, found out before more are read.
    pub(crate) fn list(
        &self,
        path: &RelPath,
        hidden: bool,
        max_entries: usize,
    ) -> Result<Listing, FsError> {
        let dir = self.open_dir(path, ErrorCode::BadRequest)?;
        let mut dir = fs::Dir::new(dir).map_err(FsError::internal)?;
        let mut listing = Listing::default();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(FsError::internal)?;
            let name = entry.file_name().to_bytes();
            if name == b"."
                || name == b".."
                || name.starts_with(RESERVED_PREFIX)
                || (!hidden && name.starts_with(b"."))
            {
                continue;
            }
            let dir_fd = dir.fd().map_err(FsError::internal)?;
            if let Some((kind, size)) = self.list_entry(dir_fd, path, name) {
                if max_entries != 0 && listing.len() == max_entries {
                    return Err(FsError::new(
                        ErrorCode::TooLarge,
                        "directory holds more entries than one LIST may return",
                    ));
                }
                if !listing.push(kind, size, name) {
                    return Err(FsError::new(
                        ErrorCode::TooLarge,
                        "directory listing too large to send",
                    ));
                }
            }
        }
        listing.sort();
        Ok(listing)
    }

    /// Starts an upload (PUT) to `target`: a new temporary file in the
    /// target's directory, to be [committed](TempFile::commit) once the body
    /// is complete.
    ///
    /// A symlink at the target name that stays beneath the root is fine:
    /// the commit replaces the link, never writes through it.
    ///
    /// # Errors
    ///
    /// - `not-found` when the parent directory is missing or not a directory;
    /// - `forbidden` when the parent, or a symlink at the target name,
    ///   leads outside the root;
    /// - `bad-request` when the target is the root, a directory, a FIFO, a
    ///   socket or a device;
    /// - `internal` when the temporary file cannot be created.
    pub(crate) fn create_temp(&self, target: &RelPath) -> Result<TempFile, FsError> {
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(FsError::new(ErrorCode::BadRequest, "is a directory"));
        };
        let dir = self.open_dir(&parent, ErrorCode::NotFound)?;
        // A symlink there that leads outside the root is refused as a GET
        // of it would be; one that stays inside is replaced, not followed.
        // (A loop or a dangling link is replaced like any other.)
        let resolved = self
            .resolver
            .open(self.fd.as_fd(), target.as_bytes(), OFlags::PATH);
        if let Err(errno @ Errno::XDEV) = resolved {
            return Err(FsError::resolving(errno));
        }
        TempFile::create(dir, name)
    }

    /// Removes the temporary files a killed server left beneath the root;
    /// returns how many it removed.
    ///
    /// Call it at start, before serving: it also removes temporary files of
    /// this process. Files of another live server process sharing the root
    /// are kept. The walk follows no symlinks and descends at most 64
    /// directories; directories it cannot read are skipped with a warning.
    ///
    /// # Errors
    ///
    /// The error of opening the root itself for reading.
    pub(crate) fn cleanup_stale_temps(&self) -> Result<usize, FsError> {
        Ok(upload::remove_stale_temps(
            self.open_dir(&RelPath::root(), ErrorCode::Internal)?,
        ))
    }

    /// Opens `path` beneath the root with `flags`.
    fn resolve(&self, path: &RelPath, flags: OFlags) -> Result<OwnedFd, FsError> {
        self.resolver
            .open(self.fd.as_fd(), path.as_bytes(), flags)
            .map_err(FsError::resolving)
    }

    /// Opens `path` with `O_PATH` (no read permission needed, no side
    /// effects on devices) and stats the descriptor.
    fn resolve_stat(&self, path: &RelPath) -> Result<(OwnedFd, RawStat), FsError> {
        let fd = self.resolve(path, OFlags::PATH)?;
        let stat = fs::fstat(&fd).map_err(FsError::internal)?;
        Ok((fd, stat))
    }

    /// Opens a directory for reading entries and as a base for `*at` calls;
    /// anything else is an error with code `not_a_dir`.
    fn open_dir(&self, path: &RelPath, not_a_dir: ErrorCode) -> Result<OwnedFd, FsError> {
        let (fd, stat) = self.resolve_stat(path)?;
        if kind_of(&stat) != Some(EntryKind::Dir) {
            return Err(FsError::new(not_a_dir, "not a directory"));
        }
        // Reopening `.` through the O_PATH descriptor keeps the same inode.
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        fs::openat(&fd, ".", flags, Mode::empty()).map_err(FsError::resolving)
    }

    /// The kind and size LIST shows for `name` in `dir` (the directory at
    /// `dir_path`), or `None` when it is not to be shown.
    fn list_entry(
        &self,
        dir: BorrowedFd<'_>,
        dir_path: &RelPath,
        name: &[u8],
    ) -> Option<(EntryKind, u64)> {
        let skip = |error: &dyn fmt::Display| {
            log::debug!("LIST {dir_path}: skipping {}: {error}", encode_name(name));
        };
        let mut stat = fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .inspect_err(|errno| skip(errno))
            .ok()?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
            (_, stat) = self
                .resolve_stat(&dir_path.join(name))
                .inspect_err(|error| skip(error))
                .ok()?;
        }
        Some((kind_of(&stat)?, size_of(&stat)))
    }

    /// The same root resolved with `resolver`, to test both.
    #[cfg(test)]
    pub(crate) fn with_resolver(self, resolver: Resolver) -> Root {
        Root { resolver, ..self }
    }

    /// How this root resolves paths.
    #[cfg(test)]
    pub(crate) fn resolver(&self) -> Resolver {
        self.resolver
    }
}

/// The size in bytes, clamped at 0.
fn size_of(stat: &RawStat) -> u64 {
    u64::try_from(stat.st_size).unwrap_or(0)
}

/// The kind of a stat result; `None` for anything not served.
fn kind_of(stat: &RawStat) -> Option<EntryKind> {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => Some(EntryKind::File),
        FileType::Directory => Some(EntryKind::Dir),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{TempDir, link_tree as tree, roots};
    use super::*;
    use std::ffi::OsStr;
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt as _;

    fn path(field: &str) -> RelPath {
        field.parse().unwrap()
    }

    #[track_caller]
    fn assert_code<T: fmt::Debug>(result: Result<T, FsError>, code: ErrorCode, what: &str) {
        let error = result.expect_err(what);
        assert_eq!(error.code(), code, "{what}: {error}");
        assert!(!error.message().contains('/'), "{what}: {error}");
    }

    #[test]
    fn open_file_reads_files_through_inner_links() {
        let tmp = tree();
        for root in roots(&tmp) {
            for (field, expected) in [
                ("file.txt", "hello"),
                ("sub/up", "hello"),
                ("to_sub/inner", "inner!"),
            ] {
                let (mut file, metadata) = root.open_file(&path(field)).unwrap();
                let mut text = String::new();
                file.read_to_string(&mut text).unwrap();
                assert_eq!(
                    (text.as_str(), metadata.len()),
                    (expected, expected.len() as u64)
                );
            }
        }
    }

    #[test]
    fn open_file_refuses_with_the_right_code() {
        let tmp = tree();
        for root in roots(&tmp) {
            for (field, code) in [
                ("escape", ErrorCode::Forbidden),
                ("escape_dir/secret", ErrorCode::Forbidden),
                ("escape_dir/not-there", ErrorCode::Forbidden),
                ("slash", ErrorCode::Forbidden),
                ("slash/etc/passwd", ErrorCode::Forbidden),
                ("loop_a", ErrorCode::Forbidden),
                ("dangling", ErrorCode::NotFound),
                ("missing", ErrorCode::NotFound),
                ("file.txt/x", ErrorCode::NotFound),
                ("sub", ErrorCode::BadRequest),
                (".", ErrorCode::BadRequest),
                // Opening a FIFO must not block, whether or not a writer
                // exists: the test would hang here.
                ("fifo", ErrorCode::BadRequest),
                ("to_fifo", ErrorCode::BadRequest),
                ("socket", ErrorCode::BadRequest),
            ] {
                assert_code(root.open_file(&path(field)), code, field);
            }
        }
    }

    #[test]
    fn stat_describes_files_and_directories() {
        let tmp = tree();
        for root in roots(&tmp) {
            let file = root.stat(&path("sub/up")).unwrap();
            assert_eq!((file.kind, file.size), (EntryKind::File, 5));
            assert!(file.mtime > 1_600_000_000);
            assert_eq!(file.to_string(), format!("f 5 {}", file.mtime));
            assert_eq!(root.stat(&RelPath::root()).unwrap().kind, EntryKind::Dir);
            assert_eq!(root.stat(&path("to_sub")).unwrap().kind, EntryKind::Dir);
            assert_code(root.stat(&path("fifo")), ErrorCode::BadRequest, "fifo");
            assert_code(root.stat(&path("socket")), ErrorCode::BadRequest, "socket");
            assert_code(root.stat(&path("escape")), ErrorCode::Forbidden, "escape");
            assert_code(
                root.stat(&path("dangling")),
                ErrorCode::NotFound,
                "dangling",
            );
        }
    }

    #[test]
    fn stat_clamps_mtime_at_zero() {
        let tmp = TempDir::new("root-mtime");
        tmp.write("old", b"");
        let before_epoch = fs::Timestamps {
            last_access: fs::Timespec {
                tv_sec: -100,
                tv_nsec: 0,
            },
            last_modification: fs::Timespec {
                tv_sec: -100,
                tv_nsec: 0,
            },
        };
        if fs::utimensat(
            fs::CWD,
            tmp.root().join("old"),
            &before_epoch,
            AtFlags::empty(),
        )
        .is_err()
        {
            eprintln!("this file system refuses times before 1970");
            return;
        }
        for root in roots(&tmp) {
            assert_eq!(root.stat(&path("old")).unwrap().mtime, 0);
        }
    }

    #[test]
    fn list_shows_served_entries_sorted() {
        let tmp = tree();
        tmp.write("b b", b"12");
        tmp.write(".filesrv-1-2-3", b"");
        std::fs::write(tmp.root().join(OsStr::from_bytes(b"z\xFF")), b"").unwrap();
        for root in roots(&tmp) {
            let lines: Vec<String> = root
                .list(&RelPath::root(), true, 0)
                .unwrap()
                .iter()
                .map(|entry| entry.to_string())
                .collect();
            let dir_size = root.stat(&path("sub")).unwrap().size;
            assert_eq!(
                lines,
                [
                    "f 2 b%20b".to_string(),
                    "f 5 file.txt".into(),
                    format!("d {dir_size} sub"),
                    "f 5 through_link".into(),
                    format!("d {dir_size} to_sub"),
                    "f 0 z%FF".into(),
                ]
            );
            let inner: Vec<String> = root
                .list(&path("to_sub"), true, 0)
                .unwrap()
                .iter()
                .map(|entry| entry.to_string())
                .collect();
            assert_eq!(inner, ["f 6 inner", "f 5 up"]);
        }
    }

    #[test]
    fn list_refuses_with_the_right_code() {
        let tmp = tree();
        for root in roots(&tmp) {
            for (field, code) in [
                ("file.txt", ErrorCode::BadRequest),
                ("fifo", ErrorCode::BadRequest),
                ("missing", ErrorCode::NotFound),
                ("escape_dir", ErrorCode::Forbidden),
                ("slash", ErrorCode::Forbidden),
            ] {
                assert_code(root.list(&path(field), true, 0), code, field);
            }
        }
    }

    #[test]
    fn create_temp_refuses_bad_targets() {
        let tmp = tree();
        for root in roots(&tmp) {
            for (field, code) in [
                (".", ErrorCode::BadRequest),
                ("sub", ErrorCode::BadRequest),
                ("fifo", ErrorCode::BadRequest),
                ("socket", ErrorCode::BadRequest),
                ("missing/new", ErrorCode::NotFound),
                ("file.txt/new", ErrorCode::NotFound),
                ("dangling/new", ErrorCode::NotFound),
                ("escape_dir/new", ErrorCode::Forbidden),
                ("slash/tmp/new", ErrorCode::Forbidden),
            ] {
                assert_code(root.create_temp(&path(field)), code, field);
            }
        }
    }

    #[test]
    fn errors_keep_their_source() {
        let error = FsError::resolving(Errno::XDEV);
        assert_eq!(error.to_string(), error.message());
        let source = std::error::Error::source(&error).unwrap();
        assert!(source.downcast_ref::<io::Error>().is_some());

        let disk_full = FsError::from(io::Error::from_raw_os_error(Errno::NOSPC.raw_os_error()));
        assert_eq!(disk_full.code(), ErrorCode::Internal);
        assert_eq!(
            disk_full.message(),
            "disk full: no space left on the server"
        );
        let plain = FsError::from(io::Error::other("no errno"));
        assert_eq!(plain.code(), ErrorCode::Internal);
    }
}
