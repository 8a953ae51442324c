//! Streaming UTF-8 decoding of token bytes.

/// Turns a stream of token bytes into text without ever emitting half a character.
///
/// A token can end in the middle of a multi-byte character (byte-level BPE splits
/// emoji and CJK characters into several tokens); the incomplete tail (at most 3
/// bytes) is held until the next [`push`](Self::push) completes it. Invalid bytes
/// become U+FFFD exactly as `String::from_utf8_lossy` (and Hugging Face's decoder)
/// would replace them in the concatenated bytes: the text emitted by a sequence of
/// pushes and a final [`flush`](Self::flush) equals `from_utf8_lossy` of all the bytes,
/// however they were split.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utf8Stream {
    pending: [u8; 4],
    len: u8,
}

const REPLACEMENT: &str = "\u{fffd}";

impl Utf8Stream {
    pub const fn new() -> Utf8Stream {
        Utf8Stream { pending: [0; 4], len: 0 }
    }

    /// The bytes held back: a valid but incomplete UTF-8 prefix (0 to 3 bytes).
    pub fn pending(&self) -> &[u8] {
        &self.pending[..usize::from(self.len).min(3)]
    }

    /// Decodes `bytes` after whatever is pending, calling `emit` with each run of
    /// complete text (possibly several times, never with an empty string).
    pub fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&str)) {
        // First finish the held-back character, one byte at a time.
        while self.len > 0 {
            let Some((&b, rest)) = bytes.split_first() else {
                return;
            };
            let n = usize::from(self.len);
            let mut buf = self.pending;
            buf[n] = b;
            match core::str::from_utf8(&buf[..=n]) {
                Ok(s) => {
                    emit(s);
                    self.len = 0;
                    bytes = rest;
                }
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix (n + 1 <= 3 here, as 4 bytes complete any
                    // valid prefix).
                    self.pending = buf;
                    self.len += 1;
                    bytes = rest;
                }
                Err(_) => {
                    // `b` cannot continue the held bytes: they are one maximal invalid
                    // subpart, and `b` starts afresh below.
                    emit(REPLACEMENT);
                    self.len = 0;
                }
            }
        }
        let mut chunks = bytes.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            if !chunk.valid().is_empty() {
                emit(chunk.valid());
            }
            let invalid = chunk.invalid();
            if invalid.is_empty() {
                continue;
            }
            let incomplete =
                chunks.peek().is_none() && matches!(core::str::from_utf8(invalid), Err(e) if e.error_len().is_none());
            if incomplete && invalid.len() < 4 {
                self.pending[..invalid.len()].copy_from_slice(invalid);
                self.len = invalid.len() as u8;
            } else {
                emit(REPLACEMENT);
            }
        }
    }

    /// Ends the stream: an incomplete character still held becomes U+FFFD.
    pub fn flush(&mut self, mut emit: impl FnMut(&str)) {
        if self.len > 0 {
            self.len = 0;
            emit(REPLACEMENT);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    fn stream(parts: &[&[u8]]) -> (String, Vec<String>) {
        let mut s = Utf8Stream::new();
        let mut out = String::new();
        let mut pieces = Vec::new();
        for p in parts {
            s.push(p, |t| {
                assert!(!t.is_empty());
                out.push_str(t);
                pieces.push(String::from(t));
            });
        }
        s.flush(|t| out.push_str(t));
        (out, pieces)
    }

    #[test]
    fn multibyte_split_across_pushes() {
        let text = "aé中😀👩‍👩‍👧b";
        let bytes = text.as_bytes();
        // Every split into single bytes, and every split point in two.
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        let (out, pieces) = stream(&singles);
        assert_eq!(out, text);
        for p in pieces {
            assert!(p.chars().count() >= 1);
        }
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let (out, _) = stream(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(out, text, "split at {i}, {j}");
            }
        }
        let mut s = Utf8Stream::new();
        s.push(&"😀".as_bytes()[..3], |_| panic!("emitted half a character"));
        assert_eq!(s.pending(), &"😀".as_bytes()[..3]);
    }

    #[test]
    fn invalid_bytes_match_from_utf8_lossy() {
        let cases: &[&[u8]] = &[
            b"\xff",
            b"a\x80b",
            b"\xe2\x82",
            b"\xe2\x82a",
            b"\xe2\x82\xe2\x82\xac",
            b"\xf0\x9f\x98",
            b"\xf0\x9f\x98\x80\xf0",
            b"\xed\xa0\x80",
            b"\xc0\xaf",
            b"\xf4\x90\x80\x80",
            b"\xe0\x80\x80x",
            b"ok\xf0\x9f",
        ];
        for case in cases {
            let want = String::from_utf8_lossy(case);
            for i in 0..=case.len() {
                for j in i..=case.len() {
                    let (out, _) = stream(&[&case[..i], &case[i..j], &case[j..]]);
                    assert_eq!(out, want, "{case:x?} split at {i}, {j}");
                }
            }
            let singles: Vec<&[u8]> = case.chunks(1).collect();
            assert_eq!(stream(&singles).0, want, "{case:x?} byte by byte");
        }
    }
}
