//! The merge loop of byte-level BPE over caller-provided scratch.
//!
//! Same algorithm and tie-breaking as Hugging Face's `Word::merge_all` (and GPT-2's
//! `bpe()`): repeatedly merge the adjacent pair with the lowest merge rank, the
//! leftmost one among equal ranks, until no adjacent pair has a merge. A binary heap of
//! candidate pairs keeps it O(n log n) in the piece length, so a megabyte of one
//! repeated punctuation char (a single piece) stays fast.

use super::{PreTokenizer, Tokenizer, TokenizerError, NONE};
use bytemuck::{Pod, Zeroable};

/// `u32` words of scratch that [`Tokenizer::encode_with_scratch`] needs per byte of
/// the longest piece it merges: a 3-word symbol and up to three 6-word heap entries.
pub const SCRATCH_WORDS_PER_BYTE: usize = 21;

/// One symbol of the piece being merged: a token id in a doubly linked list.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub(super) struct Symbol {
    /// `NONE` once merged into its left neighbour.
    pub(super) id: u32,
    pub(super) prev: u32,
    pub(super) next: u32,
}

/// The priority of a merge: lower first. Byte-level BPE uses the merge's rank alone;
/// SentencePiece pieces order by the result's rank, then the split (see `spm.rs`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(super) struct MergeKey {
    pub(super) rank: u32,
    pub(super) split: u32,
}

/// A candidate merge of the symbol at `pos` (then `left`) with its right neighbour
/// (then `right`).
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub(super) struct Candidate {
    rank: u32,
    split: u32,
    pos: u32,
    left: u32,
    right: u32,
    result: u32,
}

const _: () = assert!(core::mem::size_of::<Symbol>() == 12 && core::mem::size_of::<Candidate>() == 24);
const _: () = assert!(SCRATCH_WORDS_PER_BYTE == 3 + 3 * 6);

/// One remembered merge lookup of a [`PairCache`].
#[derive(Clone, Copy)]
pub(super) struct PairSlot {
    left: u32,
    right: u32,
    key: MergeKey,
    /// `NONE`: the pair does not merge.
    result: u32,
}

/// A direct-mapped cache of merge lookups for one long `encode` call (SentencePiece
/// lookups are binary searches over the whole vocabulary, and text repeats its pairs).
pub(super) struct PairCache<'s> {
    pub(super) slots: &'s mut [PairSlot],
}

impl PairSlot {
    pub(super) const EMPTY: PairSlot =
        PairSlot { left: NONE, right: NONE, key: MergeKey { rank: 0, split: 0 }, result: NONE };
}

impl Candidate {
    /// Heap order: lowest key first, then lowest result id (two merges can share a key
    /// only in a SentencePiece vocabulary with tied scores), then leftmost.
    fn before(&self, other: &Candidate) -> bool {
        (self.rank, self.split, self.result, self.pos) < (other.rank, other.split, other.result, other.pos)
    }
}

/// A binary min-heap in a borrowed slice.
struct Heap<'s> {
    items: &'s mut [Candidate],
    len: usize,
}

impl Heap<'_> {
    fn push(&mut self, c: Candidate) {
        // Capacity is 3 * symbols, more than the at most 3 * (symbols - 1) pushes.
        let Some(slot) = self.items.get_mut(self.len) else {
            return;
        };
        *slot = c;
        let mut i = self.len;
        self.len += 1;
        while i > 0 {
            let parent = (i - 1) / 2;
            if !self.items[i].before(&self.items[parent]) {
                break;
            }
            self.items.swap(i, parent);
            i = parent;
        }
    }

    fn pop(&mut self) -> Option<Candidate> {
        if self.len == 0 {
            return None;
        }
        let top = self.items[0];
        self.len -= 1;
        self.items[0] = self.items[self.len];
        let mut i = 0;
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut min = i;
            if l < self.len && self.items[l].before(&self.items[min]) {
                min = l;
            }
            if r < self.len && self.items[r].before(&self.items[min]) {
                min = r;
            }
            if min == i {
                break;
            }
            self.items.swap(i, min);
            i = min;
        }
        Some(top)
    }
}

/// Splits `need / SCRATCH_WORDS_PER_BYTE` symbols' worth of scratch into the symbol
/// array and the heap.
pub(super) fn carve(scratch: &mut [u32], units: usize) -> Result<(&mut [Symbol], &mut [Candidate]), TokenizerError> {
    let (need, have) = (SCRATCH_WORDS_PER_BYTE.saturating_mul(units), scratch.len());
    let Some(scratch) = scratch.get_mut(..need) else {
        return Err(TokenizerError::ScratchTooSmall { need, have });
    };
    let (sym_words, heap_words) = scratch.split_at_mut(3 * units);
    let too_small = |_| TokenizerError::ScratchTooSmall { need, have: need };
    let symbols: &mut [Symbol] = bytemuck::try_cast_slice_mut(sym_words).map_err(too_small)?;
    let heap_items: &mut [Candidate] = bytemuck::try_cast_slice_mut(heap_words).map_err(too_small)?;
    Ok((symbols, heap_items))
}

impl Tokenizer<'_> {
    /// BPE-encodes one pre-tokenizer piece, calling `emit` with each token id.
    ///
    /// `scratch` must hold `SCRATCH_WORDS_PER_BYTE * piece.len()` words. Bytes without
    /// a single-byte token are dropped (Hugging Face's BPE without an unknown token
    /// does the same; a GPT-2 style vocabulary has all 256).
    pub(super) fn bpe_piece(
        &self,
        piece: &[u8],
        scratch: &mut [u32],
        emit: &mut impl FnMut(u32),
    ) -> Result<(), TokenizerError> {
        if let [b] = piece {
            let id = self.byte_token(*b);
            if id != NONE {
                emit(id);
            }
            return Ok(());
        }
        if self.pre_tokenizer().is_some_and(PreTokenizer::ignores_merges) {
            if let Some(id) = self.token_id(piece) {
                emit(id);
                return Ok(());
            }
        }
        let (symbols, heap_items) = carve(scratch, piece.len())?;
        let mut n = 0usize;
        for &b in piece {
            let id = self.byte_token(b);
            if let (true, Some(s)) = (id != NONE, symbols.get_mut(n)) {
                s.id = id;
                n += 1;
            }
        }
        self.merge_symbols(symbols.get_mut(..n).unwrap_or_default(), heap_items, None, emit);
        Ok(())
    }

    /// The merge loop over `symbols` (their `id`s set, links not yet): Hugging Face's
    /// `Word::merge_all`. `heap_items` holds at least `3 * symbols.len()` entries;
    /// `cache`, if any, remembers merge lookups (its length a power of two).
    pub(super) fn merge_symbols(
        &self,
        symbols: &mut [Symbol],
        heap_items: &mut [Candidate],
        mut cache: Option<&mut PairCache<'_>>,
        emit: &mut impl FnMut(u32),
    ) {
        let mut merge_key = |left: u32, right: u32| -> Option<(MergeKey, u32)> {
            let Some(cache) = cache.as_deref_mut() else {
                return self.merge_key(left, right);
            };
            let h = (u64::from(left) << 32 | u64::from(right)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mask = cache.slots.len().wrapping_sub(1);
            let Some(slot) = cache.slots.get_mut((h >> 40) as usize & mask) else {
                return self.merge_key(left, right);
            };
            if (slot.left, slot.right) == (left, right) {
                return (slot.result != NONE).then_some((slot.key, slot.result));
            }
            let found = self.merge_key(left, right);
            let (key, result) = found.unwrap_or((MergeKey { rank: 0, split: 0 }, NONE));
            *slot = PairSlot { left, right, key, result };
            found
        };
        let n = symbols.len();
        for (i, s) in symbols.iter_mut().enumerate() {
            // `prev` of symbol 0 wraps to u32::MAX == NONE.
            s.prev = (i as u32).wrapping_sub(1);
            s.next = if i + 1 == n { NONE } else { i as u32 + 1 };
        }
        let mut heap = Heap { items: heap_items, len: 0 };
        for pos in 0..n.saturating_sub(1) {
            let (left, right) = (symbols[pos].id, symbols[pos + 1].id);
            if let Some((key, result)) = merge_key(left, right) {
                heap.push(Candidate { rank: key.rank, split: key.split, pos: pos as u32, left, right, result });
            }
        }
        while let Some(top) = heap.pop() {
            let pos = top.pos as usize;
            let Some(&left) = symbols.get(pos) else {
                continue;
            };
            if left.id == NONE {
                continue;
            }
            let Some(&right) = symbols.get(left.next as usize) else {
                continue;
            };
            // A stale candidate: the pair has changed since it was queued. Like Hugging
            // Face, still merge if the new pair happens to give the same token.
            if (left.id, right.id) != (top.left, top.right) {
                match merge_key(left.id, right.id) {
                    Some((_, result)) if result == top.result => {}
                    _ => continue,
                }
            }
            symbols[left.next as usize].id = NONE;
            symbols[pos].id = top.result;
            symbols[pos].next = right.next;
            if let Some(after) = symbols.get_mut(right.next as usize) {
                after.prev = pos as u32;
            }
            if let Some(&before) = symbols.get(left.prev as usize) {
                if let Some((key, result)) = merge_key(before.id, top.result) {
                    let (rank, split) = (key.rank, key.split);
                    heap.push(Candidate { rank, split, pos: left.prev, left: before.id, right: top.result, result });
                }
            }
            if let Some(&after) = symbols.get(right.next as usize) {
                if let Some((key, result)) = merge_key(top.result, after.id) {
                    let (rank, split) = (key.rank, key.split);
                    heap.push(Candidate { rank, split, pos: pos as u32, left: top.result, right: after.id, result });
                }
            }
        }
        for s in symbols.iter() {
            if s.id != NONE {
                emit(s.id);
            }
        }
    }
}
