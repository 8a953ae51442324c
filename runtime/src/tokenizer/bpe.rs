//! The merge loop of byte-level BPE over caller-provided scratch.
//!
//! Same algorithm and tie-breaking as Hugging Face's `Word::merge_all` (and GPT-2's
//! `bpe()`): repeatedly merge the adjacent pair with the lowest merge rank, the
//! leftmost one among equal ranks, until no adjacent pair has a merge. A binary heap of
//! candidate pairs keeps it O(n log n) in the piece length, so a megabyte of one
//! repeated punctuation char (a single piece) stays fast.

use super::{Tokenizer, TokenizerError, NONE};
use bytemuck::{Pod, Zeroable};

/// `u32` words of scratch that [`Tokenizer::encode_with_scratch`] needs per byte of
/// the longest pre-tokenizer piece: a 3-word symbol and up to three 5-word heap
/// entries.
pub const SCRATCH_WORDS_PER_BYTE: usize = 18;

/// One symbol of the piece being merged: a token id in a doubly linked list.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub(super) struct Symbol {
    /// `NONE` once merged into its left neighbour.
    id: u32,
    prev: u32,
    next: u32,
}

/// A candidate merge of the symbol at `pos` (then `left`) with its right neighbour
/// (then `right`).
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct Candidate {
    rank: u32,
    pos: u32,
    left: u32,
    right: u32,
    result: u32,
}

const _: () = assert!(core::mem::size_of::<Symbol>() == 12 && core::mem::size_of::<Candidate>() == 20);
const _: () = assert!(SCRATCH_WORDS_PER_BYTE == 3 + 3 * 5);

impl Candidate {
    /// Heap order: lowest rank first, then leftmost.
    fn before(&self, other: &Candidate) -> bool {
        (self.rank, self.pos) < (other.rank, other.pos)
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
        let need = SCRATCH_WORDS_PER_BYTE * piece.len();
        let Some(scratch) = scratch.get_mut(..need) else {
            return Err(TokenizerError::ScratchTooSmall { need, have: scratch.len() });
        };
        let (sym_words, heap_words) = scratch.split_at_mut(3 * piece.len());
        let too_small = |_| TokenizerError::ScratchTooSmall { need, have: need };
        let symbols: &mut [Symbol] = bytemuck::try_cast_slice_mut(sym_words).map_err(too_small)?;
        let heap_items: &mut [Candidate] = bytemuck::try_cast_slice_mut(heap_words).map_err(too_small)?;

        let mut n = 0usize;
        for &b in piece {
            let id = self.byte_token(b);
            if id != NONE {
                symbols[n] = Symbol { id, prev: (n as u32).wrapping_sub(1), next: n as u32 + 1 };
                n += 1;
            }
        }
        let symbols = &mut symbols[..n];
        if let Some(last) = symbols.last_mut() {
            last.next = NONE;
        }
        // `prev` of symbol 0 wrapped to u32::MAX == NONE above.

        let mut heap = Heap { items: heap_items, len: 0 };
        for pos in 0..n.saturating_sub(1) {
            let (left, right) = (symbols[pos].id, symbols[pos + 1].id);
            if let Some((rank, result)) = self.merge(left, right) {
                heap.push(Candidate { rank, pos: pos as u32, left, right, result });
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
                match self.merge(left.id, right.id) {
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
                if let Some((rank, result)) = self.merge(before.id, top.result) {
                    heap.push(Candidate { rank, pos: left.prev, left: before.id, right: top.result, result });
                }
            }
            if let Some(&after) = symbols.get(right.next as usize) {
                if let Some((rank, result)) = self.merge(top.result, after.id) {
                    heap.push(Candidate { rank, pos: pos as u32, left: top.result, right: after.id, result });
                }
            }
        }
        for s in symbols.iter() {
            if s.id != NONE {
                emit(s.id);
            }
        }
        Ok(())
    }
}
