//! Text read from topics, made safe to print on an operator's terminal.
//!
//! Keys, headers, payloads and saga state come from whoever wrote them, so they may carry
//! escape sequences that clear the screen, move the cursor, retitle the window or hide the
//! lines printed before them. Every command that prints such text passes it through here:
//! control characters become visible escapes (`\x1b`, `\r`, `\u{9b}`), bytes that are not
//! UTF-8 become `\xNN`, and printable text (any script) and newlines stay as they are, so
//! a JSON or text payload still reads naturally. Backslashes are not doubled: the output is
//! for reading, not for parsing back.

use std::fmt::Write;

/// Whether `c` is printed as is: anything but C0 and C1 controls and DEL (newline and tab
/// kept), and Unicode's bidirectional overrides, which reorder what a terminal shows.
fn shown_as_is(c: char) -> bool {
    match c {
        '\n' | '\t' => true,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => false,
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => false,
        _ => true,
    }
}

fn escape_into(out: &mut String, c: char) {
    let _ = match c {
        '\r' => write!(out, "\\r"),
        '\u{0}'..='\u{7f}' => write!(out, "\\x{:02x}", c as u32),
        _ => write!(out, "\\u{{{:x}}}", c as u32),
    };
}

/// `text` with its control characters escaped; newlines and tabs kept.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if shown_as_is(c) {
            out.push(c);
        } else {
            escape_into(&mut out, c);
        }
    }
    out
}

/// Like [`text`] on one line: newlines and tabs escaped too, for table cells and `key: value`
/// lines that must not be split.
pub fn line(value: &str) -> String {
    text(value).replace('\n', "\\n").replace('\t', "\\t")
}

/// Bytes as text: valid UTF-8 through [`text`], every other byte as `\xNN`.
pub fn bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(&text(chunk.valid()));
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// JSON as `serde_json` writes it, with what it leaves raw escaped the JSON way: it escapes
/// C0 controls itself, but not DEL, C1 controls or bidirectional overrides. The result is
/// still valid JSON with the same value.
pub fn json(value: &serde_json::Value, pretty: bool) -> String {
    let written = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    }
    .unwrap_or_default();
    let mut out = String::with_capacity(written.len());
    for c in written.chars() {
        if shown_as_is(c) {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &[u8] = b"total \x1b[2Jcleared\r\x07bell \xff\xfe\n\xc2\x9b31m next line";

    fn raw_controls(s: &str) -> Vec<char> {
        s.chars()
            .filter(|&c| !matches!(c, '\n' | '\t') && (c.is_control()))
            .collect()
    }

    #[test]
    fn hostile_bytes_become_visible_escapes_and_newlines_stay() {
        let shown = bytes(HOSTILE);
        assert_eq!(
            shown,
            "total \\x1b[2Jcleared\\r\\x07bell \\xff\\xfe\n\\u{9b}31m next line"
        );
        assert!(raw_controls(&shown).is_empty());
        assert_eq!(text("naïve 東京 {\"a\": 1}\n"), "naïve 東京 {\"a\": 1}\n");
        assert_eq!(line("a\nb\tc\u{202e}"), "a\\nb\\tc\\u{202e}");
    }

    #[test]
    fn json_stays_valid_and_equal_with_nothing_raw() {
        let v = serde_json::json!({"k": "\u{1b}[2J\r\u{7}\u{9b}\u{7f}\u{202e} ok"});
        for pretty in [false, true] {
            let shown = json(&v, pretty);
            assert!(raw_controls(&shown).is_empty(), "{shown}");
            assert!(!shown.contains('\u{202e}'));
            let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
            assert_eq!(back, v);
        }
    }
}
