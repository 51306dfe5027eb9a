//! A planted tree of hostile links around a served root, and the checks
//! that nothing outside it leaked.

use crate::tempdir::TempDir;

/// The content of the only file outside the served root: no reply may
/// ever contain it.
pub const SECRET: &[u8] = b"SECRET-OUTSIDE-THE-ROOT\n";

/// Plants, beneath `dir`, a secret outside the root and links that try to
/// reach it every way a link can, next to benign files and links:
///
/// - `outside/secret.txt` ([`SECRET`]), and `root-evil/secret.txt`, a
///   sibling whose name starts with the root's (the prefix-comparison bug
///   of CVE-2014-6394 in Node's `send`);
/// - inside: `file.txt` ("inside\n"), `sub/inner.txt` ("inner\n"),
///   `sub/up` -> `../file.txt`, `to_sub` -> `sub`, `sub/self` -> `.`,
///   `deep/a/b/ok` -> `../../../file.txt`;
/// - escaping: `out_file` -> `../outside/secret.txt`, `out_dir` ->
///   `../outside`, `slash` -> `/`, `abs_inside` -> the absolute path of
///   `file.txt`, `evil_sibling` -> `../root-evil/secret.txt`,
///   `deep/a/b/c` -> `../../../../outside`, `proc_root` ->
///   `/proc/self/root`, `dangling_out` -> `../outside/nowhere`;
/// - broken: `dangling` -> `nowhere`, `loop_a` <-> `loop_b`, `self_loop`.
pub fn plant_hostile_tree(dir: &TempDir) {
    dir.write("../outside/secret.txt", SECRET);
    dir.write("../root-evil/secret.txt", SECRET);

    dir.write("file.txt", "inside\n");
    dir.write("sub/inner.txt", "inner\n");
    dir.write("deep/a/b/.keep", "");
    dir.symlink("../file.txt", "sub/up");
    dir.symlink("sub", "to_sub");
    dir.symlink(".", "sub/self");
    dir.symlink("../../../file.txt", "deep/a/b/ok");
    dir.symlink("../outside/secret.txt", "out_file");
    dir.symlink("../outside", "out_dir");
    dir.symlink("/", "slash");
    dir.symlink(dir.root().join("file.txt"), "abs_inside");
    dir.symlink("../root-evil/secret.txt", "evil_sibling");
    dir.symlink("../../../../outside", "deep/a/b/c");
    dir.symlink("/proc/self/root", "proc_root");
    dir.symlink("../outside/nowhere", "dangling_out");
    dir.symlink("nowhere", "dangling");
    dir.symlink("loop_b", "loop_a");
    dir.symlink("loop_a", "loop_b");
    dir.symlink("self_loop", "self_loop");
}

/// The names in the directory outside the root, to prove nothing was
/// written there.
pub fn outside_names(dir: &TempDir) -> Vec<String> {
    dir.names("../outside")
}

/// Whether `haystack` holds `needle` anywhere.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
