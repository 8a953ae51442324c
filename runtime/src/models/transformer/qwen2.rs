//! Qwen 2 and 2.5: the LLaMA architecture with a bias on q, k and v, and rotary
//! embeddings in the NeoX layout (halves of each head), as Hugging Face and GGUF store
//! it.
//!
//! This file names the family's tensors; its hyperparameters are the `qwen2.*` keys of
//! [`crate::format::keys::QWEN2`]; the rest is its row of [`super::family::FAMILIES`].

/// The per-layer tensors, in the order the file stores them.
pub(super) const LAYER_ROLES: [&str; 12] = [
    "attn_norm",
    "attn_q",
    "attn_q.bias",
    "attn_k",
    "attn_k.bias",
    "attn_v",
    "attn_v.bias",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];
