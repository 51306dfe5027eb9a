//! Test helpers of the file-system layer: the link tree its resolvers must
//! tell apart, and a root opened with each resolver.
//!
//! The temporary directory, the hostile tree and the path encoders come
//! from the test support crate the integration tests use too.

pub(crate) use filesrv_testkit::TempDir;
pub(crate) use filesrv_testkit::encoding::{CASES, config, join_encoded};
pub(crate) use filesrv_testkit::hostile::{SECRET, contains, outside_names, plant_hostile_tree};

use super::Root;
use super::resolve::Resolver;

/// A served tree `root` beside an `outside` directory, with links of every
/// kind the resolvers must tell apart:
///
/// - `file.txt` ("hello"), `sub/inner` ("inner!"), and links inside the
///   root to them: `sub/up`, `to_sub` (a directory), `through_link`;
/// - links leading out: `escape` (a file), `escape_dir` (a directory),
///   `slash` (`/`), `absolute_inside` (absolute, though to `file.txt`),
///   `out_and_back` (`../root/file.txt`);
/// - `loop_a` and `loop_b` (a loop), `dangling`;
/// - `fifo`, `to_fifo` and `socket` (a Unix socket nothing listens on).
pub(crate) fn link_tree() -> TempDir {
    let tmp = TempDir::new("link-tree");
    tmp.write("../outside/secret", b"secret");
    tmp.write("file.txt", b"hello");
    tmp.write("sub/inner", b"inner!");
    tmp.symlink("../file.txt", "sub/up");
    tmp.symlink("sub", "to_sub");
    tmp.symlink("to_sub/../file.txt", "through_link");
    tmp.symlink("../outside/secret", "escape");
    tmp.symlink("../outside", "escape_dir");
    tmp.symlink("/", "slash");
    tmp.symlink(tmp.root().join("file.txt"), "absolute_inside");
    tmp.symlink("../root/file.txt", "out_and_back");
    tmp.symlink("loop_b", "loop_a");
    tmp.symlink("loop_a", "loop_b");
    tmp.symlink("missing", "dangling");
    tmp.mkfifo("fifo");
    tmp.symlink("fifo", "to_fifo");
    std::os::unix::net::UnixListener::bind(tmp.root().join("socket")).unwrap();
    tmp
}

/// The root of `tmp` opened once with each resolver the kernel allows: the
/// walk always, `openat2` where it works.
pub(crate) fn roots(tmp: &TempDir) -> Vec<Root> {
    let dir = tmp.root();
    let detected = Root::open(&dir).unwrap();
    let walk = Root::open(&dir).unwrap().with_resolver(Resolver::Walk);
    let openat2 = (detected.resolver() == Resolver::Openat2).then_some(detected);
    std::iter::once(walk).chain(openat2).collect()
}
