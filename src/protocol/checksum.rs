//! The SHA-256 of a file's first bytes, in one streaming pass: what the
//! server answers SUM with, and what the client compares it against.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

use sha2::{Digest as _, Sha256};

use crate::protocol::wire::FileSum;
use crate::util::chunk_len;

/// The read size: large enough that the hash, not the system calls,
/// sets the pace, small enough to stay in the L2 cache.
const CHUNK: usize = 256 * 1024;

/// Hashes the first `length` bytes of `file` (from offset 0, whatever its
/// cursor), stopping early if the file ends first: the result then says
/// how many bytes were hashed.
pub(crate) fn sum_prefix(file: &File, length: u64) -> io::Result<FileSum> {
    sum_prefix_until(file, length, &|| false)
}

/// [`sum_prefix`], giving up with [`io::ErrorKind::Interrupted`] as soon
/// as `cancelled` says so between chunks (a server shutting down must not
/// wait for the hash of a huge file).
pub(crate) fn sum_prefix_until(
    file: &File,
    length: u64,
    cancelled: &dyn Fn() -> bool,
) -> io::Result<FileSum> {
    // The kernel reads ahead more aggressively for a sequential reader.
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Sequential);
    let mut hasher = Sha256::new();
    let mut buf = vec![0; chunk_len(length, CHUNK)];
    let mut done = 0;
    while done < length {
        if cancelled() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
        let want = chunk_len(length - done, CHUNK);
        match file.read_at(&mut buf[..want], done) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                done += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(FileSum {
        sha256: hasher.finalize().into(),
        len: done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn hashes_prefixes_across_chunks() {
        let mut file = tempfile();
        // Known answers: `printf abc | sha256sum`, and the empty input.
        file.write_all(b"abc").unwrap();
        assert_eq!(
            sum_prefix(&file, 3).unwrap().to_string(),
            "sha256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad 3"
        );
        assert_eq!(
            sum_prefix(&file, 0).unwrap().hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // More than one chunk, and a file shorter than asked.
        let body: Vec<u8> = (0..CHUNK * 2 + 7)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        file.write_all(&body).unwrap();
        let mut whole = b"abc".to_vec();
        whole.extend_from_slice(&body);
        let expected: [u8; 32] = Sha256::digest(&whole).into();
        let sum = sum_prefix(&file, whole.len() as u64 + 100).unwrap();
        assert_eq!((sum.sha256, sum.len), (expected, whole.len() as u64));
        let expected: [u8; 32] = Sha256::digest(&whole[..CHUNK + 1]).into();
        assert_eq!(
            sum_prefix(&file, CHUNK as u64 + 1).unwrap().sha256,
            expected
        );
        let cancelled = sum_prefix_until(&file, 10, &|| true).unwrap_err();
        assert_eq!(cancelled.kind(), io::ErrorKind::Interrupted);
    }

    fn tempfile() -> File {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("filesrv-sum-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }
}
