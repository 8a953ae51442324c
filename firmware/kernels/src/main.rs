//! The kernel tiers on a Cortex-M4F (qemu mps2-an386), with no heap: every entry of the
//! `dsp` table against [`kernels::scalar`], bit for bit (`to_bits`), on randomized and
//! extreme inputs:
//!
//! - q8 rows of 0..=33 blocks (around the 8 float lanes, odd lengths included) with
//!   quants random in [-127, 127], all 127, all -127, alternating ±127, and over the
//!   whole i8 range (-128 included, on either side or both: blocks are plain data), and
//!   scales random, zero and -0, the largest finite f16, subnormal, negative, mixed,
//!   and any finite f16 bit pattern;
//! - q8 and q4 matmuls over shapes around the 2-row tile (one spare output past the
//!   end must stay untouched), and off the regular path (ragged weights, a partial
//!   trailing token, no tokens);
//! - q4 rows with the same extremes (nibbles 0 and 15, extreme minima);
//! - the f32 entries and the quantizer (the scalar code in this tier) on wide floats;
//! - the tier's f16 -> f32 conversion against `half` for all 65536 bit patterns.
//!
//! Logs the tier `kernels::best()` picks, the number of cases and values compared, and
//! exits qemu with 0 only if every value matched (1 on any mismatch, panic or fault).
//! `scripts/test-firmware-kernels.sh` builds and runs it.
#![no_std]
#![no_main]

use arq::kernels::{self, scalar, Kernels};
use arq::quant::{BlockQ4, BlockQ8, QK4, QK8};
use arq_fw_common::exit;
use cortex_m_rt::entry;
use defmt_semihosting as _;

const Z8: BlockQ8 = BlockQ8 { d: [0; 2], qs: [0; QK8] };
const Z4: BlockQ4 = BlockQ4 { d: [0; 2], m: [0; 2], qs: [0; QK4 / 2] };

/// Longest q8/q4 row, in blocks.
const MAX_BLOCKS: usize = 33;
/// Matmul shapes: blocks per row, weight rows, tokens.
const MM_KB: [usize; 6] = [1, 2, 7, 8, 9, 17];
const MM_ROWS: [usize; 8] = [1, 2, 3, 4, 5, 7, 8, 9];
const MM_TOKENS: [usize; 4] = [1, 2, 3, 5];
const MAX_W: usize = 9 * 17;
const MAX_X: usize = 5 * 17;
const MAX_OUT: usize = 9 * 5 + 1;
/// Random rows per dot-product length and fill pair.
const REPEATS: usize = 3;
/// Mismatches logged in detail before the rest are only counted.
const MAX_REPORTS: u32 = 20;

#[entry]
fn main() -> ! {
    let mut t = Tally::default();
    run(&mut t);
    defmt::println!("cases {=u32}, values compared {=u32}, mismatches {=u32}", t.cases, t.values, t.mismatches);
    let ok = t.mismatches == 0 && t.cases > 0;
    defmt::println!("result: {=str}", if ok { "PASS" } else { "FAIL" });
    exit(ok)
}

fn run(t: &mut Tally) {
    let best = kernels::best();
    defmt::println!("kernels: best {=str}", best.name);
    let Some(dsp) = kernels::by_name("dsp") else {
        defmt::error!("no dsp tier in this build");
        t.mismatches += 1;
        return;
    };
    let mut rng = Rng(0x5eed);
    let sections: [(&str, Section); 8] = [
        ("f16_to_f32 (all 65536 patterns)", f16_conversion),
        ("dot_q8", dot_q8),
        ("matmul_q8", matmul_q8),
        ("dot_q4_q8", dot_q4_q8),
        ("matmul_q4_q8", matmul_q4_q8),
        ("matmul_q8/matmul_q4_q8 off the tiled path", odd_shapes),
        ("dot_f32, matmul_f32", f32_entries),
        ("quantize_q8", quantizer),
    ];
    for (name, section) in sections {
        let (cases, mismatches) = (t.cases, t.mismatches);
        section(t, &mut rng, dsp);
        defmt::println!("{=str}: {=u32} cases, {=u32} mismatches", name, t.cases - cases, t.mismatches - mismatches);
    }
}

/// One group of cases, against the tier it is given.
type Section = fn(&mut Tally, &mut Rng, &Kernels);

/// Counts of compared calls ("cases"), compared values and mismatches.
#[derive(Default)]
struct Tally {
    cases: u32,
    values: u32,
    mismatches: u32,
}

impl Tally {
    /// Compares one value; `what` and `a`, `b` (sizes, fills) identify the case.
    fn same(&mut self, what: &str, a: usize, b: usize, got: f32, want: f32) {
        self.values += 1;
        if got.to_bits() != want.to_bits() {
            self.mismatches += 1;
            if self.mismatches <= MAX_REPORTS {
                defmt::error!(
                    "mismatch: {=str} ({=usize}, {=usize}): dsp {=f32} ({=u32:#x}), scalar {=f32} ({=u32:#x})",
                    what,
                    a,
                    b,
                    got,
                    got.to_bits(),
                    want,
                    want.to_bits()
                );
            }
        }
    }

    fn all_same(&mut self, what: &str, a: usize, b: usize, got: &[f32], want: &[f32]) {
        self.cases += 1;
        for (&g, &w) in got.iter().zip(want) {
            self.same(what, a, b, g, w);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------

/// The tier's own f16 -> f32 conversion against `half`, for every bit pattern.
fn f16_conversion(t: &mut Tally, _: &mut Rng, _: &Kernels) {
    for bits in 0..=u16::MAX {
        let want = half::f16::from_bits(bits).to_f32();
        let got = kernels::arm::dsp::f16_to_f32(bits);
        t.cases += 1;
        // NaN payloads are compared too: the tier hands NaNs to `half` itself.
        t.same("f16_to_f32", bits as usize, 0, got, want);
    }
}

fn dot_q8(t: &mut Tally, rng: &mut Rng, k: &Kernels) {
    let mut a = [Z8; MAX_BLOCKS];
    let mut b = [Z8; MAX_BLOCKS];
    for nb in 0..=MAX_BLOCKS {
        for (fa_i, &fa) in QFILLS.iter().enumerate() {
            for (fb_i, &fb) in [QFill::Random, fa, QFill::MixedScales, QFill::FullRange].iter().enumerate() {
                for _ in 0..REPEATS {
                    q8_row(rng, fa, &mut a[..nb]);
                    q8_row(rng, fb, &mut b[..nb]);
                    let (got, want) = ((k.dot_q8)(&a[..nb], &b[..nb]), scalar::dot_q8(&a[..nb], &b[..nb]));
                    t.cases += 1;
                    t.same("dot_q8 nb, fills", nb, fa_i * 16 + fb_i, got, want);
                }
            }
        }
    }
}

fn matmul_q8(t: &mut Tally, rng: &mut Rng, k: &Kernels) {
    let mut w = [Z8; MAX_W];
    let mut x = [Z8; MAX_X];
    for &kb in &MM_KB {
        for &rows in &MM_ROWS {
            for &n in &MM_TOKENS {
                for fill in QFILLS {
                    let (w, x) = (&mut w[..rows * kb], &mut x[..n * kb]);
                    // Each row's fill drawn separately half of the time.
                    for (r, row) in w.chunks_exact_mut(kb).enumerate() {
                        let f = if r % 2 == 0 { fill } else { QFILLS[rng.below(QFILLS.len() as u64) as usize] };
                        q8_row(rng, f, row);
                    }
                    let fx = [QFill::Random, QFill::FullRange, fill][rng.below(3) as usize];
                    q8_row(rng, fx, x);
                    let (mut got, mut want) = ([7.0f32; MAX_OUT], [7.0f32; MAX_OUT]);
                    // One spare output past the end must stay untouched.
                    let len = rows * n + 1;
                    (k.matmul_q8)(w, rows, x, &mut got[..len]);
                    scalar::matmul_q8(w, rows, x, &mut want[..len]);
                    t.all_same("matmul_q8 kb*rows, n", kb * 100 + rows, n, &got[..len], &want[..len]);
                    // Each output is the tier's own dot product of its row and token.
                    for tk in 0..n {
                        for r in 0..rows {
                            let d = (k.dot_q8)(&w[r * kb..(r + 1) * kb], &x[tk * kb..(tk + 1) * kb]);
                            t.cases += 1;
                            t.same("matmul_q8 vs dot_q8 r, t", r, tk, got[tk * rows + r], d);
                        }
                    }
                }
            }
        }
    }
}

fn dot_q4_q8(t: &mut Tally, rng: &mut Rng, k: &Kernels) {
    let mut w = [Z4; MAX_BLOCKS];
    let mut x = [Z8; MAX_BLOCKS];
    for nb in 0..=MAX_BLOCKS {
        for (fw_i, &fw) in QFILLS.iter().enumerate() {
            for (fx_i, &fx) in [QFill::Random, fw, QFill::MixedScales, QFill::FullRange].iter().enumerate() {
                for _ in 0..REPEATS {
                    q4_row(rng, fw, &mut w[..nb]);
                    q8_row(rng, fx, &mut x[..nb]);
                    let (got, want) = ((k.dot_q4_q8)(&w[..nb], &x[..nb]), scalar::dot_q4_q8(&w[..nb], &x[..nb]));
                    t.cases += 1;
                    t.same("dot_q4_q8 nb, fills", nb, fw_i * 16 + fx_i, got, want);
                }
            }
        }
    }
}

fn matmul_q4_q8(t: &mut Tally, rng: &mut Rng, k: &Kernels) {
    let mut w = [Z4; MAX_W];
    let mut x = [Z8; MAX_X];
    for &kb in &MM_KB {
        for &rows in &MM_ROWS {
            for &n in &MM_TOKENS {
                let fw = QFILLS[rng.below(QFILLS.len() as u64) as usize];
                let fx = [QFill::Random, QFill::FullRange, QFill::MixedScales][rng.below(3) as usize];
                let (w, x) = (&mut w[..rows * kb], &mut x[..n * kb]);
                q4_row(rng, fw, w);
                q8_row(rng, fx, x);
                let (mut got, mut want) = ([7.0f32; MAX_OUT], [7.0f32; MAX_OUT]);
                let len = rows * n + 1;
                (k.matmul_q4_q8)(w, rows, x, &mut got[..len]);
                scalar::matmul_q4_q8(w, rows, x, &mut want[..len]);
                t.all_same("matmul_q4_q8 kb*rows, n", kb * 100 + rows, n, &got[..len], &want[..len]);
            }
        }
    }
}

/// Shapes off the tiled path: no tokens, a partial trailing token, a ragged weight.
fn odd_shapes(t: &mut Tally, rng: &mut Rng, k: &Kernels) {
    for (w_blocks, rows, x_blocks) in [(6, 3, 0), (6, 3, 5), (7, 3, 4), (3, 3, 2), (5, 3, 3), (9, 4, 7)] {
        let (mut w, mut x) = ([Z8; 9], [Z8; 9]);
        q8_row(rng, QFill::Random, &mut w[..w_blocks]);
        q8_row(rng, QFill::Random, &mut x[..x_blocks]);
        let (mut got, mut want) = ([7.0f32; 16], [7.0f32; 16]);
        (k.matmul_q8)(&w[..w_blocks], rows, &x[..x_blocks], &mut got);
        scalar::matmul_q8(&w[..w_blocks], rows, &x[..x_blocks], &mut want);
        t.all_same("matmul_q8 odd shape w, x", w_blocks, x_blocks, &got, &want);

        let mut w4 = [Z4; 9];
        q4_row(rng, QFill::Random, &mut w4[..w_blocks]);
        let (mut got, mut want) = ([7.0f32; 16], [7.0f32; 16]);
        (k.matmul_q4_q8)(&w4[..w_blocks], rows, &x[..x_blocks], &mut got);
        scalar::matmul_q4_q8(&w4[..w_blocks], rows, &x[..x_blocks], &mut want);
        t.all_same("matmul_q4_q8 odd shape w, x", w_blocks, x_blocks, &got, &want);
    }
}

/// `dot_f32` and `matmul_f32` (the scalar code in this tier, checked all the same).
fn f32_entries(t: &mut Tally, rng: &mut Rng, k: &Kernels) {
    let (mut a, mut b) = ([0.0f32; 256], [0.0f32; 256]);
    for n in [0, 1, 7, 8, 9, 31, 32, 33, 255] {
        for _ in 0..4 {
            f32_row(rng, &mut a[..n]);
            f32_row(rng, &mut b[..n]);
            t.cases += 1;
            t.same("dot_f32 n", n, 0, (k.dot_f32)(&a[..n], &b[..n]), scalar::dot_f32(&a[..n], &b[..n]));
        }
    }
    for (cols, rows, n) in [(1, 1, 1), (7, 3, 2), (9, 5, 3), (33, 4, 5)] {
        f32_row(rng, &mut a[..rows * cols]);
        f32_row(rng, &mut b[..n * cols]);
        let (mut got, mut want) = ([7.0f32; 32], [7.0f32; 32]);
        (k.matmul_f32)(&a[..rows * cols], rows, &b[..n * cols], &mut got);
        scalar::matmul_f32(&a[..rows * cols], rows, &b[..n * cols], &mut want);
        t.all_same("matmul_f32 cols*rows, n", cols * 100 + rows, n, &got, &want);
    }
}

/// `quantize_q8` on wide inputs (zeros, subnormals, huge values, -0): quants and scales.
fn quantizer(t: &mut Tally, rng: &mut Rng, k: &Kernels) {
    let mut x = [0.0f32; 8 * QK8];
    for round in 0..16 {
        f32_row(rng, &mut x);
        if round % 4 == 0 {
            x[..QK8].fill(0.0);
        }
        let (mut got, mut want) = ([Z8; 8], [Z8; 8]);
        (k.quantize_q8)(&x, &mut got);
        scalar::quantize_q8(&x, &mut want);
        t.cases += 1;
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            t.same("quantize_q8 scale round, block", round, j, g.scale(), w.scale());
            for (&gq, &wq) in g.qs.iter().zip(&w.qs) {
                t.same("quantize_q8 quant round, block", round, j, gq as f32, wq as f32);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Test data (as in runtime/src/kernels/tests.rs)
// ---------------------------------------------------------------------------------------

/// splitmix64: small, deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// A float with a random sign and mantissa and an exponent in `2^lo..2^hi`.
    fn wide(&mut self, lo: i32, hi: i32) -> f32 {
        let e = lo + self.below((hi - lo) as u64) as i32;
        self.unit() * exp2i(e)
    }

    fn quant(&mut self) -> i8 {
        (self.below(255) as i32 - 127) as i8
    }
}

/// 2^e for e in [-149, 127], exactly.
fn exp2i(e: i32) -> f32 {
    if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else {
        f32::from_bits(1 << (e + 149))
    }
}

fn f16(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}

/// Ways to fill a q8 row, extremes included.
#[derive(Clone, Copy)]
enum QFill {
    Random,
    AllMax,
    AllMin,
    AlternatingMax,
    ZeroScale,
    LargeScale,
    SubnormalScale,
    NegativeScale,
    MixedScales,
    /// Quants over the whole i8 range, -128 included.
    FullRange,
    /// Every quant -128 (the largest block sum, 32 * 128 * 128, against itself).
    AllMinus128,
    /// Random quants, any finite f16 scale.
    AnyScale,
}

const QFILLS: [QFill; 12] = [
    QFill::Random,
    QFill::AllMax,
    QFill::AllMin,
    QFill::AlternatingMax,
    QFill::ZeroScale,
    QFill::LargeScale,
    QFill::SubnormalScale,
    QFill::NegativeScale,
    QFill::MixedScales,
    QFill::FullRange,
    QFill::AllMinus128,
    QFill::AnyScale,
];

fn q8_row(rng: &mut Rng, fill: QFill, out: &mut [BlockQ8]) {
    for (j, block) in out.iter_mut().enumerate() {
        for (i, q) in block.qs.iter_mut().enumerate() {
            *q = match fill {
                QFill::AllMax | QFill::LargeScale => 127,
                QFill::AllMin => -127,
                QFill::AlternatingMax => [127, -127][(i + j) % 2],
                QFill::FullRange => [-128, rng.next() as i8][i % 2],
                QFill::AllMinus128 => -128,
                _ => rng.quant(),
            };
        }
        let bits: u16 = match fill {
            QFill::ZeroScale => [0x0000, 0x8000][j % 2],
            QFill::LargeScale => 0x7bff, // 65504, the largest finite f16
            QFill::SubnormalScale => 0x0001 + rng.below(0x3ff) as u16,
            QFill::NegativeScale => 0x8000 | f16(rng.unit().abs() * 0.1),
            QFill::MixedScales => match rng.below(5) {
                0 => 0,
                1 => 0x7bff,
                2 => 0x0001,
                3 => 0x8000 | 0x3c00,
                _ => f16(rng.unit() * 4.0),
            },
            QFill::AllMinus128 => 0x3c00,
            // Exponent field below 31: finite.
            QFill::AnyScale => (rng.next() as u16) & 0xfbff,
            _ => f16(rng.unit().abs() * 0.05),
        };
        block.d = bits.to_le_bytes();
    }
}

/// A q4 row for `fill`: the same extremes as [`q8_row`], mapped onto the q4 block
/// (quants in [0, 15], and the minimum as extreme as the scale).
fn q4_row(rng: &mut Rng, fill: QFill, out: &mut [BlockQ4]) {
    for (j, block) in out.iter_mut().enumerate() {
        let q: [u8; QK4] = core::array::from_fn(|i| match fill {
            QFill::AllMax | QFill::LargeScale => 15,
            QFill::AllMin | QFill::AllMinus128 => 0,
            QFill::AlternatingMax => [15, 0][(i + j) % 2],
            _ => rng.below(16) as u8,
        });
        let (d, m): (u16, u16) = match fill {
            QFill::ZeroScale => ([0x0000, 0x8000][j % 2], f16(rng.unit() * 0.1)),
            QFill::LargeScale => (0x7bff, 0xfbff),
            QFill::SubnormalScale => (0x0001 + rng.below(0x3ff) as u16, 0x8001 + rng.below(0x3ff) as u16),
            QFill::NegativeScale => (0x8000 | f16(rng.unit().abs() * 0.1), f16(rng.unit().abs() * 0.5)),
            QFill::MixedScales => {
                let mut pick = || match rng.below(5) {
                    0 => 0,
                    1 => 0x7bff,
                    2 => 0x0001,
                    3 => 0x8000 | 0x3c00,
                    _ => f16(rng.unit() * 4.0),
                };
                (pick(), pick())
            }
            QFill::FullRange | QFill::AnyScale => ((rng.next() as u16) & 0xfbff, (rng.next() as u16) & 0xfbff),
            _ => (f16(rng.unit().abs() * 0.01), f16(rng.unit() * -0.1)),
        };
        for (i, b) in block.qs.iter_mut().enumerate() {
            *b = q[i] | (q[i + QK4 / 2] << 4);
        }
        block.d = d.to_le_bytes();
        block.m = m.to_le_bytes();
    }
}

fn f32_row(rng: &mut Rng, out: &mut [f32]) {
    for (i, v) in out.iter_mut().enumerate() {
        *v = match i % 11 {
            0 => rng.wide(-140, -120), // subnormal range
            1 => -0.0,
            2 => rng.wide(30, 60),
            _ => rng.wide(-8, 4),
        };
    }
}
