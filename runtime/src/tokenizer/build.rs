//! Building the tokenizer blob from GGUF vocabulary arrays (converter side).

use super::{Layout, PreTokenizer, Tokenizer, TokenizerError, BLOB_MAGIC, BLOB_VERSION, MAX_MERGES, MAX_TOKENS};
use super::{CONTROL, MODEL_BYTE_LEVEL_BPE, NONE, USER_DEFINED};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

/// GPT-2's `bytes_to_unicode`: bytes `!..=~`, `¡..=¬` and `®..=ÿ` stand for
/// themselves; the other 68 bytes, in increasing order, for U+0100, U+0101, ...
const fn byte_to_char_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut next = 256u16;
    let mut b = 0;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
        table[b] = if printable {
            b as u16
        } else {
            next += 1;
            next - 1
        };
        b += 1;
    }
    table
}

pub(super) const BYTE_TO_CHAR: [u16; 256] = byte_to_char_table();

/// The inverse: `CHAR_TO_BYTE[c]` is the byte that char `c` (< U+0144) stands for,
/// or `u16::MAX` if `c` is not in the alphabet.
const CHAR_TO_BYTE: [u16; 324] = {
    let mut table = [u16::MAX; 324];
    let mut b = 0;
    while b < 256 {
        table[BYTE_TO_CHAR[b] as usize] = b as u16;
        b += 1;
    }
    table
};

/// The byte a char of the byte-level alphabet stands for.
fn char_to_byte(c: char) -> Option<u8> {
    let b = *CHAR_TO_BYTE.get(c as usize)?;
    u8::try_from(b).ok()
}

/// Raw bytes of a GGUF token string in the byte-level alphabet.
fn byte_level_decode(s: &str) -> Option<Vec<u8>> {
    s.chars().map(char_to_byte).collect()
}

/// [`build_blob_with`] for SmolLM2's pre-tokenizer (GGUF `tokenizer.ggml.pre =
/// "smollm"`).
pub fn build_blob<T: AsRef<str>, M: AsRef<str>>(
    tokens: &[T],
    token_types: &[i32],
    merges: &[M],
) -> Result<Vec<u8>, TokenizerError> {
    build_blob_with(PreTokenizer::Smollm, tokens, token_types, merges)
}

/// Lays out the tokenizer blob (see the module doc) from GGUF's
/// `tokenizer.ggml.tokens`, `.token_type` and `.merges` (rank = index), and checks it
/// with [`Tokenizer::from_blob`] before returning it.
///
/// When the same pair is listed twice, the later (higher) rank is kept, as Hugging
/// Face's BPE and GPT-2's `encoder.py` do; when two tokens have the same text, merges
/// refer to the first.
pub fn build_blob_with<T: AsRef<str>, M: AsRef<str>>(
    pre: PreTokenizer,
    tokens: &[T],
    token_types: &[i32],
    merges: &[M],
) -> Result<Vec<u8>, TokenizerError> {
    let n = tokens.len();
    if n == 0 || n != token_types.len() {
        return Err(TokenizerError::CountMismatch { tokens: n, types: token_types.len() });
    }
    if n > MAX_TOKENS as usize {
        return Err(TokenizerError::TooLarge("token count"));
    }
    if merges.len() > MAX_MERGES as usize {
        return Err(TokenizerError::TooLarge("merge count"));
    }

    let mut types = Vec::with_capacity(n);
    let mut pool = Vec::new();
    let mut offsets = Vec::with_capacity(n + 1);
    offsets.push(0u32);
    for (id, (text, &ty)) in tokens.iter().zip(token_types).enumerate() {
        let id = id as u32;
        let ty = u8::try_from(ty)
            .ok()
            .filter(|&t| super::TokenType::from_u8(t).is_some())
            .ok_or(TokenizerError::BadTokenType { id, value: ty })?;
        let text = text.as_ref();
        match ty {
            CONTROL | USER_DEFINED => pool.extend_from_slice(text.as_bytes()),
            _ => match byte_level_decode(text) {
                Some(bytes) => pool.extend_from_slice(&bytes),
                // Only normal tokens must be byte-level; others may be plain text.
                None if ty != super::TokenType::Normal.to_u8() => pool.extend_from_slice(text.as_bytes()),
                None => return Err(TokenizerError::NotByteLevel { id }),
            },
        }
        types.push(ty);
        offsets.push(u32::try_from(pool.len()).map_err(|_| TokenizerError::TooLarge("token text"))?);
    }
    let bytes_of = |id: u32| &pool[offsets[id as usize] as usize..offsets[id as usize + 1] as usize];

    // GGUF text -> id, first occurrence of a text wins.
    let mut by_text: BTreeMap<&str, u32> = BTreeMap::new();
    for (id, t) in tokens.iter().enumerate() {
        by_text.entry(t.as_ref()).or_insert(id as u32);
    }

    let mut byte_token = [NONE; 256];
    for (b, slot) in byte_token.iter_mut().enumerate() {
        let mut buf = [0u8; 4];
        let c = char::from_u32(u32::from(BYTE_TO_CHAR[b])).unwrap_or('\0');
        if let Some(&id) = by_text.get(&*c.encode_utf8(&mut buf)) {
            if bytes_of(id) == [b as u8] {
                *slot = id;
            }
        }
    }

    let mut merge_table: BTreeMap<(u32, u32), (u32, u32)> = BTreeMap::new();
    let mut joined = String::new();
    for (rank, m) in merges.iter().enumerate() {
        let rank = rank as u32;
        let (left, right) = m
            .as_ref()
            .split_once(' ')
            .filter(|(l, r)| !l.is_empty() && !r.is_empty() && !r.contains(' '))
            .ok_or(TokenizerError::BadMerge { rank })?;
        joined.clear();
        joined.push_str(left);
        joined.push_str(right);
        let lookup = |s: &str| by_text.get(s).copied().ok_or(TokenizerError::MergeNotInVocab { rank });
        let (l, r, result) = (lookup(left)?, lookup(right)?, lookup(&joined)?);
        merge_table.insert((l, r), (rank, result));
    }

    let mut special: Vec<u32> = (0..n as u32)
        .filter(|&id| matches!(types[id as usize], CONTROL | USER_DEFINED) && !bytes_of(id).is_empty())
        .collect();
    special.sort_by(|&a, &b| bytes_of(b).len().cmp(&bytes_of(a).len()).then(a.cmp(&b)));

    let mut sorted: Vec<u32> = (0..n as u32).collect();
    sorted.sort_by(|&a, &b| bytes_of(a).cmp(bytes_of(b)).then(a.cmp(&b)));

    let pool_len = u32::try_from(pool.len()).map_err(|_| TokenizerError::TooLarge("token text"))?;
    let layout = Layout::new(n as u32, merge_table.len() as u32, special.len() as u32, pool_len)
        .ok_or(TokenizerError::TooLarge("tables"))?;
    let mut blob = Vec::with_capacity(layout.end);
    let put = |blob: &mut Vec<u8>, w: u32| blob.extend_from_slice(&w.to_le_bytes());
    blob.extend_from_slice(&BLOB_MAGIC);
    for w in [BLOB_VERSION, MODEL_BYTE_LEVEL_BPE, pre.to_u32(), n as u32, merge_table.len() as u32]
        .into_iter()
        .chain([special.len() as u32, pool_len])
    {
        put(&mut blob, w);
    }
    debug_assert_eq!(blob.len(), layout.byte_token);
    byte_token.iter().for_each(|&id| put(&mut blob, id));
    debug_assert_eq!(blob.len(), layout.offsets);
    offsets.iter().for_each(|&o| put(&mut blob, o));
    debug_assert_eq!(blob.len(), layout.sorted);
    sorted.iter().for_each(|&id| put(&mut blob, id));
    debug_assert_eq!(blob.len(), layout.merges);
    for (&(l, r), &(rank, result)) in &merge_table {
        [l, r, rank, result].into_iter().for_each(|w| put(&mut blob, w));
    }
    debug_assert_eq!(blob.len(), layout.special);
    special.iter().for_each(|&id| put(&mut blob, id));
    debug_assert_eq!(blob.len(), layout.types);
    blob.extend_from_slice(&types);
    blob.extend_from_slice(&pool);
    debug_assert_eq!(blob.len(), layout.end);

    Tokenizer::from_blob(&blob)?;
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 0x120); // 'Ġ'
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 0x10a); // 'Ċ'
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], b'a' as u16);
        assert_eq!(BYTE_TO_CHAR[0xad], 0x143);
        for b in 0..=255u8 {
            let c = char::from_u32(u32::from(BYTE_TO_CHAR[usize::from(b)])).unwrap();
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(byte_level_decode("ĠhelloĊ").as_deref(), Some(&b" hello\n"[..]));
        assert_eq!(byte_level_decode("▁x"), None);
    }
}
