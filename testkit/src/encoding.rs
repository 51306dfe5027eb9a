//! Random percent-encodings of raw paths, for the property tests of the
//! decoder (integration tests) and of confinement beneath the root (the
//! crate's unit tests).

use proptest::test_runner::Config;

/// Cases per property: enough to cover the grammar, small enough for two
/// cores.
pub const CASES: u32 = 512;

/// A runner configuration with `cases` cases and no persisted failures.
pub fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// A tiny xorshift generator, for encoding choices derived from one seed.
struct Coin(u64);

impl Coin {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Writes `raw` as a request field: `%` always escaped, bytes outside
/// printable ASCII escaped when `ascii_only`, everything else escaped at
/// random, in random hex case.
pub fn encode(raw: &[u8], seed: u64, ascii_only: bool) -> Vec<u8> {
    let mut coin = Coin(seed | 1);
    let mut out = Vec::with_capacity(raw.len() * 3);
    for &byte in raw {
        let must = byte == b'%' || (ascii_only && !(0x21..=0x7E).contains(&byte));
        if must || coin.next().is_multiple_of(3) {
            let escape = if coin.next().is_multiple_of(2) {
                format!("%{byte:02X}")
            } else {
                format!("%{byte:02x}")
            };
            out.extend_from_slice(escape.as_bytes());
        } else {
            out.push(byte);
        }
    }
    out
}

/// Joins components with separators, each one literal or `%2F` at random.
pub fn join_encoded(components: &[Vec<u8>], seed: u64, ascii_only: bool) -> Vec<u8> {
    let mut coin = Coin(seed.rotate_left(17) | 1);
    let mut field = Vec::new();
    if coin.next().is_multiple_of(2) {
        field.push(b'/');
    }
    for (i, c) in components.iter().enumerate() {
        if i > 0 {
            let separator: &[u8] = match coin.next() % 3 {
                0 => b"%2F",
                1 => b"%2f",
                _ => b"/",
            };
            field.extend_from_slice(separator);
        }
        field.extend(encode(c, seed.wrapping_add(i as u64), ascii_only));
    }
    field
}
