//! A directory listing as HTML: the entries LIST gives, each name
//! HTML-escaped in text and percent-encoded in its link.

use std::fmt::Write as _;
use std::io;

use crate::protocol::server::fs::Listing;
use crate::protocol::wire::{EntryKind, RelPath};

/// Writes the page for the directory at `path` (the root or not), whose
/// entries are `listing`, to `out`; returns its length. Written, never
/// held whole: once to [`io::sink`] for its length, then to the client.
pub(super) fn write_page(
    path: &RelPath,
    listing: &Listing,
    out: &mut impl io::Write,
) -> io::Result<u64> {
    let title = if path.is_root() {
        "/".to_owned()
    } else {
        format!("/{}/", html(path.as_bytes()))
    };
    let mut length = 0;
    let mut put = |text: &str| {
        length += text.len() as u64;
        out.write_all(text.as_bytes())
    };
    put(&format!(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Index of {title}</title>\n</head>\n<body>\n\
         <h1>Index of {title}</h1>\n<table>\n"
    ))?;
    if !path.is_root() {
        put("<tr><td><a href=\"../\">../</a></td><td></td></tr>\n")?;
    }
    let mut row = String::new();
    for entry in listing.iter() {
        let (slash, size) = match entry.kind {
            EntryKind::Dir => ("/", String::new()),
            EntryKind::File => ("", entry.size.to_string()),
        };
        row.clear();
        let _ = writeln!(
            row,
            "<tr><td><a href=\"./{}{slash}\">{}{slash}</a></td><td>{size}</td></tr>",
            link(entry.name),
            html(entry.name),
        );
        put(&row)?;
    }
    put("</table>\n</body>\n</html>\n")?;
    Ok(length)
}

/// A name as link text: invalid UTF-8 replaced, `& < > " '` escaped.
fn html(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for c in String::from_utf8_lossy(name).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A raw name for a link: every byte but the unreserved ones (RFC 3986)
/// as `%XX`, so the link decodes back to the exact name, whatever it
/// holds, and is safe inside an attribute.
fn link(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len() * 3);
    for &b in name {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_in_text_and_encoded_in_links() {
        assert_eq!(html(b"<b>&\"x'"), "&lt;b&gt;&amp;&quot;x&#39;");
        assert_eq!(link(b"a b%<\xFF"), "a%20b%25%3C%FF");
        assert_eq!(html(b"bad\xFF"), "bad\u{FFFD}");
    }
}
