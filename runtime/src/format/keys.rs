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
/// Qwen 2 / 2.5 (the LLaMA family with q, k, v biases, NeoX rotary layout).
pub const ARCH_QWEN2: &str = "qwen2";
/// Qwen 3 (RMSNorm of q and k per head).
pub const ARCH_QWEN3: &str = "qwen3";
/// Gemma 3 (text).
pub const ARCH_GEMMA3: &str = "gemma3";
/// PyTorch's `nn.TransformerEncoder` as the `word_language_model` example's
/// `TransformerModel` uses it: post-LayerNorm, ReLU MLP, biases, a sinusoidal position
/// table stored as `position_embd`, a head with a bias.
pub const ARCH_TORCH_ENCODER: &str = "torch_encoder";
/// The gated PixelCNN.
pub const ARCH_PIXELCNN: &str = "pixelcnn";
/// A causal convolution graph over pixels (`runtime/FORMAT.md`, "Pixel graphs").
pub const ARCH_PIXELGRAPH: &str = "pixelgraph";
/// Recurrent language models: embedding, stacked LSTM/GRU/RNN layers, linear decoder.
pub const ARCH_RNN: &str = "rnn";

// --- Transformer hyperparameters ---

/// The hyperparameter keys of one transformer family: `{arch}.{suffix}`, named after
/// GGUF's (`llama.block_count`, `gemma3.attention.sliding_window`, ...). Which keys a
/// family must have is its row's business (`models::transformer::family`); the rest are
/// optional and default as each field says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HParamKeys {
    /// Vocabulary size (int).
    pub vocab_size: &'static str,
    /// Training context length, the longest context allowed (int).
    pub context_length: &'static str,
    /// Model dimension, a multiple of 32 (int).
    pub embedding_length: &'static str,
    /// Layers (int).
    pub block_count: &'static str,
    /// MLP hidden dimension, a multiple of 32 (int).
    pub feed_forward_length: &'static str,
    /// Query heads (int).
    pub head_count: &'static str,
    /// Key/value heads, dividing the query heads; default: the query heads (int).
    pub head_count_kv: &'static str,
    /// Dimension of one head; default `embedding_length / head_count` (int).
    pub key_length: &'static str,
    /// RoPE base θ, rotary families (f32).
    pub rope_freq_base: &'static str,
    /// RoPE base θ of the sliding-window layers; default `rope_freq_base` (f32).
    pub rope_local_freq_base: &'static str,
    /// RMSNorm ε, RMSNorm families (f32).
    pub rms_epsilon: &'static str,
    /// LayerNorm ε, LayerNorm families (f32).
    pub layer_norm_epsilon: &'static str,
    /// Tokens a sliding-window layer attends to, its own included; 0 or absent: no
    /// sliding window (int).
    pub sliding_window: &'static str,
    /// With a sliding window, every `n`-th layer (`l % n == n - 1`) attends to the
    /// whole context and the others to the window; 0: every layer slides (int).
    pub sliding_window_pattern: &'static str,
    /// The factor of q·k; default `1/sqrt(key_length)` (f32).
    pub attention_scale: &'static str,
    /// How many leading entries of a row the norms normalize, where the model's own
    /// width is not a multiple of 32 and the file pads it with zeros to
    /// `embedding_length`; default `embedding_length` (int).
    pub norm_length: &'static str,
}

macro_rules! hparam_keys {
    ($arch:literal) => {
        HParamKeys {
            vocab_size: concat!($arch, ".vocab_size"),
            context_length: concat!($arch, ".context_length"),
            embedding_length: concat!($arch, ".embedding_length"),
            block_count: concat!($arch, ".block_count"),
            feed_forward_length: concat!($arch, ".feed_forward_length"),
            head_count: concat!($arch, ".attention.head_count"),
            head_count_kv: concat!($arch, ".attention.head_count_kv"),
            key_length: concat!($arch, ".attention.key_length"),
            rope_freq_base: concat!($arch, ".rope.freq_base"),
            rope_local_freq_base: concat!($arch, ".rope.local_freq_base"),
            rms_epsilon: concat!($arch, ".attention.layer_norm_rms_epsilon"),
            layer_norm_epsilon: concat!($arch, ".attention.layer_norm_epsilon"),
            sliding_window: concat!($arch, ".attention.sliding_window"),
            sliding_window_pattern: concat!($arch, ".attention.sliding_window_pattern"),
            attention_scale: concat!($arch, ".attention.scale"),
            norm_length: concat!($arch, ".norm_length"),
        }
    };
}

/// `llama.*`.
pub const LLAMA: HParamKeys = hparam_keys!("llama");
/// `gpt2.*`.
pub const GPT2: HParamKeys = hparam_keys!("gpt2");
/// `qwen2.*`.
pub const QWEN2: HParamKeys = hparam_keys!("qwen2");
/// `qwen3.*`.
pub const QWEN3: HParamKeys = hparam_keys!("qwen3");
/// `gemma3.*`.
pub const GEMMA3: HParamKeys = hparam_keys!("gemma3");
/// `torch_encoder.*`.
pub const TORCH_ENCODER: HParamKeys = hparam_keys!("torch_encoder");

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

// --- Pixel-graph hyperparameters ---

/// The graph encoding's version, 1 (int).
pub const PIXELGRAPH_VERSION: &str = "pixelgraph.version";
/// Image height, 1..=1024 (int).
pub const PIXELGRAPH_HEIGHT: &str = "pixelgraph.height";
/// Image width, 1..=1024 (int).
pub const PIXELGRAPH_WIDTH: &str = "pixelgraph.width";
/// Channels per pixel (channel groups); 1 in graph version 1 (int).
pub const PIXELGRAPH_CHANNELS: &str = "pixelgraph.channels";
/// The output distribution, one of the `HEAD_*` names (string).
pub const PIXELGRAPH_HEAD: &str = "pixelgraph.head";
/// Discrete levels per pixel (int).
pub const PIXELGRAPH_LEVELS: &str = "pixelgraph.levels";
/// `K`, mixture components, mixture heads only (int).
pub const PIXELGRAPH_MIXTURES: &str = "pixelgraph.mixtures";
/// The floor of the mixture heads' log-scales (f32).
pub const PIXELGRAPH_MIN_LOG_SCALE: &str = "pixelgraph.min_log_scale";

// --- Recurrent-model hyperparameters ---

/// The cell, one of the `CELL_*` names (string).
pub const RNN_CELL: &str = "rnn.cell";
/// Vocabulary size (int).
pub const RNN_VOCAB_SIZE: &str = "rnn.vocab_size";
/// Embedding width, a multiple of 32 (int).
pub const RNN_EMBEDDING_LENGTH: &str = "rnn.embedding_length";
/// State width of every layer, a multiple of 32 (int).
pub const RNN_HIDDEN_SIZE: &str = "rnn.hidden_size";
/// Stacked layers (int).
pub const RNN_BLOCK_COUNT: &str = "rnn.block_count";

/// What a step reads: `tokens` (default, with `token_embd`) or `value`, one real number
/// normalised by [`RNN_NORM_MEAN`] and [`RNN_NORM_STD`] (string).
pub const RNN_INPUT: &str = "rnn.input";
/// Value models: the mixture components `K` of the Gaussian-mixture head (int); the
/// output has `3K` rows (logits, means, log standard deviations of the normalised value).
pub const RNN_MIXTURES: &str = "rnn.mixtures";
/// Value models: the normalisation `z = (x - mean) / std` (f32 each).
pub const RNN_NORM_MEAN: &str = "rnn.norm_mean";
pub const RNN_NORM_STD: &str = "rnn.norm_std";

// --- Cell names (values of [`RNN_CELL`]) ---

/// ONNX `LSTM` (gates i, o, f, c), no peepholes.
pub const CELL_LSTM: &str = "lstm";
/// ONNX `GRU` (gates z, r, h) with `linear_before_reset = 1`, as PyTorch's.
pub const CELL_GRU: &str = "gru";
/// ONNX `RNN` with tanh.
pub const CELL_RNN_TANH: &str = "rnn_tanh";
/// ONNX `RNN` with ReLU.
pub const CELL_RNN_RELU: &str = "rnn_relu";

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
    /// `n{node}.{role}` (the pixel graph's nodes), e.g. `n4.weight`.
    N,
}

impl LayerNaming {
    /// What comes before the layer number.
    pub fn prefix(self) -> &'static str {
        match self {
            LayerNaming::Blk => "blk.",
            LayerNaming::L => "l",
            LayerNaming::N => "n",
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
