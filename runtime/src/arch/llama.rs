//! The LLaMA family (SmolLM2, LLaMA 2/3, TinyLlama, ...): RMSNorm, rotary embeddings,
//! grouped-query attention, a SwiGLU MLP, no biases and an optionally tied output head.
//!
//! This file reads the family's hyperparameters and tensors (`runtime/FORMAT.md`, "LLaMA-
//! family models"); the forward pass is the shared engine's, [`super::transformer`].

use super::transformer::{bad, Family, Globals, Layer, Linear, Norm, Tensors, TransformerConfig};
use crate::error::Error;
use crate::format::ArqFile;

/// The per-layer tensors, in the order the file stores them.
const LAYER_ROLES: [&str; 9] =
    ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"];

fn config(f: &ArqFile<'_>) -> Result<TransformerConfig, Error> {
    let u = |k: &'static str| -> Result<usize, Error> {
        let v = f.meta_u64(k)?;
        usize::try_from(v).map_err(|_| Error::BadHyperparameter(k))
    };
    let cfg = TransformerConfig {
        family: Family::Llama,
        vocab: u("llama.vocab_size")?,
        dim: u("llama.embedding_length")?,
        n_layers: u("llama.block_count")?,
        n_heads: u("llama.attention.head_count")?,
        n_kv_heads: u("llama.attention.head_count_kv")?,
        head_dim: 0,
        ffn_dim: u("llama.feed_forward_length")?,
        rope_base: f.meta_f32("llama.rope.freq_base")?,
        norm_eps: f.meta_f32("llama.attention.layer_norm_rms_epsilon")?,
        ctx_train: u("llama.context_length")?,
    }
    .validated()?;
    // Rotary embeddings turn pairs.
    if !cfg.head_dim.is_multiple_of(2) {
        return Err(Error::BadHyperparameter("head dimension (even, for rotary embeddings)"));
    }
    if !(cfg.rope_base.is_finite() && cfg.rope_base > 0.0) {
        return Err(Error::BadHyperparameter("rope.freq_base"));
    }
    Ok(cfg)
}

/// The hyperparameters and the tensors outside the blocks.
pub(crate) fn load<'a>(file: &ArqFile<'a>) -> Result<(TransformerConfig, Globals<'a>), Error> {
    let cfg = config(file)?;
    let t = Tensors { file };
    let (d, v) = (cfg.dim, cfg.vocab);
    let embed = Tensors::matrix(&t.global("token_embd")?, "token_embd", None, v, d)?;
    let output_norm = Norm { w: Tensors::vector(&t.global("output_norm")?, "output_norm", None, d)?, b: None };
    let output = match file.find("output") {
        Some((_, o)) => Tensors::matrix(&o, "output", None, v, d)?,
        None => embed,
    };
    let layer_base = file.find("blk.0.attn_norm").map(|(i, _)| i).ok_or(bad("attn_norm", Some(0), "missing"))?;
    Ok((cfg, Globals { embed, pos_embed: None, output_norm, output, layer_base }))
}

/// Layer `l`'s tensors, checked against the hyperparameters.
pub(crate) fn layer<'a>(file: &ArqFile<'a>, c: &TransformerConfig, base: usize, l: usize) -> Result<Layer<'a>, Error> {
    let t = Tensors { file };
    let li = Some(l as u32);
    let m = |j: usize, rows: usize, cols: usize| -> Result<Linear<'a>, Error> {
        let w = Tensors::matrix(&t.layer(base, &LAYER_ROLES, l, j)?, LAYER_ROLES[j], li, rows, cols)?;
        Ok(Linear { w, b: None })
    };
    let norm = |j: usize| -> Result<Norm<'a>, Error> {
        Ok(Norm { w: Tensors::vector(&t.layer(base, &LAYER_ROLES, l, j)?, LAYER_ROLES[j], li, c.dim)?, b: None })
    };
    let (d, kv, ff) = (c.dim, c.kv_dim(), c.ffn_dim);
    Ok(Layer {
        attn_norm: norm(0)?,
        q: m(1, d, d)?,
        k: m(2, kv, d)?,
        v: m(3, kv, d)?,
        o: m(4, d, d)?,
        ffn_norm: norm(5)?,
        gate: Some(m(6, ff, d)?),
        up: m(7, ff, d)?,
        down: m(8, d, ff)?,
    })
}
