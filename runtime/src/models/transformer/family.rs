//! The family table: how each transformer family differs from the others, as data.
//!
//! A family is one thin file (its hyperparameters and its tensors' names, as
//! [`llama`] and [`gpt2`] are) plus one row here; the engine
//! reads the row where families differ (after llama.cpp, whose `src/models/<arch>.cpp`
//! files call shared builders). Rows are indexed by [`Family`].

use super::{gpt2, llama, Family, TransformerConfig};
use crate::error::Error;
use crate::format::keys;
use crate::format::ArqFile;

/// The norm before each sublayer and before the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// RMSNorm: a weight, no bias.
    Rms,
    /// LayerNorm: a weight and a bias.
    Layer,
}

/// The MLP of each block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mlp {
    /// `(silu(x Wgateᵀ) * x Wupᵀ) Wdownᵀ`: three matrices (`gate`, `up`, `down`).
    SwiGlu,
    /// `gelu_tanh(x Wupᵀ) Wdownᵀ`: two matrices (`up`, `down`).
    Gelu,
}

/// How a token's position enters the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// Rotary embeddings of q and k (RoPE, base `rope_base`).
    Rotary,
    /// A learned `position_embd` row added to the token's embedding.
    Learned,
}

/// One family's row.
pub struct FamilySpec {
    pub family: Family,
    /// The `arq.architecture` value.
    pub name: &'static str,
    pub norm: NormKind,
    /// Whether every linear layer has a bias (`{role}.bias`, right after its matrix).
    pub biases: bool,
    pub mlp: Mlp,
    pub positions: Positions,
    /// A norm of q and k per head before attention (Qwen 3, Gemma 3, OLMo 2).
    pub qk_norm: bool,
    /// Extra norms on the attention and MLP outputs before the residual add (Gemma 2/3).
    pub post_norms: bool,
    /// Attention over a window of recent tokens in some layers (Mistral, Gemma 2/3).
    pub sliding_window: bool,
    /// Embeddings scaled by `sqrt(dim)` (Gemma).
    pub embed_scale: bool,
    /// Reads the family's hyperparameters (its thin file).
    pub config: fn(&ArqFile<'_>) -> Result<TransformerConfig, Error>,
    /// Each layer's tensors (`blk.{l}.{role}`), in file order: the attention norm, q,
    /// k, v, the attention output, the MLP norm, the MLP's matrices (gate, up, down),
    /// each followed by its bias when the norm or the row has one.
    pub layer_roles: &'static [&'static str],
}

/// Every family the engine runs, indexed by [`Family`].
pub const FAMILIES: [FamilySpec; 2] = [
    FamilySpec {
        family: Family::Llama,
        name: keys::ARCH_LLAMA,
        norm: NormKind::Rms,
        biases: false,
        mlp: Mlp::SwiGlu,
        positions: Positions::Rotary,
        qk_norm: false,
        post_norms: false,
        sliding_window: false,
        embed_scale: false,
        config: llama::config,
        layer_roles: &llama::LAYER_ROLES,
    },
    FamilySpec {
        family: Family::Gpt2,
        name: keys::ARCH_GPT2,
        norm: NormKind::Layer,
        biases: true,
        mlp: Mlp::Gelu,
        positions: Positions::Learned,
        qk_norm: false,
        post_norms: false,
        sliding_window: false,
        embed_scale: false,
        config: gpt2::config,
        layer_roles: &gpt2::LAYER_ROLES,
    },
];

// Checked at compile time: the rows are in `Family` order; each row's tensor list has
// as many entries as its norm, biases and MLP imply; and no row asks for what the
// engine does not implement yet (a family that needs one adds it to the forward pass
// and lifts its check here).
const _: () = {
    let mut i = 0;
    while i < FAMILIES.len() {
        let f = &FAMILIES[i];
        assert!(f.family as usize == i, "FAMILIES is indexed by Family");
        let norm = 1 + matches!(f.norm, NormKind::Layer) as usize;
        let matrices = 6 + matches!(f.mlp, Mlp::SwiGlu) as usize;
        assert!(f.layer_roles.len() == 2 * norm + matrices * (1 + f.biases as usize), "layer_roles vs the row");
        assert!(!(f.qk_norm || f.post_norms || f.sliding_window || f.embed_scale), "not in the engine yet");
        i += 1;
    }
};

impl FamilySpec {
    /// The row whose `arq.architecture` value is `name`.
    pub fn by_name(name: &str) -> Option<&'static FamilySpec> {
        FAMILIES.iter().find(|f| f.name == name)
    }
}

impl Family {
    /// The family's row of [`FAMILIES`].
    pub fn spec(self) -> &'static FamilySpec {
        &FAMILIES[self as usize]
    }
}
