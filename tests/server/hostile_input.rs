//! Hostile input without a network: property tests of the request parser
//! and the percent decoder.
//!
//! What must hold, whatever the bytes: nothing panics, nothing grows beyond
//! the input, and every escape is decoded exactly once. That no request
//! ever names, opens, lists or creates anything outside the served root,
//! and the table of known traversal and encoding attacks gathered from the
//! CVEs of FTP daemons, TFTP servers and small HTTP file servers, are unit
//! tests beside the file-system layer
//! (`src/protocol/server/fs/confinement_tests.rs`): they need its
//! crate-private `Root`.

use filesrv::protocol::wire::{
    ErrorCode, MAX_LINE, PathError, RelPath, Request, parse_request, percent_decode,
};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use crate::support::{CASES, config, contains, encode, join_encoded};

/// The reserved prefix of the server's temporary files: part of the wire
/// contract, so written out here rather than imported.
const RESERVED: &[u8] = b".filesrv-";

/// A path component, biased towards the ones that matter: empty, `.`,
/// `..`, the reserved prefix, NUL, backslash, and arbitrary bytes.
fn component() -> impl Strategy<Value = Vec<u8>> {
    let special = prop::sample::select(vec![
        &b""[..],
        b".",
        b"..",
        b"...",
        b".filesrv-1-2",
        b".filesrv",
        b"a\0b",
        b"\\",
        b"..\\..",
        b"a",
        b"%",
    ])
    .prop_map(<[u8]>::to_vec);
    let arbitrary =
        prop::collection::vec(any::<u8>().prop_filter("no slash", |&b| b != b'/'), 0..6);
    prop_oneof![3 => special, 2 => arbitrary]
}

/// What [`RelPath::decode`] must make of these raw components, written
/// from the protocol's rules (not from the implementation): empty and `.`
/// dropped, then the first offending component decides.
fn expected(components: &[Vec<u8>]) -> Result<Vec<u8>, PathError> {
    let mut joined = Vec::new();
    for c in components {
        match c.as_slice() {
            b"" | b"." => continue,
            b".." => return Err(PathError::DotDot),
            _ if c.contains(&0) => return Err(PathError::Nul),
            _ if c.contains(&b'\\') => return Err(PathError::Backslash),
            _ if c.starts_with(RESERVED) => return Err(PathError::Reserved),
            _ => {}
        }
        if !joined.is_empty() {
            joined.push(b'/');
        }
        joined.extend_from_slice(c);
    }
    Ok(joined)
}

// ---- The parser and the decoder ----

#[test]
fn parser_never_panics_and_never_outgrows_its_input() {
    // Lines up to the protocol's maximum, from two sources: raw bytes, and
    // a grammar of verbs, separators and fields that gets past the first
    // checks.
    let raw = prop::collection::vec(any::<u8>(), 0..MAX_LINE);
    let field = prop::sample::select(vec![
        "GET",
        "get",
        "PUT",
        "LIST",
        "STAT",
        "QUIT",
        "a",
        "%2e%2e",
        "..",
        "0",
        "18446744073709551616",
        "-1",
        "%",
        "%zz",
        "\t",
        "\r",
        "",
        "a b",
        "%00",
        "\u{85}",
        "é",
    ]);
    let separator = prop::sample::select(vec![" ", "  ", "\t", "", "\r"]);
    let grammar = prop::collection::vec((field, separator), 0..6).prop_map(|parts| {
        let mut line = Vec::new();
        for (field, separator) in parts {
            line.extend_from_slice(field.as_bytes());
            line.extend_from_slice(separator.as_bytes());
        }
        line
    });
    let mut runner = TestRunner::new(config(CASES));
    runner
        .run(&prop_oneof![raw, grammar], |line| {
            match parse_request(&line) {
                Ok(request) => {
                    let path = request.path().map_or(0, |path| path.as_bytes().len());
                    prop_assert!(path <= line.len());
                    // An accepted line is UTF-8 without raw control bytes
                    // (but for one final carriage return).
                    let body = line.strip_suffix(b"\r").unwrap_or(&line);
                    prop_assert!(std::str::from_utf8(body).is_ok());
                    prop_assert!(!body.iter().any(|&b| b < 0x20 || b == 0x7F));
                    prop_assert!(!contains(body, b"  ") && !body.starts_with(b" "));
                }
                Err(e) => {
                    prop_assert!(!e.message().is_empty() && !e.message().contains('\n'));
                    prop_assert!(matches!(
                        e.code(),
                        ErrorCode::BadRequest | ErrorCode::Forbidden
                    ));
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn every_escape_is_decoded_exactly_once() {
    let mut runner = TestRunner::new(config(CASES));
    runner
        .run(
            &(prop::collection::vec(any::<u8>(), 0..64), any::<u64>()),
            |(raw, seed)| {
                let once = encode(&raw, seed, false);
                prop_assert_eq!(percent_decode(&once), Ok(raw.clone()));
                // Encoded twice, one decoding gives the once-encoded form
                // back, never the raw bytes.
                let twice = encode(&once, seed.rotate_left(7), false);
                prop_assert_eq!(percent_decode(&twice), Ok(once.clone()));
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn arbitrary_escape_sequences_decode_or_fail_cleanly() {
    // Fields made of `%`, hex digits in both cases, near misses and bytes
    // that matter to paths.
    let piece = prop::sample::select(vec![
        "%", "2", "e", "E", "f", "F", "5", "c", "C", "0", "g", "G", "/", ".", "u", "+", " ", "%%",
        "%2", "%2e", "%2F", "%5c", "%00", "%c0", "%af", "%25",
    ]);
    let mut runner = TestRunner::new(config(CASES));
    runner
        .run(&prop::collection::vec(piece, 0..24), |pieces| {
            let field = pieces.concat().into_bytes();
            let well_formed = {
                let mut ok = true;
                let mut i = 0;
                while i < field.len() {
                    if field[i] == b'%' {
                        let hex = |j: usize| field.get(j).is_some_and(u8::is_ascii_hexdigit);
                        ok &= hex(i + 1) && hex(i + 2);
                        i += 3;
                    } else {
                        i += 1;
                    }
                }
                ok
            };
            match percent_decode(&field) {
                Ok(decoded) => {
                    prop_assert!(well_formed);
                    let escapes = field.iter().filter(|&&b| b == b'%').count();
                    prop_assert_eq!(decoded.len(), field.len() - 2 * escapes);
                }
                Err(e) => {
                    prop_assert!(!well_formed);
                    prop_assert_eq!(e, PathError::BadEscape);
                }
            }
            // The path decoder agrees with the plain decoder on escapes.
            if let Ok(path) = RelPath::decode(&field) {
                prop_assert!(well_formed);
                prop_assert!(path.as_bytes().len() <= field.len());
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn component_lists_decode_as_the_rules_say() {
    let mut runner = TestRunner::new(config(CASES));
    runner
        .run(
            &(prop::collection::vec(component(), 0..8), any::<u64>()),
            |(components, seed)| {
                let field = join_encoded(&components, seed, false);
                let want = expected(&components);
                let got = RelPath::decode(&field).map(|p| p.as_bytes().to_vec());
                prop_assert_eq!(&got, &want, "field {:?}", String::from_utf8_lossy(&field));
                if let Ok(joined) = &want {
                    // Never a `..`, an empty or a `.` component once decoded.
                    for c in joined
                        .split(|&b| b == b'/')
                        .filter(|c| !joined.is_empty() || !c.is_empty())
                    {
                        prop_assert!(!matches!(c, b"" | b"." | b".."));
                    }
                }
                // The same through the request parser, as a wire field.
                let ascii = join_encoded(&components, seed, true);
                let mut line = b"STAT ".to_vec();
                line.extend_from_slice(if ascii.is_empty() { b"/" } else { &ascii });
                match (parse_request(&line), want) {
                    (Ok(Request::Stat { path }), Ok(joined)) => {
                        prop_assert_eq!(path.as_bytes(), joined.as_slice());
                    }
                    (Err(e), Err(path_error)) => prop_assert_eq!(e.code(), path_error.code()),
                    (got, want) => prop_assert!(false, "{:?} vs {:?}", got, want),
                }
                Ok(())
            },
        )
        .unwrap();
}
