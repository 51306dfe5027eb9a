//! The bodies of `OK` replies that carry data: a STAT result, a LIST
//! line and a SUM result. Each is one type that the server writes ([`Display`]) and the
//! client reads ([`FromStr`]).
//!
//! [`Display`]: std::fmt::Display

use std::fmt::{self, Write as _};
use std::str::FromStr;

use super::number::number;
use super::path::{encode_name, percent_decode};

/// The type of a file served: LIST and STAT show no others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file, `f` on the wire.
    File,
    /// A directory, `d` on the wire.
    Dir,
}

/// What STAT tells about a file or directory: `<f|d> <size> <mtime>`, the
/// text after `OK ` in the reply.
///
/// ```
/// use filesrv::protocol::wire::{EntryKind, Stat};
///
/// let stat: Stat = "f 6 1764000000".parse()?;
/// assert_eq!(stat, Stat { kind: EntryKind::File, size: 6, mtime: 1_764_000_000 });
/// assert_eq!(stat.to_string(), "f 6 1764000000");
/// # Ok::<(), filesrv::protocol::wire::MalformedReply>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// File or directory.
    pub kind: EntryKind,
    /// The size in bytes.
    pub size: u64,
    /// The modification time in whole Unix seconds, clamped at 0.
    pub mtime: u64,
}

/// One line of a LIST reply, without its `\n`: `<f|d> <size> <name>`, the
/// name written with `%XX` escapes as [`encode_name`] does.
///
/// ```
/// use filesrv::protocol::wire::{EntryKind, ListEntry};
///
/// let entry = ListEntry { kind: EntryKind::File, size: 3, name: b"my notes.txt".to_vec() };
/// assert_eq!(entry.to_string(), "f 3 my%20notes.txt");
/// assert_eq!("f 3 my%20notes.txt".parse(), Ok(entry));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// File or directory (a symlink shows as its target).
    pub kind: EntryKind,
    /// The size in bytes (of the target, for a symlink).
    pub size: u64,
    /// The name on the server's disk, decoded: raw bytes, not necessarily
    /// UTF-8.
    pub name: Vec<u8>,
}

/// What SUM tells about a file: `sha256 <hex> <n>`, the text after `OK `
/// in the reply. The digest is written as 64 lowercase hex digits, as
/// `sha256sum` prints it.
///
/// ```
/// use filesrv::protocol::wire::FileSum;
///
/// let text = "sha256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad 3";
/// let sum: FileSum = text.parse()?;
/// assert_eq!(sum.len, 3);
/// assert_eq!(sum.hex(), &text[7..71]);
/// assert_eq!(sum.to_string(), text);
/// # Ok::<(), filesrv::protocol::wire::MalformedReply>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileSum {
    /// The SHA-256 digest of the bytes hashed.
    pub sha256: [u8; 32],
    /// How many bytes were hashed.
    pub len: u64,
}

/// A reply that does not have the form the protocol gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} reply")]
pub struct MalformedReply {
    what: &'static str,
}

impl EntryKind {
    /// The kind on the wire: `f` or `d`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "f",
            EntryKind::Dir => "d",
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EntryKind {
    type Err = MalformedReply;

    fn from_str(text: &str) -> Result<EntryKind, MalformedReply> {
        match text {
            "f" => Ok(EntryKind::File),
            "d" => Ok(EntryKind::Dir),
            _ => Err(MalformedReply { what: "entry kind" }),
        }
    }
}

impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.kind, self.size, self.mtime)
    }
}

impl FromStr for Stat {
    type Err = MalformedReply;

    fn from_str(text: &str) -> Result<Stat, MalformedReply> {
        let malformed = MalformedReply { what: "STAT" };
        let mut fields = text.split(' ');
        let mut next = || fields.next().ok_or(malformed);
        let stat = Stat {
            kind: next()?.parse().map_err(|_| malformed)?,
            size: number(next()?).ok_or(malformed)?,
            mtime: number(next()?).ok_or(malformed)?,
        };
        match fields.next() {
            None => Ok(stat),
            Some(_) => Err(malformed),
        }
    }
}

impl fmt::Display for ListEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        list_line(f, self.kind, self.size, &self.name)
    }
}

/// Writes a LIST line without its `\n`: the one form, for [`ListEntry`]
/// and for the server's borrowed entries alike.
pub(crate) fn list_line(
    f: &mut fmt::Formatter<'_>,
    kind: EntryKind,
    size: u64,
    name: &[u8],
) -> fmt::Result {
    write!(f, "{kind} {size} {}", encode_name(name))
}

impl FromStr for ListEntry {
    type Err = MalformedReply;

    fn from_str(line: &str) -> Result<ListEntry, MalformedReply> {
        let malformed = MalformedReply { what: "LIST" };
        let mut fields = line.splitn(3, ' ');
        let mut next = || fields.next().ok_or(malformed);
        let kind = next()?.parse().map_err(|_| malformed)?;
        let size = number(next()?).ok_or(malformed)?;
        let name = percent_decode(next()?.as_bytes()).map_err(|_| malformed)?;
        if name.is_empty() {
            return Err(malformed);
        }
        Ok(ListEntry { kind, size, name })
    }
}

impl FileSum {
    /// The digest as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        let mut hex = String::with_capacity(64);
        for byte in self.sha256 {
            // Writing to a String cannot fail.
            let _ = write!(hex, "{byte:02x}");
        }
        hex
    }
}

impl fmt::Display for FileSum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256 {} {}", self.hex(), self.len)
    }
}

impl FromStr for FileSum {
    type Err = MalformedReply;

    fn from_str(text: &str) -> Result<FileSum, MalformedReply> {
        let malformed = MalformedReply { what: "SUM" };
        let mut fields = text.split(' ');
        let mut next = || fields.next().ok_or(malformed);
        if next()? != "sha256" {
            return Err(malformed);
        }
        let hex = next()?.as_bytes();
        if hex.len() != 64 {
            return Err(malformed);
        }
        let mut sha256 = [0; 32];
        for (byte, pair) in sha256.iter_mut().zip(hex.chunks_exact(2)) {
            let digit = |b: u8| match b {
                b'0'..=b'9' => Some(b - b'0'),
                b'a'..=b'f' => Some(b - b'a' + 10),
                _ => None,
            };
            *byte = digit(pair[0])
                .zip(digit(pair[1]))
                .map(|(h, l)| h << 4 | l)
                .ok_or(malformed)?;
        }
        let len = number(next()?).ok_or(malformed)?;
        match fields.next() {
            None => Ok(FileSum { sha256, len }),
            Some(_) => Err(malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_round_trips_and_refuses_extra_fields() {
        let stat = Stat {
            kind: EntryKind::Dir,
            size: 0,
            mtime: 0,
        };
        assert_eq!(stat.to_string().parse(), Ok(stat));
        for bad in ["", "f", "f 1", "x 1 2", "f -1 2", "f 1 2 3", "f 1 2 "] {
            assert!(bad.parse::<Stat>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn list_entry_round_trips_any_name() {
        for name in [&b"a b%c"[..], b"\n\x7f", b"\xff\xfe", "é".as_bytes()] {
            let entry = ListEntry {
                kind: EntryKind::File,
                size: 7,
                name: name.to_vec(),
            };
            assert_eq!(entry.to_string().parse(), Ok(entry));
        }
        for bad in ["", "f 1", "f 1 ", "d x a", "f 1 %zz"] {
            assert!(bad.parse::<ListEntry>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn list_lines_decode_names() {
        assert_eq!(
            ListEntry::from_str("f 12 a%20b%FF").ok(),
            Some(ListEntry {
                kind: EntryKind::File,
                size: 12,
                name: b"a b\xFF".to_vec(),
            })
        );
        assert_eq!(
            ListEntry::from_str("d 4096 dir")
                .ok()
                .map(|entry| entry.kind),
            Some(EntryKind::Dir)
        );
        for line in ["", "f 12", "x 12 a", "f -1 a", "f 12 ", "f 12 a%2"] {
            assert_eq!(line.parse::<ListEntry>().ok(), None, "{line:?}");
        }
    }

    #[test]
    fn sums_round_trip_and_refuse_other_forms() {
        let sum = FileSum {
            sha256: [0xAB; 32],
            len: 7,
        };
        assert_eq!(sum.to_string(), format!("sha256 {} 7", "ab".repeat(32)));
        assert_eq!(sum.to_string().parse(), Ok(sum));
        let hex = "ab".repeat(32);
        for bad in [
            String::new(),
            format!("sha256 {hex}"),
            format!("sha1 {hex} 7"),
            format!("sha256 {} 7", "AB".repeat(32)),
            format!("sha256 {} 7", &hex[1..]),
            format!("sha256 {hex} -7"),
            format!("sha256 {hex} 7 8"),
        ] {
            assert!(bad.parse::<FileSum>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stat_replies_have_three_fields() {
        assert_eq!(
            Stat::from_str("d 4096 1700000000").ok(),
            Some(Stat {
                kind: EntryKind::Dir,
                size: 4096,
                mtime: 1_700_000_000,
            })
        );
        for reply in ["", "f 1", "f 1 2 3", "f 1  2", "l 1 2"] {
            assert_eq!(reply.parse::<Stat>().ok(), None, "{reply:?}");
        }
    }
}
