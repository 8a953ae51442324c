//! The family table: how each transformer family differs from the others, as data.
//!
//! A family is one thin file (its tensors' names and its metadata keys, as [`llama`],
//! [`gemma3`] are) plus one row here; the engine reads the row where families differ
//! (after llama.cpp, whose `src/models/<arch>.cpp` files call shared builders). Rows are
//! indexed by [`Family`].

use super::{gemma3, gpt2, llama, qwen2, qwen3, torch_encoder, Family};
use crate::format::keys::{self, HParamKeys};

/// The norm before each sublayer and before the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// RMSNorm: a weight, no bias.
    Rms,
    /// LayerNorm: a weight and a bias.
    Layer,
}

/// Which linear layers have a bias (`{role}.bias`, right after its matrix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Biases {
    None,
    /// q, k and v only (Qwen 2).
    Qkv,
    /// Every linear layer (GPT-2).
    All,
}

/// The MLP of each block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mlp {
    /// `(silu(x Wgateᵀ) * x Wupᵀ) Wdownᵀ`: three matrices (`gate`, `up`, `down`).
    SwiGlu,
    /// `(gelu_tanh(x Wgateᵀ) * x Wupᵀ) Wdownᵀ`: three matrices (Gemma).
    GeGlu,
    /// `gelu_tanh(x Wupᵀ) Wdownᵀ`: two matrices (`up`, `down`).
    Gelu,
    /// `relu(x Wupᵀ) Wdownᵀ`: two matrices (PyTorch's `nn.TransformerEncoderLayer`).
    Relu,
}

impl Mlp {
    /// Whether the MLP has a gate matrix.
    pub const fn gated(self) -> bool {
        !matches!(self, Mlp::Gelu | Mlp::Relu)
    }
}

/// How a token's position enters the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// Rotary embeddings of q and k (RoPE, base `rope_base`), in the row's [`RopeStyle`].
    Rotary,
    /// A learned `position_embd` row added to the token's embedding.
    Learned,
}

/// Which elements of a head rotary embeddings turn together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])`: LLaMA as GGUF stores it (llama.cpp permutes
    /// the q and k rows of Hugging Face's checkpoints into this layout).
    Adjacent,
    /// Halves `(x[i], x[i + d/2])`: GPT-NeoX's layout, Hugging Face's `rotate_half`
    /// (Qwen, Gemma, in GGUF too).
    Half,
}

/// One family's row.
pub struct FamilySpec {
    pub family: Family,
    /// The `arq.architecture` value.
    pub name: &'static str,
    /// Its hyperparameters' metadata keys.
    pub keys: &'static HParamKeys,
    pub norm: NormKind,
    pub biases: Biases,
    pub mlp: Mlp,
    pub positions: Positions,
    pub rope: RopeStyle,
    /// An RMSNorm of q and k per head before the rotary embedding (Qwen 3, Gemma 3).
    pub qk_norm: bool,
    /// RMSNorms of the attention and MLP outputs before the residual add (Gemma 2/3).
    pub post_norms: bool,
    /// Whether files may give a sliding window (the keys `sliding_window`,
    /// `sliding_window_pattern`, `rope_local_freq_base`).
    pub sliding_window: bool,
    /// Embeddings scaled by `sqrt(dim)` (Gemma).
    pub embed_scale: bool,
    /// Where the two norms of a block sit. `false` (pre-LN, GPT-2 and later): each
    /// sublayer reads `norm(x)` and adds to `x`. `true` (post-LN, the original
    /// Transformer and PyTorch's `norm_first=False`): each sublayer reads `x` itself and
    /// the norm follows the residual add, `x = norm(x + sublayer(x))`; `attn_norm` is
    /// then the norm after attention, `ffn_norm` the one after the MLP.
    pub post_ln: bool,
    /// The head has a bias (`output.bias`, `vocab` values).
    pub head_bias: bool,
    /// Each layer's tensors (`blk.{l}.{role}`), in file order: the attention norm, q,
    /// k, v, (the q and k norms), the attention output, (its post-norm), the MLP norm,
    /// the MLP's matrices (gate, up, down), (its post-norm); each norm followed by its
    /// bias for a LayerNorm, each matrix by its bias where the row has one.
    pub layer_roles: &'static [&'static str],
}

/// Every family the engine runs, indexed by [`Family`].
pub const FAMILIES: [FamilySpec; 6] = [
    FamilySpec {
        family: Family::Llama,
        name: keys::ARCH_LLAMA,
        keys: &keys::LLAMA,
        norm: NormKind::Rms,
        biases: Biases::None,
        mlp: Mlp::SwiGlu,
        positions: Positions::Rotary,
        rope: RopeStyle::Adjacent,
        qk_norm: false,
        post_norms: false,
        sliding_window: false,
        embed_scale: false,
        post_ln: false,
        head_bias: false,
        layer_roles: &llama::LAYER_ROLES,
    },
    FamilySpec {
        family: Family::Gpt2,
        name: keys::ARCH_GPT2,
        keys: &keys::GPT2,
        norm: NormKind::Layer,
        biases: Biases::All,
        mlp: Mlp::Gelu,
        positions: Positions::Learned,
        rope: RopeStyle::Adjacent,
        qk_norm: false,
        post_norms: false,
        sliding_window: false,
        embed_scale: false,
        post_ln: false,
        head_bias: false,
        layer_roles: &gpt2::LAYER_ROLES,
    },
    FamilySpec {
        family: Family::Qwen2,
        name: keys::ARCH_QWEN2,
        keys: &keys::QWEN2,
        norm: NormKind::Rms,
        biases: Biases::Qkv,
        mlp: Mlp::SwiGlu,
        positions: Positions::Rotary,
        rope: RopeStyle::Half,
        qk_norm: false,
        post_norms: false,
        sliding_window: false,
        embed_scale: false,
        post_ln: false,
        head_bias: false,
        layer_roles: &qwen2::LAYER_ROLES,
    },
    FamilySpec {
        family: Family::Qwen3,
        name: keys::ARCH_QWEN3,
        keys: &keys::QWEN3,
        norm: NormKind::Rms,
        biases: Biases::None,
        mlp: Mlp::SwiGlu,
        positions: Positions::Rotary,
        rope: RopeStyle::Half,
        qk_norm: true,
        post_norms: false,
        sliding_window: false,
        embed_scale: false,
        post_ln: false,
        head_bias: false,
        layer_roles: &qwen3::LAYER_ROLES,
    },
    FamilySpec {
        family: Family::Gemma3,
        name: keys::ARCH_GEMMA3,
        keys: &keys::GEMMA3,
        norm: NormKind::Rms,
        biases: Biases::None,
        mlp: Mlp::GeGlu,
        positions: Positions::Rotary,
        rope: RopeStyle::Half,
        qk_norm: true,
        post_norms: true,
        sliding_window: true,
        embed_scale: true,
        post_ln: false,
        head_bias: false,
        layer_roles: &gemma3::LAYER_ROLES,
    },
    FamilySpec {
        family: Family::TorchEncoder,
        name: keys::ARCH_TORCH_ENCODER,
        keys: &keys::TORCH_ENCODER,
        norm: NormKind::Layer,
        biases: Biases::All,
        mlp: Mlp::Relu,
        positions: Positions::Learned,
        rope: RopeStyle::Adjacent,
        qk_norm: false,
        post_norms: false,
        sliding_window: false,
        embed_scale: false,
        post_ln: true,
        head_bias: true,
        layer_roles: &torch_encoder::LAYER_ROLES,
    },
];

impl FamilySpec {
    /// The row whose `arq.architecture` value is `name`.
    pub fn by_name(name: &str) -> Option<&'static FamilySpec> {
        FAMILIES.iter().find(|f| f.name == name)
    }

    /// How many tensors each layer has, as the row implies.
    pub const fn roles_implied(&self) -> usize {
        let norm = 1 + matches!(self.norm, NormKind::Layer) as usize;
        let matrices = 6 + self.mlp.gated() as usize;
        let biases = match self.biases {
            Biases::None => 0,
            Biases::Qkv => 3,
            Biases::All => matrices,
        };
        2 * norm + matrices + biases + 2 * self.qk_norm as usize + 2 * self.post_norms as usize
    }
}

/// The names of every family, for messages ("supported: ...").
pub fn names() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().map(|f| f.name)
}

// Checked at compile time: the rows are in `Family` order; each row's tensor list has
// as many entries as its norm, biases, MLP and extra norms imply; the extra norms are
// RMSNorms (the engine has no LayerNorm of q, k or the outputs).
const _: () = {
    let mut i = 0;
    while i < FAMILIES.len() {
        let f = &FAMILIES[i];
        assert!(f.family as usize == i, "FAMILIES is indexed by Family");
        assert!(f.layer_roles.len() == f.roles_implied(), "layer_roles vs the row");
        assert!(!(f.qk_norm || f.post_norms) || matches!(f.norm, NormKind::Rms), "extra norms are RMSNorms");
        assert!(!f.sliding_window || matches!(f.positions, Positions::Rotary), "sliding windows are rotary");
        assert!(!f.post_ln || !f.post_norms, "post-LN blocks have no extra norms");
        i += 1;
    }
};

impl Family {
    /// The family's row of [`FAMILIES`].
    pub fn spec(self) -> &'static FamilySpec {
        &FAMILIES[self as usize]
    }
}
