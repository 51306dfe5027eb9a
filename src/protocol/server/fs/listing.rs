//! A directory listing held compactly for LIST: the names in one buffer
//! and a small fixed record per entry, so that the memory a LIST holds
//! while its reply is sent is about twice the reply's size, not a string
//! and a vector per entry and the whole reply text on top.

use std::io::{self, Write};

use crate::protocol::wire::{EntryKind, list_line};

/// The entries of one directory, sorted bytewise by raw name.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    names: Vec<u8>,
    entries: Vec<Record>,
}

/// One entry in 16 bytes: where its name lies in [`Listing::names`]
/// (names are at most 255 bytes on Linux), its kind, its size.
#[derive(Debug)]
struct Record {
    size: u64,
    start: u32,
    len: u8,
    kind: EntryKind,
}

/// One entry, borrowed from a [`Listing`]; displays as a LIST line.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Listed<'a> {
    pub(crate) kind: EntryKind,
    pub(crate) size: u64,
    pub(crate) name: &'a [u8],
}

impl Listing {
    /// Adds an entry; `false` (and nothing added) when the name is longer
    /// than 255 bytes or the names would pass 4 GiB.
    pub(super) fn push(&mut self, kind: EntryKind, size: u64, name: &[u8]) -> bool {
        let (Ok(start), Ok(len)) = (u32::try_from(self.names.len()), u8::try_from(name.len()))
        else {
            return false;
        };
        if u32::try_from(self.names.len() + name.len()).is_err() {
            return false;
        }
        self.names.extend_from_slice(name);
        self.entries.push(Record {
            size,
            start,
            len,
            kind,
        });
        true
    }

    fn name(&self, record: &Record) -> &[u8] {
        let start = record.start as usize;
        &self.names[start..start + usize::from(record.len)]
    }

    pub(super) fn sort(&mut self) {
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_unstable_by(|a, b| self.name(a).cmp(self.name(b)));
        self.entries = entries;
    }

    /// How many entries it holds.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entries in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Listed<'_>> {
        self.entries.iter().map(|record| Listed {
            kind: record.kind,
            size: record.size,
            name: self.name(record),
        })
    }

    /// Writes the reply, `OK <count>` and a line per entry, through
    /// `out`; returns the body's bytes (those of the entries' lines).
    pub(crate) fn write_reply(&self, out: &mut impl Write) -> io::Result<u64> {
        writeln!(out, "OK {}", self.len())?;
        let mut counted = Counted { out, bytes: 0 };
        for entry in self.iter() {
            writeln!(counted, "{entry}")?;
        }
        counted.flush()?;
        Ok(counted.bytes)
    }
}

impl std::fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        list_line(f, self.kind, self.size, self.name)
    }
}

/// A writer that counts what passes through it.
struct Counted<'a, W> {
    out: &'a mut W,
    bytes: u64,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_by_raw_name_and_writes_the_reply() {
        let mut listing = Listing::default();
        assert!(listing.push(EntryKind::File, 3, b"b b"));
        assert!(listing.push(EntryKind::Dir, 4096, b"a"));
        assert!(listing.push(EntryKind::File, 0, b"\xFF"));
        assert!(!listing.push(EntryKind::File, 0, &[b'x'; 256]));
        assert_eq!(std::mem::size_of::<Record>(), 16);
        listing.sort();
        let mut out = Vec::new();
        let bytes = listing.write_reply(&mut out).unwrap();
        let body = "d 4096 a\nf 3 b%20b\nf 0 %FF\n";
        assert_eq!(String::from_utf8(out).unwrap(), format!("OK 3\n{body}"));
        assert_eq!(bytes, body.len() as u64);
    }
}
