//! Percent encoding and validated relative paths.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use super::ErrorCode;

/// The prefix of the server's temporary upload files.
///
/// A path component starting with it is refused with `forbidden`, and LIST
/// never shows such names.
pub(crate) const RESERVED_PREFIX: &[u8] = b".filesrv-";

/// A path relative to the served root, decoded and checked.
///
/// Every component is non-empty and holds no `/`, NUL or backslash, is not
/// `.` or `..`, and does not start with the reserved prefix `.filesrv-`. Components are
/// raw bytes: names on disk need not be UTF-8. The empty path is the root.
///
/// Its [`Display`](fmt::Display) form is the encoded request field (`.` for
/// the root), which decodes back to the same path and is safe to log.
///
/// ```
/// use filesrv::protocol::wire::RelPath;
///
/// let path = RelPath::decode(b"/docs//./my%20notes.txt")?;
/// assert_eq!(path.as_bytes(), b"docs/my notes.txt");
/// assert_eq!(path.file_name(), Some(&b"my notes.txt"[..]));
/// assert_eq!(path.to_string(), "docs/my%20notes.txt");
/// # Ok::<(), filesrv::protocol::wire::PathError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath {
    /// The components joined by `/`; empty for the root.
    joined: Vec<u8>,
}

/// Why a request path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
#[non_exhaustive]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A `..` component.
    DotDot,
    /// A NUL byte.
    Nul,
    /// A backslash.
    Backslash,
    /// A component starting with the reserved prefix `.filesrv-`.
    Reserved,
}

impl PathError {
    /// A short message for people, fit for an `ERR` reply.
    pub fn message(self) -> &'static str {
        match self {
            PathError::BadEscape => "bad percent escape in path",
            PathError::DotDot => "path must not contain a `..` component",
            PathError::Nul => "path must not contain a NUL byte",
            PathError::Backslash => "path must not contain a backslash",
            PathError::Reserved => "path uses the server's reserved prefix",
        }
    }

    /// The reply code: `bad-request` for a bad escape, else `forbidden`.
    pub fn code(self) -> ErrorCode {
        match self {
            PathError::BadEscape => ErrorCode::BadRequest,
            PathError::DotDot | PathError::Nul | PathError::Backslash | PathError::Reserved => {
                ErrorCode::Forbidden
            }
        }
    }
}

impl RelPath {
    /// The served root itself.
    pub fn root() -> RelPath {
        RelPath::default()
    }

    /// Decodes a request path field.
    ///
    /// Every `%XX` escape is decoded once over the whole field, then the
    /// result is split on `/` (so `%2F` separates components), empty and `.`
    /// components are dropped, and the rest are checked.
    ///
    /// # Errors
    ///
    /// - [`PathError::BadEscape`] for a `%` not followed by two hex digits;
    /// - [`PathError::DotDot`], [`PathError::Nul`], [`PathError::Backslash`]
    ///   or [`PathError::Reserved`] for a refused component.
    pub fn decode(field: &[u8]) -> Result<RelPath, PathError> {
        let decoded = percent_decode(field)?;
        let mut joined = Vec::with_capacity(decoded.len());
        for component in decoded.split(|&b| b == b'/') {
            match component {
                b"" | b"." => continue,
                b".." => return Err(PathError::DotDot),
                _ if component.contains(&0) => return Err(PathError::Nul),
                _ if component.contains(&b'\\') => return Err(PathError::Backslash),
                _ if component.starts_with(RESERVED_PREFIX) => return Err(PathError::Reserved),
                _ => {}
            }
            if !joined.is_empty() {
                joined.push(b'/');
            }
            joined.extend_from_slice(component);
        }
        Ok(RelPath { joined })
    }

    /// Whether a component starts with `.`: a hidden name, served only
    /// when the server is told to (`--hidden`).
    pub fn is_hidden(&self) -> bool {
        self.components()
            .any(|component| component.starts_with(b"."))
    }

    /// Whether this is the root (no components).
    pub fn is_root(&self) -> bool {
        self.joined.is_empty()
    }

    /// The components joined by `/`, as raw bytes; empty for the root.
    pub fn as_bytes(&self) -> &[u8] {
        &self.joined
    }

    /// The components, first to last.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.joined
            .split(|&b| b == b'/')
            .filter(|component| !component.is_empty())
    }

    /// The final component, or `None` for the root.
    pub fn file_name(&self) -> Option<&[u8]> {
        self.split_last().map(|(_, name)| name)
    }

    /// The path without its final component, or `None` for the root.
    pub fn parent(&self) -> Option<RelPath> {
        self.split_last().map(|(parent, _)| RelPath {
            joined: parent.to_vec(),
        })
    }

    /// The path with `name` appended, for a name read from a directory.
    ///
    /// `name` must be a valid component (the kernel guarantees no `/` or NUL
    /// in directory entries).
    pub(crate) fn join(&self, name: &[u8]) -> RelPath {
        debug_assert!(!name.is_empty() && !name.contains(&b'/') && !name.contains(&0));
        let mut joined = self.joined.clone();
        if !joined.is_empty() {
            joined.push(b'/');
        }
        joined.extend_from_slice(name);
        RelPath { joined }
    }

    /// The joined bytes of the parent and the final component.
    fn split_last(&self) -> Option<(&[u8], &[u8])> {
        if self.is_root() {
            return None;
        }
        Some(match self.joined.iter().rposition(|&b| b == b'/') {
            Some(slash) => (&self.joined[..slash], &self.joined[slash + 1..]),
            None => (&[], &self.joined[..]),
        })
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            f.write_str(".")
        } else {
            // `/` is written literally, so this is the encoded request field.
            f.write_str(&encode_name(&self.joined))
        }
    }
}

impl FromStr for RelPath {
    type Err = PathError;

    /// Same as [`RelPath::decode`].
    fn from_str(field: &str) -> Result<Self, Self::Err> {
        RelPath::decode(field.as_bytes())
    }
}

/// Decodes every `%XX` escape (hex digits in either case) exactly once.
///
/// Other bytes are copied as they are. The result need not be UTF-8: it is
/// the raw name a LIST reply's [`encode_name`] stands for.
///
/// # Errors
///
/// [`PathError::BadEscape`] for a `%` not followed by two hex digits.
pub fn percent_decode(field: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter();
    while let Some(&byte) = bytes.next() {
        if byte == b'%' {
            let high = bytes.next().and_then(|&b| hex_value(b));
            let low = bytes.next().and_then(|&b| hex_value(b));
            match (high, low) {
                (Some(high), Some(low)) => out.push(high << 4 | low),
                _ => return Err(PathError::BadEscape),
            }
        } else {
            out.push(byte);
        }
    }
    Ok(out)
}

/// Encodes a raw name for a LIST reply (or a request field).
///
/// Written as `%XX` (upper-case hex): space, `%`, bytes below 0x20, 0x7F,
/// the two bytes of each UTF-8 C1 control (U+0080 to U+009F), and every byte
/// that is not part of valid UTF-8. Everything else, `/` included, is
/// literal. [`percent_decode`] gives the raw bytes back.
///
/// ```
/// use filesrv::protocol::wire::encode_name;
///
/// assert_eq!(encode_name(b"a b%c\n"), "a%20b%25c%0A");
/// assert_eq!(encode_name("café".as_bytes()), "café");
/// assert_eq!(encode_name(b"bad\xFF"), "bad%FF");
/// ```
pub fn encode_name(raw: &[u8]) -> String {
    escape(raw, |c| c == ' ' || c == '%' || c.is_control())
}

/// A request line for a log: as the client wrote it, but with control
/// characters and invalid UTF-8 as `%XX`, so one request is one log line
/// that cannot forge another. A final `\r` is left out.
pub(crate) fn printable_line(raw: &[u8]) -> String {
    escape(raw.strip_suffix(b"\r").unwrap_or(raw), char::is_control)
}

/// `raw` with the characters `escaped` picks, and invalid UTF-8, as `%XX`.
fn escape(raw: &[u8], escaped: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if escaped(c) {
                // `is_control` is exactly C0, DEL and C1.
                let mut buf = [0; 4];
                push_escaped(&mut out, c.encode_utf8(&mut buf).as_bytes());
            } else {
                out.push(c);
            }
        }
        push_escaped(&mut out, chunk.invalid());
    }
    out
}

/// Appends `%XX` for every byte.
fn push_escaped(out: &mut String, bytes: &[u8]) {
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "%{byte:02X}");
    }
}

/// The value of one hex digit, in either case.
fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(field: &str) -> Result<RelPath, PathError> {
        RelPath::decode(field.as_bytes())
    }

    #[test]
    fn decode_ignores_empty_and_dot_components() {
        for (field, joined) in [
            ("a/b", &b"a/b"[..]),
            ("/a//b/", b"a/b"),
            ("./a/./b/.", b"a/b"),
            ("/", b""),
            (".", b""),
            ("%2F%2e/", b""),
            ("a%2Fb", b"a/b"),
            ("...", b"..."),
            ("..a/b..", b"..a/b.."),
            (".filesrv", b".filesrv"),
            ("x.filesrv-y", b"x.filesrv-y"),
        ] {
            assert_eq!(decode(field).unwrap().as_bytes(), joined, "{field:?}");
        }
    }

    #[test]
    fn decode_decodes_every_escape_once() {
        assert_eq!(decode("%41%62%7e").unwrap().as_bytes(), b"Ab~");
        assert_eq!(decode("%2541").unwrap().as_bytes(), b"%41");
        assert_eq!(decode("%FF%fe").unwrap().as_bytes(), b"\xFF\xFE");
        assert_eq!(decode("caf%C3%A9").unwrap().as_bytes(), "café".as_bytes());
    }

    #[test]
    fn decode_refuses_bad_escapes() {
        for field in ["%", "%4", "a%4/b", "%G0", "%0g", "%%41", "a%", "%-1", "% 1"] {
            assert_eq!(decode(field), Err(PathError::BadEscape), "{field:?}");
        }
        assert_eq!(PathError::BadEscape.code(), ErrorCode::BadRequest);
    }

    #[test]
    fn decode_refuses_forbidden_components() {
        for (field, error) in [
            ("..", PathError::DotDot),
            ("a/../b", PathError::DotDot),
            ("a/..", PathError::DotDot),
            ("%2E%2E", PathError::DotDot),
            ("a%2F%2e%2e%2Fb", PathError::DotDot),
            ("a%00b", PathError::Nul),
            ("a\\b", PathError::Backslash),
            ("a%5Cb", PathError::Backslash),
            (".filesrv-123", PathError::Reserved),
            ("dir/.filesrv-x/y", PathError::Reserved),
            ("%2Efilesrv-x", PathError::Reserved),
        ] {
            assert_eq!(decode(field), Err(error), "{field:?}");
            assert_eq!(error.code(), ErrorCode::Forbidden);
        }
    }

    #[test]
    fn parent_and_file_name() {
        let root = RelPath::root();
        assert!(root.is_root());
        assert_eq!(root.file_name(), None);
        assert_eq!(root.parent(), None);
        assert_eq!(root.components().count(), 0);

        let single = decode("a").unwrap();
        assert_eq!(single.file_name(), Some(&b"a"[..]));
        assert_eq!(single.parent(), Some(RelPath::root()));

        let deep = decode("a/b/c").unwrap();
        assert_eq!(deep.file_name(), Some(&b"c"[..]));
        assert_eq!(deep.parent(), Some(decode("a/b").unwrap()));
        assert_eq!(deep.components().collect::<Vec<_>>(), [b"a", b"b", b"c"]);
        assert_eq!(RelPath::root().join(b"a").join(b"b").join(b"c"), deep);
    }

    #[test]
    fn display_is_the_encoded_field() {
        assert_eq!(RelPath::root().to_string(), ".");
        let path = decode("a%20b/%0Aline%FF/%C2%85").unwrap();
        assert_eq!(path.to_string(), "a%20b/%0Aline%FF/%C2%85");
        assert_eq!(decode(&path.to_string()), Ok(path));
    }

    #[test]
    fn encode_name_escapes_exactly_the_listed_bytes() {
        assert_eq!(encode_name(b"plain-name_1.txt"), "plain-name_1.txt");
        assert_eq!(encode_name(b" %"), "%20%25");
        assert_eq!(encode_name(b"\x00\x01\x1F\x7F"), "%00%01%1F%7F");
        assert_eq!(
            encode_name("\u{80}\u{9F}\u{A0}".as_bytes()),
            "%C2%80%C2%9F\u{A0}"
        );
        assert_eq!(encode_name("日本/ü".as_bytes()), "日本/ü");
        assert_eq!(encode_name(b"\xC3"), "%C3");
        assert_eq!(encode_name(b"a\xE6\x97b"), "a%E6%97b");
        assert_eq!(encode_name(b"\xED\xA0\x80"), "%ED%A0%80");
    }

    proptest! {
        #[test]
        fn encoded_names_decode_to_the_raw_bytes(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let encoded = encode_name(&raw);
            prop_assert!(!encoded.bytes().any(|b| b <= b' ' || b == 0x7F));
            prop_assert!(!encoded.chars().any(char::is_control));
            prop_assert_eq!(percent_decode(encoded.as_bytes()), Ok(raw));
        }

        #[test]
        fn decoded_paths_are_valid(field in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(path) = RelPath::decode(&field) {
                for component in path.components() {
                    prop_assert!(!component.is_empty());
                    prop_assert!(component != b"." && component != b"..");
                    prop_assert!(!component.contains(&0) && !component.contains(&b'\\'));
                    prop_assert!(!component.starts_with(RESERVED_PREFIX));
                }
                prop_assert_eq!(RelPath::decode(path.to_string().as_bytes()), Ok(path));
            }
        }
    }
}
