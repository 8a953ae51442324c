//! Where each `.arq` tensor of a family is in a Hugging Face checkpoint, and what must
//! be done to it on the way: one table per family, the layout changes beside it.
//!
//! Hugging Face stores a `Linear` weight as `[out, in]`, the `.arq` layout; GPT-2's
//! `Conv1D` stores `[in, out]` and fuses q, k and v along `out`. llama.cpp's converter
//! (`convert_hf_to_gguf.py`) makes the same two changes as [`Layout::PermuteRope`] and
//! [`Layout::PlusOne`], so a checkpoint converted here and its GGUF give the same tensors.

use arq::models::transformer::Family;

/// What happens to a checkpoint tensor before it is an `.arq` tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Taken as stored.
    AsIs,
    /// Rows permuted from Hugging Face's rotate-half layout to adjacent pairs, in
    /// groups of `heads` (LLaMA's q and k; llama.cpp's `LlamaModel.permute`).
    PermuteRope { heads: u64 },
    /// `1 + w`: Gemma's RMSNorm multiplies by `1 + w`, the runtime's by `w`.
    PlusOne,
    /// A GPT-2 `Conv1D` `[in, out]`, transposed; with `part = Some(i)` the `i`-th third
    /// of the fused q, k, v along `out` (for a bias: the `i`-th third of the vector).
    Conv1D { part: Option<usize> },
}

/// The checkpoint tensor of `.arq` tensor `name` and its layout change; `n_heads` and
/// `n_kv_heads` size LLaMA's permutation. `None` for a name the family does not have.
pub fn source(family: Family, name: &str, n_heads: u64, n_kv_heads: u64) -> Option<(String, Layout)> {
    match family {
        Family::Gpt2 => gpt2(name),
        Family::TorchEncoder => None,
        Family::Llama | Family::Qwen2 | Family::Qwen3 | Family::Gemma3 => {
            let (hf, mut layout) = decoder(family, name)?;
            if family == Family::Llama {
                match name.rsplit('.').next() {
                    Some("attn_q") => layout = Layout::PermuteRope { heads: n_heads },
                    Some("attn_k") => layout = Layout::PermuteRope { heads: n_kv_heads },
                    _ => {}
                }
            }
            if family == Family::Gemma3 && hf.ends_with("norm.weight") {
                layout = Layout::PlusOne;
            }
            Some((hf, layout))
        }
    }
}

/// LLaMA, Qwen 2/3 and Gemma 3 (`model.layers.N....`).
fn decoder(family: Family, name: &str) -> Option<(String, Layout)> {
    let global = match name {
        "token_embd" => Some("model.embed_tokens.weight"),
        "output_norm" => Some("model.norm.weight"),
        "output" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(g) = global {
        return Some((g.into(), Layout::AsIs));
    }
    let (layer, role) = name.strip_prefix("blk.")?.split_once('.')?;
    let (role, suffix) = match role.strip_suffix(".bias") {
        Some(r) => (r, "bias"),
        None => (role, "weight"),
    };
    let gemma = family == Family::Gemma3;
    let part = match role {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        // Gemma normalizes before and after each block; its "post attention" norm is
        // one of the latter, not the MLP's input norm as in LLaMA.
        "post_attention_norm" if gemma => "post_attention_layernorm",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_ffw_norm" if gemma => "post_feedforward_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{part}.{suffix}"), Layout::AsIs))
}

/// GPT-2 (`transformer.h.N....`; the prefix is added by the caller when the file has it).
fn gpt2(name: &str) -> Option<(String, Layout)> {
    let global = match name {
        "token_embd" => Some("wte.weight"),
        "position_embd" => Some("wpe.weight"),
        "output_norm" => Some("ln_f.weight"),
        "output_norm.bias" => Some("ln_f.bias"),
        "output" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(g) = global {
        return Some((g.into(), Layout::AsIs));
    }
    let (layer, role) = name.strip_prefix("blk.")?.split_once('.')?;
    let (role, suffix) = match role.strip_suffix(".bias") {
        Some(r) => (r, "bias"),
        None => (role, "weight"),
    };
    let conv = |part| Layout::Conv1D { part };
    let (part, layout) = match role {
        "attn_norm" => ("ln_1", Layout::AsIs),
        "attn_q" => ("attn.c_attn", conv(Some(0))),
        "attn_k" => ("attn.c_attn", conv(Some(1))),
        "attn_v" => ("attn.c_attn", conv(Some(2))),
        "attn_output" => ("attn.c_proj", conv(None)),
        "ffn_norm" => ("ln_2", Layout::AsIs),
        "ffn_up" => ("mlp.c_fc", conv(None)),
        "ffn_down" => ("mlp.c_proj", conv(None)),
        _ => return None,
    };
    Some((format!("h.{layer}.{part}.{suffix}"), layout))
}

/// `rows x cols` rows of `w` from Hugging Face's rotate-half order to adjacent pairs,
/// per group of `heads`: within a head of `d` rows, row `2j + t` of the result is row
/// `t * d/2 + j` of the input (`reshape(heads, 2, d/2, cols).swapaxes(1, 2)`).
pub fn permute_rope(w: &[f32], rows: usize, cols: usize, heads: usize) -> Option<Vec<f32>> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) || w.len() != rows * cols {
        return None;
    }
    let (d, half) = (rows / heads, rows / heads / 2);
    let mut out = vec![0.0; w.len()];
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let (to, from) = (h * d + 2 * j + t, h * d + t * half + j);
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    Some(out)
}

/// The transpose of the row-major `rows x cols` matrix `w`.
pub fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = w[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_llama_cpp() {
        // One head of 4 rows, 1 column: HF [a0, a1, b0, b1] (halves) -> [a0, b0, a1, b1].
        assert_eq!(permute_rope(&[0., 1., 2., 3.], 4, 1, 1).unwrap(), vec![0., 2., 1., 3.]);
        // Two heads of 4 rows.
        let w: Vec<f32> = (0..8).map(|i| i as f32).collect();
        assert_eq!(permute_rope(&w, 8, 1, 2).unwrap(), vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        assert!(permute_rope(&w, 8, 1, 3).is_none());
    }

    #[test]
    fn names() {
        let s = |f, n| source(f, n, 4, 2);
        assert_eq!(
            s(Family::Llama, "blk.3.attn_q"),
            Some(("model.layers.3.self_attn.q_proj.weight".into(), Layout::PermuteRope { heads: 4 }))
        );
        assert_eq!(
            s(Family::Llama, "blk.3.attn_k"),
            Some(("model.layers.3.self_attn.k_proj.weight".into(), Layout::PermuteRope { heads: 2 }))
        );
        assert_eq!(
            s(Family::Qwen2, "blk.0.attn_q.bias"),
            Some(("model.layers.0.self_attn.q_proj.bias".into(), Layout::AsIs))
        );
        assert_eq!(
            s(Family::Qwen3, "blk.0.ffn_norm"),
            Some(("model.layers.0.post_attention_layernorm.weight".into(), Layout::AsIs))
        );
        assert_eq!(
            s(Family::Gemma3, "blk.0.ffn_norm"),
            Some(("model.layers.0.pre_feedforward_layernorm.weight".into(), Layout::PlusOne))
        );
        assert_eq!(
            s(Family::Gemma3, "blk.1.attn_k_norm"),
            Some(("model.layers.1.self_attn.k_norm.weight".into(), Layout::PlusOne))
        );
        assert_eq!(s(Family::Gemma3, "output_norm"), Some(("model.norm.weight".into(), Layout::PlusOne)));
        assert_eq!(
            s(Family::Gemma3, "blk.1.attn_q"),
            Some(("model.layers.1.self_attn.q_proj.weight".into(), Layout::AsIs))
        );
        assert_eq!(
            s(Family::Gpt2, "blk.2.attn_v.bias"),
            Some(("h.2.attn.c_attn.bias".into(), Layout::Conv1D { part: Some(2) }))
        );
        assert_eq!(s(Family::Gpt2, "blk.2.attn_norm.bias"), Some(("h.2.ln_1.bias".into(), Layout::AsIs)));
    }
}
