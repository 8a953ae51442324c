//! The pre-tokenizer: splits text into the pieces that BPE merges within.
//!
//! Hand-written equivalent of Hugging Face's `ByteLevel(use_regex=true)` split, the
//! GPT-2 pattern evaluated by Oniguruma (first matching alternative wins):
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! optionally preceded by `Digits(individual_digits=true)`, which isolates every
//! numeric character (Rust's `char::is_numeric`, i.e. `\p{N}`) before the pattern runs,
//! so the pattern's look-ahead never sees across a digit.
//!
//! Llama 3's pattern (and Qwen2's, the same with single digits), also one Oniguruma
//! regex in Hugging Face's `Split(behavior=Isolated)` before `ByteLevel(use_regex=false)`:
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! Character classes: `\p{L}` is General_Category Lu|Ll|Lt|Lm|Lo from the Unicode 16
//! table in `unicode.rs` (the version of the Oniguruma tables); `\p{N}` is
//! `char::is_numeric` (Nd|Nl|No); `\s` is the White_Space property, which is what both
//! Oniguruma's `\s` and `char::is_whitespace` implement (U+001C..U+001F are *not*
//! white space here, unlike Python's `str.isspace`).

use super::unicode::LETTER_RANGES;

/// Which pre-tokenization a vocabulary was trained with (GGUF `tokenizer.ggml.pre`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PreTokenizer {
    /// The GPT-2 pattern alone (GGUF `gpt2`).
    Gpt2,
    /// Every digit split off alone, then the GPT-2 pattern (GGUF `smollm`; Hugging Face
    /// `Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)]`).
    Smollm,
    /// Llama 3's pattern, and a piece that is a token is that token without merging
    /// (Hugging Face's and llama.cpp's `ignore_merges`): GGUF `llama-bpe` and the names
    /// llama.cpp treats alike.
    Llama3,
    /// Llama 3's pattern with merges always applied (GGUF `dbrx`, `smaug-bpe`).
    Dbrx,
    /// Llama 3's pattern with single digits (GGUF `qwen2`, `deepseek-r1-qwen`). Qwen2's
    /// `tokenizer.json` also NFC-normalizes the text first, which llama.cpp does not and
    /// neither does this: ids agree on NFC text.
    Qwen2,
}

impl PreTokenizer {
    /// Every `tokenizer.ggml.pre` name [`from_gguf_name`](Self::from_gguf_name) maps.
    /// These are the names llama.cpp's `llama-vocab.cpp` maps to the same regex (and the
    /// same `ignore_merges`) as each variant.
    pub const GGUF_NAMES: &'static [&'static str] = &[
        "gpt2",
        "gpt-2",
        "smollm",
        "llama3",
        "llama-v3",
        "llama-bpe",
        "falcon3",
        "falcon-h1",
        "pixtral",
        "midm-2.0",
        "lfm2",
        "jina-v5-nano",
        "dbrx",
        "smaug-bpe",
        "qwen2",
        "deepseek-r1-qwen",
        "kormo",
    ];

    /// The pre-tokenizer named by GGUF's `tokenizer.ggml.pre`, if supported.
    pub fn from_gguf_name(name: &str) -> Option<PreTokenizer> {
        Some(match name {
            "gpt2" | "gpt-2" => PreTokenizer::Gpt2,
            "smollm" => PreTokenizer::Smollm,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
            | "jina-v5-nano" => PreTokenizer::Llama3,
            "dbrx" | "smaug-bpe" => PreTokenizer::Dbrx,
            "qwen2" | "deepseek-r1-qwen" | "kormo" => PreTokenizer::Qwen2,
            _ => return None,
        })
    }

    /// A GGUF name of this pre-tokenizer.
    pub fn name(self) -> &'static str {
        match self {
            PreTokenizer::Gpt2 => "gpt2",
            PreTokenizer::Smollm => "smollm",
            PreTokenizer::Llama3 => "llama-bpe",
            PreTokenizer::Dbrx => "dbrx",
            PreTokenizer::Qwen2 => "qwen2",
        }
    }

    /// The code stored in the tokenizer blob's header.
    pub fn to_u32(self) -> u32 {
        match self {
            PreTokenizer::Gpt2 => 1,
            PreTokenizer::Smollm => 2,
            PreTokenizer::Llama3 => 3,
            PreTokenizer::Dbrx => 4,
            PreTokenizer::Qwen2 => 5,
        }
    }

    pub fn from_u32(v: u32) -> Option<PreTokenizer> {
        Some(match v {
            1 => PreTokenizer::Gpt2,
            2 => PreTokenizer::Smollm,
            3 => PreTokenizer::Llama3,
            4 => PreTokenizer::Dbrx,
            5 => PreTokenizer::Qwen2,
            _ => return None,
        })
    }

    /// Whether a piece that is itself a token skips the merges.
    pub fn ignores_merges(self) -> bool {
        self == PreTokenizer::Llama3
    }

    /// The pieces of `text`, in order; they concatenate back to `text`.
    pub fn pieces(self, text: &str) -> Pieces<'_> {
        Pieces { text, pos: 0, pre: self }
    }
}

/// Iterator over pre-tokenizer pieces (see [`PreTokenizer::pieces`]). No allocation.
#[derive(Clone, Debug)]
pub struct Pieces<'t> {
    text: &'t str,
    pos: usize,
    pre: PreTokenizer,
}

impl<'t> Iterator for Pieces<'t> {
    type Item = &'t str;

    fn next(&mut self) -> Option<&'t str> {
        let rest = self.text.get(self.pos..)?;
        let first = rest.chars().next()?;
        let len = match self.pre {
            PreTokenizer::Smollm if first.is_numeric() => first.len_utf8(),
            PreTokenizer::Smollm => pattern_match(rest, first, true),
            PreTokenizer::Gpt2 => pattern_match(rest, first, false),
            PreTokenizer::Llama3 | PreTokenizer::Dbrx => llama3_match(rest, first, 3),
            PreTokenizer::Qwen2 => llama3_match(rest, first, 1),
        };
        // Never empty, so the iterator always advances.
        let piece = rest.get(..len.max(first.len_utf8()))?;
        self.pos += piece.len();
        Some(piece)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_ascii() {
        return match c {
            'a'..='z' | 'A'..='Z' => Class::Letter,
            '0'..='9' => Class::Number,
            '\t' | '\n' | '\x0b' | '\x0c' | '\r' | ' ' => Class::Space,
            _ => Class::Other,
        };
    }
    if c.is_whitespace() {
        Class::Space
    } else if c.is_numeric() {
        Class::Number
    } else if is_letter(c) {
        Class::Letter
    } else {
        Class::Other
    }
}

/// General_Category L (Unicode 16).
pub(crate) fn is_letter(c: char) -> bool {
    let cp = c as u32;
    // Last range starting at or before `cp`.
    let i = LETTER_RANGES.partition_point(|&r| (r >> 11) <= cp);
    match i.checked_sub(1).and_then(|i| LETTER_RANGES.get(i)) {
        Some(&r) => cp - (r >> 11) <= (r & 0x7ff),
        None => false,
    }
}

/// Byte length of the pattern's match at the start of `s` (non-empty, starting with
/// `first`). Every position matches some alternative, so the result is > 0.
///
/// With `split_digits` (Smollm), the Digits pre-tokenizer has cut the text before
/// every numeric char and the pattern runs on each segment as on a string of its own:
/// a numeric char after the match start acts as the end of the input. (Letter and
/// other runs stop at numeric chars anyway; only the optional leading space and the
/// white-space look-ahead can see the difference.)
fn pattern_match(s: &str, first: char, split_digits: bool) -> usize {
    let after = s.get(first.len_utf8()..).unwrap_or("");
    // 's|'t|'re|'ve|'m|'ll|'d
    if first == '\'' {
        for suffix in ["s", "t", "re", "ve", "m", "ll", "d"] {
            if after.starts_with(suffix) {
                return 1 + suffix.len();
            }
        }
    }
    let at_end = |c: Option<char>| match c {
        None => true,
        Some(c) => split_digits && c.is_numeric(),
    };
    // ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+`: the classes are disjoint, so the class of
    // the first char after an optional space picks the alternative.
    let next = after.chars().next();
    let (skip, c) = match next {
        Some(next) if first == ' ' && !at_end(Some(next)) && class(next) != Class::Space => (1, next),
        _ => (0, first),
    };
    let cls = class(c);
    if cls != Class::Space {
        return skip + run_len(s.get(skip..).unwrap_or(""), |c| class(c) == cls);
    }
    // `\s+(?!\S)|\s+`: a white-space run, less its last char when a non-space follows
    // (that char then leads the next piece, e.g. " word"), unless the run is one char.
    let run = run_len(s, |c| class(c) == Class::Space);
    let Some(ws) = s.get(..run) else {
        return s.len();
    };
    if at_end(s.get(run..).and_then(|t| t.chars().next())) {
        return run;
    }
    let last = ws.chars().next_back().map_or(0, char::len_utf8);
    if run > last {
        run - last
    } else {
        run
    }
}

/// Byte length of Llama 3's pattern's match at the start of `s` (non-empty, starting
/// with `first`), numbers in runs of at most `max_digits`. Every position matches some
/// alternative; the alternatives are tried in order, as Oniguruma does.
fn llama3_match(s: &str, first: char, max_digits: usize) -> usize {
    let after = s.get(first.len_utf8()..).unwrap_or("");
    let second = after.chars().next();
    // (?i:'s|'t|'re|'ve|'m|'ll|'d): Oniguruma folds case by Unicode, so 'ſ' (U+017F,
    // LATIN SMALL LETTER LONG S) matches `s` too.
    if first == '\'' {
        let mut cs = after.chars().map(|c| match c {
            '\u{17f}' => 's',
            c => c.to_ascii_lowercase(),
        });
        let (a, b) = (cs.next(), cs.next());
        match (a, b) {
            (Some('s' | 't' | 'm' | 'd'), _) => return 1 + second.map_or(0, char::len_utf8),
            (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => {
                let two: usize = after.chars().take(2).map(char::len_utf8).sum();
                return 1 + two;
            }
            _ => {}
        }
    }
    let cls = class(first);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if cls == Class::Letter {
        return run_len(s, is_letter_class);
    }
    if first != '\r' && first != '\n' && cls != Class::Number && second.is_some_and(is_letter_class) {
        return first.len_utf8() + run_len(after, is_letter_class);
    }
    // \p{N}{1,max_digits}
    if cls == Class::Number {
        return s.chars().take_while(|&c| class(c) == Class::Number).take(max_digits).map(char::len_utf8).sum();
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    let skip = usize::from(first == ' ' && second.is_some_and(|c| class(c) == Class::Other));
    if cls == Class::Other || skip == 1 {
        let rest = s.get(skip..).unwrap_or("");
        let other = run_len(rest, |c| class(c) == Class::Other);
        let newlines = run_len(rest.get(other..).unwrap_or(""), |c| c == '\r' || c == '\n');
        return skip + other + newlines;
    }
    // White space: \s*[\r\n]+ ends after the run's last CR or LF; else \s+(?!\S) is
    // the run less its last char when a non-space follows; else \s+.
    let run = run_len(s, |c| class(c) == Class::Space);
    let ws = s.get(..run).unwrap_or("");
    if let Some(i) = ws.rfind(['\r', '\n']) {
        return i + 1;
    }
    if run == s.len() {
        return run;
    }
    let last = ws.chars().next_back().map_or(0, char::len_utf8);
    if run > last {
        run - last
    } else {
        run
    }
}

fn is_letter_class(c: char) -> bool {
    class(c) == Class::Letter
}

/// Byte length of the longest prefix of `s` whose chars all satisfy `pred`.
fn run_len(s: &str, pred: impl Fn(char) -> bool) -> usize {
    s.char_indices().find(|&(_, c)| !pred(c)).map_or(s.len(), |(i, _)| i)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn split(pre: PreTokenizer, s: &str) -> Vec<&str> {
        pre.pieces(s).collect()
    }

    #[test]
    fn gpt2_pattern() {
        let p = PreTokenizer::Gpt2;
        assert_eq!(split(p, "Hello world"), ["Hello", " world"]);
        assert_eq!(split(p, "a  b"), ["a", " ", " b"]);
        assert_eq!(split(p, "a \n\n b  "), ["a", " \n\n", " b", "  "]);
        assert_eq!(split(p, "I'm he's 'sam"), ["I", "'m", " he", "'s", " '", "sam"]);
        assert_eq!(split(p, "x 123!!"), ["x", " 123", "!!"]);
        assert_eq!(split(p, "\tb"), ["\t", "b"]);
        assert_eq!(split(p, " "), [" "]);
        assert_eq!(split(p, ""), [] as [&str; 0]);
    }

    #[test]
    fn smollm_isolates_digits() {
        let p = PreTokenizer::Smollm;
        assert_eq!(split(p, "x 123!!"), ["x", " ", "1", "2", "3", "!!"]);
        assert_eq!(split(p, "a  1"), ["a", "  ", "1"]);
        assert_eq!(split(p, "½ ٣x"), ["½", " ", "٣", "x"]);
    }

    #[test]
    fn classes() {
        assert!(is_letter('a') && is_letter('é') && is_letter('中') && is_letter('ʰ'));
        assert!(!is_letter('\u{301}') && !is_letter('Ⅻ') && !is_letter('Ⓐ') && !is_letter('1'));
        assert_eq!(class('\u{1c}'), Class::Other);
        assert_eq!(class('\u{85}'), Class::Space);
        assert_eq!(class('\u{3000}'), Class::Space);
        assert_eq!(class('Ⅻ'), Class::Number);
    }
}
