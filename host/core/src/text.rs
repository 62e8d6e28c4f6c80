//! Text from tenants, made safe to show: plugin log lines, handler error
//! messages, panic and trap text, names and values printed in the CLI's
//! tables.
//!
//! Two operations, with one truncation rule between them:
//!
//! - [`escape`] is for anything that reaches a host log line or a
//!   terminal. Every control character is written as an escape, so a
//!   tenant can neither start a forged log line (CR, LF) nor send escape
//!   sequences to an operator's terminal (ESC and the other C0 and C1
//!   controls), nor reorder what a terminal shows (Unicode bidirectional
//!   controls): LF as `\n`, CR as `\r`, tab as `\t` (a tab would break a
//!   table's columns), every other one as `\u{1b}` (its code point in
//!   hex). A backslash is left as it is: the output is for people to read,
//!   never parsed back, and doubling every backslash of a Windows path
//!   would make it harder to read.
//! - [`truncate`] and [`truncate_in_place`] only bound the length, for
//!   text that is stored and escaped later, where it is shown (a
//!   delivery's failure message).
//!
//! Both cut at a byte budget, on a character boundary (an escape is kept
//! whole or not at all), and append [`marker`]: `… [N bytes truncated]`,
//! where `N` counts the bytes of the original text that were left out.
//! Text that fits is returned as it is, without a copy.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The marker appended to cut text: how many bytes of the original text
/// were left out.
pub fn marker(left_out: usize) -> String {
    format!("… [{left_out} bytes truncated]")
}

/// The most bytes [`marker`] adds (for a count of up to 20 digits).
pub const MAX_MARKER_BYTES: usize = "… [".len() + 20 + " bytes truncated]".len();

/// Whether `c` is written as an escape by [`escape`]: the C0 and C1
/// control characters and DEL, the Unicode bidirectional controls, and the
/// line and paragraph separators.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Appends `c` to `out`, escaped when it [needs it](needs_escape).
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if needs_escape(c) => {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// `text` made safe for a log line or a terminal, at most `max_bytes`
/// bytes before the marker: every control character escaped (see the
/// module's documentation), then cut on a character boundary with
/// [`marker`] when the escaped text is longer than `max_bytes`.
///
/// Borrows `text` when it has nothing to escape and fits.
pub fn escape(text: &str, max_bytes: usize) -> Cow<'_, str> {
    // Printable ASCII, the common case, needs no decoding.
    let plain = text.bytes().all(|b| (0x20..0x7f).contains(&b)) || !text.chars().any(needs_escape);
    if plain {
        return truncate(text, max_bytes);
    }
    let mut out = String::with_capacity(text.len().min(max_bytes) + MAX_MARKER_BYTES);
    for (at, c) in text.char_indices() {
        let before = out.len();
        push_escaped(&mut out, c);
        if out.len() > max_bytes {
            out.truncate(before);
            out.push_str(&marker(text.len() - at));
            return Cow::Owned(out);
        }
    }
    Cow::Owned(out)
}

/// The longest prefix of `text` that fits in `max_bytes`, on a character
/// boundary, followed by [`marker`] when something was cut; `text` itself
/// when it fits. Nothing is escaped.
pub fn truncate(text: &str, max_bytes: usize) -> Cow<'_, str> {
    if text.len() <= max_bytes {
        return Cow::Borrowed(text);
    }
    let end = floor_char_boundary(text, max_bytes);
    let mut out = String::with_capacity(end + MAX_MARKER_BYTES);
    out.push_str(&text[..end]);
    out.push_str(&marker(text.len() - end));
    Cow::Owned(out)
}

/// Like [`truncate`], in place: cuts `text` to at most `max_bytes` on a
/// character boundary, appends [`marker`], and gives back the memory the
/// cut freed. True when something was cut.
pub fn truncate_in_place(text: &mut String, max_bytes: usize) -> bool {
    if text.len() <= max_bytes {
        return false;
    }
    let end = floor_char_boundary(text, max_bytes);
    let left_out = text.len() - end;
    text.truncate(end);
    text.push_str(&marker(left_out));
    text.shrink_to_fit();
    true
}

/// The largest character boundary of `text` at or below `at`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_that_fits_is_borrowed() {
        assert!(matches!(escape("order 12 ok", 64), Cow::Borrowed(_)));
        assert!(matches!(escape("größe €", 64), Cow::Borrowed(_)));
        assert!(matches!(truncate("abc", 3), Cow::Borrowed(_)));
        assert_eq!(escape("", 0), "");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape("a\nb\rc\td\u{1b}[31me\u{0}f\u{7f}g\u{9b}h", 1000),
            "a\\nb\\rc\\td\\u{1b}[31me\\u{0}f\\u{7f}g\\u{9b}h"
        );
        assert_eq!(
            escape("x\u{202e}y\u{2028}z\u{2066}", 1000),
            "x\\u{202e}y\\u{2028}z\\u{2066}"
        );
        // A backslash stays, printable Unicode stays.
        assert_eq!(escape("C:\\dir é\n", 1000), "C:\\dir é\\n");
    }

    #[test]
    fn no_control_character_survives_escaping() {
        // Every code point up to U+3000, in one text.
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let escaped = escape(&all, usize::MAX);
        assert!(!escaped.chars().any(needs_escape), "{escaped}");
        assert!(!escaped.contains(['\n', '\r', '\u{1b}']));
    }

    #[test]
    fn escaping_cuts_at_the_budget_without_splitting_an_escape() {
        // Exactly at the budget: kept whole.
        assert_eq!(escape("ab\ncd", 6), "ab\\ncd");
        // One byte under: the last character goes, and the marker says so.
        assert_eq!(escape("ab\ncd", 5), format!("ab\\nc{}", marker(1)));
        // The escape of LF takes two bytes: with room for one, it goes whole.
        assert_eq!(escape("ab\ncd", 3), format!("ab{}", marker(3)));
        // Plain text over the budget is cut the same way.
        assert_eq!(escape("abcdef", 4), format!("abcd{}", marker(2)));
        // The output before the marker never passes the budget.
        for max in 0..40 {
            let out = escape("é\u{1b}[2J€\r\nforged", max);
            let body = out.split('…').next().unwrap_or_default();
            assert!(body.len() <= max, "{max}: {out:?}");
        }
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        let cut = truncate("ééé", 3);
        assert_eq!(cut, format!("é{}", marker(4)));
        // At the budget nothing is cut; one byte over, the marker appears.
        assert_eq!(truncate("abcd", 4), "abcd");
        assert_eq!(truncate("abcde", 4), format!("abcd{}", marker(1)));
        assert_eq!(truncate("€", 0), marker(3));
    }

    #[test]
    fn truncation_in_place_matches_and_frees_memory() {
        for (text, max) in [("abc", 5), ("ééé", 3), ("abcde", 4), ("€uro", 2)] {
            let mut owned = text.to_owned();
            let cut = truncate_in_place(&mut owned, max);
            assert_eq!(owned, truncate(text, max), "{text} at {max}");
            assert_eq!(cut, text.len() > max);
        }
        let mut big = "x".repeat(1 << 20);
        assert!(truncate_in_place(&mut big, 100));
        assert!(big.capacity() < 1024, "{}", big.capacity());
        assert!(big.ends_with(&marker((1 << 20) - 100)));
    }

    #[test]
    fn the_marker_fits_its_bound() {
        assert!(marker(usize::MAX).len() <= MAX_MARKER_BYTES);
    }
}
