//! Validators (`ETag`, `Last-Modified`), the conditions on them
//! (`If-None-Match`, `If-Modified-Since`, `If-Range`) and one byte range.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::reply::{http_date, push_digits};

/// A file's validators, from its metadata at open.
#[derive(Debug)]
pub(super) struct Validators {
    /// Strong: inode, size and modification time to the nanosecond, so a
    /// replaced or rewritten file gets a new one.
    pub(super) etag: String,
    /// Whole seconds, as `Last-Modified` carries them.
    pub(super) modified: SystemTime,
}

impl Validators {
    pub(super) fn of(metadata: &Metadata) -> Validators {
        let secs = u64::try_from(metadata.mtime()).unwrap_or(0);
        let nanos = u64::try_from(metadata.mtime_nsec()).unwrap_or(0);
        // `"<inode>-<size>-<seconds>.<nanoseconds>"` in hex, without `fmt`.
        let mut etag = String::with_capacity(48);
        for (part, n) in [
            ("\"", metadata.ino()),
            ("-", metadata.len()),
            ("-", secs),
            (".", nanos),
        ] {
            etag.push_str(part);
            push_digits::<16>(&mut etag, n);
        }
        etag.push('"');
        Validators {
            etag,
            modified: UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    /// The `Last-Modified` value.
    pub(super) fn last_modified(&self) -> String {
        http_date(self.modified)
    }

    /// Whether `If-None-Match` / `If-Modified-Since` make the reply a
    /// `304`: the first when present (weak comparison), else the second.
    pub(super) fn not_modified(&self, if_none_match: Option<&str>, since: Option<&str>) -> bool {
        if let Some(tags) = if_none_match {
            return tags
                .split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == self.etag);
        }
        since
            .and_then(|date| httpdate::parse_http_date(date).ok())
            .is_some_and(|date| self.modified <= date)
    }

    /// Whether an `If-Range` value lets the `Range` apply: a strong match
    /// of the entity tag, or exactly the `Last-Modified` date.
    pub(super) fn if_range_holds(&self, if_range: &str) -> bool {
        if if_range.starts_with('"') {
            return if_range == self.etag;
        }
        httpdate::parse_http_date(if_range).is_ok_and(|date| date == self.modified)
    }
}

/// What a `Range` field asks of a file of a given size.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ranged {
    /// No range, or one the server ignores (another unit, bad syntax,
    /// several ranges): the whole file.
    Whole,
    /// One satisfiable range: `start` and the length from it.
    Part { start: u64, len: u64 },
    /// `416`.
    Unsatisfiable,
}

/// Reads `bytes=a-b`, `bytes=a-` or `bytes=-n` against `size`. Several
/// ranges are answered with the whole file, never with more work.
pub(super) fn range(value: &str, size: u64) -> Ranged {
    let Some(spec) = value.strip_prefix("bytes=") else {
        return Ranged::Whole;
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ranged::Whole;
    };
    let number = |text: &str| crate::protocol::wire::number(text.trim());
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        // -n: the last n bytes.
        (true, false) => match number(last) {
            Some(0) => return Ranged::Unsatisfiable,
            Some(_) if size == 0 => return Ranged::Unsatisfiable,
            Some(n) => (size.saturating_sub(n), size - 1),
            None => return Ranged::Whole,
        },
        (false, true) => match number(first) {
            Some(a) => (a, size.saturating_sub(1)),
            None => return Ranged::Whole,
        },
        (false, false) => match (number(first), number(last)) {
            (Some(a), Some(b)) if a <= b => (a, b.min(size.saturating_sub(1))),
            _ => return Ranged::Whole,
        },
        (true, true) => return Ranged::Whole,
    };
    if start >= size {
        return Ranged::Unsatisfiable;
    }
    Ranged::Part {
        start,
        len: end - start + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_range_of_three_forms() {
        assert_eq!(range("bytes=0-0", 10), Ranged::Part { start: 0, len: 1 });
        assert_eq!(range("bytes=2-5", 10), Ranged::Part { start: 2, len: 4 });
        assert_eq!(range("bytes=8-100", 10), Ranged::Part { start: 8, len: 2 });
        assert_eq!(range("bytes=7-", 10), Ranged::Part { start: 7, len: 3 });
        assert_eq!(range("bytes=-3", 10), Ranged::Part { start: 7, len: 3 });
        assert_eq!(range("bytes=-30", 10), Ranged::Part { start: 0, len: 10 });
        assert_eq!(range("bytes=10-", 10), Ranged::Unsatisfiable);
        assert_eq!(range("bytes=-0", 10), Ranged::Unsatisfiable);
        assert_eq!(range("bytes=-1", 0), Ranged::Unsatisfiable);
        assert_eq!(range("bytes=0-1,3-4", 10), Ranged::Whole);
        assert_eq!(range("bytes=5-2", 10), Ranged::Whole);
        assert_eq!(range("items=0-1", 10), Ranged::Whole);
    }

    #[test]
    fn the_etag_and_dates_are_written_as_fmt_would() {
        let file = std::fs::File::open("Cargo.toml").unwrap();
        let metadata = file.metadata().unwrap();
        let v = Validators::of(&metadata);
        let expected = format!(
            "\"{:x}-{:x}-{:x}.{:x}\"",
            metadata.ino(),
            metadata.len(),
            metadata.mtime(),
            metadata.mtime_nsec()
        );
        assert_eq!(v.etag, expected);
        for n in [0, 9, 10, 255, u64::MAX] {
            let (mut decimal, mut hex) = (String::new(), String::new());
            push_digits::<10>(&mut decimal, n);
            push_digits::<16>(&mut hex, n);
            assert_eq!((decimal, hex), (n.to_string(), format!("{n:x}")));
        }
        // Two seconds in turn through the one-entry cache: each its own.
        for secs in [784_111_777, 784_111_778, 784_111_777] {
            let time = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(http_date(time), httpdate::fmt_http_date(time));
        }
        assert_eq!(v.last_modified(), httpdate::fmt_http_date(v.modified));
    }
}
