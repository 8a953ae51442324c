//! Run-time kernel settings that change speed, never results.
//!
//! Every tier computes the scalar contract bit for bit, so how a matmul walks its
//! weights is free to differ from machine to machine. Two choices measured differently
//! on the CPUs this was tuned on, so they are settings, not constants:
//!
//! - how far ahead of the weights being read the one-token (decode) matmuls prefetch:
//!   8 KiB suited a Sapphire Rapids core; an AMD EPYC preferred less;
//! - which tier runs the one-token matmuls: on that EPYC, whose AVX-512 units are 256
//!   bits wide, the AVX2 path decoded faster than the AVX-512 one, which still wins
//!   prompts;
//! - how many weight rows a one-token matmul reads at once: the tiers' tiles of 4 rows
//!   suited Sapphire Rapids; on the EPYC, one row at a time (one sequential stream, as
//!   llama.cpp reads) decoded a third faster.
//!
//! The defaults are the values the kernels shipped with. The CLI sets them from what
//! `arq tune` measured on this machine (cached per CPU model) or from `ARQ_PREFETCH` and
//! `ARQ_DECODE_TIER`; `arq bench --json` reports them. They are plain atomics, so
//! no_std targets keep the defaults unless their firmware sets them.

use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// The prefetch distance the kernels shipped with, in bytes.
pub const DEFAULT_PREFETCH: usize = 8192;
/// The largest prefetch distance accepted: beyond it the lines would leave L1/L2
/// before use.
pub const MAX_PREFETCH: usize = 1 << 16;

/// Which tier runs the matmuls of one token (decode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeTier {
    /// The selected tier's own one-token path.
    Own,
    /// On an AVX-512 tier: the AVX2 tier's one-token path (q8 and q4 weights).
    Avx2,
}

impl DecodeTier {
    pub fn name(self) -> &'static str {
        match self {
            DecodeTier::Own => "own",
            DecodeTier::Avx2 => "avx2",
        }
    }

    pub fn parse(s: &str) -> Option<DecodeTier> {
        match s.trim() {
            "own" => Some(DecodeTier::Own),
            "avx2" => Some(DecodeTier::Avx2),
            _ => None,
        }
    }
}

/// How many weight rows a one-token matmul reads at once (x86 tiers, q8 and q4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeRows {
    /// The tier's tile: AVX-512 q8 two row pairs (16-lane folds), otherwise 4 or 8 rows.
    Tile,
    /// One row after the other.
    One,
}

impl DecodeRows {
    pub fn name(self) -> &'static str {
        match self {
            DecodeRows::Tile => "tile",
            DecodeRows::One => "one",
        }
    }

    pub fn parse(s: &str) -> Option<DecodeRows> {
        match s.trim() {
            "tile" => Some(DecodeRows::Tile),
            "one" => Some(DecodeRows::One),
            _ => None,
        }
    }
}

/// The settings of [`set`] and [`get`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Bytes ahead of the weights being read that one-token matmuls prefetch (0: none),
    /// at most [`MAX_PREFETCH`].
    pub prefetch: usize,
    pub decode_tier: DecodeTier,
    pub decode_rows: DecodeRows,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning { prefetch: DEFAULT_PREFETCH, decode_tier: DecodeTier::Own, decode_rows: DecodeRows::Tile }
    }
}

static PREFETCH: AtomicUsize = AtomicUsize::new(DEFAULT_PREFETCH);
static DECODE_TIER: AtomicU8 = AtomicU8::new(0);
static DECODE_ROWS: AtomicU8 = AtomicU8::new(0);

/// Applies `t` to every matmul that starts afterwards (a prefetch distance over
/// [`MAX_PREFETCH`] is capped to it).
pub fn set(t: Tuning) {
    PREFETCH.store(t.prefetch.min(MAX_PREFETCH), Ordering::Relaxed);
    DECODE_TIER.store(matches!(t.decode_tier, DecodeTier::Avx2) as u8, Ordering::Relaxed);
    DECODE_ROWS.store(matches!(t.decode_rows, DecodeRows::One) as u8, Ordering::Relaxed);
}

/// The settings in force.
pub fn get() -> Tuning {
    Tuning { prefetch: prefetch_distance(), decode_tier: decode_tier(), decode_rows: decode_rows() }
}

/// How many rows one-token matmuls read at once.
#[inline]
pub fn decode_rows() -> DecodeRows {
    if DECODE_ROWS.load(Ordering::Relaxed) == 1 {
        DecodeRows::One
    } else {
        DecodeRows::Tile
    }
}

/// The prefetch distance of one-token matmuls, in bytes (0: none).
#[inline]
pub fn prefetch_distance() -> usize {
    PREFETCH.load(Ordering::Relaxed)
}

/// The tier of one-token matmuls.
#[inline]
pub fn decode_tier() -> DecodeTier {
    if DECODE_TIER.load(Ordering::Relaxed) == 1 {
        DecodeTier::Avx2
    } else {
        DecodeTier::Own
    }
}
