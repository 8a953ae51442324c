//! The LLaMA family (SmolLM2, LLaMA 2/3, TinyLlama, ...): RMSNorm, rotary embeddings,
//! grouped-query attention, a SwiGLU MLP, no biases and an optionally tied output head.
//!
//! This file reads the family's hyperparameters and names its tensors (`runtime/FORMAT.md`,
//! "LLaMA-family models"); how it differs from the other families is its row of
//! [`super::family::FAMILIES`], and the forward pass is the shared engine's, [`super`].

use super::{meta_usize, Family, TransformerConfig};
use crate::error::Error;
use crate::format::keys;
use crate::format::ArqFile;

/// The per-layer tensors, in the order the file stores them.
pub(super) const LAYER_ROLES: [&str; 9] =
    ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"];

/// The hyperparameters.
pub(super) fn config(f: &ArqFile<'_>) -> Result<TransformerConfig, Error> {
    let u = |k: &'static str| meta_usize(f, k);
    TransformerConfig {
        family: Family::Llama,
        vocab: u(keys::LLAMA_VOCAB_SIZE)?,
        dim: u(keys::LLAMA_EMBEDDING_LENGTH)?,
        n_layers: u(keys::LLAMA_BLOCK_COUNT)?,
        n_heads: u(keys::LLAMA_HEAD_COUNT)?,
        n_kv_heads: u(keys::LLAMA_HEAD_COUNT_KV)?,
        head_dim: 0,
        ffn_dim: u(keys::LLAMA_FEED_FORWARD_LENGTH)?,
        rope_base: f.meta_f32(keys::LLAMA_ROPE_FREQ_BASE)?,
        norm_eps: f.meta_f32(keys::LLAMA_RMS_EPSILON)?,
        ctx_train: u(keys::LLAMA_CONTEXT_LENGTH)?,
    }
    .validated()
}
