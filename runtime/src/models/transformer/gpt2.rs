//! GPT-2 (Radford et al. 2019): learned positions, pre-LayerNorm with bias, multi-head
//! attention, a tanh-GELU MLP, a bias on every linear layer and an optionally tied head.
//!
//! This file names the tensors (`runtime/FORMAT.md`, "GPT-2 models"); its hyperparameters
//! are the `gpt2.*` keys of [`crate::format::keys::GPT2`]; how GPT-2 differs from the
//! LLaMA family is its row of
//! [`super::family::FAMILIES`], and the forward pass is the shared engine's, [`super`].

/// The per-layer tensors, in the order the file stores them.
pub(super) const LAYER_ROLES: [&str; 16] = [
    "attn_norm",
    "attn_norm.bias",
    "attn_q",
    "attn_q.bias",
    "attn_k",
    "attn_k.bias",
    "attn_v",
    "attn_v.bias",
    "attn_output",
    "attn_output.bias",
    "ffn_norm",
    "ffn_norm.bias",
    "ffn_up",
    "ffn_up.bias",
    "ffn_down",
    "ffn_down.bias",
];

#[cfg(all(test, feature = "std"))]
mod tests {
    use crate::aligned::AlignedBytes;
    use crate::format::keys::{self, LayerNaming};
    use crate::format::writer::{ArqWriter, Meta};
    use crate::format::Dtype;
    use crate::quant::{quantize_row_q8, BlockQ8, QK8};
    use crate::{Error, KvDtype, Model, Session, SessionConfig};
    use rand_core::{RngCore, SeedableRng};
    use rand_pcg::Pcg32;
    use std::vec::Vec;

    const V: usize = 40;
    const D: usize = 64;
    const L: usize = 2;
    const H: usize = 4;
    const FF: usize = 128;
    const CTX: usize = 16;

    /// Random weights of a small GPT-2, by tensor name, in the file's order.
    fn weights(seed: u64) -> Vec<(String, Vec<u64>, Vec<f32>)> {
        let mut rng = Pcg32::seed_from_u64(seed);
        let mut rand = |n: usize, scale: f32, offset: f32| -> Vec<f32> {
            (0..n).map(|_| offset + scale * ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 - 0.5)).collect()
        };
        let mut t = vec![
            ("token_embd".to_string(), vec![V as u64, D as u64], rand(V * D, 1.0, 0.0)),
            ("position_embd".to_string(), vec![CTX as u64, D as u64], rand(CTX * D, 0.5, 0.0)),
            ("output_norm".to_string(), vec![D as u64], rand(D, 0.4, 1.0)),
            ("output_norm.bias".to_string(), vec![D as u64], rand(D, 0.2, 0.0)),
        ];
        for l in 0..L {
            for (role, rows, cols) in [
                ("attn_norm", D, 0),
                ("attn_q", D, D),
                ("attn_k", D, D),
                ("attn_v", D, D),
                ("attn_output", D, D),
                ("ffn_norm", D, 0),
                ("ffn_up", FF, D),
                ("ffn_down", D, FF),
            ] {
                if cols == 0 {
                    t.push((format!("blk.{l}.{role}"), vec![D as u64], rand(D, 0.4, 1.0)));
                } else {
                    let s = 2.0 / (cols as f32).sqrt();
                    t.push((format!("blk.{l}.{role}"), vec![rows as u64, cols as u64], rand(rows * cols, s, 0.0)));
                }
                t.push((format!("blk.{l}.{role}.bias"), vec![rows as u64], rand(rows, 0.2, 0.0)));
            }
        }
        t
    }

    fn file(w: &[(String, Vec<u64>, Vec<f32>)], q8: bool, skip: Option<&str>) -> AlignedBytes {
        let mut f = ArqWriter::new();
        f.meta(keys::ARCHITECTURE, Meta::Str(keys::ARCH_GPT2.into()));
        for (k, v) in [
            (keys::GPT2.vocab_size, V),
            (keys::GPT2.context_length, CTX),
            (keys::GPT2.embedding_length, D),
            (keys::GPT2.block_count, L),
            (keys::GPT2.feed_forward_length, FF),
            (keys::GPT2.head_count, H),
        ] {
            f.meta(k, Meta::U32(v as u32));
        }
        f.meta(keys::GPT2.layer_norm_epsilon, Meta::F32(1e-5));
        for (name, dims, data) in w {
            if Some(name.as_str()) == skip {
                continue;
            }
            if q8 && dims.len() == 2 {
                let mut blocks = vec![BlockQ8 { d: [0; 2], qs: [0; QK8] }; data.len() / QK8];
                quantize_row_q8(data, &mut blocks);
                f.tensor(name, Dtype::Q8, dims, bytemuck::cast_slice(&blocks).to_vec()).unwrap();
            } else {
                f.tensor(name, Dtype::F32, dims, bytemuck::cast_slice(data).to_vec()).unwrap();
            }
        }
        let mut out = Vec::new();
        f.write(&mut out).unwrap();
        AlignedBytes::copy_of(&out)
    }

    /// The equations of FORMAT.md's "GPT-2 models", written out directly in f64: the
    /// logits after every token of `tokens`.
    fn reference(w: &[(String, Vec<u64>, Vec<f32>)], tokens: &[u32]) -> Vec<Vec<f64>> {
        let get = |n: &str| -> Vec<f64> { w.iter().find(|t| t.0 == n).unwrap().2.iter().map(|&v| v as f64).collect() };
        let linear = |x: &[f64], m: &str, rows: usize| -> Vec<f64> {
            let (wm, b) = (get(m), get(&format!("{m}.bias")));
            (0..rows).map(|r| b[r] + (0..x.len()).map(|c| wm[r * x.len() + c] * x[c]).sum::<f64>()).collect()
        };
        let ln = |x: &[f64], n: &str| -> Vec<f64> {
            let (g, b) = (get(n), get(&format!("{n}.bias")));
            let mean = x.iter().sum::<f64>() / x.len() as f64;
            let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / x.len() as f64;
            x.iter().enumerate().map(|(i, v)| (v - mean) / (var + 1e-5).sqrt() * g[i] + b[i]).collect()
        };
        let (emb, pos) = (get("token_embd"), get("position_embd"));
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .enumerate()
            .map(|(p, &t)| (0..D).map(|i| emb[t as usize * D + i] + pos[p * D + i]).collect())
            .collect();
        let hd = D / H;
        for l in 0..L {
            let h: Vec<_> = xs.iter().map(|x| ln(x, &format!("blk.{l}.attn_norm"))).collect();
            let q: Vec<_> = h.iter().map(|x| linear(x, &format!("blk.{l}.attn_q"), D)).collect();
            let k: Vec<_> = h.iter().map(|x| linear(x, &format!("blk.{l}.attn_k"), D)).collect();
            let v: Vec<_> = h.iter().map(|x| linear(x, &format!("blk.{l}.attn_v"), D)).collect();
            for t in 0..xs.len() {
                let mut att = vec![0.0; D];
                for hh in 0..H {
                    let r = hh * hd..(hh + 1) * hd;
                    let s: Vec<f64> = (0..=t)
                        .map(|j| r.clone().map(|i| q[t][i] * k[j][i]).sum::<f64>() / (hd as f64).sqrt())
                        .collect();
                    let m = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    for (j, sj) in s.iter().enumerate() {
                        for i in r.clone() {
                            att[i] += (sj - m).exp() / z * v[j][i];
                        }
                    }
                }
                let o = linear(&att, &format!("blk.{l}.attn_output"), D);
                xs[t].iter_mut().zip(o).for_each(|(x, o)| *x += o);
                let h2 = ln(&xs[t], &format!("blk.{l}.ffn_norm"));
                let mut u = linear(&h2, &format!("blk.{l}.ffn_up"), FF);
                let c = (2.0 / std::f64::consts::PI).sqrt();
                u.iter_mut().for_each(|x| *x = 0.5 * *x * (1.0 + (c * (*x + 0.044715 * x.powi(3))).tanh()));
                let dn = linear(&u, &format!("blk.{l}.ffn_down"), D);
                xs[t].iter_mut().zip(dn).for_each(|(x, o)| *x += o);
            }
        }
        xs.iter()
            .map(|x| {
                let h = ln(x, "output_norm");
                (0..V).map(|r| (0..D).map(|c| emb[r * D + c] * h[c]).sum()).collect()
            })
            .collect()
    }

    fn all_logits(model: &Model<'_>, tokens: &[u32], batch: usize, kv: KvDtype) -> Vec<Vec<f32>> {
        all_logits_threads(model, tokens, batch, kv, 1)
    }

    fn all_logits_threads(
        model: &Model<'_>,
        tokens: &[u32],
        batch: usize,
        kv: KvDtype,
        threads: usize,
    ) -> Vec<Vec<f32>> {
        let cfg = SessionConfig { ctx: CTX, batch, threads, kv, seqs: 1 };
        let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
        let pool = crate::parallel::ThreadPool::new(threads).unwrap();
        let mut s = Session::new(model, &mut arena, cfg).unwrap();
        s.set_parallel(&pool).unwrap();
        let mut out = Vec::new();
        s.forward_all(tokens, |_, l| out.push(l.to_vec())).unwrap();
        out
    }

    const TOKENS: [u32; 13] = [3, 17, 0, 39, 5, 5, 22, 8, 31, 1, 12, 30, 2];

    #[test]
    fn f32_logits_follow_the_format_equations() {
        let w = weights(1);
        let bytes = file(&w, false, None);
        let model = Model::load(bytes.bytes()).unwrap();
        assert_eq!(model.config().family, crate::Family::Gpt2);
        assert!(model.tied_embeddings());
        let want = reference(&w, &TOKENS);
        for kernels in crate::kernels::available() {
            let mut m = Model::load(bytes.bytes()).unwrap();
            m.set_kernels(kernels);
            let got = all_logits(&m, &TOKENS, 4, KvDtype::F32);
            let diff =
                got.iter().flatten().zip(want.iter().flatten()).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(diff < 1e-4, "{}: max |logit diff| {diff}", kernels.name);
        }
    }

    #[test]
    fn batched_equals_one_by_one_and_q8_cache_stays_close() {
        let w = weights(2);
        for q8 in [false, true] {
            let bytes = file(&w, q8, None);
            let model = Model::load(bytes.bytes()).unwrap();
            for kv in [KvDtype::F32, KvDtype::F16, KvDtype::Q8] {
                let one = all_logits(&model, &TOKENS, 1, kv);
                assert_eq!(one, all_logits(&model, &TOKENS, 5, kv), "q8 weights {q8}, {kv:?}");
                assert_eq!(one, all_logits(&model, &TOKENS, CTX, kv), "q8 weights {q8}, {kv:?}");
                // A prompt split between threads by work (`causal_split`), in blocks.
                for threads in [2, 3] {
                    assert_eq!(one, all_logits_threads(&model, &TOKENS, CTX, kv, threads), "{threads} threads");
                }
            }
            let exact = all_logits(&model, &TOKENS, 4, KvDtype::F32);
            let cached = all_logits(&model, &TOKENS, 4, KvDtype::Q8);
            let diff =
                exact.iter().flatten().zip(cached.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            let scale = exact.iter().flatten().map(|a| a.abs()).fold(0.0, f32::max);
            assert!(diff > 0.0 && diff < 0.01 * scale, "q8 KV cache: max |logit diff| {diff} (max |logit| {scale})");
            let half = all_logits(&model, &TOKENS, 4, KvDtype::F16);
            let diff16 =
                exact.iter().flatten().zip(half.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(diff16 > 0.0 && diff16 < diff, "f16 KV cache: max |logit diff| {diff16}, q8's {diff}");
        }
    }

    #[test]
    fn q8_kv_cache_is_smaller_and_context_is_bounded_by_the_position_table() {
        let w = weights(3);
        let bytes = file(&w, true, None);
        let model = Model::load(bytes.bytes()).unwrap();
        let plan = |kv| model.memory_plan(&SessionConfig { ctx: CTX, batch: 1, threads: 1, kv, seqs: 1 }).unwrap();
        let cache_f32 = 2 * L * CTX * D * 4;
        assert_eq!(plan(KvDtype::F32) - plan(KvDtype::Q8), cache_f32 - 2 * L * CTX * D / QK8 * 34);
        // Batch 1: no prompt scratch; the attention scratch holds 32 whole rows to
        // convert instead of one head's slice.
        assert_eq!(plan(KvDtype::F32) + (32 * D - D / H) * 4 - plan(KvDtype::F16), cache_f32 / 2);
        let cfg = SessionConfig { ctx: CTX + 1, batch: 1, threads: 1, kv: KvDtype::Q8, seqs: 1 };
        let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
        assert!(matches!(Session::new(&model, &mut arena, cfg), Err(Error::BadConfig(_))));
    }

    #[test]
    fn missing_or_misshapen_tensors_are_named() {
        let w = weights(4);
        let e = Model::load(file(&w, false, Some("blk.1.ffn_up.bias")).bytes()).err();
        assert_eq!(
            e,
            Some(Error::BadTensor {
                naming: LayerNaming::Blk,
                role: "ffn_up.bias",
                layer: Some(1),
                problem: "missing or out of the canonical order"
            })
        );
        let e = Model::load(file(&w, false, Some("position_embd")).bytes()).err();
        assert_eq!(
            e,
            Some(Error::BadTensor { naming: LayerNaming::Blk, role: "position_embd", layer: None, problem: "missing" })
        );
    }
}
