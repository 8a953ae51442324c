//! SentencePiece-style pieces with byte fallback (Gemma), as Hugging Face encodes them.
//!
//! A GGUF `llama` vocabulary lists pieces (`▁` for a space) and scores, but no merges.
//! Hugging Face `transformers` turns it into a BPE with byte fallback whose merges it
//! derives from the vocabulary (`generate_merges`): every way of cutting a piece `T` in
//! two pieces `L ++ R` is a merge, ordered by `T`'s score (Gemma: by `T`'s position in
//! the vocabulary, as its scores do not follow its merge order), then the longer `L`,
//! then the longer `R`. This module runs exactly that BPE without storing the merges:
//! the pair (`L`, `R`) merges iff `bytes(L) ++ bytes(R)` is a piece, found by binary
//! search in the sorted index; its priority is the result's `rank` from the blob, then
//! the split (see [`MergeKey`]).
//!
//! Text, as Hugging Face's `Replace(" ", "▁")` normalizer sees it, is one word per
//! stretch between special tokens: every char is looked up as a piece; a char that is
//! not one becomes its bytes' `<0xAB>` tokens (byte fallback), or the unknown token if
//! one of those is missing (consecutive unknowns fused into one). Pieces are stored
//! with spaces for `▁` (so decoding is a plain byte copy), and a literal `▁` in the
//! text is read as a space: the normalizer makes the two indistinguishable too.
//!
//! Byte tokens (type 6) never merge: their stored bytes are the byte, not their text
//! `<0xAB>`. (Hugging Face would merge a byte token whose text is half of another
//! piece's text; Gemma 3's vocabulary has no such piece, which the converter checks.)

use super::bpe::{carve, MergeKey, PairCache};
use super::{le32, Tokenizer, TokenizerError, BYTE, NONE};
use core::cmp::Ordering;

/// `t` compared with the concatenation `a ++ b`, without building it.
fn cmp_concat(t: &[u8], a: &[u8], b: &[u8]) -> Ordering {
    let n = t.len().min(a.len());
    match t.get(..n).cmp(&a.get(..n)) {
        Ordering::Equal => {}
        o => return o,
    }
    if t.len() < a.len() {
        return Ordering::Less;
    }
    t.get(a.len()..).unwrap_or_default().cmp(b)
}

/// Number of chars of UTF-8 `bytes` (the non-continuation bytes), capped at 0xFFFF.
fn char_count(bytes: &[u8]) -> u32 {
    bytes.iter().filter(|&&b| (b as i8) >= -0x40).count().min(0xffff) as u32
}

impl Tokenizer<'_> {
    pub(super) fn is_byte_token(&self, id: u32) -> bool {
        self.types.get(id as usize) == Some(&BYTE)
    }

    /// The lowest id whose bytes are `a ++ b`, skipping byte tokens if asked.
    pub(super) fn find_token(&self, a: &[u8], b: &[u8], skip_byte_tokens: bool) -> Option<u32> {
        let bytes_of = |id: &[u8; 4]| self.token_bytes(le32(*id));
        let i = self.sorted.partition_point(|id| bytes_of(id).is_some_and(|t| cmp_concat(t, a, b) == Ordering::Less));
        for id in self.sorted.get(i..)? {
            if cmp_concat(bytes_of(id)?, a, b) != Ordering::Equal {
                return None;
            }
            let id = le32(*id);
            if !(skip_byte_tokens && self.is_byte_token(id)) {
                return Some(id);
            }
        }
        None
    }

    /// The merge of two pieces: (priority, result). See the module doc.
    pub(super) fn spm_merge(&self, left: u32, right: u32) -> Option<(MergeKey, u32)> {
        if self.is_byte_token(left) || self.is_byte_token(right) {
            return None;
        }
        let (l, r) = (self.token_bytes(left)?, self.token_bytes(right)?);
        let result = self.find_token(l, r, true)?;
        let rank = le32(*self.rank.get(result as usize)?);
        // Longer left part first, then longer right part.
        let split = ((0xffff - char_count(l)) << 16) | (0xffff - char_count(r));
        Some((MergeKey { rank, split }, result))
    }

    /// Encodes one stretch of text between special tokens; `at_start`: it begins the
    /// input (where `add_space_prefix` puts its space, as Hugging Face's
    /// `Metaspace(prepend_scheme="first")` does: unless the text already starts with
    /// one). Needs `SCRATCH_WORDS_PER_BYTE * (text.len() + 1)` words of scratch.
    pub(super) fn spm_segment(
        &self,
        text: &str,
        at_start: bool,
        scratch: &mut [u32],
        cache: Option<&mut PairCache<'_>>,
        emit: &mut impl FnMut(u32),
    ) -> Result<(), TokenizerError> {
        let prefix = self.add_space_prefix && at_start && !text.starts_with([' ', '\u{2581}']);
        let (symbols, heap_items) = carve(scratch, text.len() + usize::from(prefix))?;
        let mut n = 0usize;
        let mut push = |id: u32| {
            if let Some(s) = symbols.get_mut(n) {
                s.id = id;
                n += 1;
            }
        };
        let mut after_unk = false;
        for c in prefix.then_some(' ').into_iter().chain(text.chars()) {
            let c = if c == '\u{2581}' { ' ' } else { c };
            let mut buf = [0u8; 4];
            let bytes = c.encode_utf8(&mut buf).as_bytes();
            if let Some(id) = self.find_token(bytes, &[], true) {
                push(id);
                after_unk = false;
            } else if bytes.iter().all(|&b| self.byte_token(b) != NONE) {
                bytes.iter().for_each(|&b| push(self.byte_token(b)));
                after_unk = false;
            } else {
                if !after_unk && self.unk != NONE {
                    push(self.unk);
                }
                after_unk = true;
            }
        }
        self.merge_symbols(symbols.get_mut(..n).unwrap_or_default(), heap_items, cache, emit);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_order() {
        assert_eq!(cmp_concat(b"ab", b"a", b"b"), Ordering::Equal);
        assert_eq!(cmp_concat(b"a", b"a", b"b"), Ordering::Less);
        assert_eq!(cmp_concat(b"abc", b"a", b"b"), Ordering::Greater);
        assert_eq!(cmp_concat(b"b", b"a", b"b"), Ordering::Greater);
        assert_eq!(cmp_concat(b"", b"", b""), Ordering::Equal);
        assert_eq!(cmp_concat(b"a", b"ab", b""), Ordering::Less);
        assert_eq!(char_count("a▁é😀".as_bytes()), 4);
    }
}
