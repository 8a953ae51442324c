//! The vocabulary of an ONNX GPT-2: `arq.vocab` (one single-byte character per token)
//! and GPT-2's byte-level alphabet its tokenizer blob spells them in.

use std::collections::HashMap;

/// GPT-2's byte-level alphabet: the character that stands for byte `b` in token strings
/// (`bytes_to_unicode`: printable Latin-1 stands for itself, the other 68 bytes for
/// U+0100, U+0101, ... in increasing order).
pub fn byte_level_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// `arq.vocab`: a JSON string of the characters in id order, or a JSON array of
/// one-character strings. Every character must be one byte in UTF-8, and distinct.
pub(super) fn parse_vocab(json: &str) -> std::result::Result<Vec<char>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("model metadata arq.vocab is not JSON ({e})"))?;
    let chars: Vec<char> = match value {
        serde_json::Value::String(s) => s.chars().collect(),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(id, v)| {
                let s = v.as_str().ok_or_else(|| format!("model metadata arq.vocab entry {id} is not a string"))?;
                let mut cs = s.chars();
                match (cs.next(), cs.next()) {
                    (Some(c), None) => Ok(c),
                    _ => Err(format!(
                        "model metadata arq.vocab entry {id} is {s:?}: only one-character tokens can be imported \
                         (a character vocabulary; merges are not supported)"
                    )),
                }
            })
            .collect::<std::result::Result<_, _>>()?,
        _ => return Err("model metadata arq.vocab is neither a JSON string nor an array of strings".into()),
    };
    if chars.is_empty() {
        return Err("model metadata arq.vocab is empty".into());
    }
    let mut seen: HashMap<char, usize> = HashMap::new();
    for (id, &c) in chars.iter().enumerate() {
        if !c.is_ascii() {
            return Err(format!(
                "model metadata arq.vocab entry {id} is {c:?} (U+{:04X}, {} bytes in UTF-8): a byte-level vocabulary \
                 without merges has one token per byte, so only single-byte (ASCII) characters can be tokens",
                c as u32,
                c.len_utf8()
            ));
        }
        if let Some(first) = seen.insert(c, id) {
            return Err(format!("model metadata arq.vocab lists {c:?} twice (ids {first} and {id})"));
        }
    }
    Ok(chars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet() {
        assert_eq!(byte_level_char(b'a'), 'a');
        assert_eq!(byte_level_char(b' '), 'Ġ');
        assert_eq!(byte_level_char(b'\n'), 'Ċ');
        assert_eq!(byte_level_char(0), 'Ā');
        assert_eq!(byte_level_char(0xAD), 'Ń');
    }

    #[test]
    fn vocab_forms() {
        assert_eq!(parse_vocab("\"\\n ab\"").unwrap(), vec!['\n', ' ', 'a', 'b']);
        assert_eq!(parse_vocab("[\"a\", \"b\"]").unwrap(), vec!['a', 'b']);
        assert!(parse_vocab("\"aé\"").unwrap_err().contains("entry 1 is 'é'"));
        assert!(parse_vocab("\"aba\"").unwrap_err().contains("twice"));
        assert!(parse_vocab("[\"ab\"]").unwrap_err().contains("one-character"));
        assert!(parse_vocab("\"\"").is_err());
        assert!(parse_vocab("3").is_err());
    }
}
