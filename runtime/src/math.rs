//! The float parts of a transformer step: norms, activations, rotary embeddings,
//! softmax. Scalar and portable; `libm` keeps them no_std.

/// `out = x / rms(x) * weight`, with `rms = sqrt(mean(x^2) + eps)`.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / libm::sqrtf(ss + eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// [`rmsnorm`] in place (the q and k norms, per head).
pub fn rmsnorm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / libm::sqrtf(ss + eps);
    for (v, &w) in x.iter_mut().zip(weight) {
        *v = *v * scale * w;
    }
}

/// LayerNorm: `out = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias`, with the
/// population variance (ONNX `LayerNormalization`, PyTorch `nn.LayerNorm`).
pub fn layernorm(out: &mut [f32], x: &[f32], weight: &[f32], bias: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / libm::sqrtf(var + eps);
    for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
        *o = (v - mean) * inv * w + b;
    }
}

/// GPT-2's GELU, tanh form, in place: `x/2 (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`.
pub fn gelu_tanh(x: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for v in x.iter_mut() {
        let u = *v;
        *v = u * (0.5 * (1.0 + libm::tanhf(SQRT_2_OVER_PI * (u + 0.044715 * (u * u * u)))));
    }
}

/// `e^x` within 2 ulp of `libm::expf` (Cephes' polynomial), from plain f32 operations
/// only, so that it inlines and vectorizes (the libm call was a fifth of a prompt's time
/// in attention and SwiGLU) and gives the same bits on every target: no FMA, no table.
/// NaN stays NaN, below -87.3 (where the result would be subnormal) gives 0, above 88.7
/// infinity; in between, from 88 on, it saturates at `e^88` (a clamp that keeps `2^n`
/// normal; softmax takes `x <= 0`, SwiGLU's gate is past 0 there anyway).
#[inline]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer (ties to even), kept in the low bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.0);
    let shifted = xc * core::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    // 2^n from the integer in `shifted`'s low mantissa bits (n in [-126, 127]).
    let pow2 = f32::from_bits(((shifted.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23) as u32);
    let e = y * pow2;
    if x < -87.3 {
        0.0
    } else if x > 88.7 {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        e
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    softmax_rows(x, 1, x.len(), x.len());
}

/// [`softmax`] of `rows` rows of `n` floats, row `r` at `x[r * stride..]`: the same
/// floats, written so that it vectorizes: the exponentials in their own loop, and the
/// sums (each row's in order, one long chain of dependent adds) kept for 8 rows at a
/// time, so that 8 chains advance together. Inlined into the kernels' tiers
/// (`Kernels::softmax_rows`), where it compiles with their vector widths.
#[inline(always)]
pub fn softmax_rows(x: &mut [f32], rows: usize, n: usize, stride: usize) {
    if n == 0 {
        return;
    }
    let mut r0 = 0;
    while r0 < rows {
        let m = (rows - r0).min(8);
        let block = &mut x[r0 * stride..(r0 + m - 1) * stride + n];
        let mut max = [f32::NEG_INFINITY; 8];
        for (r, mx) in max[..m].iter_mut().enumerate() {
            *mx = block[r * stride..r * stride + n].iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        }
        for (r, mx) in max[..m].iter().enumerate() {
            for v in block[r * stride..r * stride + n].iter_mut() {
                *v = exp(*v - mx);
            }
        }
        let mut sum = [0.0f32; 8];
        for i in 0..n {
            for (r, s) in sum[..m].iter_mut().enumerate() {
                *s += block[r * stride + i];
            }
        }
        for (r, s) in sum[..m].iter().enumerate() {
            let inv = 1.0 / s;
            for v in block[r * stride..r * stride + n].iter_mut() {
                *v *= inv;
            }
        }
        r0 += m;
    }
}

/// `e^x` in f64 within 1 ulp of `libm::exp` for `x <= 0` (tested), from plain f64
/// operations only (no table, no FMA, no branch on the value), so a loop of it
/// vectorizes and gives the same bits on every target: `x = n ln2 + r` with
/// `|r| <= ln2 / 2`, `e^r` by its Taylor series to `r^13` (the next term is below
/// 2^-56), times `2^n`. Below -708 (a subnormal result) it gives 0, above 709 it
/// saturates at `e^709`; NaN stays NaN.
#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    // ln 2 split so that `n * LN2_HI` is exact for |n| < 2^11.
    // fdlibm's ln2_hi (its low 21 bits zero) and ln2_lo.
    const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
    // 1.5 * 2^52: adding it rounds to an integer (ties to even), kept in the low bits.
    const ROUND: f64 = 6_755_399_441_055_744.0;
    let xc = x.clamp(-708.0, 709.0);
    let shifted = xc * core::f64::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // 1/k! for k = 13 down to 2.
    const C: [f64; 12] = [
        1.0 / 6_227_020_800.0,
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ];
    let mut p = C[0];
    for c in &C[1..] {
        p = p * r + c;
    }
    let y = p * (r * r) + r + 1.0;
    // 2^n from the integer in `shifted`'s low mantissa bits (n in [-1022, 1023]).
    let pow2 = f64::from_bits(((shifted.to_bits() as i64 - ROUND.to_bits() as i64 + 1023) << 52) as u64);
    let e = y * pow2;
    if x < -708.0 {
        0.0
    } else {
        e // NaN in, NaN out: the clamp keeps it
    }
}

/// `e^x - 1`, accurate near 0 too: the Taylor series to `x^9` for `|x| < 0.5` (the next
/// term is below 2^-31 relative), [`exp`]` - 1` elsewhere. Plain f32 operations and a
/// select, like [`exp`], so a loop of it vectorizes with the same bits on every target.
#[inline(always)]
pub fn expm1(x: f32) -> f32 {
    let mut p = 1.0 / 362_880.0;
    for c in [1.0 / 40_320.0, 1.0 / 5_040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5] {
        p = p * x + c;
    }
    let small = p * (x * x) + x;
    let large = exp(x) - 1.0;
    if x.abs() < 0.5 {
        small
    } else {
        large
    }
}

/// A pointwise function [`map_f32`] applies (the pixel graphs' activations).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    Tanh,
    Sigmoid,
    /// `x > 0 ? x : alpha (e^x - 1)`.
    Elu(f32),
}

/// `x[i] = f(x[i])`, from [`exp`] and [`expm1`] (within a few ulp of libm's), in a
/// loop that vectorizes: each kernel tier compiles it at its own width
/// (`Kernels::map_f32`), with the same floats.
#[inline(always)]
pub fn map_f32(f: Unary, x: &mut [f32]) {
    match f {
        Unary::Tanh => {
            // tanh |x| = e / (e + 2) with e = e^(2|x|) - 1; |x| > 9 is 1 in f32.
            for o in x.iter_mut() {
                let v = *o;
                let e = expm1(2.0 * v.abs().min(9.0));
                let t = (e / (e + 2.0)).copysign(v);
                *o = if v.is_nan() { v } else { t };
            }
        }
        Unary::Sigmoid => {
            for o in x.iter_mut() {
                *o = 1.0 / (1.0 + exp(-*o));
            }
        }
        Unary::Elu(alpha) => {
            for o in x.iter_mut() {
                let v = *o;
                let neg = alpha * expm1(if v > 0.0 { 0.0 } else { v });
                *o = if v > 0.0 { v } else { neg };
            }
        }
    }
}

/// `log(sum(exp(x)))`, computed stably in f64 (for exact likelihoods). The exponentials
/// go through [`exp_f64`] into 8 running sums (element `i` into sum `i % 8`, added
/// pairwise at the end), so the loop vectorizes: a vocabulary of 49,152 or a 256-way
/// pixel costs a few microseconds, not one `libm::exp` call per entry. Each kernel tier
/// compiles it at its own width (`Kernels::log_sum_exp`), with the same bits.
#[inline(always)]
pub fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    if max == f64::NEG_INFINITY {
        return max;
    }
    let mut acc = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += exp_f64(v as f64 - max);
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += exp_f64(v as f64 - max);
    }
    let sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    max + libm::log(sum)
}

/// `log p(id)` under `softmax(logits)`.
pub fn log_prob(logits: &[f32], id: usize) -> f64 {
    logits[id] as f64 - log_sum_exp(logits)
}

/// SiLU-gated product, in place: `gate = silu(gate) * up`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// GELU-gated product (Gemma's GeGLU, tanh GELU), in place: `gate = gelu_tanh(gate) * up`.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    gelu_tanh(gate);
    for (g, &u) in gate.iter_mut().zip(up) {
        *g *= u;
    }
}

/// The rotary-embedding table for one position: `(cos, sin)` of `pos * base^(-2i/d)`
/// for each pair `i < d/2`, interleaved in `out` (length `d`).
pub fn rope_table(out: &mut [f32], pos: usize, base: f32) {
    let d = out.len();
    for i in (0..d).step_by(2) {
        let freq = 1.0 / libm::powf(base, i as f32 / d as f32);
        let (s, c) = libm::sincosf(pos as f32 * freq);
        out[i] = c;
        out[i + 1] = s;
    }
}

/// Rotary position embedding on one head vector, rotating adjacent pairs
/// `(x[2i], x[2i+1])`: the layout GGUF stores LLaMA's Q and K in. `table` comes from
/// [`rope_table`] for the head dimension.
pub fn rope(x: &mut [f32], table: &[f32]) {
    for (p, cs) in x.chunks_exact_mut(2).zip(table.chunks_exact(2)) {
        let (a, b) = (p[0], p[1]);
        p[0] = a * cs[0] - b * cs[1];
        p[1] = a * cs[1] + b * cs[0];
    }
}

/// Rotary position embedding on one head vector in the NeoX layout, rotating the pairs
/// `(x[i], x[i + d/2])` by the angle of pair `i` of `table` (Hugging Face's
/// `rotate_half`: Qwen, Gemma).
pub fn rope_half(x: &mut [f32], table: &[f32]) {
    let (lo, hi) = x.split_at_mut(x.len() / 2);
    for ((a, b), cs) in lo.iter_mut().zip(hi.iter_mut()).zip(table.chunks_exact(2)) {
        let (u, v) = (*a, *b);
        *a = u * cs[0] - v * cs[1];
        *b = u * cs[1] + v * cs[0];
    }
}

/// Index of the largest value (the first, on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_2_ulp_of_libm() {
        let ulp = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs();
        let mut worst = 0;
        for i in 0..=2_000_000 {
            let x = -87.0 + 175.0 * i as f32 / 2_000_000.0;
            worst = worst.max(ulp(exp(x), libm::expf(x)));
        }
        assert!(worst <= 2, "worst {worst} ulp");
        for x in [0.0f32, -0.0, 1.0, -1.0, 1e-8, -1e-8, 88.0, -87.0] {
            assert!(ulp(exp(x), libm::expf(x)) <= 2, "{x}");
        }
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn exp_f64_is_within_1_ulp_of_libm_and_log_sum_exp_within_2() {
        let ulp = |a: f64, b: f64| (a.to_bits() as i64 - b.to_bits() as i64).abs();
        let mut worst = 0;
        for i in 0..=2_000_000 {
            let x = -745.0 * i as f64 / 2_000_000.0;
            if x >= -708.0 {
                worst = worst.max(ulp(exp_f64(x), libm::exp(x)));
            }
        }
        assert!(worst <= 1, "worst {worst} ulp");
        for x in [0.0, -0.0, 1.0, 10.0, 700.0, -1e-12, 1e-12, -707.9] {
            assert!(ulp(exp_f64(x), libm::exp(x)) <= 1, "{x}");
        }
        assert_eq!(exp_f64(-709.0), 0.0);
        assert_eq!(exp_f64(f64::NEG_INFINITY), 0.0);
        assert!(exp_f64(f64::NAN).is_nan());
        // Against the plain sum of libm's exponentials, in order.
        let x: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 * 0.037 - 20.0).collect();
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let plain = max + libm::log(x.iter().map(|&v| libm::exp(v as f64 - max)).sum::<f64>());
        assert!(ulp(log_sum_exp(&x), plain) <= 2, "{} vs {plain}", log_sum_exp(&x));
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f64::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[2.5]), 2.5);
        assert!(log_sum_exp(&[1.0, f32::NAN]).is_nan());
    }

    #[test]
    fn map_f32_is_close_to_libm() {
        let x: Vec<f32> = (0..=400_000)
            .map(|i| -20.0 + 40.0 * i as f32 / 400_000.0)
            .chain([0.0, -0.0, 1e-30, -1e-7, 100.0, -100.0])
            .collect();
        let mut out;
        let close = |a: f32, b: f32, what: &str, v: f32| {
            assert!(
                (a - b).abs() <= 4.0 * f32::EPSILON * b.abs().max(f32::MIN_POSITIVE),
                "{what}({v}) = {a}, libm {b}"
            );
        };
        out = x.clone();
        map_f32(Unary::Tanh, &mut out);
        for (&o, &v) in out.iter().zip(&x) {
            close(o, libm::tanhf(v), "tanh", v);
        }
        out = x.clone();
        map_f32(Unary::Sigmoid, &mut out);
        for (&o, &v) in out.iter().zip(&x) {
            close(o, 1.0 / (1.0 + libm::expf(-v)), "sigmoid", v);
        }
        out = x.clone();
        map_f32(Unary::Elu(1.5), &mut out);
        for (&o, &v) in out.iter().zip(&x) {
            close(o, if v > 0.0 { v } else { 1.5 * libm::expm1f(v) }, "elu", v);
        }
        for f in [Unary::Tanh, Unary::Sigmoid, Unary::Elu(1.0)] {
            let mut nan = [f32::NAN];
            map_f32(f, &mut nan);
            assert!(nan[0].is_nan(), "{f:?}");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_log_prob_matches() {
        let mut x = [1.0f32, 2.0, 3.0, -1.0];
        let lp = log_prob(&x, 2);
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((libm::log(x[2] as f64) - lp).abs() < 1e-6);
    }

    #[test]
    fn layernorm_and_gelu_match_their_formulas() {
        let x = [1.0f32, 2.0, 4.0, -3.0];
        let mut o = [0.0f32; 4];
        layernorm(&mut o, &x, &[1.0, 2.0, 1.0, 1.0], &[0.0, 0.0, 0.5, 0.0], 0.0);
        // mean 1, variance (0 + 1 + 9 + 16) / 4 = 6.5
        let s = 6.5f32.sqrt();
        let want = [0.0, 2.0 / s, 3.0 / s + 0.5, -4.0 / s];
        for (a, b) in o.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        let mut g = [0.0f32, 1.0, -1.0, 3.0];
        gelu_tanh(&mut g);
        // PyTorch gelu(approximate='tanh') at 1, -1, 3.
        for (a, b) in g.iter().zip([0.0f32, 0.841_192, -0.158_808, 2.996_363]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn rope_preserves_norm_and_is_identity_at_zero() {
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        let mut t = [0.0f32; 4];
        rope_table(&mut t, 0, 10000.0);
        rope(&mut x, &t);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
        rope_table(&mut t, 17, 10000.0);
        rope(&mut x, &t);
        let n: f32 = x.iter().map(|v| v * v).sum();
        assert!((n - 30.0).abs() < 1e-4);
    }
}
