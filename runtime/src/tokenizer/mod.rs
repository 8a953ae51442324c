//! Tokenizers over one zero-copy table blob: byte-level BPE (GPT-2, SmolLM2, Llama 3,
//! Qwen2 style) and SentencePiece-style pieces with byte fallback (Gemma).
//!
//! The converter turns a vocabulary (GGUF `tokenizer.ggml.*`) into one opaque byte blob
//! with [`build_blob_with`] or [`build_spm_blob`]; the `.arq` file stores it as a `u8`
//! tensor and [`Tokenizer::from_blob`] borrows it in place. Parsing validates every
//! count, offset, id and ordering, so no later method can panic or index out of bounds,
//! whatever the bytes.
//!
//! Without `alloc`: lookups, the pre-tokenizer ([`PreTokenizer::pieces`]),
//! [`Tokenizer::encode_with_scratch`] (merging over caller scratch) and streaming decode
//! ([`Utf8Stream`], fed with [`Tokenizer::token_bytes`]). With `alloc`:
//! [`Tokenizer::encode`], [`Tokenizer::decode`] and the blob builders.
//!
//! Encoding follows Hugging Face `tokenizers` (the reference the tests compare ids
//! with): special tokens are split out first (leftmost, longest first). Byte-level BPE
//! then pre-tokenizes each text segment, maps each piece to its bytes' single-byte
//! tokens and merges by rank; token text in the blob is raw bytes (the GPT-2
//! byte-to-unicode alphabet of the GGUF strings is undone once, at build time).
//! SentencePiece merges each whole text segment, pieces found by their text; see
//! `spm.rs`.
//!
//! # Loading cost
//!
//! [`Tokenizer::from_blob`] copies nothing and allocates nothing: it checks the header,
//! then walks each table once (offsets, types, the byte table, the sorted index by
//! comparing neighbours, merges, special tokens), O(N + M + P) in time. Gemma 3's
//! 262,144 pieces make a 5.5 MB blob (5,473,530 bytes: 1 MB each for offsets, the
//! sorted index and the ranks, 2.2 MB of text) that loads in about 4.5 ms on one core
//! of the (shared, 2-core x86) development machine, 16 ms while it was busy
//! (`converter/tests/tokenizer_spm.rs` prints both numbers); the bytes stay where they
//! are (mmap or flash). Encoding finds pieces by binary search instead of a hash table
//! built at load (`encode` remembers merge lookups for long texts): about 0.7 MB/s of
//! text for Gemma 3 on that machine.
//!
//! # Blob layout, versions 1 and 2
//!
//! Little-endian. The sections follow each other without gaps, in this order; every
//! `u32` array starts at a multiple of 4 from the blob start (the header is 32 bytes and
//! all `u8` sections come last), and the blob's length must equal the end of the last
//! section exactly. `N` = token count, `M` = merge count, `S` = special token count.
//! Version 1 has model 1 only; version 2 adds model 2 and the `rank` section (model 2
//! only). Byte-level BPE blobs are still written as version 1, so a version-1 reader
//! loads them; this build reads both versions.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `b"ARQT"` |
//! | 4 | 4 | `u32` version: 1, or 2 |
//! | 8 | 4 | `u32` model: 1 = byte-level BPE, 2 = SentencePiece pieces, 3 = words, 4 = characters (2..=4: version 2) |
//! | 12 | 4 | model 1: `u32` pre-tokenizer: 1 = `gpt2`, 2 = `smollm`, 3 = `llama3` (Llama 3 pattern, merges skipped for a piece that is a token), 4 = `dbrx` (Llama 3 pattern), 5 = `qwen2`; see [`PreTokenizer`]. Model 2: `u32` flags, bit 0 = add a space prefix, other bits 0. Model 3: `u32` id of the end-of-line token (`<eos>`, < `N`) or `0xFFFF_FFFF`. Model 4: 0 |
//! | 16 | 4 | `u32` `N`, 1 ..= 2^24 |
//! | 20 | 4 | model 1: `u32` `M`, 0 ..= 2^24. Models 2..=4: `u32` id of the unknown token (< `N`) or `0xFFFF_FFFF` for none; `M` = 0 |
//! | 24 | 4 | `u32` `S`, 0 ..= `N` |
//! | 28 | 4 | `u32` `P`: byte length of the token byte pool |
//! | 32 | 256 × 4 | `byte_token[b]`: `u32` id of the token whose bytes are exactly `[b]` (model 2: a byte token, type 6), or `0xFFFF_FFFF` if none |
//! | 1056 | (N + 1) × 4 | `token_offset[i]`: `u32`; token `i`'s bytes are `pool[token_offset[i] .. token_offset[i + 1]]`; `token_offset[0] = 0`, non-decreasing, `token_offset[N] = P` |
//! | … | N × 4 | `sorted_ids`: all `N` token ids, ordered by (bytes lexicographically, id), strictly increasing — a permutation of `0..N`, for binary search by bytes |
//! | … | M × 16 | merges: `u32` (left, right, rank, result), strictly increasing by (left, right); `bytes(result) = bytes(left) ++ bytes(right)`; lower rank merges first |
//! | … | S × 4 | `special_ids`: `u32` ids of the tokens matched whole in text, of type control (3) or user-defined (4), ordered by (byte length descending, id); their bytes are non-empty UTF-8 |
//! | … | N × 4 | model 2 only: `rank[i]`: `u32` priority of piece `i` as a merge result, lower first (Gemma: `i`; otherwise the place of its score from the highest, equal scores sharing one) |
//! | … | N | `token_type[i]`: `u8`, GGUF's values 0 ..= 6 (see [`TokenType`]) |
//! | … | P | pool: the tokens' raw bytes |
//!
//! Model 1: token bytes are the GGUF string decoded from GPT-2's byte-to-unicode
//! alphabet for every type except control and user-defined tokens, which keep their
//! literal UTF-8 (so `<|im_start|>` is the 12 bytes of its text). Model 2: a byte
//! token (`<0xAB>`) is its byte, every other piece its text with `▁` as a space (Gemma's
//! user-defined runs of spaces are spaces either way). Ids are `u32` everywhere.
//!
//! Models 3 and 4 are the vocabularies of PyTorch's `word_language_model` example
//! (recurrent models): a word is its UTF-8 text, a character its one char. Words split
//! on white space, every line end (`\n`) is the end-of-line token, as the example's
//! `Corpus.tokenize` reads a file; characters are taken one by one (`\n` is one). An
//! unknown word or character is the unknown token, or left out when there is none
//! ([`Tokenizer::first_unknown`] finds it first). Decoding joins words with spaces and
//! ends a line at the end-of-line token.

mod bpe;
#[cfg(feature = "alloc")]
mod build;
mod pretokenize;
mod spm;
mod unicode;
mod utf8;

pub use bpe::SCRATCH_WORDS_PER_BYTE;
#[cfg(feature = "alloc")]
pub use build::{build_blob, build_blob_with, build_spm_blob, build_vocab_blob, SpmOptions};
pub use pretokenize::{Pieces, PreTokenizer};
pub use utf8::Utf8Stream;

#[cfg(feature = "alloc")]
use alloc::{string::String, vec::Vec};
use core::fmt;

pub const BLOB_MAGIC: [u8; 4] = *b"ARQT";
/// The newest blob layout this build reads (it reads every older one too).
pub const BLOB_VERSION: u32 = 2;
/// Header `model` value of byte-level BPE (the only model of version 1; byte-level
/// blobs are still written as version 1).
pub const MODEL_BYTE_LEVEL_BPE: u32 = 1;
/// Header `model` value of SentencePiece-style pieces with byte fallback (version 2).
pub const MODEL_SENTENCEPIECE: u32 = 2;
/// Header `model` value of a word vocabulary (version 2).
pub const MODEL_WORDS: u32 = 3;
/// Header `model` value of a character vocabulary (version 2).
pub const MODEL_CHARS: u32 = 4;
/// Version-2 SentencePiece header flag: prepend a space to the input's first text.
pub const SPM_ADD_SPACE_PREFIX: u32 = 1;
pub const HEADER_LEN: usize = 32;
/// Caps that keep a hostile header from describing absurd tables.
pub const MAX_TOKENS: u32 = 1 << 24;
pub const MAX_MERGES: u32 = 1 << 24;
/// The Unicode version of the `\p{L}` table the pre-tokenizer uses.
pub const UNICODE_VERSION: (u8, u8, u8) = unicode::UNICODE_VERSION;

/// "No token" in `byte_token`, and the internal marker of a merged-away symbol.
pub(crate) const NONE: u32 = u32::MAX;

/// GGUF's token types (`tokenizer.ggml.token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    /// Special tokens such as `<|im_start|>`: matched whole when encoding with
    /// `special = true`, skipped by [`Tokenizer::decode_skip_control`].
    Control,
    /// Added tokens matched whole in any text.
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    pub fn from_u8(v: u8) -> Option<TokenType> {
        Some(match v {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }

    pub fn to_u8(self) -> u8 {
        match self {
            TokenType::Undefined => 0,
            TokenType::Normal => 1,
            TokenType::Unknown => 2,
            TokenType::Control => 3,
            TokenType::UserDefined => 4,
            TokenType::Unused => 5,
            TokenType::Byte => 6,
        }
    }
}

const CONTROL: u8 = 3;
const USER_DEFINED: u8 = 4;
const BYTE: u8 = 6;

/// A tokenizer blob that cannot be used, or vocabulary tables that cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenizerError {
    /// Fewer bytes than the header.
    TooShort {
        len: usize,
    },
    BadMagic,
    UnsupportedVersion(u32),
    UnsupportedModel(u32),
    UnknownPreTokenizer(u32),
    /// A count over its cap, or sizes whose sum overflows.
    TooLarge(&'static str),
    /// The blob's length is not what its counts describe.
    LengthMismatch {
        expected: usize,
        actual: usize,
    },
    /// A table breaks one of its invariants (named).
    Corrupt(&'static str),
    /// Build: the token and token-type arrays differ in length, or are empty.
    CountMismatch {
        tokens: usize,
        types: usize,
    },
    /// Build: a token type outside GGUF's 0 ..= 6.
    BadTokenType {
        id: u32,
        value: i32,
    },
    /// Build: a normal token whose text is not in GPT-2's byte-to-unicode alphabet.
    NotByteLevel {
        id: u32,
    },
    /// Build: a merge that is not two space-separated tokens.
    BadMerge {
        rank: u32,
    },
    /// Build: a merge whose parts or result are not in the vocabulary.
    MergeNotInVocab {
        rank: u32,
    },
    /// Build: a SentencePiece byte token whose text is not `<0xAB>`.
    BadByteToken {
        id: u32,
    },
    /// Build: a SentencePiece piece that is also an earlier piece's text, or that mixes
    /// a literal space with other characters (Hugging Face can never produce it).
    AmbiguousPiece {
        id: u32,
    },
    /// Build: a score that is not a number, or fewer scores than tokens.
    BadScore {
        id: u32,
    },
    /// Build: a word that is empty or holds white space, a character token that is not
    /// one character, or a token that repeats an earlier one.
    BadVocabToken {
        id: u32,
    },
    /// [`Tokenizer::encode_with_scratch`]: a piece needs more scratch words.
    ScratchTooSmall {
        need: usize,
        have: usize,
    },
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TokenizerError::*;
        match *self {
            TooShort { len } => write!(f, "tokenizer blob is {len} bytes, shorter than its {HEADER_LEN}-byte header"),
            BadMagic => write!(f, "not a tokenizer blob (bad magic)"),
            UnsupportedVersion(v) => {
                write!(f, "unsupported tokenizer blob version {v} (this build reads {BLOB_VERSION})")
            }
            UnsupportedModel(m) => write!(
                f,
                "unsupported tokenizer model {m} (this build runs 1 = byte-level BPE, 2 = SentencePiece pieces, 3 = words, 4 = characters)"
            ),
            UnknownPreTokenizer(p) => write!(f, "unknown pre-tokenizer {p} in tokenizer blob"),
            TooLarge(what) => write!(f, "corrupt tokenizer blob: {what} too large"),
            LengthMismatch { expected, actual } => {
                write!(f, "corrupt tokenizer blob: {actual} bytes, its counts describe {expected}")
            }
            Corrupt(what) => write!(f, "corrupt tokenizer blob: {what}"),
            CountMismatch { tokens, types } => {
                write!(f, "vocabulary has {tokens} tokens and {types} token types (need as many, at least one)")
            }
            BadTokenType { id, value } => write!(f, "token {id} has unknown token type {value}"),
            NotByteLevel { id } => write!(f, "token {id} is not in the byte-level BPE alphabet"),
            BadMerge { rank } => write!(f, "merge #{rank} is not two space-separated tokens"),
            MergeNotInVocab { rank } => write!(f, "merge #{rank} names a token that is not in the vocabulary"),
            BadByteToken { id } => write!(f, "byte token {id} is not written <0xAB>"),
            AmbiguousPiece { id } => {
                write!(f, "piece {id} repeats an earlier piece or mixes a literal space with other text")
            }
            BadScore { id } => write!(f, "token {id} has no score or a score that is not a number"),
            BadVocabToken { id } => {
                write!(f, "token {id} is empty, holds white space, is not one character or repeats an earlier token")
            }
            ScratchTooSmall { need, have } => {
                write!(f, "tokenizer scratch too small: need {need} words, have {have}")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TokenizerError {}

/// Section offsets of a blob with the given counts, or `None` on overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub byte_token: usize,
    pub offsets: usize,
    pub sorted: usize,
    pub merges: usize,
    pub special: usize,
    pub rank: usize,
    pub types: usize,
    pub pool: usize,
    pub end: usize,
}

impl Layout {
    /// `ranked`: the blob has the SentencePiece `rank` section.
    pub(crate) fn new(n_tokens: u32, n_merges: u32, n_special: u32, pool_len: u32, ranked: bool) -> Option<Layout> {
        let n = usize::try_from(n_tokens).ok()?;
        let m = usize::try_from(n_merges).ok()?;
        let s = usize::try_from(n_special).ok()?;
        let p = usize::try_from(pool_len).ok()?;
        let byte_token = HEADER_LEN;
        let offsets = byte_token.checked_add(256 * 4)?;
        let sorted = offsets.checked_add(n.checked_add(1)?.checked_mul(4)?)?;
        let merges = sorted.checked_add(n.checked_mul(4)?)?;
        let special = merges.checked_add(m.checked_mul(16)?)?;
        let rank = special.checked_add(s.checked_mul(4)?)?;
        let types = rank.checked_add(if ranked { n.checked_mul(4)? } else { 0 })?;
        let pool = types.checked_add(n)?;
        let end = pool.checked_add(p)?;
        Some(Layout { byte_token, offsets, sorted, merges, special, rank, types, pool, end })
    }
}

pub(crate) fn le32(b: [u8; 4]) -> u32 {
    u32::from_le_bytes(b)
}

/// Which algorithm a blob's tables are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenizerKind {
    /// Byte-level BPE with explicit merges, over pre-tokenizer pieces.
    ByteLevelBpe(PreTokenizer),
    /// SentencePiece-style pieces with byte fallback, merges implied by the vocabulary.
    SentencePiece { add_space_prefix: bool },
    /// Words split on white space, each line end a token (`word_language_model`).
    Words,
    /// One token per character.
    Chars,
}

/// A tokenizer borrowing its tables from a blob (see the module doc): byte-level BPE or
/// SentencePiece-style pieces, one type for both.
#[derive(Clone, Copy)]
pub struct Tokenizer<'a> {
    kind: TokenizerKind,
    /// SentencePiece: prepend a space to the input's first text.
    add_space_prefix: bool,
    /// SentencePiece, words, characters: the unknown token, or `NONE`.
    unk: u32,
    /// Words: the end-of-line token, or `NONE`.
    eos: u32,
    n_tokens: u32,
    byte_token: &'a [[u8; 4]],
    offsets: &'a [[u8; 4]],
    sorted: &'a [[u8; 4]],
    merges: &'a [[u8; 16]],
    special: &'a [[u8; 4]],
    /// SentencePiece: each piece's priority as a merge result (empty for BPE).
    rank: &'a [[u8; 4]],
    types: &'a [u8],
    pool: &'a [u8],
    /// Bit `b` set: some special token starts with byte `b`.
    special_first: [u32; 8],
    has_user_defined: bool,
}

impl fmt::Debug for Tokenizer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("tokens", &self.n_tokens)
            .field("merges", &self.merges.len())
            .field("special", &self.special.len())
            .finish()
    }
}

impl<'a> Tokenizer<'a> {
    /// Borrows and validates a blob made by [`build_blob`]. Zero-copy, no allocation;
    /// O(N + M + P) checks.
    pub fn from_blob(blob: &'a [u8]) -> Result<Tokenizer<'a>, TokenizerError> {
        use TokenizerError::*;
        let header: &[[u8; 4]] = match blob.get(..HEADER_LEN).map(bytemuck::try_cast_slice) {
            Some(Ok(h)) => h,
            _ => return Err(TooShort { len: blob.len() }),
        };
        let word = |i: usize| header.get(i).map_or(0, |w| le32(*w));
        if header.first() != Some(&BLOB_MAGIC) {
            return Err(BadMagic);
        }
        let version = word(1);
        if version == 0 || version > BLOB_VERSION {
            return Err(UnsupportedVersion(version));
        }
        let (n_tokens, n_special, pool_len) = (word(4), word(6), word(7));
        if n_tokens == 0 || n_tokens > MAX_TOKENS {
            return Err(TooLarge("token count"));
        }
        // Word 3 is the pre-tokenizer (BPE) or the flags (SentencePiece); word 5 the
        // merge count (BPE) or the unknown token id (SentencePiece).
        let (kind, n_merges, unk) = match word(2) {
            MODEL_BYTE_LEVEL_BPE => {
                let pre = PreTokenizer::from_u32(word(3)).ok_or(UnknownPreTokenizer(word(3)))?;
                (TokenizerKind::ByteLevelBpe(pre), word(5), NONE)
            }
            MODEL_SENTENCEPIECE if version >= 2 => {
                if word(3) & !SPM_ADD_SPACE_PREFIX != 0 {
                    return Err(Corrupt("unknown SentencePiece flags"));
                }
                if word(5) != NONE && word(5) >= n_tokens {
                    return Err(Corrupt("unknown token id out of range"));
                }
                (TokenizerKind::SentencePiece { add_space_prefix: word(3) & SPM_ADD_SPACE_PREFIX != 0 }, 0, word(5))
            }
            m @ (MODEL_WORDS | MODEL_CHARS) if version >= 2 => {
                let id_ok = |id: u32| id == NONE || id < n_tokens;
                if !id_ok(word(3)) || !id_ok(word(5)) || (m == MODEL_CHARS && word(3) != 0) {
                    return Err(Corrupt("end-of-line or unknown token id out of range"));
                }
                (if m == MODEL_WORDS { TokenizerKind::Words } else { TokenizerKind::Chars }, 0, word(5))
            }
            m => return Err(UnsupportedModel(m)),
        };
        let ranked = matches!(kind, TokenizerKind::SentencePiece { .. });
        if n_merges > MAX_MERGES {
            return Err(TooLarge("merge count"));
        }
        if n_special > n_tokens {
            return Err(TooLarge("special token count"));
        }
        let l = Layout::new(n_tokens, n_merges, n_special, pool_len, ranked).ok_or(TooLarge("tables"))?;
        if l.end != blob.len() {
            return Err(LengthMismatch { expected: l.end, actual: blob.len() });
        }
        let words = |a: usize, b: usize| -> Result<&'a [[u8; 4]], TokenizerError> {
            blob.get(a..b).and_then(|s| bytemuck::try_cast_slice(s).ok()).ok_or(Corrupt("section bounds"))
        };
        let merges: &'a [[u8; 16]] = blob
            .get(l.merges..l.special)
            .and_then(|s| bytemuck::try_cast_slice(s).ok())
            .ok_or(Corrupt("section bounds"))?;
        let mut t = Tokenizer {
            kind,
            add_space_prefix: matches!(kind, TokenizerKind::SentencePiece { add_space_prefix: true }),
            unk,
            eos: if kind == TokenizerKind::Words { word(3) } else { NONE },
            n_tokens,
            byte_token: words(l.byte_token, l.offsets)?,
            offsets: words(l.offsets, l.sorted)?,
            sorted: words(l.sorted, l.merges)?,
            merges,
            special: words(l.special, l.rank)?,
            rank: words(l.rank, l.types)?,
            types: blob.get(l.types..l.pool).ok_or(Corrupt("section bounds"))?,
            pool: blob.get(l.pool..l.end).ok_or(Corrupt("section bounds"))?,
            special_first: [0; 8],
            has_user_defined: false,
        };
        t.validate(pool_len)?;
        for &e in t.special {
            let id = le32(e);
            let first = t.token_bytes(id).and_then(|b| b.first()).copied().unwrap_or(0);
            t.special_first[usize::from(first >> 5)] |= 1 << (first & 31);
            t.has_user_defined |= t.types.get(id as usize) == Some(&USER_DEFINED);
        }
        Ok(t)
    }

    fn validate(&self, pool_len: u32) -> Result<(), TokenizerError> {
        use TokenizerError::Corrupt;
        // Offsets first: every other check reads token bytes through them.
        let mut prev = 0u32;
        for (i, &o) in self.offsets.iter().enumerate() {
            let o = le32(o);
            if (i == 0 && o != 0) || o < prev {
                return Err(Corrupt("token offsets not increasing from 0"));
            }
            prev = o;
        }
        if prev != pool_len {
            return Err(Corrupt("last token offset is not the pool length"));
        }
        if self.types.iter().any(|&t| TokenType::from_u8(t).is_none()) {
            return Err(Corrupt("unknown token type"));
        }
        for (b, &id) in self.byte_token.iter().enumerate() {
            let id = le32(id);
            if id != NONE && self.token_bytes(id) != Some(&[b as u8][..]) {
                return Err(Corrupt("byte table entry is not that byte's token"));
            }
            if id != NONE && !self.rank.is_empty() && !self.is_byte_token(id) {
                return Err(Corrupt("byte table entry is not a byte token"));
            }
        }
        let mut prev: Option<(&[u8], u32)> = None;
        let sentencepiece = !self.rank.is_empty();
        for &id in self.sorted {
            let id = le32(id);
            let bytes = self.token_bytes(id).ok_or(Corrupt("sorted index id out of range"))?;
            if prev.is_some_and(|p| p >= (bytes, id)) {
                return Err(Corrupt("sorted index not strictly increasing"));
            }
            // SentencePiece pieces are found by their bytes: at most one piece and one
            // byte token may share them (which also keeps every lookup O(log N)).
            if sentencepiece
                && prev.is_some_and(|(pb, pid)| pb == bytes && self.is_byte_token(pid) == self.is_byte_token(id))
            {
                return Err(Corrupt("two pieces with the same bytes"));
            }
            prev = Some((bytes, id));
        }
        let mut prev_key = None;
        for m in self.merges {
            let [left, right, _rank, result] = merge_fields(m);
            let (Some(l), Some(r), Some(res)) =
                (self.token_bytes(left), self.token_bytes(right), self.token_bytes(result))
            else {
                return Err(Corrupt("merge id out of range"));
            };
            if prev_key.is_some_and(|k| k >= (left, right)) {
                return Err(Corrupt("merges not strictly increasing by (left, right)"));
            }
            prev_key = Some((left, right));
            if res.len() != l.len() + r.len() || !res.starts_with(l) || !res.ends_with(r) {
                return Err(Corrupt("merge result is not left + right"));
            }
        }
        let mut prev: Option<(usize, u32)> = None;
        for &id in self.special {
            let id = le32(id);
            let bytes = self.token_bytes(id).ok_or(Corrupt("special id out of range"))?;
            if !matches!(self.types.get(id as usize), Some(&CONTROL) | Some(&USER_DEFINED)) {
                return Err(Corrupt("special token is not control or user-defined"));
            }
            if bytes.is_empty() || core::str::from_utf8(bytes).is_err() {
                return Err(Corrupt("special token is empty or not UTF-8"));
            }
            if prev.is_some_and(|(len, pid)| len < bytes.len() || (len == bytes.len() && pid >= id)) {
                return Err(Corrupt("special tokens not ordered by length descending, then id"));
            }
            prev = Some((bytes.len(), id));
        }
        Ok(())
    }

    /// The pre-tokenizer a byte-level BPE vocabulary was trained with (`None` for
    /// SentencePiece pieces, which have none).
    pub fn pre_tokenizer(&self) -> Option<PreTokenizer> {
        match self.kind {
            TokenizerKind::ByteLevelBpe(pre) => Some(pre),
            _ => None,
        }
    }

    /// The algorithm of the blob.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// Number of tokens; ids are `0..vocab_size()`.
    pub fn vocab_size(&self) -> u32 {
        self.n_tokens
    }

    /// The raw bytes of token `id` (may be part of a UTF-8 character).
    pub fn token_bytes(&self, id: u32) -> Option<&'a [u8]> {
        let i = usize::try_from(id).ok()?;
        let start = le32(*self.offsets.get(i)?) as usize;
        let end = le32(*self.offsets.get(i.checked_add(1)?)?) as usize;
        self.pool.get(start..end)
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        TokenType::from_u8(*self.types.get(usize::try_from(id).ok()?)?)
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.token_type(id) == Some(TokenType::Control)
    }

    /// The token whose bytes are exactly `bytes` (the lowest id if several are; in a
    /// SentencePiece vocabulary a piece before a byte token), e.g.
    /// `token_id(b"<|im_end|>")`.
    pub fn token_id(&self, bytes: &[u8]) -> Option<u32> {
        if !self.rank.is_empty() {
            if let Some(id) = self.find_token(bytes, &[], true) {
                return Some(id);
            }
        }
        self.find_token(bytes, &[], false)
    }

    /// The special tokens (control and user-defined), longest first.
    pub fn special_tokens(&self) -> impl Iterator<Item = u32> + 'a {
        self.special.iter().map(|&id| le32(id))
    }

    /// The merge of `left` with `right`, if any: (priority, result).
    fn merge_key(&self, left: u32, right: u32) -> Option<(bpe::MergeKey, u32)> {
        match self.kind {
            TokenizerKind::ByteLevelBpe(_) => {
                self.merge(left, right).map(|(rank, result)| (bpe::MergeKey { rank, split: 0 }, result))
            }
            TokenizerKind::SentencePiece { .. } => self.spm_merge(left, right),
            TokenizerKind::Words | TokenizerKind::Chars => None,
        }
    }

    fn byte_token(&self, b: u8) -> u32 {
        self.byte_token.get(usize::from(b)).map_or(NONE, |&id| le32(id))
    }

    /// (rank, result) of merging `left` with `right`, if the vocabulary has that merge.
    fn merge(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        let key = (left, right);
        let i = self
            .merges
            .binary_search_by(|m| {
                let [l, r, _, _] = merge_fields(m);
                (l, r).cmp(&key)
            })
            .ok()?;
        let [_, _, rank, result] = merge_fields(self.merges.get(i)?);
        Some((rank, result))
    }

    /// The special token starting `rest`, longest first: `(id, byte length)`.
    fn special_at(&self, rest: &[u8], control: bool) -> Option<(u32, usize)> {
        let &first = rest.first()?;
        if self.special_first[usize::from(first >> 5)] & (1 << (first & 31)) == 0 {
            return None;
        }
        self.special_tokens().find_map(|id| {
            if !control && self.types.get(id as usize) == Some(&CONTROL) {
                return None;
            }
            let bytes = self.token_bytes(id)?;
            rest.starts_with(bytes).then_some((id, bytes.len()))
        })
    }

    /// Calls `f` with each stretch of ordinary text and each special token, in
    /// order. User-defined tokens are always matched; control tokens only when
    /// `control` is true.
    fn split_special<'t>(
        &self,
        text: &'t str,
        control: bool,
        mut f: impl FnMut(Segment<'t>) -> Result<(), TokenizerError>,
    ) -> Result<(), TokenizerError> {
        if self.special.is_empty() || !(control || self.has_user_defined) {
            return if text.is_empty() { Ok(()) } else { f(Segment::Text(text)) };
        }
        let bytes = text.as_bytes();
        let (mut start, mut i) = (0, 0);
        while i < bytes.len() {
            // Special tokens are UTF-8, so a match starts and ends on char boundaries;
            // checked anyway so that no table can make the slicing fail.
            match self.special_at(&bytes[i..], control) {
                Some((id, len)) if text.is_char_boundary(i) && text.is_char_boundary(i + len) => {
                    if let Some(t) = text.get(start..i).filter(|t| !t.is_empty()) {
                        f(Segment::Text(t))?;
                    }
                    f(Segment::Special(id))?;
                    i += len;
                    start = i;
                }
                _ => i += 1,
            }
        }
        match text.get(start..) {
            Some(t) if !t.is_empty() => f(Segment::Text(t)),
            _ => Ok(()),
        }
    }

    /// Encodes `text` without allocating, calling `emit` with each token id.
    ///
    /// With `special`, control tokens written literally in the text (`<|im_start|>`)
    /// become their ids; without, they are encoded as ordinary text. `scratch` needs
    /// [`SCRATCH_WORDS_PER_BYTE`] words per byte of the longest piece merged: for
    /// SentencePiece, per byte (plus one) of the longest stretch of text between
    /// special tokens; for byte-level BPE, of the longest pre-tokenizer piece
    /// (a word, a number's digit, a run of punctuation or of white space); on
    /// [`TokenizerError::ScratchTooSmall`] the ids emitted so far are a prefix of the
    /// encoding.
    pub fn encode_with_scratch(
        &self,
        text: &str,
        special: bool,
        scratch: &mut [u32],
        mut emit: impl FnMut(u32),
    ) -> Result<(), TokenizerError> {
        self.split_special(text, special, |segment| match segment {
            Segment::Special(id) => {
                emit(id);
                Ok(())
            }
            Segment::Text(t) => match self.kind {
                TokenizerKind::ByteLevelBpe(pre) => {
                    for piece in pre.pieces(t) {
                        self.bpe_piece(piece.as_bytes(), scratch, &mut emit)?;
                    }
                    Ok(())
                }
                TokenizerKind::SentencePiece { .. } => {
                    self.spm_segment(t, core::ptr::eq(t.as_ptr(), text.as_ptr()), scratch, None, &mut emit)
                }
                TokenizerKind::Words | TokenizerKind::Chars => {
                    self.vocab_segment(t, &mut emit);
                    Ok(())
                }
            },
        })
    }

    /// Encodes `text` into token ids; `special` as in
    /// [`encode_with_scratch`](Self::encode_with_scratch).
    #[cfg(feature = "alloc")]
    pub fn encode(&self, text: &str, special: bool) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        let mut scratch = Vec::new();
        let mut cache = PieceCache::for_text_len(text.len());
        // SentencePiece: remembered merge lookups, for texts long enough to repay them.
        let n_pairs = match self.kind {
            TokenizerKind::SentencePiece { .. } if text.len() >= 256 => 4096,
            _ => 0,
        };
        let mut pair_slots = alloc::vec![bpe::PairSlot::EMPTY; n_pairs];
        let result = self.split_special(text, special, |segment| match segment {
            Segment::Special(id) => {
                ids.push(id);
                Ok(())
            }
            Segment::Text(t) if matches!(self.kind, TokenizerKind::Words | TokenizerKind::Chars) => {
                self.vocab_segment(t, &mut |id| ids.push(id));
                Ok(())
            }
            Segment::Text(t) => {
                let TokenizerKind::ByteLevelBpe(pre) = self.kind else {
                    let need = SCRATCH_WORDS_PER_BYTE * (t.len() + 1);
                    if scratch.len() < need {
                        scratch.resize(need, 0);
                    }
                    let at_start = core::ptr::eq(t.as_ptr(), text.as_ptr());
                    let mut pairs = bpe::PairCache { slots: &mut pair_slots };
                    return self.spm_segment(t, at_start, &mut scratch, Some(&mut pairs), &mut |id| ids.push(id));
                };
                for piece in pre.pieces(t) {
                    let piece = piece.as_bytes();
                    if cache.get(piece, &mut ids) {
                        continue;
                    }
                    let need = SCRATCH_WORDS_PER_BYTE * piece.len();
                    if scratch.len() < need {
                        scratch.resize(need, 0);
                    }
                    let start = ids.len();
                    self.bpe_piece(piece, &mut scratch, &mut |id| ids.push(id))?;
                    cache.put(piece, ids.get(start..).unwrap_or_default());
                }
                Ok(())
            }
        });
        debug_assert!(result.is_ok(), "scratch is sized for every piece");
        ids
    }

    /// The text of `ids`; invalid UTF-8 becomes U+FFFD, unknown ids are skipped.
    #[cfg(feature = "alloc")]
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_impl(ids, false)
    }

    /// Like [`decode`](Self::decode), leaving out control tokens (`<|im_end|>`).
    #[cfg(feature = "alloc")]
    pub fn decode_skip_control(&self, ids: &[u32]) -> String {
        self.decode_impl(ids, true)
    }

    #[cfg(feature = "alloc")]
    fn decode_impl(&self, ids: &[u32], skip_control: bool) -> String {
        let mut bytes = Vec::new();
        let mut line_start = true;
        for &id in ids {
            if skip_control && self.is_control(id) {
                continue;
            }
            if self.kind == TokenizerKind::Words {
                let (sep, text) = self.word_text(id, line_start);
                bytes.extend_from_slice(sep);
                bytes.extend_from_slice(text);
                line_start = id == self.eos;
                continue;
            }
            bytes.extend_from_slice(self.token_bytes(id).unwrap_or_default());
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

/// Word and character vocabularies (models 3 and 4).
impl<'a> Tokenizer<'a> {
    /// The token of a word or character's bytes, else the unknown token (`None`: none).
    fn vocab_id(&self, bytes: &[u8]) -> Option<u32> {
        self.find_token(bytes, &[], false).or((self.unk != NONE).then_some(self.unk))
    }

    /// Encodes a text segment of a word or character vocabulary (see the module doc).
    fn vocab_segment(&self, text: &str, emit: &mut dyn FnMut(u32)) {
        if self.kind == TokenizerKind::Chars {
            let mut buf = [0u8; 4];
            for c in text.chars() {
                if let Some(id) = self.vocab_id(c.encode_utf8(&mut buf).as_bytes()) {
                    emit(id);
                }
            }
            return;
        }
        for line in text.split_inclusive('\n') {
            for word in line.split_whitespace() {
                if let Some(id) = self.vocab_id(word.as_bytes()) {
                    emit(id);
                }
            }
            if line.ends_with('\n') && self.eos != NONE {
                emit(self.eos);
            }
        }
    }

    /// The first word or character of `text` that is not in the vocabulary, when the
    /// vocabulary has no unknown token to stand for it (other kinds: `None`).
    pub fn first_unknown<'t>(&self, text: &'t str) -> Option<&'t str> {
        if self.unk != NONE {
            return None;
        }
        let unknown = |s: &&str| self.find_token(s.as_bytes(), &[], false).is_none();
        match self.kind {
            TokenizerKind::Words => text.split_whitespace().find(unknown),
            TokenizerKind::Chars => text.char_indices().map(|(i, c)| &text[i..i + c.len_utf8()]).find(unknown),
            _ => None,
        }
    }

    /// The end-of-line token of a word vocabulary.
    pub fn eos(&self) -> Option<u32> {
        (self.eos != NONE).then_some(self.eos)
    }

    /// How token `id` of a word vocabulary reads after what came before: a separator (a
    /// space, unless at a line start) and its text; the end-of-line token is a line end.
    /// Other kinds: no separator and the token's bytes.
    pub fn word_text(&self, id: u32, line_start: bool) -> (&'static [u8], &'a [u8]) {
        match self.kind {
            TokenizerKind::Words if id == self.eos => (b"", b"\n"),
            TokenizerKind::Words => (if line_start { b"" } else { b" " }, self.token_bytes(id).unwrap_or_default()),
            _ => (b"", self.token_bytes(id).unwrap_or_default()),
        }
    }
}

/// A direct-mapped cache of short pieces' token ids for one [`Tokenizer::encode`]
/// call: words repeat, and a hit skips the merge loop. Bounded (4096 slots of 48 bytes
/// at most) and only used for texts long enough to repay it.
#[cfg(feature = "alloc")]
struct PieceCache {
    slots: Vec<CacheSlot>,
}

#[cfg(feature = "alloc")]
#[derive(Clone, Copy, Default)]
struct CacheSlot {
    /// 0: empty.
    len: u8,
    key: [u8; CacheSlot::MAX_KEY],
    n_ids: u8,
    ids: [u32; CacheSlot::MAX_IDS],
}

#[cfg(feature = "alloc")]
impl CacheSlot {
    const MAX_KEY: usize = 15;
    const MAX_IDS: usize = 7;
}

#[cfg(feature = "alloc")]
impl PieceCache {
    fn for_text_len(len: usize) -> PieceCache {
        let n = if len < 1024 { 0 } else { (len / 16).next_power_of_two().min(4096) };
        PieceCache { slots: alloc::vec![CacheSlot::default(); n] }
    }

    fn slot(&self, piece: &[u8]) -> Option<usize> {
        if self.slots.is_empty() || piece.len() > CacheSlot::MAX_KEY {
            return None;
        }
        let mut h = 0u64;
        for &b in piece {
            h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
        Some((h >> 32) as usize & (self.slots.len() - 1))
    }

    /// Appends the cached ids of `piece` to `ids`; false on a miss.
    fn get(&self, piece: &[u8], ids: &mut Vec<u32>) -> bool {
        let Some(slot) = self.slot(piece).and_then(|i| self.slots.get(i)) else {
            return false;
        };
        if usize::from(slot.len) != piece.len() || slot.key.get(..piece.len()) != Some(piece) {
            return false;
        }
        ids.extend_from_slice(slot.ids.get(..usize::from(slot.n_ids)).unwrap_or_default());
        true
    }

    fn put(&mut self, piece: &[u8], piece_ids: &[u32]) {
        if piece_ids.len() > CacheSlot::MAX_IDS {
            return;
        }
        let Some(slot) = self.slot(piece).and_then(|i| self.slots.get_mut(i)) else {
            return;
        };
        slot.len = piece.len() as u8;
        slot.key[..piece.len()].copy_from_slice(piece);
        slot.n_ids = piece_ids.len() as u8;
        slot.ids[..piece_ids.len()].copy_from_slice(piece_ids);
    }
}

/// A stretch of ordinary text, or a special token matched whole.
enum Segment<'t> {
    Text(&'t str),
    Special(u32),
}

/// (left, right, rank, result) of one merge entry.
fn merge_fields(m: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_le_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    extern crate std;
    use super::build::BYTE_TO_CHAR;
    use super::*;
    use std::string::ToString;
    use std::vec;

    fn byte_level(s: &str) -> String {
        s.bytes().map(|b| char::from_u32(u32::from(BYTE_TO_CHAR[usize::from(b)])).unwrap()).collect()
    }

    /// 3 control tokens, 256 bytes (in GPT-2's order, not byte order), a few merges.
    fn small_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
        let mut types = vec![3, 3, 3];
        let mut order: Vec<u8> = (0..=255).collect();
        order.sort_by_key(|&b| BYTE_TO_CHAR[usize::from(b)]);
        for b in order {
            tokens.push(char::from_u32(u32::from(BYTE_TO_CHAR[usize::from(b)])).unwrap().to_string());
            types.push(1);
        }
        let mut merges = Vec::new();
        for (l, r) in [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), (" ", "w"), ("é", "t"), ("1", "2")] {
            let (l, r) = (byte_level(l), byte_level(r));
            // "é" is two bytes: its own merge first.
            if l.chars().count() == 2 && !tokens.contains(&l) {
                let mut cs = l.chars();
                let (a, b) = (cs.next().unwrap(), cs.next().unwrap());
                merges.push(std::format!("{a} {b}"));
                tokens.push(l.clone());
                types.push(1);
            }
            merges.push(std::format!("{l} {r}"));
            tokens.push(std::format!("{l}{r}"));
            types.push(1);
        }
        (tokens, types, merges)
    }

    fn small_blob() -> Vec<u8> {
        let (t, ty, m) = small_vocab();
        build_blob(&t, &ty, &m).unwrap()
    }

    #[test]
    fn small_vocab_round_trip() {
        let blob = small_blob();
        let tok = Tokenizer::from_blob(&blob).unwrap();
        assert_eq!(tok.vocab_size(), 3 + 256 + 8);
        let hello = tok.token_id(b"hello").unwrap();
        let w = tok.token_id(b" w").unwrap();
        assert_eq!(tok.encode("hello", false), [hello]);
        assert_eq!(tok.encode("hello world", false)[..2], [hello, w]);
        let ids = tok.encode("<|im_start|>hello<|im_end|>", true);
        assert_eq!(ids, [1, hello, 2]);
        assert_eq!(tok.decode(&ids), "<|im_start|>hello<|im_end|>");
        assert_eq!(tok.decode_skip_control(&ids), "hello");
        let plain = tok.encode("<|im_start|>", false);
        assert!(plain.len() > 1 && !plain.contains(&1));
        assert_eq!(tok.decode(&plain), "<|im_start|>");
        // Digits are isolated before merging: "12" never merges under smollm.
        assert_eq!(tok.encode("12", false), [tok.token_id(b"1").unwrap(), tok.token_id(b"2").unwrap()]);
        assert!(tok.is_control(0) && !tok.is_control(hello));
        assert_eq!(tok.token_type(hello), Some(TokenType::Normal));
        assert_eq!(tok.token_bytes(tok.vocab_size()), None);
        assert_eq!(tok.special_tokens().collect::<Vec<_>>(), [0, 1, 2]);
        let text = "héllo wörld été 😀 \u{0}\u{7f}";
        assert_eq!(tok.decode(&tok.encode(text, true)), text);
        assert_eq!(tok.decode(&[u32::MAX, hello]), "hello");
        assert_eq!(tok.decode(&[tok.token_id(&[0xe4]).unwrap()]), "\u{fffd}");
    }

    #[test]
    fn encode_with_scratch_matches_encode() {
        let blob = small_blob();
        let tok = Tokenizer::from_blob(&blob).unwrap();
        let text = "<|im_start|>hello world, 12 hells!!!<|endoftext|>";
        let mut scratch = [0u32; SCRATCH_WORDS_PER_BYTE * 8];
        let mut ids = Vec::new();
        tok.encode_with_scratch(text, true, &mut scratch, |id| ids.push(id)).unwrap();
        assert_eq!(ids, tok.encode(text, true));
        let mut small = [0u32; SCRATCH_WORDS_PER_BYTE * 4];
        let err = tok.encode_with_scratch(text, true, &mut small, |_| {}).unwrap_err();
        assert_eq!(
            err,
            TokenizerError::ScratchTooSmall { need: SCRATCH_WORDS_PER_BYTE * 5, have: SCRATCH_WORDS_PER_BYTE * 4 }
        );
    }

    #[test]
    fn build_rejects_bad_vocabularies() {
        let (t, ty, m) = small_vocab();
        assert!(matches!(build_blob(&t, &ty[1..], &m), Err(TokenizerError::CountMismatch { .. })));
        let mut bad_ty = ty.clone();
        bad_ty[5] = 9;
        assert_eq!(build_blob(&t, &bad_ty, &m), Err(TokenizerError::BadTokenType { id: 5, value: 9 }));
        let mut bad_t = t.clone();
        bad_t[10] = "▁x".into();
        assert_eq!(build_blob(&bad_t, &ty, &m), Err(TokenizerError::NotByteLevel { id: 10 }));
        let mut bad_m = m.clone();
        bad_m[1] = "hl".into();
        assert_eq!(build_blob(&t, &ty, &bad_m), Err(TokenizerError::BadMerge { rank: 1 }));
        bad_m[1] = "q z".into();
        assert_eq!(build_blob(&t, &ty, &bad_m), Err(TokenizerError::MergeNotInVocab { rank: 1 }));
        let empty: [&str; 0] = [];
        assert!(build_blob(&empty, &[], &empty).is_err());
    }

    /// Calls every method; with a validated blob none may panic.
    fn exercise(tok: &Tokenizer<'_>) {
        let texts = [
            "",
            "hello world",
            "<|im_start|>x<|im_end|>",
            "12 héllo 😀\n\n  \t!!",
            "<|<|im_end",
            "½é 😀😀\u{3000}\u{3000}x",
        ];
        for text in texts {
            for special in [false, true] {
                let ids = tok.encode(text, special);
                let _ = tok.decode(&ids);
                let _ = tok.decode_skip_control(&ids);
                let mut scratch = [0u32; 64];
                let _ = tok.encode_with_scratch(text, special, &mut scratch, |_| {});
            }
        }
        let n = tok.vocab_size();
        for id in (0..n.min(300)).chain([n, n.wrapping_add(1), u32::MAX]) {
            let b = tok.token_bytes(id);
            let _ = tok.token_type(id);
            let _ = tok.is_control(id);
            if let Some(b) = b {
                let _ = tok.token_id(b);
            }
        }
        let _ = tok.token_id(b"");
        let _ = tok.token_id(b"<|im_end|>");
        let _ = tok.decode(&(0..n.min(300)).collect::<Vec<_>>());
    }

    #[test]
    fn truncated_blobs_are_rejected() {
        let blob = small_blob();
        for len in 0..blob.len() {
            assert!(Tokenizer::from_blob(&blob[..len]).is_err(), "prefix of {len} bytes accepted");
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(matches!(Tokenizer::from_blob(&longer), Err(TokenizerError::LengthMismatch { .. })));
        // Unaligned start: zero-copy parsing must not care.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&blob);
        exercise(&Tokenizer::from_blob(&shifted[1..]).unwrap());
    }

    #[test]
    fn corrupted_blobs_never_panic() {
        let blob = small_blob();
        let mut accepted = 0;
        for i in 0..blob.len() {
            for v in [0x01u8, 0x02, 0x10, 0x80, 0xff] {
                let mut bad = blob.clone();
                bad[i] ^= v;
                if let Ok(tok) = Tokenizer::from_blob(&bad) {
                    accepted += 1;
                    exercise(&tok);
                }
            }
            let mut bad = blob.clone();
            bad[i] = 0;
            if let Ok(tok) = Tokenizer::from_blob(&bad) {
                exercise(&tok);
            }
        }
        // Flipping a merge rank, a token type or a pool byte of an unused token may
        // leave a valid blob; the structural fields may not.
        assert!(accepted > 0);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut bad = blob.clone();
            for _ in 0..1 + next() % 8 {
                let i = (next() % bad.len() as u64) as usize;
                bad[i] = next() as u8;
            }
            if let Ok(tok) = Tokenizer::from_blob(&bad) {
                exercise(&tok);
            }
        }
        let header_fuzz = [0u32, 1, 2, 255, 256, 1 << 24, (1 << 24) + 1, u32::MAX / 16, u32::MAX - 1, u32::MAX];
        for word in 4..8 {
            for &v in &header_fuzz {
                let mut bad = blob.clone();
                bad[word * 4..word * 4 + 4].copy_from_slice(&v.to_le_bytes());
                let _ = Tokenizer::from_blob(&bad);
            }
        }
    }

    /// A small SentencePiece vocabulary: control, user-defined, byte tokens for a few
    /// bytes, pieces whose merge order differs between rank by id and rank by score.
    fn spm_vocab(gemma: bool) -> (Vec<&'static str>, Vec<i32>, Vec<f32>) {
        let v: [(&str, i32, f32); 18] = [
            ("<unk>", 2, 0.0),
            ("<bos>", 3, 0.0),
            ("<start_of_turn>", 3, 0.0),
            ("\n", 4, 0.0),
            (if gemma { "  " } else { "<sep>" }, 4, 0.0),
            ("<0x41>", 6, 0.0),
            ("<0xE4>", 6, 0.0),
            ("<0xB8>", 6, 0.0),
            ("<0xAD>", 6, 0.0),
            ("▁", 1, -1.0),
            ("a", 1, -2.0),
            ("b", 1, -3.0),
            ("c", 1, -4.0),
            ("ab", 1, -9.0),
            ("bc", 1, -5.0),
            ("▁a", 1, -6.0),
            ("▁b", 1, -7.0),
            ("A", 1, -8.0),
        ];
        (v.iter().map(|t| t.0).collect(), v.iter().map(|t| t.1).collect(), v.iter().map(|t| t.2).collect())
    }

    fn spm_blob(gemma: bool) -> Vec<u8> {
        let (t, ty, sc) = spm_vocab(gemma);
        build_spm_blob(&t, &ty, &sc, SpmOptions { add_space_prefix: false, unk: Some(0), gemma }).unwrap()
    }

    #[test]
    fn spm_small_vocab() {
        let by_id = spm_blob(true);
        let tok = Tokenizer::from_blob(&by_id).unwrap();
        assert_eq!(tok.kind(), TokenizerKind::SentencePiece { add_space_prefix: false });
        assert_eq!(tok.pre_tokenizer(), None);
        // "ab" (id 13) outranks "bc" (14) by position, "bc" outranks "ab" by score.
        assert_eq!(tok.encode("abc", false), [13, 12]);
        let by_score = spm_blob(false);
        assert_eq!(Tokenizer::from_blob(&by_score).unwrap().encode("abc", false), [10, 14]);
        // A literal `▁` is a space; pieces decode with spaces.
        assert_eq!(tok.encode(" a\u{2581}a", false), [15, 15]);
        assert_eq!(tok.decode(&[15, 16]), " a b");
        // Gemma: a user-defined run of spaces is a piece of `▁`s, found by merging, not
        // matched whole; other user-defined tokens are.
        assert_eq!(tok.encode("  ", false), [4]);
        assert!(!tok.special_tokens().any(|id| id == 4));
        assert_eq!(Tokenizer::from_blob(&by_score).unwrap().encode("a<sep>", false), [10, 4]);
        // Byte fallback, the unknown token fused, user-defined and control tokens.
        assert_eq!(tok.encode("中", false), [6, 7, 8]);
        assert_eq!(tok.encode("xyz", false), [0]);
        assert_eq!(tok.encode("a\n<start_of_turn>", true), [10, 3, 2]);
        assert_eq!(tok.encode("<start_of_turn>", false)[..1], [0]);
        assert_eq!(tok.decode(&[6, 7, 8, 3]), "中\n");
        assert_eq!(tok.decode(&[6, 7]), "\u{fffd}");
        // "A" is a piece and a byte token: text finds the piece, the byte table the byte.
        assert_eq!(tok.encode("A", false), [17]);
        assert_eq!(tok.token_id(b"A"), Some(17));
        assert_eq!(tok.token_type(5), Some(TokenType::Byte));
        let mut scratch = [0u32; SCRATCH_WORDS_PER_BYTE * 8];
        let mut ids = Vec::new();
        tok.encode_with_scratch("ab\nabc", false, &mut scratch, |id| ids.push(id)).unwrap();
        assert_eq!(ids, tok.encode("ab\nabc", false));
        // A long text goes through encode's cache of merge lookups.
        let long = "abc a\u{2581}b  bca\n中x".repeat(40);
        let mut big = vec![0u32; SCRATCH_WORDS_PER_BYTE * (long.len() + 1)];
        let mut no_cache = Vec::new();
        tok.encode_with_scratch(&long, true, &mut big, |id| no_cache.push(id)).unwrap();
        assert_eq!(tok.encode(&long, true), no_cache);
        let mut small = [0u32; SCRATCH_WORDS_PER_BYTE * 3];
        assert!(tok.encode_with_scratch("abcabc", false, &mut small, |_| {}).is_err());
        // The space prefix goes before the input's first text only, unless it starts
        // with a space.
        let (t, ty, sc) = spm_vocab(true);
        let opts = SpmOptions { add_space_prefix: true, unk: Some(0), gemma: true };
        let prefixed = build_spm_blob(&t, &ty, &sc, opts).unwrap();
        let tok = Tokenizer::from_blob(&prefixed).unwrap();
        assert_eq!(tok.encode("a", false), [15]);
        assert_eq!(tok.encode(" a", false), [15]);
        assert_eq!(tok.encode("a\na", false), [15, 3, 10]);
    }

    #[test]
    fn spm_build_refuses_what_it_cannot_encode() {
        let (t, ty, sc) = spm_vocab(false);
        let opts = SpmOptions { add_space_prefix: false, unk: Some(0), gemma: false };
        let mut bad = t.clone();
        bad[5] = "<0x4>";
        assert_eq!(build_spm_blob(&bad, &ty, &sc, opts), Err(TokenizerError::BadByteToken { id: 5 }));
        bad[5] = "<0x41>";
        bad[17] = "b";
        assert_eq!(build_spm_blob(&bad, &ty, &sc, opts), Err(TokenizerError::AmbiguousPiece { id: 17 }));
        bad[17] = "a b";
        assert_eq!(build_spm_blob(&bad, &ty, &sc, opts), Err(TokenizerError::AmbiguousPiece { id: 17 }));
        // Gemma's respelling of a run of spaces must not repeat a piece.
        let (mut g, gty, gsc) = spm_vocab(true);
        g[16] = "▁▁";
        let gemma = SpmOptions { gemma: true, ..opts };
        assert_eq!(build_spm_blob(&g, &gty, &gsc, gemma), Err(TokenizerError::AmbiguousPiece { id: 16 }));
        // White space as Python's `str.isspace` sees it (U+001C counts): respelled too.
        let (mut g, gty, gsc) = spm_vocab(true);
        g[4] = " \u{1c}";
        let blob = build_spm_blob(&g, &gty, &gsc, gemma).unwrap();
        assert_eq!(Tokenizer::from_blob(&blob).unwrap().encode("  ", false), [4]);
        let mut two_bytes = t.clone();
        two_bytes[17] = "<0x41>";
        let mut byte_types = ty.clone();
        byte_types[17] = 6;
        assert_eq!(build_spm_blob(&two_bytes, &byte_types, &sc, opts), Err(TokenizerError::AmbiguousPiece { id: 17 }));
        // A byte token's text split into two pieces would be a merge Hugging Face makes.
        bad[17] = "<0x";
        let mut more = bad.clone();
        more.push("41>");
        let (mut ty2, mut sc2) = (ty.clone(), sc.clone());
        ty2.push(1);
        sc2.push(-10.0);
        assert_eq!(build_spm_blob(&more, &ty2, &sc2, opts), Err(TokenizerError::AmbiguousPiece { id: 5 }));
        let mut nan = sc.clone();
        nan[12] = f32::NAN;
        assert_eq!(build_spm_blob(&t, &ty, &nan, opts), Err(TokenizerError::BadScore { id: 12 }));
        assert_eq!(build_spm_blob(&t, &ty, &[], opts), Err(TokenizerError::BadScore { id: 0 }));
        let bad_unk = SpmOptions { unk: Some(99), ..opts };
        assert!(build_spm_blob(&t, &ty, &sc, bad_unk).is_err());
    }

    #[test]
    fn blob_versions() {
        // Byte-level BPE blobs stay version 1, SentencePiece is version 2.
        assert_eq!(small_blob()[4..8], 1u32.to_le_bytes());
        assert_eq!(spm_blob(true)[4..12], [2, 0, 0, 0, 2, 0, 0, 0]);
        let mut v1_spm = spm_blob(true);
        v1_spm[4] = 1;
        assert_eq!(Tokenizer::from_blob(&v1_spm).unwrap_err(), TokenizerError::UnsupportedModel(2));
        let mut v3 = small_blob();
        v3[4] = 3;
        assert_eq!(Tokenizer::from_blob(&v3).unwrap_err(), TokenizerError::UnsupportedVersion(3));
        let mut flags = spm_blob(true);
        flags[12] = 2;
        assert!(Tokenizer::from_blob(&flags).is_err());
        let mut unk = spm_blob(true);
        unk[20..24].copy_from_slice(&100u32.to_le_bytes());
        assert!(Tokenizer::from_blob(&unk).is_err());
        // Piece "A" (17) and byte token <0x41> (5) share bytes; two byte tokens may not.
        let mut dup = spm_blob(true);
        let types_at = dup.len() - 18 - {
            let pool_len = u32::from_le_bytes(dup[28..32].try_into().unwrap());
            pool_len as usize
        };
        dup[types_at + 17] = 6;
        assert_eq!(Tokenizer::from_blob(&dup).unwrap_err(), TokenizerError::Corrupt("two pieces with the same bytes"));
    }

    #[test]
    fn spm_truncated_and_corrupted_blobs_never_panic() {
        for gemma in [true, false] {
            let blob = spm_blob(gemma);
            for len in 0..blob.len() {
                assert!(Tokenizer::from_blob(&blob[..len]).is_err(), "prefix of {len} bytes accepted");
            }
            let mut shifted = vec![0u8];
            shifted.extend_from_slice(&blob);
            exercise(&Tokenizer::from_blob(&shifted[1..]).unwrap());
            let mut accepted = 0;
            for i in 0..blob.len() {
                for v in [0x01u8, 0x02, 0x10, 0x80, 0xff] {
                    let mut bad = blob.clone();
                    bad[i] ^= v;
                    if let Ok(tok) = Tokenizer::from_blob(&bad) {
                        accepted += 1;
                        exercise(&tok);
                    }
                }
            }
            // Ranks and some pool bytes may change without breaking a rule.
            assert!(accepted > 0);
            let mut state = 0x2545_f491_4f6c_dd1du64;
            for _ in 0..2000 {
                let mut bad = blob.clone();
                for _ in 0..1 + state % 8 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let i = (state % bad.len() as u64) as usize;
                    bad[i] = (state >> 32) as u8;
                }
                if let Ok(tok) = Tokenizer::from_blob(&bad) {
                    exercise(&tok);
                }
            }
        }
    }

    #[test]
    fn errors_display() {
        let e = Tokenizer::from_blob(b"ARQT").unwrap_err();
        assert_eq!(e, TokenizerError::TooShort { len: 4 });
        assert!(e.to_string().contains("4 bytes"));
        let mut blob = small_blob();
        blob[0] = b'X';
        assert_eq!(Tokenizer::from_blob(&blob).unwrap_err(), TokenizerError::BadMagic);
    }
}
