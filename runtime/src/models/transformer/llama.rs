//! The LLaMA family (SmolLM2, LLaMA 2/3, TinyLlama, ...): RMSNorm, rotary embeddings on
//! adjacent pairs (the layout llama.cpp's converter permutes q and k into), grouped-query
//! attention, a SwiGLU MLP, no biases and an optionally tied output head.
//!
//! This file names the family's tensors (`runtime/FORMAT.md`, "Transformer models"); its
//! hyperparameters are the `llama.*` keys of [`crate::format::keys::LLAMA`]; how it
//! differs from the other families is its row of [`super::family::FAMILIES`], and the
//! forward pass is the shared engine's, [`super`].

/// The per-layer tensors, in the order the file stores them.
pub(super) const LAYER_ROLES: [&str; 9] =
    ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"];
