//! The one rule for numbers on the wire, in requests and replies alike.

/// A protocol number: one or more ASCII digits (leading zeros allowed)
/// that fit in a `u64`.
pub(crate) fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_digits_only() {
        assert_eq!(number("0"), Some(0));
        assert_eq!(number("007"), Some(7));
        assert_eq!(number("18446744073709551615"), Some(u64::MAX));
        for text in [
            "",
            "+1",
            "-1",
            " 1",
            "1 ",
            "0x1",
            "1e3",
            "18446744073709551616",
        ] {
            assert_eq!(number(text), None, "{text:?}");
        }
    }
}
