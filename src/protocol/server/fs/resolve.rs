//! Opening a path beneath the root on file descriptors, never above it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::{Errno, Result};

/// Symlinks one resolution may follow before failing with `ELOOP`, as in
/// Linux's own path walk.
const MAX_SYMLINK_HOPS: usize = 40;

/// How often `openat2` is retried when it reports a concurrent rename
/// (`EAGAIN`) or an interrupted call.
const OPENAT2_RETRIES: usize = 8;

/// How paths are resolved beneath the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resolver {
    /// The kernel's `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`.
    Openat2,
    /// Our own `O_NOFOLLOW` component walk ([`walk`]), for kernels (or
    /// sandboxes) without `openat2`.
    Walk,
}

impl Resolver {
    /// `Openat2` when the kernel accepts it on `root`, else `Walk`.
    pub(crate) fn detect(root: BorrowedFd<'_>) -> Resolver {
        match openat2_beneath(
            root,
            b"",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        ) {
            Ok(_) => Resolver::Openat2,
            Err(errno) => {
                log::debug!("openat2 unusable ({errno}); resolving paths with a component walk");
                Resolver::Walk
            }
        }
    }

    /// Opens `path` beneath `root` with `flags` (`O_CLOEXEC` added, and
    /// `O_NOCTTY` unless `O_PATH`), following symlinks at every level but
    /// never above `root`.
    ///
    /// `path` is components joined by `/`; empty means `root` itself.
    ///
    /// # Errors
    ///
    /// - `EXDEV` when the path, or a symlink on it, leads above `root`,
    ///   including through an absolute symlink;
    /// - `ELOOP` after [`MAX_SYMLINK_HOPS`] symlinks, or at a magic link;
    /// - `ENOENT`, `ENOTDIR`, `EACCES` and the rest as from `openat`.
    pub(crate) fn open(self, root: BorrowedFd<'_>, path: &[u8], flags: OFlags) -> Result<OwnedFd> {
        // openat2 refuses O_PATH with any flag but a few; it ignores the tty.
        let flags = if flags.contains(OFlags::PATH) {
            flags | OFlags::CLOEXEC
        } else {
            flags | OFlags::CLOEXEC | OFlags::NOCTTY
        };
        match self {
            Resolver::Openat2 => openat2_beneath(root, path, flags),
            Resolver::Walk => walk(root, path, flags),
        }
    }
}

fn openat2_beneath(root: BorrowedFd<'_>, path: &[u8], flags: OFlags) -> Result<OwnedFd> {
    let path = if path.is_empty() { b"." } else { path };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let mut retries = 0;
    loop {
        match fs::openat2(root, path, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN | Errno::INTR) if retries < OPENAT2_RETRIES => retries += 1,
            result => return result,
        }
    }
}

/// Resolves `path` beneath `root` one component at a time, as `openat2`
/// with `RESOLVE_BENEATH` does, and opens it with `flags`.
///
/// Each component is opened with `O_NOFOLLOW` relative to the directory
/// descriptor before it. A symlink found on the way is read and its target's
/// components are resolved in its place; `..` returns to a directory
/// descriptor already held, so the walk never looks up `..` itself and a
/// rename during the walk cannot carry it above `root`. An absolute symlink,
/// or a `..` at `root`, fails with `EXDEV`, as under `RESOLVE_BENEATH`.
fn walk(root: BorrowedFd<'_>, path: &[u8], flags: OFlags) -> Result<OwnedFd> {
    // The directories entered beneath `root`, innermost last.
    let mut dirs: Vec<OwnedFd> = Vec::new();
    // The components still to resolve, the next one last.
    let mut pending: Vec<Vec<u8>> = Vec::new();
    push_components(&mut pending, path);
    let mut hops = 0;
    while let Some(name) = pending.pop() {
        match name.as_slice() {
            b"" | b"." => continue,
            b".." => {
                dirs.pop().ok_or(Errno::XDEV)?;
                continue;
            }
            _ => {}
        }
        let dir = dirs.last().map_or(root, AsFd::as_fd);
        // A component followed by more (even just `.`) must be a directory.
        let last = pending.is_empty();
        let step_flags = if last {
            flags
        } else {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
        };
        match open_no_follow(dir, &name, step_flags)? {
            Step::Opened(fd) if last => return Ok(fd),
            Step::Opened(fd) => dirs.push(fd),
            Step::Symlink(target) => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(Errno::LOOP);
                }
                if target.is_empty() {
                    return Err(Errno::NOENT);
                }
                if target.starts_with(b"/") {
                    return Err(Errno::XDEV);
                }
                push_components(&mut pending, &target);
            }
        }
    }
    // The path ended in a directory reached by `.`, `..` or nothing at all.
    let dir = dirs.last().map_or(root, AsFd::as_fd);
    fs::openat(dir, ".", flags, Mode::empty())
}

/// Queues the components of `path` so that the first is popped first.
fn push_components(pending: &mut Vec<Vec<u8>>, path: &[u8]) {
    pending.extend(path.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
}

/// What one step of the walk found.
enum Step {
    /// The component itself, opened.
    Opened(OwnedFd),
    /// A symlink, with its target.
    Symlink(Vec<u8>),
}

/// Opens `name` in `dir` without following a symlink there.
fn open_no_follow(dir: BorrowedFd<'_>, name: &[u8], flags: OFlags) -> Result<Step> {
    let fd = match fs::openat(dir, name, flags | OFlags::NOFOLLOW, Mode::empty()) {
        Ok(fd) => fd,
        // A symlink refused by O_NOFOLLOW (or by O_DIRECTORY): read it. If it
        // is no symlink after all, the open's error stands.
        Err(errno @ (Errno::LOOP | Errno::NOTDIR)) => {
            return fs::readlinkat(dir, name, Vec::new())
                .map(|target| Step::Symlink(target.into_bytes()))
                .map_err(|_| errno);
        }
        Err(errno) => return Err(errno),
    };
    // With O_PATH, O_NOFOLLOW opens the symlink itself.
    if flags.contains(OFlags::PATH)
        && FileType::from_raw_mode(fs::fstat(&fd)?.st_mode) == FileType::Symlink
    {
        let target = fs::readlinkat(&fd, "", Vec::new())?;
        return Ok(Step::Symlink(target.into_bytes()));
    }
    Ok(Step::Opened(fd))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{TempDir, link_tree};
    use super::*;

    /// The link tree and its root, opened as a directory descriptor.
    fn tree() -> (TempDir, OwnedFd) {
        let tmp = link_tree();
        let flags = OFlags::PATH | OFlags::DIRECTORY;
        let root = fs::open(tmp.root(), flags, Mode::empty()).unwrap();
        (tmp, root)
    }

    fn content(fd: OwnedFd) -> String {
        std::io::read_to_string(std::fs::File::from(fd)).unwrap()
    }

    /// The outcome of one open, comparable across resolvers.
    fn outcome(result: Result<OwnedFd>) -> std::result::Result<(u64, u64), Errno> {
        result.map(|fd| {
            let stat = fs::fstat(fd).unwrap();
            (stat.st_dev, stat.st_ino)
        })
    }

    #[test]
    fn walk_follows_symlinks_inside_the_root() {
        let (_tmp, root) = tree();
        let open = |path: &[u8]| content(walk(root.as_fd(), path, OFlags::RDONLY).unwrap());
        assert_eq!(open(b"file.txt"), "hello");
        assert_eq!(open(b"sub/up"), "hello");
        assert_eq!(open(b"to_sub/inner"), "inner!");
        assert_eq!(open(b"through_link"), "hello");
        assert_eq!(open(b"sub/../file.txt"), "hello");
        assert_eq!(open(b"sub/./inner"), "inner!");
    }

    #[test]
    fn walk_opens_the_root_itself() {
        let (_tmp, root) = tree();
        let root_id = outcome(fs::openat(&root, ".", OFlags::PATH, Mode::empty()));
        for path in [&b""[..], b".", b"sub/..", b"to_sub/..", b"sub/"] {
            let opened = outcome(walk(root.as_fd(), path, OFlags::PATH));
            if path == b"sub/" {
                assert_ne!(opened, root_id);
            } else {
                assert_eq!(opened, root_id, "{:?}", String::from_utf8_lossy(path));
            }
        }
    }

    #[test]
    fn walk_refuses_escapes_loops_and_missing_names() {
        let (_tmp, root) = tree();
        for (path, errno) in [
            (&b".."[..], Errno::XDEV),
            (b"sub/../..", Errno::XDEV),
            (b"escape", Errno::XDEV),
            (b"escape_dir/secret", Errno::XDEV),
            (b"escape_dir/not-there", Errno::XDEV),
            (b"slash", Errno::XDEV),
            (b"slash/etc/passwd", Errno::XDEV),
            (b"absolute_inside", Errno::XDEV),
            (b"out_and_back", Errno::XDEV),
            (b"loop_a", Errno::LOOP),
            (b"loop_a/x", Errno::LOOP),
            (b"dangling", Errno::NOENT),
            (b"missing", Errno::NOENT),
            (b"file.txt/x", Errno::NOTDIR),
            (b"file.txt/", Errno::NOTDIR),
        ] {
            for flags in [OFlags::RDONLY, OFlags::PATH] {
                assert_eq!(
                    walk(root.as_fd(), path, flags).map(drop),
                    Err(errno),
                    "{:?} with {flags:?}",
                    String::from_utf8_lossy(path)
                );
            }
        }
    }

    #[test]
    fn walk_counts_symlink_hops() {
        let tmp = TempDir::new("resolve-hops");
        tmp.write("target", b"end");
        // link_0 -> target, link_n -> link_{n-1}: link_n takes n + 1 hops.
        tmp.symlink("target", "link_0");
        for n in 1..=MAX_SYMLINK_HOPS {
            tmp.symlink(format!("link_{}", n - 1), &format!("link_{n}"));
        }
        let root = fs::open(tmp.root(), OFlags::PATH, Mode::empty()).unwrap();
        let last_ok = format!("link_{}", MAX_SYMLINK_HOPS - 1);
        let too_far = format!("link_{MAX_SYMLINK_HOPS}");
        assert_eq!(
            content(walk(root.as_fd(), last_ok.as_bytes(), OFlags::RDONLY).unwrap()),
            "end"
        );
        assert_eq!(
            walk(root.as_fd(), too_far.as_bytes(), OFlags::RDONLY).map(drop),
            Err(Errno::LOOP)
        );
    }

    #[test]
    fn resolvers_agree() {
        let (_tmp, root) = tree();
        if Resolver::detect(root.as_fd()) != Resolver::Openat2 {
            eprintln!("openat2 unavailable: only the walk is tested");
            return;
        }
        for path in [
            &b""[..],
            b"file.txt",
            b"sub",
            b"sub/up",
            b"to_sub/inner",
            b"through_link",
            b"escape",
            b"escape_dir/not-there",
            b"slash",
            b"absolute_inside",
            b"out_and_back",
            b"loop_a",
            b"dangling",
            b"missing/x",
            b"file.txt/x",
            b"to_fifo",
            b"socket",
        ] {
            // Non-blocking, or opening the FIFO would wait for a writer.
            for flags in [
                OFlags::RDONLY | OFlags::NONBLOCK,
                OFlags::PATH,
                OFlags::PATH | OFlags::DIRECTORY,
            ] {
                assert_eq!(
                    outcome(Resolver::Walk.open(root.as_fd(), path, flags)),
                    outcome(Resolver::Openat2.open(root.as_fd(), path, flags)),
                    "{:?} with {flags:?}",
                    String::from_utf8_lossy(path)
                );
            }
        }
    }
}
