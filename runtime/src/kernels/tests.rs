//! Every tier this CPU runs against the scalar contract, bit for bit (`to_bits()`), and
//! the dispatch rules.

use super::*;
use crate::quant::{BlockQ4, QK4, QK8};

/// Block counts (q8) and element counts (f32) around the 8-lane and tile boundaries.
const BLOCK_COUNTS: [usize; 9] = [0, 1, 7, 8, 9, 15, 16, 17, 33];
const ELEM_COUNTS: [usize; 9] = [0, 1, 7, 8, 9, 31, 32, 33, 255];
const ROWS: [usize; 8] = [1, 2, 3, 4, 5, 7, 8, 9];
const TOKENS: [usize; 7] = [1, 2, 3, 4, 5, 7, 9];

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

    /// A float with a random sign, mantissa and an exponent in `2^lo..2^hi`.
    fn wide(&mut self, lo: i32, hi: i32) -> f32 {
        let e = lo + self.below((hi - lo) as u64) as i32;
        self.unit() * libm::exp2f(e as f32)
    }

    fn quant(&mut self) -> i8 {
        (self.below(255) as i32 - 127) as i8
    }
}

/// Ways to fill a q8 row, extremes included.
#[derive(Clone, Copy, Debug)]
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
    /// Quants over the whole i8 range, -128 included: allowed for weights (the first
    /// operand) in every tier, not for activations.
    FullRange,
}

const QFILLS: [QFill; 10] = [
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
];

fn q8_row(rng: &mut Rng, fill: QFill, nb: usize) -> Vec<BlockQ8> {
    (0..nb)
        .map(|j| {
            let mut qs = [0i8; QK8];
            for (i, q) in qs.iter_mut().enumerate() {
                *q = match fill {
                    QFill::AllMax | QFill::LargeScale => 127,
                    QFill::AllMin => -127,
                    QFill::AlternatingMax => [127, -127][(i + j) % 2],
                    QFill::FullRange => [-128, rng.next() as i8][i % 2],
                    _ => rng.quant(),
                };
            }
            let bits: u16 = match fill {
                QFill::ZeroScale => [0x0000, 0x8000][j % 2],
                QFill::LargeScale => 0x7bff, // 65504, the largest finite f16
                QFill::SubnormalScale => 0x0001 + rng.below(0x3ff) as u16,
                QFill::NegativeScale => 0x8000 | half::f16::from_f32(rng.unit().abs() * 0.1).to_bits(),
                QFill::MixedScales => match rng.below(5) {
                    0 => 0,
                    1 => 0x7bff,
                    2 => 0x0001,
                    3 => 0x8000 | 0x3c00,
                    _ => half::f16::from_f32(rng.unit() * 4.0).to_bits(),
                },
                _ => half::f16::from_f32(rng.unit().abs() * 0.05).to_bits(),
            };
            BlockQ8 { d: bits.to_le_bytes(), qs }
        })
        .collect()
}

fn f32_row(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| match i % 11 {
            0 => rng.wide(-140, -120), // subnormal range
            1 => -0.0,
            2 => rng.wide(30, 60),
            _ => rng.wide(-8, 4),
        })
        .collect()
}

fn simd_tiers() -> impl Iterator<Item = &'static Kernels> {
    available().filter(|k| k.name != SCALAR.name)
}

fn assert_same(tier: &str, what: &str, got: f32, want: f32) {
    assert_eq!(got.to_bits(), want.to_bits(), "{tier}: {what}: {got:e} != scalar {want:e}");
}

#[test]
fn dot_q8_is_bit_exact() {
    let mut rng = Rng(1);
    for k in simd_tiers() {
        for &nb in &BLOCK_COUNTS {
            for fa in QFILLS {
                let fa_x = if matches!(fa, QFill::FullRange) { QFill::AllMin } else { fa };
                for fb in [QFill::Random, fa_x, QFill::MixedScales] {
                    let a = q8_row(&mut rng, fa, nb);
                    let b = q8_row(&mut rng, fb, nb);
                    let what = format!("dot_q8 nb={nb} {fa:?}x{fb:?}");
                    assert_same(k.name, &what, (k.dot_q8)(&a, &b), scalar::dot_q8(&a, &b));
                }
            }
        }
    }
}

#[test]
fn dot_f32_is_bit_exact() {
    let mut rng = Rng(2);
    for k in simd_tiers() {
        for &n in &ELEM_COUNTS {
            for _ in 0..4 {
                let a = f32_row(&mut rng, n);
                let b = f32_row(&mut rng, n);
                assert_same(k.name, &format!("dot_f32 n={n}"), (k.dot_f32)(&a, &b), scalar::dot_f32(&a, &b));
            }
        }
    }
}

#[test]
fn matmul_q8_is_bit_exact() {
    let mut rng = Rng(3);
    for k in simd_tiers() {
        for &kb in &[1, 7, 8, 9, 17] {
            for &rows in &ROWS {
                for &n in &TOKENS {
                    let fill = QFILLS[rng.below(QFILLS.len() as u64) as usize];
                    let w = q8_row(&mut rng, fill, rows * kb);
                    let x = q8_row(&mut rng, QFill::Random, n * kb);
                    // One spare output past the end must stay untouched.
                    let mut got = vec![7.0f32; rows * n + 1];
                    let mut want = got.clone();
                    (k.matmul_q8)(&w, rows, &x, &mut got);
                    scalar::matmul_q8(&w, rows, &x, &mut want);
                    for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
                        let what = format!("matmul_q8 kb={kb} rows={rows} n={n} {fill:?} out[{i}]");
                        assert_same(k.name, &what, g, s);
                    }
                }
            }
        }
    }
}

/// The many-token path (x86: 16-row panels transposed per call) around its edges:
/// row counts around the panel height, token counts around its pairs and the table's
/// chunk, rows longer than the panel takes, every fill.
#[test]
fn matmul_q8_many_tokens_is_bit_exact() {
    let mut rng = Rng(13);
    for k in simd_tiers() {
        for &(kb, n) in &[(1, 4), (8, 5), (9, 32), (18, 33), (48, 6), (64, 33), (65, 4), (3, 700)] {
            for &rows in &[15, 16, 17, 33] {
                let fill = QFILLS[rng.below(QFILLS.len() as u64) as usize];
                let w = q8_row(&mut rng, fill, rows * kb);
                // -128 activations only where the tier takes them (see the x86 docs).
                let xfill = if k.name == "avx512vnni" { QFill::FullRange } else { QFill::Random };
                let x = q8_row(&mut rng, xfill, n * kb);
                let mut got = vec![7.0f32; rows * n + 1];
                let mut want = got.clone();
                (k.matmul_q8)(&w, rows, &x, &mut got);
                scalar::matmul_q8(&w, rows, &x, &mut want);
                for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
                    let what = format!("matmul_q8 kb={kb} rows={rows} n={n} {fill:?} out[{i}]");
                    assert_same(k.name, &what, g, s);
                }
            }
        }
    }
}

/// The one-token path (matrix-vector tiles of row pairs, the row tail padded to a
/// group) over every fill, with each row's fill drawn separately.
#[test]
fn matmul_q8_one_token_is_bit_exact() {
    let mut rng = Rng(11);
    for k in simd_tiers() {
        for &kb in &[1, 2, 7, 8, 9, 16, 18, 24, 33] {
            for &rows in &[1, 2, 3, 4, 5, 6, 7, 8, 9, 13] {
                for fill in QFILLS {
                    let w: Vec<BlockQ8> = (0..rows)
                        .flat_map(|r| {
                            let f = if r % 2 == 0 { fill } else { QFILLS[rng.below(QFILLS.len() as u64) as usize] };
                            q8_row(&mut rng, f, kb)
                        })
                        .collect();
                    let x = q8_row(&mut rng, QFill::Random, kb);
                    let mut got = vec![7.0f32; rows + 1];
                    let mut want = got.clone();
                    (k.matmul_q8)(&w, rows, &x, &mut got);
                    scalar::matmul_q8(&w, rows, &x, &mut want);
                    for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
                        let what = format!("matmul_q8 one token kb={kb} rows={rows} {fill:?} out[{i}]");
                        assert_same(k.name, &what, g, s);
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_f32_is_bit_exact() {
    let mut rng = Rng(4);
    for k in simd_tiers() {
        for &cols in &[1, 7, 8, 9, 31, 33] {
            for &rows in &ROWS {
                for &n in &TOKENS {
                    let w = f32_row(&mut rng, rows * cols);
                    let x = f32_row(&mut rng, n * cols);
                    let mut got = vec![7.0f32; rows * n + 1];
                    let mut want = got.clone();
                    (k.matmul_f32)(&w, rows, &x, &mut got);
                    scalar::matmul_f32(&w, rows, &x, &mut want);
                    for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
                        let what = format!("matmul_f32 k={cols} rows={rows} n={n} out[{i}]");
                        assert_same(k.name, &what, g, s);
                    }
                }
            }
        }
    }
}

/// Attention kernels over strided rows (a KV head's slice of cached rows, `stride`
/// apart), every head count a tier blocks by, with a gap in the score rows.
#[test]
fn attention_kernels_are_bit_exact() {
    let mut rng = Rng(12);
    for k in simd_tiers() {
        for &hd in &[8, 16, 24, 64, 7, 80] {
            for &heads in &[1, 2, 3, 4, 5, 9] {
                for &n in &[0, 1, 3, 4, 5, 17] {
                    let stride = hd * 3 + 8;
                    let data = f32_row(&mut rng, n * stride + hd);
                    let rows = Strided::new(&data[5..], stride, n, hd).unwrap();
                    let q = f32_row(&mut rng, heads * hd);
                    let os = n + 2;
                    let mut got = vec![7.0f32; heads * os];
                    let mut want = got.clone();
                    (k.attn_scores)(&q, rows, &mut got, os);
                    scalar::attn_scores(&q, rows, &mut want, os);
                    for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
                        assert_same(k.name, &format!("attn_scores hd={hd} heads={heads} n={n} out[{i}]"), g, s);
                    }
                    // Weights as a softmax makes them (small, positive), then a few wild ones.
                    let w: Vec<f32> =
                        (0..heads * os).map(|i| if i % 7 == 3 { rng.wide(-9, 9) } else { rng.unit().abs() }).collect();
                    let mut got = f32_row(&mut rng, heads * hd);
                    let mut want = got.clone();
                    (k.attn_values)(&w, os, rows, &mut got);
                    scalar::attn_values(&w, os, rows, &mut want);
                    for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
                        assert_same(k.name, &format!("attn_values hd={hd} heads={heads} n={n} out[{i}]"), g, s);
                    }
                }
            }
        }
    }
}

/// The scores are `dot_f32`'s and the values accumulate row by row: what the model
/// code relies on to feed a span in pieces, or a q8 cache one row at a time.
#[test]
fn attention_kernels_match_their_definitions() {
    let mut rng = Rng(13);
    let (hd, heads, n) = (16, 3, 6);
    let rows_data = f32_row(&mut rng, n * hd);
    let rows = Strided::new(&rows_data, hd, n, hd).unwrap();
    let q = f32_row(&mut rng, heads * hd);
    let mut scores = vec![0.0f32; heads * n];
    scalar::attn_scores(&q, rows, &mut scores, n);
    for h in 0..heads {
        for i in 0..n {
            let want = scalar::dot_f32(&q[h * hd..(h + 1) * hd], rows.row(i));
            assert_eq!(scores[h * n + i].to_bits(), want.to_bits());
        }
    }
    let mut whole = vec![0.0f32; heads * hd];
    scalar::attn_values(&scores, n, rows, &mut whole);
    let mut pieces = vec![0.0f32; heads * hd];
    for i in 0..n {
        scalar::attn_values(&scores[i..], n, Strided::one(rows.row(i)), &mut pieces);
    }
    assert_eq!(whole, pieces);
}

#[test]
fn matmul_odd_shapes_match_scalar() {
    // Shapes off the tiled path: no tokens, a partial trailing token, a ragged weight.
    let mut rng = Rng(5);
    for k in simd_tiers() {
        for (w_blocks, rows, x_blocks) in [(6, 3, 0), (6, 3, 5), (7, 3, 4), (3, 3, 2)] {
            let w = q8_row(&mut rng, QFill::Random, w_blocks);
            let x = q8_row(&mut rng, QFill::Random, x_blocks);
            let mut got = vec![7.0f32; 16];
            let mut want = got.clone();
            (k.matmul_q8)(&w, rows, &x, &mut got);
            scalar::matmul_q8(&w, rows, &x, &mut want);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{}: matmul_q8 {w_blocks} {rows} {x_blocks}", k.name);

            let w = f32_row(&mut rng, w_blocks);
            let x = f32_row(&mut rng, x_blocks);
            let mut got = vec![7.0f32; 16];
            let mut want = got.clone();
            (k.matmul_f32)(&w, rows, &x, &mut got);
            scalar::matmul_f32(&w, rows, &x, &mut want);
            assert_eq!(bits(&got), bits(&want), "{}: matmul_f32 {w_blocks} {rows} {x_blocks}", k.name);
        }
    }
}

/// A q4 row for `fill`: the same extremes as [`q8_row`], mapped onto the q4 block (quants
/// in [0, 15], and the minimum `m` as extreme as the scale).
fn q4_row(rng: &mut Rng, fill: QFill, nb: usize) -> Vec<BlockQ4> {
    let f16 = |v: f32| half::f16::from_f32(v).to_bits();
    (0..nb)
        .map(|j| {
            let q: [u8; QK4] = core::array::from_fn(|i| match fill {
                QFill::AllMax | QFill::LargeScale => 15,
                QFill::AllMin => 0,
                QFill::AlternatingMax => [15, 0][(i + j) % 2],
                _ => rng.below(16) as u8,
            });
            let (d, m): (u16, u16) = match fill {
                QFill::ZeroScale => ([0x0000, 0x8000][j % 2], f16(rng.unit() * 0.1)),
                // 65504, the largest finite f16, and its negative as the minimum.
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
                // Any finite f16 bit patterns (exponent field below 31).
                QFill::FullRange => {
                    let mut any = || (rng.next() as u16) & 0xfbff;
                    (any(), any())
                }
                _ => (f16(rng.unit().abs() * 0.01), f16(rng.unit() * -0.1)),
            };
            let mut qs = [0u8; QK4 / 2];
            for (i, b) in qs.iter_mut().enumerate() {
                *b = q[i] | (q[i + QK4 / 2] << 4);
            }
            BlockQ4 { d: d.to_le_bytes(), m: m.to_le_bytes(), qs }
        })
        .collect()
}

#[test]
fn dot_q4_q8_is_bit_exact() {
    // Any i8 activations, -128 included: the q4 kernels need no range condition.
    let mut rng = Rng(8);
    for k in simd_tiers() {
        for &nb in &BLOCK_COUNTS {
            for fw in QFILLS {
                for fx in [QFill::Random, fw, QFill::MixedScales, QFill::FullRange] {
                    let w = q4_row(&mut rng, fw, nb);
                    let x = q8_row(&mut rng, fx, nb);
                    let what = format!("dot_q4_q8 nb={nb} {fw:?}x{fx:?}");
                    assert_same(k.name, &what, (k.dot_q4_q8)(&w, &x), scalar::dot_q4_q8(&w, &x));
                }
            }
        }
    }
}

#[test]
fn matmul_q4_q8_is_bit_exact() {
    let mut rng = Rng(9);
    for k in simd_tiers() {
        for &kb in &[1, 7, 8, 9, 15, 16, 17, 33] {
            for &rows in ROWS.iter().chain(&[12, 13]) {
                for &n in &TOKENS {
                    let fw = QFILLS[rng.below(QFILLS.len() as u64) as usize];
                    let fx = [QFill::Random, QFill::FullRange, QFill::MixedScales][rng.below(3) as usize];
                    let w = q4_row(&mut rng, fw, rows * kb);
                    let x = q8_row(&mut rng, fx, n * kb);
                    // One spare output past the end must stay untouched.
                    let mut got = vec![7.0f32; rows * n + 1];
                    let mut want = got.clone();
                    (k.matmul_q4_q8)(&w, rows, &x, &mut got);
                    scalar::matmul_q4_q8(&w, rows, &x, &mut want);
                    for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
                        let what = format!("matmul_q4_q8 kb={kb} rows={rows} n={n} {fw:?}x{fx:?} out[{i}]");
                        assert_same(k.name, &what, g, s);
                    }
                    // Each output is the dot product of its row and token.
                    for t in 0..n {
                        for r in 0..rows {
                            let d = (k.dot_q4_q8)(&w[r * kb..(r + 1) * kb], &x[t * kb..(t + 1) * kb]);
                            assert_same(k.name, &format!("matmul_q4_q8 vs dot r={r} t={t}"), got[t * rows + r], d);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_q4_q8_odd_shapes_match_scalar() {
    // Shapes off the tiled path: no tokens, a partial trailing token, a ragged weight.
    let mut rng = Rng(10);
    for k in simd_tiers() {
        for (w_blocks, rows, x_blocks) in [(6, 3, 0), (6, 3, 5), (7, 3, 4), (3, 3, 2)] {
            let w = q4_row(&mut rng, QFill::Random, w_blocks);
            let x = q8_row(&mut rng, QFill::Random, x_blocks);
            let mut got = vec![7.0f32; 16];
            let mut want = got.clone();
            (k.matmul_q4_q8)(&w, rows, &x, &mut got);
            scalar::matmul_q4_q8(&w, rows, &x, &mut want);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{}: matmul_q4_q8 {w_blocks} {rows} {x_blocks}", k.name);
        }
    }
}

/// The extremes of the q4 x q8 integer sums, whatever the random fills reach: nibbles
/// 15, 0 or mixed against activations all -128, all 127 or alternating (the largest
/// `|sum q_i * x_i|` and `|sum x_i|`), with zero, -0, subnormal, one and the largest
/// f16 scales and minima, cycled over the blocks so that every lane sees each.
#[test]
fn q4_q8_extreme_sums_are_bit_exact() {
    const NIBBLES: [fn(usize) -> u8; 4] = [|_| 15, |_| 0, |i| [15, 0][i % 2], |i| if i < 16 { 15 } else { 0 }];
    const ACTS: [fn(usize) -> i8; 3] = [|_| -128, |_| 127, |i| [-128, 127][i % 2]];
    // (d, m) of the weights and d of the activations, as f16 bits.
    const SCALES: [(u16, u16, u16); 5] = [
        (0x3c00, 0xbc00, 0x3c00),
        (0x7bff, 0xfbff, 0x7bff),
        (0x0001, 0x8001, 0x0001),
        (0x0000, 0x0000, 0x3c00),
        (0x8000, 0x8000, 0x8000),
    ];
    let w_block = |j: usize| {
        let nib = NIBBLES[j % NIBBLES.len()];
        let (d, m, _) = SCALES[j / 3 % SCALES.len()];
        let qs = core::array::from_fn(|i| nib(i) | nib(i + QK4 / 2) << 4);
        BlockQ4 { d: d.to_le_bytes(), m: m.to_le_bytes(), qs }
    };
    let x_block = |j: usize| {
        let act = ACTS[j % ACTS.len()];
        let (_, _, d) = SCALES[j / 4 % SCALES.len()];
        BlockQ8 { d: d.to_le_bytes(), qs: core::array::from_fn(act) }
    };
    for k in simd_tiers() {
        for &nb in BLOCK_COUNTS.iter().chain(&[60]) {
            let w: Vec<BlockQ4> = (0..nb).map(w_block).collect();
            let x: Vec<BlockQ8> = (0..nb).map(x_block).collect();
            let what = format!("dot_q4_q8 extremes nb={nb}");
            assert_same(k.name, &what, (k.dot_q4_q8)(&w, &x), scalar::dot_q4_q8(&w, &x));
            if nb == 0 {
                continue; // the scalar matmul takes no empty rows
            }
            // A full 4 x 2 tile and every remainder path; rows and tokens start at
            // different blocks of the cycles.
            let (rows, n) = (5, 3);
            let w: Vec<BlockQ4> = (0..rows * nb).map(|j| w_block(j + j / nb)).collect();
            let x: Vec<BlockQ8> = (0..n * nb).map(|j| x_block(j + 2 * (j / nb))).collect();
            let mut got = vec![0.0; rows * n];
            let mut want = got.clone();
            (k.matmul_q4_q8)(&w, rows, &x, &mut got);
            scalar::matmul_q4_q8(&w, rows, &x, &mut want);
            for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
                assert_same(k.name, &format!("matmul_q4_q8 extremes nb={nb} out[{i}]"), g, s);
            }
        }
    }
}

#[test]
fn scalar_dot_q4_q8_is_the_dequantized_dot_product() {
    // The contract regroups sum((q * d_w + m_w) * (x * d_x)) around exact integer sums;
    // it must agree with the f64 dot product of the dequantized rows.
    let mut rng = Rng(11);
    for &nb in &BLOCK_COUNTS {
        for fill in [QFill::Random, QFill::AllMax, QFill::AlternatingMax, QFill::NegativeScale] {
            let w = q4_row(&mut rng, fill, nb);
            let x = q8_row(&mut rng, QFill::FullRange, nb);
            let mut wf = vec![0.0f32; nb * QK4];
            let mut xf = vec![0.0f32; nb * QK8];
            crate::quant::dequantize_row_q4(&w, &mut wf);
            crate::quant::dequantize_row_q8(&x, &mut xf);
            let exact: f64 = wf.iter().zip(&xf).map(|(&a, &b)| a as f64 * b as f64).sum();
            let scale: f64 = wf.iter().zip(&xf).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            let got = scalar::dot_q4_q8(&w, &x) as f64;
            assert!((got - exact).abs() <= 1e-5 * scale + 1e-30, "nb={nb} {fill:?}: {got:e} vs {exact:e}");
        }
    }
}

/// Activation rows for the quantizer, one kind per block.
fn quantizer_input(rng: &mut Rng, nb: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(nb * QK8);
    for j in 0..nb {
        let block: [f32; QK8] = core::array::from_fn(|i| match j % 9 {
            // amax 127 makes 1/d exactly 1: every x.5 is a tie for rint.
            0 => {
                if i == 0 {
                    127.0
                } else {
                    (rng.below(255) as f32 - 127.0) + 0.5 * (i % 2) as f32
                }
            }
            // amax 254: d = 2, 1/d = 0.5, odd integers land on ties.
            1 => {
                if i == 0 {
                    -254.0
                } else {
                    rng.below(509) as f32 - 254.0
                }
            }
            2 => 0.0,
            3 => [0.0, -0.0][i % 2],
            4 => rng.wide(-149, -126), // subnormals: d underflows or 1/d overflows
            5 => rng.wide(100, 128),   // huge: the f16 scale saturates to inf
            6 => match i {
                0 => f32::INFINITY,
                1 => f32::NEG_INFINITY,
                2 => f32::NAN,
                _ => rng.unit(),
            },
            7 => {
                if i % 5 == 0 {
                    f32::NAN
                } else {
                    rng.wide(-4, 4)
                }
            }
            _ => rng.wide(-12, 8),
        });
        x.extend_from_slice(&block);
    }
    x
}

#[test]
fn quantize_q8_is_bit_exact() {
    let mut rng = Rng(6);
    for k in simd_tiers() {
        for &nb in BLOCK_COUNTS.iter().chain(&[36]) {
            let x = quantizer_input(&mut rng, nb);
            let zero = BlockQ8 { d: [0xaa; 2], qs: [0x55; QK8] };
            let mut got = vec![zero; nb];
            let mut want = got.clone();
            (k.quantize_q8)(&x, &mut got);
            scalar::quantize_q8(&x, &mut want);
            for (j, (g, s)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, s, "{}: quantize_q8 nb={nb} block {j} (kind {})", k.name, j % 9);
            }
        }
    }
}

#[test]
fn tier_list_and_caps() {
    let tiers: Vec<_> = available().collect();
    assert_eq!(tiers[0].name, "scalar");
    for (i, k) in tiers.iter().enumerate() {
        assert!(tiers[..i].iter().all(|o| o.name != k.name), "duplicate tier {}", k.name);
        assert!(core::ptr::eq(by_name(k.name).unwrap(), *k));
        assert!(core::ptr::eq(best_up_to(k.name), *k), "cap {} gives {}", k.name, best_up_to(k.name).name);
    }
    let strongest = *tiers.last().unwrap();
    assert!(core::ptr::eq(best_up_to(""), strongest));
    assert!(core::ptr::eq(best_up_to("no-such-isa"), strongest));
    assert!(core::ptr::eq(best_up_to(" SCALAR "), &SCALAR));
    assert!(by_name("no-such-isa").is_none());
    assert!(tiers.iter().any(|k| core::ptr::eq(best(), *k)));
    eprintln!("tiers tested: {:?}", tiers.iter().map(|k| k.name).collect::<Vec<_>>());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x86_caps_fall_back_to_weaker_tiers() {
    // A cap names a tier; on a CPU without it the next weaker one this CPU runs wins.
    let cap = best_up_to("avx512vnni").name;
    let expect = if by_name("avx512vnni").is_some() {
        "avx512vnni"
    } else if by_name("avx2").is_some() {
        "avx2"
    } else {
        "scalar"
    };
    assert_eq!(cap, expect);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx512vnni_is_exact_over_the_whole_i8_range() {
    // Its biased `vpdpbusd` form needs no range condition on either operand.
    let Some(k) = by_name("avx512vnni") else {
        return;
    };
    let mut rng = Rng(7);
    for &nb in &BLOCK_COUNTS {
        let a = q8_row(&mut rng, QFill::FullRange, nb);
        let b = q8_row(&mut rng, QFill::FullRange, nb);
        assert_same(k.name, &format!("dot_q8 nb={nb}"), (k.dot_q8)(&a, &b), scalar::dot_q8(&a, &b));
        if nb == 0 {
            continue; // the scalar matmul takes no empty rows
        }
        let rows = 3;
        let w = q8_row(&mut rng, QFill::FullRange, rows * nb);
        let mut got = vec![0.0; rows * 2];
        let mut want = got.clone();
        (k.matmul_q8)(&w, rows, &[&a[..], &b[..]].concat(), &mut got);
        scalar::matmul_q8(&w, rows, &[&a[..], &b[..]].concat(), &mut want);
        for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
            assert_same(k.name, &format!("matmul_q8 nb={nb} out[{i}]"), g, s);
        }
    }
}

#[cfg(target_arch = "aarch64")]
#[test]
fn aarch64_caps_fall_back_to_weaker_tiers() {
    // NEON is baseline on every target this module builds for; dotprod is detected.
    assert!(by_name("neon").is_some(), "no neon tier");
    assert_eq!(best_up_to("neon").name, "neon");
    let expect = if by_name("dotprod").is_some() { "dotprod" } else { "neon" };
    assert_eq!(best_up_to("dotprod").name, expect);
}

#[cfg(target_arch = "aarch64")]
#[test]
fn aarch64_tiers_are_exact_over_the_whole_i8_range() {
    // `smull` and `sdot` are exact for any i8 on both sides, -128 included.
    let mut rng = Rng(8);
    for name in ["neon", "dotprod"] {
        let Some(k) = by_name(name) else {
            continue;
        };
        for &nb in &BLOCK_COUNTS {
            let a = q8_row(&mut rng, QFill::FullRange, nb);
            let b = q8_row(&mut rng, QFill::FullRange, nb);
            assert_same(k.name, &format!("dot_q8 nb={nb}"), (k.dot_q8)(&a, &b), scalar::dot_q8(&a, &b));
            if nb == 0 {
                continue; // the scalar matmul takes no empty rows
            }
            let (rows, n) = (5, 3); // a full 4 x 2 tile and every remainder path
            let w = q8_row(&mut rng, QFill::FullRange, rows * nb);
            let x = q8_row(&mut rng, QFill::FullRange, n * nb);
            let mut got = vec![0.0; rows * n];
            let mut want = got.clone();
            (k.matmul_q8)(&w, rows, &x, &mut got);
            scalar::matmul_q8(&w, rows, &x, &mut want);
            for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
                assert_same(k.name, &format!("matmul_q8 nb={nb} out[{i}]"), g, s);
            }
        }
    }
}

/// Lets a test script pin the tiers it expects this CPU to run, e.g.
/// `ARQ_EXPECT_TIERS=scalar,neon` under `qemu-aarch64 -cpu cortex-a53`.
#[cfg(feature = "std")]
#[test]
fn detected_tiers_match_arq_expect_tiers() {
    let detected: Vec<_> = available().map(|k| k.name).collect();
    eprintln!("detected tiers: {}", detected.join(","));
    if let Ok(expect) = std::env::var("ARQ_EXPECT_TIERS") {
        let expect: Vec<_> = expect.split(',').map(str::trim).collect();
        assert_eq!(detected, expect, "ARQ_EXPECT_TIERS");
    }
}

/// Every run-time setting of `tune` keeps every tier bit-exact on one-token products:
/// prefetch distances (none, small, the cap), the AVX2 decode path under AVX-512 and
/// rows one at a time or in tiles,
/// with activations of the full i8 range on AVX-512 (a -128 must keep its own path).
#[test]
fn tune_settings_keep_one_token_products_bit_exact() {
    use tune::{DecodeRows, DecodeTier, Tuning};
    let mut rng = Rng(23);
    let settings = [0, 64, 1024, tune::MAX_PREFETCH].into_iter().flat_map(|prefetch| {
        [DecodeTier::Own, DecodeTier::Avx2].into_iter().flat_map(move |decode_tier| {
            [DecodeRows::Tile, DecodeRows::One].map(|decode_rows| Tuning { prefetch, decode_tier, decode_rows })
        })
    });
    for t in settings {
        tune::set(t);
        for k in simd_tiers() {
            for &kb in &[1, 8, 9, 18, 33] {
                for &rows in &[1, 4, 5, 13] {
                    // Only the AVX-512 tier promises exact products for -128 activations.
                    let full = k.name == "avx512vnni" && rng.below(2) == 0;
                    let fx = if full { QFill::FullRange } else { QFill::Random };
                    let w = q8_row(&mut rng, QFill::Random, rows * kb);
                    let w4 = q4_row(&mut rng, QFill::Random, rows * kb);
                    let x = q8_row(&mut rng, fx, kb);
                    let (mut got, mut want) = (vec![7.0f32; rows + 1], vec![7.0f32; rows + 1]);
                    (k.matmul_q8)(&w, rows, &x, &mut got);
                    scalar::matmul_q8(&w, rows, &x, &mut want);
                    let (mut got4, mut want4) = (vec![7.0f32; rows + 1], vec![7.0f32; rows + 1]);
                    (k.matmul_q4_q8)(&w4, rows, &x, &mut got4);
                    scalar::matmul_q4_q8(&w4, rows, &x, &mut want4);
                    for i in 0..=rows {
                        let what = format!("{t:?} kb={kb} rows={rows} {fx:?} out[{i}]");
                        assert_same(k.name, &format!("matmul_q8 {what}"), got[i], want[i]);
                        assert_same(k.name, &format!("matmul_q4_q8 {what}"), got4[i], want4[i]);
                    }
                }
            }
        }
    }
    tune::set(Tuning::default());
    assert_eq!(tune::get(), Tuning::default());
    tune::set(Tuning { prefetch: usize::MAX, ..Tuning::default() });
    assert_eq!(tune::prefetch_distance(), tune::MAX_PREFETCH, "distances are capped");
    tune::set(Tuning::default());
}

/// `log_sum_exp` and `map_f32` compile the same scalar operations at each tier's width:
/// the same bits as the portable tier, over lengths that leave every kind of tail.
#[test]
fn log_sum_exp_and_activations_are_bit_exact() {
    use crate::math::Unary;
    let mut rng = Rng(13);
    for k in simd_tiers() {
        for &n in &[1, 7, 8, 9, 17, 64, 255, 256, 1000] {
            let x: Vec<f32> = (0..n).map(|_| rng.wide(-4, 6)).collect();
            let (got, want) = ((k.log_sum_exp)(&x), (SCALAR.log_sum_exp)(&x));
            assert_eq!(got.to_bits(), want.to_bits(), "{}: log_sum_exp n={n}: {got:e} != scalar {want:e}", k.name);
            for f in [Unary::Tanh, Unary::Sigmoid, Unary::Elu(1.0), Unary::Elu(0.3)] {
                let (mut got, mut want) = (x.clone(), x.clone());
                (k.map_f32)(f, &mut got);
                (SCALAR.map_f32)(f, &mut want);
                for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
                    assert_same(k.name, &format!("map_f32 {f:?} n={n} x[{i}]"), g, s);
                }
            }
        }
    }
}

/// The f16 KV cache's conversions: every f16 that is not a NaN back to f32 exactly, and
/// f32s of every range (subnormal, normal, past f16's largest) to the same nearest f16.
#[test]
fn f16_conversions_are_bit_exact() {
    let halves: Vec<u16> = (0..=u16::MAX).filter(|&h| !half::f16::from_bits(h).is_nan()).collect();
    let mut rng = Rng(14);
    let floats: Vec<f32> = (0..20_000).map(|i| rng.wide(-30, 18) * if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
    for k in simd_tiers() {
        let (mut got, mut want) = (vec![0.0f32; halves.len()], vec![0.0f32; halves.len()]);
        (k.f16_to_f32)(&halves, &mut got);
        (SCALAR.f16_to_f32)(&halves, &mut want);
        for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
            assert_same(k.name, &format!("f16_to_f32 {:#06x}", halves[i]), g, s);
        }
        for n in [floats.len(), 13, 8, 7] {
            let (mut got, mut want) = (vec![0u16; n], vec![0u16; n]);
            (k.f32_to_f16)(&floats[..n], &mut got);
            (SCALAR.f32_to_f16)(&floats[..n], &mut want);
            for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, s, "{}: f32_to_f16 {:e}", k.name, floats[i]);
            }
        }
    }
}
