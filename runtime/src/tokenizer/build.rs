//! Building the tokenizer blob from GGUF vocabulary arrays (converter side).

use super::{Layout, PreTokenizer, Tokenizer, TokenizerError, BLOB_MAGIC, BLOB_VERSION, MAX_MERGES, MAX_TOKENS};
use super::{BYTE, CONTROL, MODEL_BYTE_LEVEL_BPE, MODEL_SENTENCEPIECE, NONE, SPM_ADD_SPACE_PREFIX, USER_DEFINED};
use super::{MODEL_CHARS, MODEL_WORDS};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
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
    let layout = Layout::new(n as u32, merge_table.len() as u32, special.len() as u32, pool_len, false)
        .ok_or(TokenizerError::TooLarge("tables"))?;
    let mut blob = Vec::with_capacity(layout.end);
    let put = |blob: &mut Vec<u8>, w: u32| blob.extend_from_slice(&w.to_le_bytes());
    blob.extend_from_slice(&BLOB_MAGIC);
    // Byte-level blobs stay version 1: files written before version 2 load unchanged
    // and new ones load in older builds.
    for w in [1, MODEL_BYTE_LEVEL_BPE, pre.to_u32(), n as u32, merge_table.len() as u32]
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

/// What a SentencePiece vocabulary's arrays do not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpmOptions {
    /// Prepend a space to the input's first text (GGUF `tokenizer.ggml.add_space_prefix`).
    pub add_space_prefix: bool,
    /// The unknown token (GGUF `tokenizer.ggml.unknown_token_id`).
    pub unk: Option<u32>,
    /// Hugging Face's Gemma rules: merges ordered by the result's position in the
    /// vocabulary (not by score), and tokens of only white space that contain a space
    /// are pieces of `▁`s (found by merging), not added tokens matched whole.
    pub gemma: bool,
}

/// The text `<0xAB>` of a byte token, as its byte.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Lays out a SentencePiece blob (version 2, model 2; see the module doc) from GGUF's
/// `tokenizer.ggml.tokens`, `.token_type` and `.scores` (`scores` may be empty with
/// `opts.gemma`, which does not read them), and checks it with
/// [`Tokenizer::from_blob`].
///
/// Refuses what the runtime could not encode as Hugging Face does: two pieces with
/// the same text, a piece mixing a literal space with other text, a byte token whose
/// text is half of a merge (see `spm.rs`).
pub fn build_spm_blob<T: AsRef<str>>(
    tokens: &[T],
    token_types: &[i32],
    scores: &[f32],
    opts: SpmOptions,
) -> Result<Vec<u8>, TokenizerError> {
    let n = tokens.len();
    if n == 0 || n != token_types.len() {
        return Err(TokenizerError::CountMismatch { tokens: n, types: token_types.len() });
    }
    if n > MAX_TOKENS as usize {
        return Err(TokenizerError::TooLarge("token count"));
    }
    let unk = match opts.unk {
        Some(id) if id as usize >= n => return Err(TokenizerError::TooLarge("unknown token id")),
        Some(id) => id,
        None => NONE,
    };

    // Hugging Face's spelling of each token (Gemma's runs of spaces become `▁`s), and
    // the bytes the blob stores (`▁` as a space, a byte token as its byte).
    let mut hf_text: Vec<String> = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut pool = Vec::new();
    let mut offsets = Vec::with_capacity(n + 1);
    offsets.push(0u32);
    let mut respelled = Vec::with_capacity(n);
    for (id, (text, &ty)) in tokens.iter().zip(token_types).enumerate() {
        let id = id as u32;
        let ty = u8::try_from(ty)
            .ok()
            .filter(|&t| super::TokenType::from_u8(t).is_some())
            .ok_or(TokenizerError::BadTokenType { id, value: ty })?;
        let text = text.as_ref();
        // Python's `not t.strip()`: `str.isspace` is White_Space plus U+001C..U+001F.
        let py_space = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
        let space_run = opts.gemma && text.contains(' ') && text.chars().all(py_space);
        let hf: String = if space_run { text.chars().map(|_| '\u{2581}').collect() } else { text.into() };
        if ty == BYTE {
            pool.push(parse_byte_token(text).ok_or(TokenizerError::BadByteToken { id })?);
        } else {
            if hf.contains(' ') {
                return Err(TokenizerError::AmbiguousPiece { id });
            }
            pool.extend(hf.replace('\u{2581}', " ").bytes());
        }
        respelled.push(space_run);
        hf_text.push(hf);
        types.push(ty);
        offsets.push(u32::try_from(pool.len()).map_err(|_| TokenizerError::TooLarge("token text"))?);
    }
    let bytes_of = |id: u32| &pool[offsets[id as usize] as usize..offsets[id as usize + 1] as usize];

    // A byte token must take part in no merge Hugging Face would derive.
    let by_text: BTreeMap<&str, u32> = hf_text.iter().enumerate().map(|(id, t)| (t.as_str(), id as u32)).collect();
    let is_byte_text = |t: &str| by_text.get(t).is_some_and(|&id| types[id as usize] == BYTE);
    for (id, t) in hf_text.iter().enumerate() {
        let id = id as u32;
        let ambiguous = (1..t.len()).filter(|&i| t.is_char_boundary(i)).any(|i| {
            let (l, r) = t.split_at(i);
            by_text.contains_key(l)
                && by_text.contains_key(r)
                && (types[id as usize] == BYTE || is_byte_text(l) || is_byte_text(r))
        });
        if ambiguous {
            return Err(TokenizerError::AmbiguousPiece { id });
        }
    }

    let mut byte_token = [NONE; 256];
    for id in (0..n as u32).rev() {
        if types[id as usize] == BYTE {
            if let [b] = bytes_of(id) {
                byte_token[usize::from(*b)] = id;
            }
        }
    }

    let mut special: Vec<u32> = (0..n as u32)
        .filter(|&id| {
            matches!(types[id as usize], CONTROL | USER_DEFINED) && !respelled[id as usize] && !bytes_of(id).is_empty()
        })
        .collect();
    special.sort_by(|&a, &b| bytes_of(b).len().cmp(&bytes_of(a).len()).then(a.cmp(&b)));

    let mut sorted: Vec<u32> = (0..n as u32).collect();
    sorted.sort_by(|&a, &b| bytes_of(a).cmp(bytes_of(b)).then(a.cmp(&b)));
    // Two pieces, or two byte tokens, with the same bytes.
    let (mut prev_piece, mut prev_byte): (Option<u32>, Option<u32>) = (None, None);
    for &id in &sorted {
        let prev = if types[id as usize] == BYTE { &mut prev_byte } else { &mut prev_piece };
        if prev.is_some_and(|p| bytes_of(p) == bytes_of(id)) {
            return Err(TokenizerError::AmbiguousPiece { id });
        }
        *prev = Some(id);
    }

    // Merge priority of each piece as a result: its position (Gemma), or its score's
    // place from the highest down, equal scores sharing one rank.
    let mut rank = vec![0u32; n];
    if opts.gemma {
        rank.iter_mut().enumerate().for_each(|(id, r)| *r = id as u32);
    } else {
        if let Some(id) = (0..n).find(|&id| scores.get(id).is_none_or(|s| s.is_nan())) {
            return Err(TokenizerError::BadScore { id: id as u32 });
        }
        let mut by_score: Vec<u32> = (0..n as u32).collect();
        by_score.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b)));
        let mut r = 0u32;
        for (i, &id) in by_score.iter().enumerate() {
            if i > 0 && scores[id as usize] != scores[by_score[i - 1] as usize] {
                r += 1;
            }
            rank[id as usize] = r;
        }
    }

    let pool_len = u32::try_from(pool.len()).map_err(|_| TokenizerError::TooLarge("token text"))?;
    let layout =
        Layout::new(n as u32, 0, special.len() as u32, pool_len, true).ok_or(TokenizerError::TooLarge("tables"))?;
    let mut blob = Vec::with_capacity(layout.end);
    let put = |blob: &mut Vec<u8>, w: u32| blob.extend_from_slice(&w.to_le_bytes());
    blob.extend_from_slice(&BLOB_MAGIC);
    let flags = if opts.add_space_prefix { SPM_ADD_SPACE_PREFIX } else { 0 };
    for w in [BLOB_VERSION, MODEL_SENTENCEPIECE, flags, n as u32, unk, special.len() as u32, pool_len] {
        put(&mut blob, w);
    }
    debug_assert_eq!(blob.len(), layout.byte_token);
    byte_token.iter().for_each(|&id| put(&mut blob, id));
    offsets.iter().for_each(|&o| put(&mut blob, o));
    sorted.iter().for_each(|&id| put(&mut blob, id));
    debug_assert_eq!(blob.len(), layout.special);
    special.iter().for_each(|&id| put(&mut blob, id));
    debug_assert_eq!(blob.len(), layout.rank);
    rank.iter().for_each(|&r| put(&mut blob, r));
    debug_assert_eq!(blob.len(), layout.types);
    blob.extend_from_slice(&types);
    blob.extend_from_slice(&pool);
    debug_assert_eq!(blob.len(), layout.end);

    Tokenizer::from_blob(&blob)?;
    Ok(blob)
}

/// Lays out the blob of a word vocabulary (`chars = false`: the end-of-line token is
/// `<eos>`) or a character one, from the tokens in id order (`<unk>`, where present, is
/// the unknown token), and checks it with [`Tokenizer::from_blob`]. A word must be
/// non-empty without white space, a character token one character; no token twice.
pub fn build_vocab_blob<T: AsRef<str>>(chars: bool, tokens: &[T]) -> Result<Vec<u8>, TokenizerError> {
    let n = tokens.len();
    if n == 0 {
        return Err(TokenizerError::CountMismatch { tokens: 0, types: 0 });
    }
    if n > MAX_TOKENS as usize {
        return Err(TokenizerError::TooLarge("token count"));
    }
    let mut pool = Vec::new();
    let mut offsets = Vec::with_capacity(n + 1);
    offsets.push(0u32);
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    let (mut eos, mut unk, mut byte_token) = (NONE, NONE, [NONE; 256]);
    for (id, t) in tokens.iter().enumerate() {
        let (id, t) = (id as u32, t.as_ref());
        let ok = if chars {
            t.chars().count() == 1 || t == "<unk>"
        } else {
            !t.is_empty() && !t.chars().any(char::is_whitespace)
        };
        if !ok || seen.insert(t, id).is_some() {
            return Err(TokenizerError::BadVocabToken { id });
        }
        match t {
            "<eos>" if !chars => eos = id,
            "<unk>" => unk = id,
            _ => {}
        }
        if let [b] = t.as_bytes() {
            byte_token[usize::from(*b)] = id;
        }
        pool.extend_from_slice(t.as_bytes());
        offsets.push(u32::try_from(pool.len()).map_err(|_| TokenizerError::TooLarge("token text"))?);
    }
    let bytes_of = |id: u32| &pool[offsets[id as usize] as usize..offsets[id as usize + 1] as usize];
    let mut sorted: Vec<u32> = (0..n as u32).collect();
    sorted.sort_by(|&a, &b| bytes_of(a).cmp(bytes_of(b)).then(a.cmp(&b)));
    let pool_len = u32::try_from(pool.len()).map_err(|_| TokenizerError::TooLarge("token text"))?;
    let layout = Layout::new(n as u32, 0, 0, pool_len, false).ok_or(TokenizerError::TooLarge("tables"))?;
    let mut blob = Vec::with_capacity(layout.end);
    let put = |blob: &mut Vec<u8>, w: u32| blob.extend_from_slice(&w.to_le_bytes());
    blob.extend_from_slice(&BLOB_MAGIC);
    let (model, word3) = if chars { (MODEL_CHARS, 0) } else { (MODEL_WORDS, eos) };
    for w in [2, model, word3, n as u32, unk, 0, pool_len] {
        put(&mut blob, w);
    }
    byte_token.iter().for_each(|&id| put(&mut blob, id));
    offsets.iter().for_each(|&o| put(&mut blob, o));
    sorted.iter().for_each(|&id| put(&mut blob, id));
    blob.extend(core::iter::repeat_n(super::TokenType::Normal.to_u8(), n));
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
