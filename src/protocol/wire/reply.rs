//! The bodies of `OK` replies that carry data: a STAT result and a LIST
//! line. Each is one type that the server writes ([`Display`]) and the
//! client reads ([`FromStr`]).
//!
//! [`Display`]: std::fmt::Display

use std::fmt;
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
/// use filesrv::protocol::{EntryKind, Stat};
///
/// let stat: Stat = "f 6 1764000000".parse()?;
/// assert_eq!(stat, Stat { kind: EntryKind::File, size: 6, mtime: 1_764_000_000 });
/// assert_eq!(stat.to_string(), "f 6 1764000000");
/// # Ok::<(), filesrv::protocol::MalformedReply>(())
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
/// use filesrv::protocol::{EntryKind, ListEntry};
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
        write!(f, "{} {} {}", self.kind, self.size, encode_name(&self.name))
    }
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
