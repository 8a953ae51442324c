//! Qwen 3 (dense): the LLaMA architecture with an RMSNorm of every q and k head before
//! the rotary embedding (NeoX layout), no biases, and a head dimension of its own
//! (`qwen3.attention.key_length`, 128 where `dim / heads` is 64 in Qwen3-0.6B).
//!
//! This file names the family's tensors; its hyperparameters are the `qwen3.*` keys of
//! [`crate::format::keys::QWEN3`]; the rest is its row of [`super::family::FAMILIES`].

/// The per-layer tensors, in the order the file stores them.
pub(super) const LAYER_ROLES: [&str; 11] = [
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_q_norm",
    "attn_k_norm",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];
