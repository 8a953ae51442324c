//! Text from input files made safe for an error line: control characters escaped, so a
//! key name holding ESC or CR cannot drive the terminal, and lengths bounded, so a
//! hostile name cannot make a line of megabytes.

/// The longest name [`name`] shows before cutting it.
pub const NAME_CHARS: usize = 80;
/// The longest error line [`line()`] prints: room for a few paths and cut names.
pub const LINE_CHARS: usize = 2000;

/// `s` with control and other non-printing characters written as `\x1b`, `\r`, `\u{200b}`
/// (a backslash stays as it is, so that escaping twice changes nothing), cut to `max` characters with an ellipsis.
fn escaped(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            // C1 controls, bidirectional overrides, zero-width and other format characters.
            c if c.is_control() || is_format(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Unicode format characters (category Cf) that can reorder or hide text on a terminal.
fn is_format(c: char) -> bool {
    matches!(c as u32, 0xad | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff)
}

/// A name or value read from an input file (a metadata key, a tensor or node name), as it
/// goes into an error message: escaped and at most [`NAME_CHARS`] characters.
pub fn name(s: &str) -> String {
    escaped(s, NAME_CHARS)
}

/// A whole error message as the one line the CLI prints: newlines as spaces, every other
/// control character escaped, at most [`LINE_CHARS`] characters. The backstop for any
/// text from a file that reached a message without going through [`name`].
pub fn line(s: &str) -> String {
    escaped(&s.replace('\n', " "), LINE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_cuts() {
        assert_eq!(name("blk.0\x1b[2J\r"), "blk.0\\x1b[2J\\r");
        assert_eq!(name("a\\b\u{202e}"), "a\\b\\u{202e}");
        assert_eq!(line(&name("\x1b")), name("\x1b"));
        assert_eq!(name("ünïcode ok"), "ünïcode ok");
        let long = "x".repeat(500);
        assert_eq!(name(&long).chars().count(), NAME_CHARS + 1);
        assert!(name(&long).ends_with('…'));
        assert_eq!(line("a\nb"), "a b");
    }
}
