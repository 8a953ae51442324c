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
