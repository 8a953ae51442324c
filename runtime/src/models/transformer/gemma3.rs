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
