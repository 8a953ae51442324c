//! Zero `Pad`s and `Slice`s of H and W, and convolutions whose output is not the
//! image's size: what exports do to shift a stack (pytorch-generative's GatedPixelCNN
//! pads its vertical conv `N//2 + 1` rows on both sides and keeps the first H rows; its
//! horizontal conv the same on columns; `F.pad` + slice does it by hand). Such a value is
//! kept as a [`Window`] over a graph tensor (or a pending convolution) and folded into
//! the offsets of the taps that read it: the `.arq` graph only has image-sized tensors.

use std::rc::Rc;

use tract_onnx::pb;

use super::walker::Val;

/// A convolution whose output is not `H x W`, kept until something reads it (a Slice
/// usually crops it back first).
#[derive(Clone, Debug)]
pub(super) struct PendingConv {
    pub(super) node: pb::NodeProto,
    /// `node i (Conv "name")`, and `i`.
    pub(super) label: String,
    pub(super) at: usize,
    /// The tensor it reads.
    pub(super) a: usize,
    pub(super) cout: usize,
    /// Row (column) of `a` that output row (column) `0` reads with kernel row (column)
    /// `0`: minus the pads, minus the input window's offset.
    pub(super) origin: [i64; 2],
    /// `a`'s rows (columns) the input window holds; the conv reads zeros elsewhere.
    pub(super) valid: [(i64, i64); 2],
    /// Its output's rows and columns.
    pub(super) size: [i64; 2],
    /// Its pads as written, for a refusal.
    pub(super) pads: [i64; 4],
}

/// What a window looks at.
#[derive(Clone, Debug)]
pub(super) enum Base {
    /// A feature map or the image (`H x W`).
    Val(Val),
    Conv(Rc<PendingConv>),
}

/// Row `i` of the window is row `i - off[0]` of the base when that row is in `valid[0]`,
/// else zero (the same for columns); the window has `size` rows and columns.
#[derive(Clone, Debug)]
pub(super) struct Window {
    pub(super) base: Base,
    pub(super) off: [i64; 2],
    pub(super) size: [i64; 2],
    pub(super) valid: [(i64, i64); 2],
}

impl Window {
    /// The whole of `base`, which has `size` rows and columns.
    pub(super) fn over(base: Base, size: [i64; 2]) -> Window {
        Window { base, off: [0, 0], size, valid: [(0, size[0]), (0, size[1])] }
    }

    /// Zero-padded by `[top, left, bottom, right]` (each >= 0).
    pub(super) fn pad(mut self, p: [i64; 4]) -> Window {
        for ax in 0..2 {
            self.off[ax] += p[ax];
            self.size[ax] += p[ax] + p[ax + 2];
        }
        self
    }

    /// Rows (`axis` 0) or columns `s .. e` of it (`0 <= s <= e <= size`).
    pub(super) fn crop(mut self, axis: usize, s: i64, e: i64) -> Window {
        let (lo, hi) = self.valid[axis];
        let off = self.off[axis];
        self.valid[axis] = (lo.max(s - off), hi.min(e - off).max(lo.max(s - off)));
        self.off[axis] = off - s;
        self.size[axis] = e - s;
        self
    }

    /// Whether it is exactly its base, an `h x w` tensor.
    pub(super) fn is_whole(&self, h: i64, w: i64) -> bool {
        self.off == [0, 0] && self.size == [h, w] && self.valid == [(0, h), (0, w)]
    }
}

/// Whether a tap at offset `d` along an axis of `n` positions reads only rows of
/// `valid` where it reads inside the image (`Some(true)`), nothing of `valid` (`Some(false)`:
/// the tap only ever reads zeros), or some of both (`None`: not a tap).
pub(super) fn tap_reads(d: i64, n: i64, valid: (i64, i64)) -> Option<bool> {
    // Positions 0 .. n read d .. n - 1 + d; inside the image: the overlap with 0 .. n.
    let (lo, hi) = (d.max(0), (n + d).min(n));
    if lo >= hi {
        return Some(false);
    }
    let (vlo, vhi) = (valid.0.max(lo), valid.1.min(hi));
    if vlo >= vhi {
        Some(false)
    } else if vlo == lo && vhi == hi {
        Some(true)
    } else {
        None
    }
}
