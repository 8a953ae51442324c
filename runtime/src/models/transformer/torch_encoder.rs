//! PyTorch's `nn.TransformerEncoder` as a causal language model: the
//! `word_language_model` example's `TransformerModel` (token embedding times
//! `sqrt(d)`, sinusoidal positions added, post-LN `nn.TransformerEncoderLayer`s with a
//! ReLU MLP, the encoder's final LayerNorm, a linear decoder with a bias).
//!
//! The importer folds `sqrt(d)` into `token_embd` and stores the sinusoidal table as
//! `position_embd`, so the forward pass is the shared engine's ([`super`]) with this
//! family's row of [`super::family::FAMILIES`]: post-LN, ReLU, a head bias. Widths that
//! are not multiples of 32 are padded with zeros in the file; `torch_encoder.norm_length`
//! says how many entries the LayerNorms normalize.

/// The per-layer tensors, in the order the file stores them: GPT-2's, with `attn_norm`
/// the norm after the attention's residual add (PyTorch's `norm1`) and `ffn_norm` the
/// one after the MLP's (`norm2`).
pub(super) const LAYER_ROLES: [&str; 16] = super::gpt2::LAYER_ROLES;

#[cfg(all(test, feature = "std"))]
mod tests {
    use crate::aligned::AlignedBytes;
    use crate::format::keys;
    use crate::format::writer::{ArqWriter, Meta};
    use crate::format::Dtype;
    use crate::{Error, KvDtype, Model, Session, SessionConfig};
    use rand_core::{RngCore, SeedableRng};
    use rand_pcg::Pcg32;
    use std::vec::Vec;

    const V: usize = 30;
    /// The file's width and the model's own (`norm_length`): 16 entries of padding.
    const D: usize = 64;
    const N: usize = 48;
    const L: usize = 2;
    const H: usize = 2;
    /// Head width in the file (`key_length`) and the model's own.
    const HD: usize = 32;
    const HD_REAL: usize = 24;
    const FF: usize = 96;
    const CTX: usize = 12;

    type Weights = Vec<(String, Vec<u64>, Vec<f32>)>;
    /// `rand(rows, cols, live, scale, offset)`: a random matrix, zero where not `live`.
    type Rand<'r> = dyn FnMut(usize, usize, &dyn Fn(usize, usize) -> bool, f32, f32) -> Vec<f32> + 'r;

    /// Random weights, zero wherever FORMAT.md says the padding is: columns and rows
    /// past `N` of the width, entries past `HD_REAL` of each head.
    fn weights(seed: u64) -> Weights {
        let mut rng = Pcg32::seed_from_u64(seed);
        let mut rand = |rows: usize, cols: usize, live: &dyn Fn(usize, usize) -> bool, scale: f32, offset: f32| {
            let mut m = vec![0.0f32; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    let u = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                    m[r * cols + c] = if live(r, c) { offset + scale * u } else { 0.0 };
                }
            }
            m
        };
        let width = |_: usize, c: usize| c < N;
        let vec_w = |r: usize, _: usize| r < N;
        let head = |i: usize| i % HD < HD_REAL;
        let mut t: Weights = vec![
            ("token_embd".into(), vec![V as u64, D as u64], rand(V, D, &width, 2.0, 0.0)),
            ("position_embd".into(), vec![CTX as u64, D as u64], rand(CTX, D, &width, 1.0, 0.0)),
            ("output_norm".into(), vec![D as u64], rand(D, 1, &vec_w, 0.4, 1.0)),
            ("output_norm.bias".into(), vec![D as u64], rand(D, 1, &vec_w, 0.2, 0.0)),
            ("output".into(), vec![V as u64, D as u64], rand(V, D, &width, 0.5, 0.0)),
            ("output.bias".into(), vec![V as u64], rand(V, 1, &|_, _| true, 0.5, 0.0)),
        ];
        let qd = H * HD;
        for l in 0..L {
            let norm = |t: &mut Weights, role: &str, w: Vec<f32>, b: Vec<f32>| {
                t.push((format!("blk.{l}.{role}"), vec![D as u64], w));
                t.push((format!("blk.{l}.{role}.bias"), vec![D as u64], b));
            };
            let (n1w, n1b) = (rand(D, 1, &vec_w, 0.4, 1.0), rand(D, 1, &vec_w, 0.2, 0.0));
            norm(&mut t, "attn_norm", n1w, n1b);
            for role in ["attn_q", "attn_k", "attn_v"] {
                t_push(&mut t, l, role, (qd, D), &mut rand, &|r, c| head(r) && c < N, &head);
            }
            t_push(&mut t, l, "attn_output", (D, qd), &mut rand, &|r, c| r < N && head(c), &|r| r < N);
            let (n2w, n2b) = (rand(D, 1, &vec_w, 0.4, 1.0), rand(D, 1, &vec_w, 0.2, 0.0));
            norm(&mut t, "ffn_norm", n2w, n2b);
            t_push(&mut t, l, "ffn_up", (FF, D), &mut rand, &|_, c| c < N, &|_| true);
            t_push(&mut t, l, "ffn_down", (D, FF), &mut rand, &|r, _| r < N, &|r| r < N);
        }
        t
    }

    /// A matrix and its bias, `live` saying which entries are not padding.
    fn t_push(
        t: &mut Weights,
        l: usize,
        role: &str,
        (rows, cols): (usize, usize),
        rand: &mut Rand<'_>,
        live: &dyn Fn(usize, usize) -> bool,
        bias: &dyn Fn(usize) -> bool,
    ) {
        let s = 2.0 / (cols as f32).sqrt();
        t.push((format!("blk.{l}.{role}"), vec![rows as u64, cols as u64], rand(rows, cols, live, s, 0.0)));
        t.push((format!("blk.{l}.{role}.bias"), vec![rows as u64], rand(rows, 1, &|r, _| bias(r), 0.2, 0.0)));
    }

    fn file(w: &Weights) -> AlignedBytes {
        let k = &keys::TORCH_ENCODER;
        let mut f = ArqWriter::new();
        f.meta(keys::ARCHITECTURE, Meta::Str(keys::ARCH_TORCH_ENCODER.into()));
        for (key, v) in [
            (k.vocab_size, V),
            (k.context_length, CTX),
            (k.embedding_length, D),
            (k.norm_length, N),
            (k.block_count, L),
            (k.feed_forward_length, FF),
            (k.head_count, H),
            (k.key_length, HD),
        ] {
            f.meta(key, Meta::U32(v as u32));
        }
        f.meta(k.attention_scale, Meta::F32(1.0 / (HD_REAL as f32).sqrt()));
        f.meta(k.layer_norm_epsilon, Meta::F32(1e-5));
        for (name, dims, data) in w {
            f.tensor(name, Dtype::F32, dims, bytemuck::cast_slice(data).to_vec()).unwrap();
        }
        let mut out = Vec::new();
        f.write(&mut out).unwrap();
        AlignedBytes::copy_of(&out)
    }

    /// FORMAT.md's "PyTorch TransformerEncoder models" equations in f64: the logits
    /// after every token.
    fn reference(w: &Weights, tokens: &[u32]) -> Vec<Vec<f64>> {
        let get = |n: &str| -> Vec<f64> { w.iter().find(|t| t.0 == n).unwrap().2.iter().map(|&v| v as f64).collect() };
        let linear = |x: &[f64], m: &str, rows: usize| -> Vec<f64> {
            let (wm, b) = (get(m), get(&format!("{m}.bias")));
            (0..rows).map(|r| b[r] + (0..x.len()).map(|c| wm[r * x.len() + c] * x[c]).sum::<f64>()).collect()
        };
        // LayerNorm over the first N entries; the padding stays zero.
        let ln = |x: &[f64], n: &str| -> Vec<f64> {
            let (g, b) = (get(n), get(&format!("{n}.bias")));
            let mean = x[..N].iter().sum::<f64>() / N as f64;
            let var = x[..N].iter().map(|v| (v - mean).powi(2)).sum::<f64>() / N as f64;
            (0..D).map(|i| if i < N { (x[i] - mean) / (var + 1e-5).sqrt() * g[i] + b[i] } else { 0.0 }).collect()
        };
        let (emb, pos) = (get("token_embd"), get("position_embd"));
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .enumerate()
            .map(|(p, &t)| (0..D).map(|i| emb[t as usize * D + i] + pos[p * D + i]).collect())
            .collect();
        let qd = H * HD;
        // Each block's q, k, v are of every position's input before any is updated.
        for l in 0..L {
            let blk = |r: &str| format!("blk.{l}.{r}");
            let q: Vec<_> = xs.iter().map(|x| linear(x, &blk("attn_q"), qd)).collect();
            let k: Vec<_> = xs.iter().map(|x| linear(x, &blk("attn_k"), qd)).collect();
            let v: Vec<_> = xs.iter().map(|x| linear(x, &blk("attn_v"), qd)).collect();
            for t in 0..xs.len() {
                let mut att = vec![0.0; qd];
                for h in 0..H {
                    let r = h * HD..(h + 1) * HD;
                    let s: Vec<f64> = (0..=t)
                        .map(|j| r.clone().map(|i| q[t][i] * k[j][i]).sum::<f64>() / (HD_REAL as f64).sqrt())
                        .collect();
                    let m = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    for (j, sj) in s.iter().enumerate() {
                        r.clone().for_each(|i| att[i] += (sj - m).exp() / z * v[j][i]);
                    }
                }
                let o = linear(&att, &blk("attn_output"), D);
                let sum: Vec<f64> = xs[t].iter().zip(&o).map(|(a, b)| a + b).collect();
                let h1 = ln(&sum, &blk("attn_norm"));
                let u: Vec<f64> = linear(&h1, &blk("ffn_up"), FF).into_iter().map(|x| x.max(0.0)).collect();
                let dn = linear(&u, &blk("ffn_down"), D);
                let sum: Vec<f64> = h1.iter().zip(&dn).map(|(a, b)| a + b).collect();
                xs[t] = ln(&sum, &blk("ffn_norm"));
            }
        }
        xs.iter().map(|x| linear(&ln(x, "output_norm"), "output", V)).collect()
    }

    const TOKENS: [u32; 11] = [3, 17, 0, 29, 5, 5, 22, 8, 1, 12, 2];

    #[test]
    fn post_ln_relu_padded_logits_follow_the_format_equations() {
        let w = weights(1);
        let bytes = file(&w);
        let want = reference(&w, &TOKENS);
        for kernels in crate::kernels::available() {
            let mut model = Model::load(bytes.bytes()).unwrap();
            model.set_kernels(kernels);
            assert_eq!((model.config().norm_dim, model.config().head_dim), (N, HD));
            let cfg = SessionConfig { ctx: CTX, batch: 4, threads: 1, kv: KvDtype::F32, seqs: 1 };
            let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
            let mut s = Session::new(&model, &mut arena, cfg).unwrap();
            let mut got = Vec::new();
            s.forward_all(&TOKENS, |_, l| got.push(l.to_vec())).unwrap();
            let diff =
                got.iter().flatten().zip(want.iter().flatten()).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(diff < 1e-4, "{}: max |logit diff| {diff}", kernels.name);
        }
        // The position table bounds the context.
        let model = Model::load(bytes.bytes()).unwrap();
        let cfg = SessionConfig { ctx: CTX + 1, batch: 1, threads: 1, kv: KvDtype::F32, seqs: 1 };
        let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
        assert!(matches!(Session::new(&model, &mut arena, cfg), Err(Error::BadConfig(_))));
    }
}
