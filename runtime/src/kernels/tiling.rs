//! The one tiling driver of the SIMD tiers' matmuls, generic over a tier's microkernel.
//!
//! A matmul `out[t * rows + r] = dot(w_row_r, x_row_t)` runs as tiles of `R` weight rows
//! x `T` tokens ([`matmul`]): each group of 8 weight blocks (or floats) is prepared once
//! per tile and meets the tile's `T` tokens, each token's group is prepared once per
//! tile and meets its `R` rows, and every output keeps its own 8 float lanes, so it
//! still runs the contract's dot product in the contract's order. What a tier writes is
//! a [`MicroKernel`] per matmul: how it prepares a group, how one group pair adds to an
//! output's lanes, and how the lanes fold; the walk over rows and tokens and its edges
//! are here. Tile sizes and whether one-token tiles prefetch are the driver's const parameters,
//! chosen by each tier; the prefetch distance is a run-time setting (`tune`).
//!
//! Every function here is `#[inline(always)]`: a tier's `#[target_feature]` entry point
//! calls [`matmul`], and the whole walk, with the microkernel's methods (also
//! `#[inline(always)]`), compiles inside it with the tier's features, so the tier's
//! `#[target_feature]` helpers inline into the loops. `inline(always)` rules out
//! `#[target_feature]` on the driver itself, so its functions are `unsafe fn`s whose
//! callers guarantee the features of `K`'s tier.

/// Validated matmul shape: `rows > 0` weight rows of `kb > 0` blocks (or elements) with
/// nothing left over, `n` whole activation rows, and room for `n * rows` outputs.
#[derive(Clone, Copy)]
pub(in crate::kernels) struct Shape {
    pub rows: usize,
    pub kb: usize,
    pub n: usize,
}

impl Shape {
    pub fn of(w_len: usize, rows: usize, x_len: usize, out_len: usize) -> Option<Shape> {
        let kb = w_len.checked_div(rows)?;
        let n = x_len.checked_div(kb)?;
        let fits = kb * rows == w_len && n.checked_mul(rows).is_some_and(|m| m <= out_len);
        fits.then_some(Shape { rows, kb, n })
    }
}

/// The shape of a one-token matmul that [`super::tune`] says to walk one row at a time
/// (`walk::<_, _, 1, 1, true>`); `None` for any other shape or setting.
pub(in crate::kernels) fn one_token_by_rows(w_len: usize, rows: usize, x_len: usize, out_len: usize) -> Option<Shape> {
    let by_rows = super::tune::decode_rows() == super::tune::DecodeRows::One;
    Shape::of(w_len, rows, x_len, out_len).filter(|s| by_rows && s.n == 1)
}

/// Up to 8 floats followed by +0.0. Their products add +0.0 to their lanes, which
/// leaves every lane unchanged: lanes start at +0.0, and a sum that starts at +0.0 is
/// never -0.0 in round-to-nearest.
#[inline]
pub(in crate::kernels) fn pad8f(tail: &[f32]) -> [f32; 8] {
    let mut p = [0.0; 8];
    p[..tail.len()].copy_from_slice(tail);
    p
}

/// One output's 8 float lanes in a tier's registers: lane `j` holds the contract's
/// partial sum `j`.
///
/// # Safety
/// The methods must be called only on a CPU with the features of the tier whose
/// registers these are.
pub(in crate::kernels) trait Lanes: Copy {
    /// Lanes all +0.0.
    ///
    /// # Safety
    /// As for the trait.
    unsafe fn zero() -> Self;

    /// [`scalar::reduce8`](super::scalar::reduce8) of the lanes.
    ///
    /// # Safety
    /// As for the trait.
    unsafe fn reduce(self) -> f32;
}

/// Where a tier's panels (weight rows against every token, see [`panel`]) compile.
/// An implementation is one generic `unsafe fn` that calls [`panel`]: with the tier's
/// `#[target_feature]` it makes each panel a function of its own, as small as a
/// hand-written one, so that the tier's `#[inline]` helpers still inline into it
/// (inlined all into one entry point, the x86 matmuls outgrew LLVM's inlining budget
/// and called their helpers out of line); [`Inline`] compiles them inside the entry
/// point instead.
pub(in crate::kernels) trait Tier {
    /// [`panel`] of `K`.
    ///
    /// # Safety
    /// The CPU must support the features of this tier, which must include `K`'s.
    unsafe fn panel<K: MicroKernel, const R: usize, const T: usize, const PREFETCH: bool>(
        w: &[K::W],
        x: &[K::X],
        out: &mut [f32],
        s: Shape,
        r0: usize,
    );
}

/// Panels compiled inside the `#[target_feature]` entry point that runs the driver
/// (the NEON tiers, whose microkernels are generic over their products and so have no
/// one feature set to name).
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub(in crate::kernels) struct Inline;

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
impl Tier for Inline {
    #[inline(always)]
    unsafe fn panel<K: MicroKernel, const R: usize, const T: usize, const PREFETCH: bool>(
        w: &[K::W],
        x: &[K::X],
        out: &mut [f32],
        s: Shape,
        r0: usize,
    ) {
        // SAFETY: the caller guarantees `K`'s features.
        unsafe { panel::<K, R, T, PREFETCH>(w, x, out, s, r0) }
    }
}

/// One tier's microkernel for one matmul: weight elements `W` (q8 or q4 blocks, or
/// floats) against activation elements `X`, 8 at a time (a group), plus the shorter
/// tail group of a row whose length is not a multiple of 8.
///
/// The driver calls, per tile and group: [`x_group`](Self::x_group) once per token,
/// [`w_group`](Self::w_group) once per row, then [`group`](Self::group) per output; the
/// tail likewise with the `*_tail` methods. Each method gets the raw elements as well as
/// what the preparation made of them, and takes what it needs.
///
/// # Safety
/// Every method must be called only on a CPU with the features of the implementing
/// tier; the implementations are `#[inline(always)]` so that they compile inside that
/// tier's `#[target_feature]` entry points.
pub(in crate::kernels) trait MicroKernel {
    /// A weight element.
    type W;
    /// An activation element.
    type X;
    /// One output's 8 float lanes.
    type Acc: Lanes;
    /// A token's group, prepared once per tile (loaded operands, scales, sums).
    type XGroup: Copy;
    /// A row's group, prepared once per tile.
    type WGroup;
    /// A token's tail group, prepared once per tile.
    type XTail: Copy;
    /// A row's tail group, prepared once per tile.
    type WTail;

    /// # Safety
    /// As for the trait.
    unsafe fn x_group(x: &[Self::X; 8]) -> Self::XGroup;

    /// # Safety
    /// As for the trait.
    unsafe fn w_group(w: &[Self::W; 8]) -> Self::WGroup;

    /// `acc` plus the 8 element pairs, each in its lane as the contract adds it.
    ///
    /// # Safety
    /// As for the trait.
    unsafe fn group(
        acc: Self::Acc,
        w: &[Self::W; 8],
        wp: &Self::WGroup,
        x: &[Self::X; 8],
        xp: &Self::XGroup,
    ) -> Self::Acc;

    /// # Safety
    /// As for the trait.
    unsafe fn x_tail(x: &[Self::X]) -> Self::XTail;

    /// # Safety
    /// As for the trait.
    unsafe fn w_tail(w: &[Self::W]) -> Self::WTail;

    /// [`group`](Self::group) of the 1 to 7 element pairs of a row's tail.
    ///
    /// # Safety
    /// As for the trait.
    unsafe fn tail(acc: Self::Acc, w: &[Self::W], wp: &Self::WTail, x: &[Self::X], xp: &Self::XTail) -> Self::Acc;

    /// Hints the cache lines of `len` bytes from `p` into L1; `p` may point past the
    /// weights, so an implementation must not fault there (prefetches never do). Called
    /// only by drivers with a prefetch distance; the default does nothing.
    ///
    /// # Safety
    /// As for the trait.
    #[inline(always)]
    unsafe fn prefetch(_p: *const u8, _len: usize) {}
}

/// The contract's dot product of `w` and `x` (over the shorter length) by `K`: a
/// one-row, one-token tile.
///
/// # Safety
/// The CPU must support the features of `K`'s tier.
#[inline(always)]
pub(in crate::kernels) unsafe fn dot<K: MicroKernel>(w: &[K::W], x: &[K::X]) -> f32 {
    let n = w.len().min(x.len());
    let (gw, tw) = w[..n].as_chunks::<8>();
    let (gx, tx) = x[..n].as_chunks::<8>();
    // SAFETY: the caller guarantees the features of `K`'s tier, all `K`'s methods need.
    unsafe {
        let mut acc = K::Acc::zero();
        for (wg, xg) in gw.iter().zip(gx) {
            acc = K::group(acc, wg, &K::w_group(wg), xg, &K::x_group(xg));
        }
        if !tw.is_empty() {
            acc = K::tail(acc, tw, &K::w_tail(tw), tx, &K::x_tail(tx));
        }
        acc.reduce()
    }
}

/// A matmul's signature: weights, rows, activations, outputs.
type Matmul<W, X> = fn(&[W], usize, &[X], &mut [f32]);

/// `contract(w, rows, x, out)`, bit for bit, by tiles of `R` weight rows x `T` tokens
/// (`T` in 1..=4) of `K`, each panel of rows compiled as `C` says. Rows left over after the whole panels go 4 at a time, then as
/// one panel of 1, 2 or 3; tokens left over go as one tile of 1, 2 or 3. `PREFETCH`:
/// whether a one-token tile prefetches its weights (how far ahead: [`super::tune`]). Shapes
/// outside the tiled path (empty, ragged, short `out`) go to `contract`, so they behave
/// as the contract does, whatever it does.
///
/// # Safety
/// The CPU must support the features of `K`'s tier.
#[inline(always)]
pub(in crate::kernels) unsafe fn matmul<
    C: Tier,
    K: MicroKernel,
    const R: usize,
    const T: usize,
    const PREFETCH: bool,
>(
    w: &[K::W],
    rows: usize,
    x: &[K::X],
    out: &mut [f32],
    contract: Matmul<K::W, K::X>,
) {
    let Some(s) = Shape::of(w.len(), rows, x.len(), out.len()) else {
        return contract(w, rows, x, out);
    };
    // SAFETY: the caller guarantees the features of `K`'s tier.
    unsafe { walk::<C, K, R, T, PREFETCH>(w, x, out, s) }
}

/// [`matmul`] of a validated shape.
///
/// # Safety
/// The CPU must support the features of `K`'s tier.
#[inline(always)]
pub(in crate::kernels) unsafe fn walk<C: Tier, K: MicroKernel, const R: usize, const T: usize, const PREFETCH: bool>(
    w: &[K::W],
    x: &[K::X],
    out: &mut [f32],
    s: Shape,
) {
    const { assert!(R >= 1 && T >= 1 && T <= 4, "tiles of 1 or more rows x 1 to 4 tokens") };
    // SAFETY (every call): the caller guarantees the features of `K`'s tier.
    let mut r0 = 0;
    while r0 + R <= s.rows {
        unsafe { C::panel::<K, R, T, PREFETCH>(w, x, out, s, r0) };
        r0 += R;
    }
    // The constant conditions keep the edge panels that cannot occur out of the code.
    if R > 4 {
        while r0 + 4 <= s.rows {
            unsafe { C::panel::<K, 4, T, PREFETCH>(w, x, out, s, r0) };
            r0 += 4;
        }
    }
    match s.rows - r0 {
        1 if R > 1 => unsafe { C::panel::<K, 1, T, PREFETCH>(w, x, out, s, r0) },
        2 if R > 2 => unsafe { C::panel::<K, 2, T, PREFETCH>(w, x, out, s, r0) },
        3 if R > 3 => unsafe { C::panel::<K, 3, T, PREFETCH>(w, x, out, s, r0) },
        _ => {}
    }
}

/// Weight rows `r0..r0 + R` against every token, `T` tokens at a time, then the 1 to 3
/// tokens left as one tile.
///
/// # Safety
/// The CPU must support the features of `K`'s tier.
#[inline(always)]
pub(in crate::kernels) unsafe fn panel<K: MicroKernel, const R: usize, const T: usize, const PREFETCH: bool>(
    w: &[K::W],
    x: &[K::X],
    out: &mut [f32],
    s: Shape,
    r0: usize,
) {
    // SAFETY (every call): the caller guarantees the features of `K`'s tier.
    let mut t0 = 0;
    while t0 + T <= s.n {
        unsafe { tile::<K, R, T, PREFETCH>(w, x, out, s, r0, t0) };
        t0 += T;
    }
    match s.n - t0 {
        1 if T > 1 => unsafe { tile::<K, R, 1, PREFETCH>(w, x, out, s, r0, t0) },
        2 if T > 2 => unsafe { tile::<K, R, 2, PREFETCH>(w, x, out, s, r0, t0) },
        3 if T > 3 => unsafe { tile::<K, R, 3, PREFETCH>(w, x, out, s, r0, t0) },
        _ => {}
    }
}

/// One R x T tile: weight rows `r0..r0 + R` times tokens `t0..t0 + T`.
///
/// # Safety
/// The CPU must support the features of `K`'s tier.
#[inline(always)]
pub(in crate::kernels) unsafe fn tile<K: MicroKernel, const R: usize, const T: usize, const PREFETCH: bool>(
    w: &[K::W],
    x: &[K::X],
    out: &mut [f32],
    s: Shape,
    r0: usize,
    t0: usize,
) {
    let kb = s.kb;
    let mut wg: [&[[K::W; 8]]; R] = [&[]; R];
    let mut wt: [&[K::W]; R] = [&[]; R];
    for (i, (g, t)) in wg.iter_mut().zip(wt.iter_mut()).enumerate() {
        (*g, *t) = w[(r0 + i) * kb..(r0 + i + 1) * kb].as_chunks::<8>();
    }
    let mut xg: [&[[K::X; 8]]; T] = [&[]; T];
    let mut xt: [&[K::X]; T] = [&[]; T];
    for (j, (g, t)) in xg.iter_mut().zip(xt.iter_mut()).enumerate() {
        (*g, *t) = x[(t0 + j) * kb..(t0 + j + 1) * kb].as_chunks::<8>();
    }

    // One token is bound by memory, not by the math: prefetch the tile's weights
    // the tuned distance ahead (`tune`), the tile's bytes spread evenly over its groups.
    let distance = if PREFETCH && T == 1 { super::tune::prefetch_distance() } else { 0 };
    let prefetching = distance > 0;
    let weights = &w[r0 * kb..(r0 + R) * kb];
    let step = if prefetching { size_of_val(weights).div_ceil(kb.div_ceil(8)) } else { 0 };
    let ahead = weights.as_ptr().cast::<u8>().wrapping_add(distance);
    // SAFETY: the caller guarantees the features of `K`'s tier, all `K`'s methods need.
    unsafe {
        let mut acc = [[K::Acc::zero(); T]; R];
        for g in 0..kb / 8 {
            if prefetching {
                K::prefetch(ahead.wrapping_add(g * step), step);
            }
            let mut xp = [K::x_group(&xg[0][g]); T];
            for j in 1..T {
                xp[j] = K::x_group(&xg[j][g]);
            }
            for i in 0..R {
                let wb = &wg[i][g];
                let wp = K::w_group(wb);
                for j in 0..T {
                    acc[i][j] = K::group(acc[i][j], wb, &wp, &xg[j][g], &xp[j]);
                }
            }
        }
        if !kb.is_multiple_of(8) {
            if prefetching {
                K::prefetch(ahead.wrapping_add(kb / 8 * step), step);
            }
            let mut xp = [K::x_tail(xt[0]); T];
            for j in 1..T {
                xp[j] = K::x_tail(xt[j]);
            }
            for i in 0..R {
                let wp = K::w_tail(wt[i]);
                for j in 0..T {
                    acc[i][j] = K::tail(acc[i][j], wt[i], &wp, xt[j], &xp[j]);
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (j, &a) in acc_i.iter().enumerate() {
                out[(t0 + j) * s.rows + r0 + i] = a.reduce();
            }
        }
    }
}
