//! The names the `.arq` format gives things: every metadata key, every architecture
//! name, and how a family names its per-layer tensors. One table, after llama.cpp's
//! `llama-arch.cpp`: code reads and writes these constants, never a string literal of
//! them. `runtime/FORMAT.md` gives each key's type and meaning.

// --- Keys every file has ---

/// The model family, one of the `ARCH_*` names (string).
pub const ARCHITECTURE: &str = "arq.architecture";
/// The dtype of the layer matrices: `q8`, `q4` or `f32` (string).
pub const QUANT: &str = "arq.quant";
/// The model's name (string).
pub const GENERAL_NAME: &str = "general.name";
/// The file the model was converted from (string).
pub const GENERAL_SOURCE: &str = "general.source";

// --- Architecture names (values of [`ARCHITECTURE`]) ---

/// The LLaMA family (SmolLM2, LLaMA 2/3, TinyLlama, ...).
pub const ARCH_LLAMA: &str = "llama";
/// GPT-2.
pub const ARCH_GPT2: &str = "gpt2";
/// The gated PixelCNN.
pub const ARCH_PIXELCNN: &str = "pixelcnn";

// --- LLaMA-family hyperparameters ---

/// Vocabulary size (int).
pub const LLAMA_VOCAB_SIZE: &str = "llama.vocab_size";
/// Training context length, the longest context allowed (int).
pub const LLAMA_CONTEXT_LENGTH: &str = "llama.context_length";
/// Model dimension, a multiple of 32 (int).
pub const LLAMA_EMBEDDING_LENGTH: &str = "llama.embedding_length";
/// Layers (int).
pub const LLAMA_BLOCK_COUNT: &str = "llama.block_count";
/// MLP hidden dimension, a multiple of 32 (int).
pub const LLAMA_FEED_FORWARD_LENGTH: &str = "llama.feed_forward_length";
/// Query heads (int).
pub const LLAMA_HEAD_COUNT: &str = "llama.attention.head_count";
/// Key/value heads, dividing the query heads (int).
pub const LLAMA_HEAD_COUNT_KV: &str = "llama.attention.head_count_kv";
/// RoPE base θ (f32).
pub const LLAMA_ROPE_FREQ_BASE: &str = "llama.rope.freq_base";
/// RMSNorm ε (f32).
pub const LLAMA_RMS_EPSILON: &str = "llama.attention.layer_norm_rms_epsilon";

// --- GPT-2 hyperparameters ---

/// Vocabulary size (int).
pub const GPT2_VOCAB_SIZE: &str = "gpt2.vocab_size";
/// Positions in `position_embd`, the longest context allowed (int).
pub const GPT2_CONTEXT_LENGTH: &str = "gpt2.context_length";
/// Model dimension, a multiple of 32 (int).
pub const GPT2_EMBEDDING_LENGTH: &str = "gpt2.embedding_length";
/// Layers (int).
pub const GPT2_BLOCK_COUNT: &str = "gpt2.block_count";
/// MLP hidden dimension, a multiple of 32 (int).
pub const GPT2_FEED_FORWARD_LENGTH: &str = "gpt2.feed_forward_length";
/// Heads; key/value heads are the same heads (int).
pub const GPT2_HEAD_COUNT: &str = "gpt2.attention.head_count";
/// LayerNorm ε (f32).
pub const GPT2_LAYER_NORM_EPSILON: &str = "gpt2.attention.layer_norm_epsilon";

// --- PixelCNN hyperparameters ---

/// Image height, 1..=1024 (int).
pub const PIXELCNN_HEIGHT: &str = "pixelcnn.height";
/// Image width, 1..=1024 (int).
pub const PIXELCNN_WIDTH: &str = "pixelcnn.width";
/// Channels per pixel; 1 in this version (int).
pub const PIXELCNN_IN_CHANNELS: &str = "pixelcnn.in_channels";
/// `C`, the channels of both stacks (int).
pub const PIXELCNN_CHANNELS: &str = "pixelcnn.channels";
/// `OH`, the channels of the output gate (int).
pub const PIXELCNN_OUT_HIDDEN: &str = "pixelcnn.out_hidden";
/// Kernel and dilation of each gated layer, `"k:d,k:d,..."` (string).
pub const PIXELCNN_LAYERS: &str = "pixelcnn.layers";
/// The output distribution, one of the `HEAD_*` names (string).
pub const PIXELCNN_HEAD: &str = "pixelcnn.head";
/// Discrete levels per pixel; 0 for the continuous head (int).
pub const PIXELCNN_LEVELS: &str = "pixelcnn.levels";
/// `K`, mixture components, mixture heads only (int).
pub const PIXELCNN_MIXTURES: &str = "pixelcnn.mixtures";
/// The floor of the mixture heads' log-scales (f32).
pub const PIXELCNN_MIN_LOG_SCALE: &str = "pixelcnn.min_log_scale";

// --- PixelCNN head names (values of [`PIXELCNN_HEAD`]) ---

/// Logits over the levels.
pub const HEAD_CATEGORICAL: &str = "categorical";
/// One logit of level 1.
pub const HEAD_BERNOULLI: &str = "bernoulli";
/// Discretized logistic mixture (PixelCNN++).
pub const HEAD_LOGISTIC_MIXTURE: &str = "logistic_mixture";
/// Mixture of Gaussians for continuous values.
pub const HEAD_GAUSSIAN_MIXTURE: &str = "gaussian_mixture";

// --- Tokenizer (text models) ---

/// The tokenizer model, `gpt2` = byte-level BPE, `llama` = SentencePiece pieces (string).
pub const TOKENIZER_MODEL: &str = "tokenizer.model";
/// The pre-tokenizer's name, e.g. `smollm` (string).
pub const TOKENIZER_PRE: &str = "tokenizer.pre";
/// Whether plain text gets a BOS token prepended (bool).
pub const TOKENIZER_ADD_BOS: &str = "tokenizer.add_bos";
/// Beginning-of-sequence id, optional (u32).
pub const TOKENIZER_BOS_ID: &str = "tokenizer.bos_id";
/// End-of-sequence id, optional (u32).
pub const TOKENIZER_EOS_ID: &str = "tokenizer.eos_id";
/// Padding id, optional (u32).
pub const TOKENIZER_PAD_ID: &str = "tokenizer.pad_id";
/// Unknown-token id, optional (u32).
pub const TOKENIZER_UNK_ID: &str = "tokenizer.unk_id";
/// Jinja chat template, optional (string).
pub const TOKENIZER_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

// --- Tensor names ---

/// The tensor holding the tokenizer tables (u8).
pub const TENSOR_TOKENIZER: &str = "tokenizer";

/// How a family names its per-layer tensors: `{prefix}{layer}.{role}`, with `layer` in
/// decimal without leading zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerNaming {
    /// `blk.{layer}.{role}` (the transformers, after GGUF), e.g. `blk.3.attn_q`.
    Blk,
    /// `l{layer}.{role}` (the PixelCNN), e.g. `l3.vconv.weight`.
    L,
}

impl LayerNaming {
    /// What comes before the layer number.
    pub fn prefix(self) -> &'static str {
        match self {
            LayerNaming::Blk => "blk.",
            LayerNaming::L => "l",
        }
    }

    /// Whether `name` is layer `layer`'s tensor `role`, without formatting (no
    /// allocation).
    pub fn is_layer_tensor(self, name: &str, layer: usize, role: &str) -> bool {
        let Some(rest) = name.strip_prefix(self.prefix()) else {
            return false;
        };
        let Some((num, r)) = rest.split_once('.') else {
            return false;
        };
        r == role && num.parse::<usize>().ok() == Some(layer) && (num == "0" || !num.starts_with('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::LayerNaming::{Blk, L};

    #[test]
    fn layer_tensor_names() {
        assert!(Blk.is_layer_tensor("blk.0.attn_q", 0, "attn_q"));
        assert!(Blk.is_layer_tensor("blk.12.ffn_up", 12, "ffn_up"));
        assert!(Blk.is_layer_tensor("blk.3.ffn_up.bias", 3, "ffn_up.bias"));
        assert!(!Blk.is_layer_tensor("blk.012.ffn_up", 12, "ffn_up"));
        assert!(!Blk.is_layer_tensor("blk.1.attn_q", 0, "attn_q"));
        assert!(!Blk.is_layer_tensor("blk.0.attn_qq", 0, "attn_q"));
        assert!(!Blk.is_layer_tensor("blk.0.attn_q.bias", 0, "attn_q"));
        assert!(!Blk.is_layer_tensor("output", 0, "attn_q"));
        assert!(L.is_layer_tensor("l3.vconv.weight", 3, "vconv.weight"));
        assert!(L.is_layer_tensor("l0.hout.bias", 0, "hout.bias"));
        assert!(!L.is_layer_tensor("l03.vconv.weight", 3, "vconv.weight"));
        assert!(!L.is_layer_tensor("l3.vconv.bias", 3, "vconv.weight"));
        assert!(!L.is_layer_tensor("blk.3.vconv.weight", 3, "vconv.weight"));
        assert!(!L.is_layer_tensor("out1.weight", 1, "weight"));
    }
}
