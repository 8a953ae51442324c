//! Gemma 3 (text): embeddings scaled by `sqrt(dim)`; RMSNorms before and after both
//! sublayers and on every q and k head; a head dimension of its own (256 in the 270M,
//! whose `dim` is 640 with 4 heads); a GeGLU MLP (tanh GELU); rotary embeddings in the
//! NeoX layout; and local attention: 5 of every 6 layers see only the last
//! `sliding_window` tokens (512) with their own rotary base (10,000), the 6th the whole
//! context with the file's base. A sliding layer's KV cache holds only its window.
//!
//! The norms' weights are stored as they multiply: Hugging Face's `Gemma3RMSNorm`
//! multiplies by `1 + w`, and both llama.cpp's converter and arq's add the 1 at import.
//!
//! This file names the family's tensors; its hyperparameters are the `gemma3.*` keys of
//! [`crate::format::keys::GEMMA3`]; the rest is its row of [`super::family::FAMILIES`].

/// The per-layer tensors, in the order the file stores them.
pub(super) const LAYER_ROLES: [&str; 13] = [
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_q_norm",
    "attn_k_norm",
    "attn_output",
    "post_attention_norm",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "post_ffw_norm",
];

/// Gemma 3's pattern when a file does not say: every 6th layer is global.
pub const DEFAULT_SLIDING_WINDOW_PATTERN: usize = 6;
/// Gemma 3's rotary base of the local layers when a file does not say.
pub const DEFAULT_LOCAL_ROPE_BASE: f32 = 10_000.0;

#[cfg(all(test, feature = "std"))]
mod tests {
    use crate::aligned::AlignedBytes;
    use crate::format::keys;
    use crate::format::writer::{ArqWriter, Meta};
    use crate::format::Dtype;
    use crate::{Error, Family, KvDtype, Model, Session, SessionConfig};
    use rand_core::{RngCore, SeedableRng};
    use rand_pcg::Pcg32;
    use std::vec::Vec;

    const V: usize = 48;
    const D: usize = 64;
    /// Layers 0 and 1 slide, layer 2 is global (pattern 3).
    const L: usize = 3;
    const PATTERN: usize = 3;
    const WINDOW: usize = 5;
    const H: usize = 4;
    const KV: usize = 1;
    /// A head dimension of the file's own: H * HD = 128 != D.
    const HD: usize = 32;
    const FF: usize = 96;
    const CTX: usize = 24;
    const EPS: f32 = 1e-6;
    const BASE: f32 = 1e6;
    const LOCAL_BASE: f32 = 1e4;

    type Tensors = Vec<(String, Vec<u64>, Vec<f32>)>;

    /// Random weights of a small Gemma 3, by tensor name, in the file's order.
    fn weights(seed: u64) -> Tensors {
        let mut rng = Pcg32::seed_from_u64(seed);
        let mut rand = |n: usize, scale: f32, offset: f32| -> Vec<f32> {
            (0..n).map(|_| offset + scale * ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 - 0.5)).collect()
        };
        let mut t = vec![
            ("token_embd".to_string(), vec![V as u64, D as u64], rand(V * D, 0.3, 0.0)),
            ("output_norm".to_string(), vec![D as u64], rand(D, 0.4, 1.0)),
        ];
        for l in 0..L {
            for &role in &super::LAYER_ROLES {
                let (rows, cols) = match role {
                    "attn_q" => (H * HD, D),
                    "attn_k" | "attn_v" => (KV * HD, D),
                    "attn_output" => (D, H * HD),
                    "ffn_gate" | "ffn_up" => (FF, D),
                    "ffn_down" => (D, FF),
                    "attn_q_norm" | "attn_k_norm" => (HD, 0),
                    _ => (D, 0),
                };
                let name = format!("blk.{l}.{role}");
                if cols == 0 {
                    t.push((name, vec![rows as u64], rand(rows, 0.4, 1.0)));
                } else {
                    let s = 2.0 / (cols as f32).sqrt();
                    t.push((name, vec![rows as u64, cols as u64], rand(rows * cols, s, 0.0)));
                }
            }
        }
        t
    }

    fn file(w: &Tensors) -> AlignedBytes {
        let mut f = ArqWriter::new();
        let k = &keys::GEMMA3;
        f.meta(keys::ARCHITECTURE, Meta::Str(keys::ARCH_GEMMA3.into()));
        for (key, v) in [
            (k.vocab_size, V),
            (k.context_length, CTX),
            (k.embedding_length, D),
            (k.block_count, L),
            (k.feed_forward_length, FF),
            (k.head_count, H),
            (k.head_count_kv, KV),
            (k.key_length, HD),
            (k.sliding_window, WINDOW),
            (k.sliding_window_pattern, PATTERN),
        ] {
            f.meta(key, Meta::U64(v as u64));
        }
        f.meta(k.rms_epsilon, Meta::F32(EPS));
        f.meta(k.rope_freq_base, Meta::F32(BASE));
        f.meta(k.rope_local_freq_base, Meta::F32(LOCAL_BASE));
        for (name, dims, data) in w {
            f.tensor(name, Dtype::F32, dims, bytemuck::cast_slice(data).to_vec()).unwrap();
        }
        let mut out = Vec::new();
        f.write(&mut out).unwrap();
        AlignedBytes::copy_of(&out)
    }

    /// Gemma 3's equations written out directly in f64 (full recomputation per token,
    /// no cache): the logits after every token of `tokens`.
    /// `window` 0 turns the sliding window off (to show that it matters).
    fn reference(w: &Tensors, tokens: &[u32], window: usize) -> Vec<Vec<f64>> {
        let get = |n: &str| -> Vec<f64> { w.iter().find(|t| t.0 == n).unwrap().2.iter().map(|&v| v as f64).collect() };
        let linear = |x: &[f64], m: &str, rows: usize| -> Vec<f64> {
            let wm = get(m);
            (0..rows).map(|r| (0..x.len()).map(|c| wm[r * x.len() + c] * x[c]).sum::<f64>()).collect()
        };
        let rms = |x: &[f64], g: &[f64]| -> Vec<f64> {
            let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
            x.iter().zip(g).map(|(v, g)| v / (ms + EPS as f64).sqrt() * g).collect()
        };
        // NeoX layout: pairs (i, i + HD/2) turn by pos * base^(-2i/HD).
        let rope = |x: &mut [f64], pos: usize, base: f64| {
            for i in 0..HD / 2 {
                let a = pos as f64 * base.powf(-2.0 * i as f64 / HD as f64);
                let (u, v) = (x[i], x[i + HD / 2]);
                x[i] = u * a.cos() - v * a.sin();
                x[i + HD / 2] = u * a.sin() + v * a.cos();
            }
        };
        let gelu = |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
        let emb = get("token_embd");
        let mut xs: Vec<Vec<f64>> =
            tokens.iter().map(|&t| (0..D).map(|i| emb[t as usize * D + i] * (D as f64).sqrt()).collect()).collect();
        for l in 0..L {
            let p = |r: &str| format!("blk.{l}.{r}");
            let sliding = l % PATTERN < PATTERN - 1;
            let base = if sliding { LOCAL_BASE } else { BASE } as f64;
            let h: Vec<_> = xs.iter().map(|x| rms(x, &get(&p("attn_norm")))).collect();
            let heads = |x: &[f64], m: &str, n: usize, norm: &str, pos: usize| -> Vec<Vec<f64>> {
                let y = linear(x, &p(m), n * HD);
                (0..n)
                    .map(|j| {
                        let mut v = rms(&y[j * HD..(j + 1) * HD], &get(&p(norm)));
                        rope(&mut v, pos, base);
                        v
                    })
                    .collect()
            };
            let q: Vec<_> = h.iter().enumerate().map(|(t, x)| heads(x, "attn_q", H, "attn_q_norm", t)).collect();
            let k: Vec<_> = h.iter().enumerate().map(|(t, x)| heads(x, "attn_k", KV, "attn_k_norm", t)).collect();
            let v: Vec<_> = h.iter().map(|x| linear(x, &p("attn_v"), KV * HD)).collect();
            for t in 0..xs.len() {
                let first = if sliding && window > 0 { (t + 1).saturating_sub(window) } else { 0 };
                let mut att = vec![0.0; H * HD];
                for hh in 0..H {
                    let g = hh / (H / KV);
                    let s: Vec<f64> = (first..=t)
                        .map(|j| (0..HD).map(|i| q[t][hh][i] * k[j][g][i]).sum::<f64>() / (HD as f64).sqrt())
                        .collect();
                    let m = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    for (j, sj) in (first..=t).zip(&s) {
                        for i in 0..HD {
                            att[hh * HD + i] += (sj - m).exp() / z * v[j][g * HD + i];
                        }
                    }
                }
                let o = rms(&linear(&att, &p("attn_output"), D), &get(&p("post_attention_norm")));
                xs[t].iter_mut().zip(o).for_each(|(x, o)| *x += o);
                let h2 = rms(&xs[t], &get(&p("ffn_norm")));
                let (gt, up) = (linear(&h2, &p("ffn_gate"), FF), linear(&h2, &p("ffn_up"), FF));
                let a: Vec<f64> = gt.iter().zip(&up).map(|(g, u)| gelu(*g) * u).collect();
                let dn = rms(&linear(&a, &p("ffn_down"), D), &get(&p("post_ffw_norm")));
                xs[t].iter_mut().zip(dn).for_each(|(x, o)| *x += o);
            }
        }
        let g = get("output_norm");
        xs.iter()
            .map(|x| {
                let h = rms(x, &g);
                (0..V).map(|r| (0..D).map(|c| emb[r * D + c] * h[c]).sum()).collect()
            })
            .collect()
    }

    fn all_logits(model: &Model<'_>, tokens: &[u32], batch: usize, kv: KvDtype) -> Vec<Vec<f32>> {
        let cfg = SessionConfig { ctx: CTX, batch, threads: 1, kv, seqs: 1 };
        let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
        let mut s = Session::new(model, &mut arena, cfg).unwrap();
        let mut out = Vec::new();
        s.forward_all(tokens, |_, l| out.push(l.to_vec())).unwrap();
        out
    }

    /// 20 tokens: 4 windows' worth, so the sliding layers' rings wrap several times.
    const TOKENS: [u32; 20] = [3, 17, 0, 39, 5, 5, 22, 8, 31, 1, 12, 30, 2, 47, 9, 9, 40, 11, 6, 28];

    #[test]
    fn f32_logits_follow_the_equations_with_the_window() {
        let w = weights(1);
        let bytes = file(&w);
        let model = Model::load(bytes.bytes()).unwrap();
        let c = model.config();
        assert_eq!((c.family, c.head_dim, c.q_dim(), c.sliding_window), (Family::Gemma3, HD, H * HD, WINDOW));
        assert_eq!((0..L).map(|l| c.is_sliding(l)).collect::<Vec<_>>(), [true, true, false]);
        let want = reference(&w, &TOKENS, WINDOW);
        let mut f16_first: Option<Vec<Vec<f32>>> = None;
        for kernels in crate::kernels::available() {
            let mut m = Model::load(bytes.bytes()).unwrap();
            m.set_kernels(kernels);
            // Batch 1: rings of exactly the window; 3: rings of window + 2; 20: no wrap.
            let one = all_logits(&m, &TOKENS, 1, KvDtype::F32);
            for batch in [3, 20] {
                assert_eq!(all_logits(&m, &TOKENS, batch, KvDtype::F32), one, "{} batch {batch}", kernels.name);
            }
            let diff =
                one.iter().flatten().zip(want.iter().flatten()).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(diff < 1e-4, "{}: max |logit diff| {diff}", kernels.name);
            // An f16 cache: the same floats in every batch (prompts read its rows
            // converted to f32, one token reads them row by row) and on every tier.
            let half = all_logits(&m, &TOKENS, 1, KvDtype::F16);
            for batch in [3, 20] {
                assert_eq!(all_logits(&m, &TOKENS, batch, KvDtype::F16), half, "{} f16 batch {batch}", kernels.name);
            }
            assert_eq!(half, *f16_first.get_or_insert_with(|| half.clone()), "{} f16", kernels.name);
            let diff = half
                .iter()
                .flatten()
                .zip(want.iter().flatten())
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(diff < 1e-2, "{}: f16 cache, max |logit diff| {diff}", kernels.name);
        }
    }

    #[test]
    fn the_window_matters_and_q8_kv_follows() {
        let w = weights(2);
        let bytes = file(&w);
        let model = Model::load(bytes.bytes()).unwrap();
        let f32s = all_logits(&model, &TOKENS, 4, KvDtype::F32);
        let q8 = all_logits(&model, &TOKENS, 4, KvDtype::Q8);
        let diff = f32s.iter().flatten().zip(q8.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 0.05, "q8 KV cache: max |logit diff| {diff}");
        // The window matters: without it the logits agree within the first window only.
        let (with, without) = (reference(&w, &TOKENS, WINDOW), reference(&w, &TOKENS, 0));
        let differ = |t: usize| with[t].iter().zip(&without[t]).any(|(a, b)| (a - b).abs() > 1e-6);
        assert!((0..WINDOW).all(|t| !differ(t)) && (WINDOW..TOKENS.len()).all(differ));
    }

    #[test]
    fn the_ring_cache_is_smaller_and_rewinds_only_within_it() {
        let w = weights(3);
        let bytes = file(&w);
        let model = Model::load(bytes.bytes()).unwrap();
        let cfg = SessionConfig { ctx: CTX, batch: 2, threads: 1, kv: KvDtype::F32, seqs: 1 };
        // Two sliding layers of window + batch - 1 = 6 rows and one of 24, keys and values.
        assert_eq!(model.kv_cache_bytes(&cfg, true).unwrap(), 2 * (2 * 6 + CTX) * KV * HD * 4);
        assert_eq!(model.kv_cache_bytes(&cfg, false).unwrap(), 2 * 3 * CTX * KV * HD * 4);
        let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
        let mut s = Session::new(&model, &mut arena, cfg).unwrap();
        s.prefill(&TOKENS[..12]).unwrap();
        let want = s.step(TOKENS[12]).unwrap().to_vec();
        // One token back: the window of position 12 is still in the rings.
        s.truncate(12).unwrap();
        assert_eq!(s.step(TOKENS[12]).unwrap(), &want[..]);
        s.prefill(&TOKENS[13..20]).unwrap();
        assert_eq!(s.truncate(4), Err(Error::BadConfig("cannot rewind a sliding-window cache that far")));
        assert_eq!(s.pos(), 20);
    }

    #[test]
    fn sequences_stepped_together_equal_each_run_alone() {
        let w = weights(4);
        let bytes = file(&w);
        let model = Model::load(bytes.bytes()).unwrap();
        // Three texts of different lengths, prefilled one after another into their own
        // sequences, then decoded together: the ring caches of the sliding layers wrap
        // at a different position in each.
        let texts: [&[u32]; 3] = [&TOKENS[..3], &TOKENS[4..13], &TOKENS[1..8]];
        let next: [u32; 6] = [7, 19, 44, 2, 2, 30];
        for kv in [KvDtype::F32, KvDtype::F16, KvDtype::Q8] {
            let cfg = SessionConfig { ctx: CTX, batch: 4, threads: 1, kv, seqs: 3 };
            let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
            let mut s = Session::new(&model, &mut arena, cfg).unwrap();
            for (i, text) in texts.iter().enumerate() {
                s.select(i).unwrap();
                s.prefill(text).unwrap();
            }
            // Sequence 1 sits out the second step.
            let mut together = vec![Vec::new(); 3];
            for (step, &tok) in next.iter().enumerate() {
                let seqs: &[usize] = if step == 1 { &[2, 0] } else { &[0, 1, 2] };
                let toks: Vec<u32> = seqs.iter().map(|&q| tok + q as u32).collect();
                let logits = s.step_seqs(seqs, &toks).unwrap().to_vec();
                for (row, &q) in logits.chunks_exact(V).zip(seqs) {
                    together[q].push(row.to_vec());
                }
            }
            for (q, text) in texts.iter().enumerate() {
                let one = SessionConfig { seqs: 1, ..cfg };
                let mut arena1 = vec![0u8; model.memory_plan(&one).unwrap()];
                let mut alone = Session::new(&model, &mut arena1, one).unwrap();
                alone.prefill(text).unwrap();
                let steps = next.iter().enumerate().filter(|&(step, _)| q != 1 || step != 1);
                let want: Vec<Vec<f32>> = steps.map(|(_, &tok)| alone.step(tok + q as u32).unwrap().to_vec()).collect();
                assert_eq!(together[q], want, "sequence {q}, {kv:?}");
                assert_eq!(s.seq_pos(q), alone.pos());
            }
            assert_eq!(s.step_seqs(&[0, 0], &[1, 1]).err(), Some(Error::BadConfig("a sequence twice in one step")));
            assert_eq!(s.step_seqs(&[3], &[1]).err(), Some(Error::BadConfig("no such sequence")));
            assert!(s.select(3).is_err());
        }
    }
}
