//! The vocabulary a text importer fills and the `.arq` tokenizer blob and metadata made
//! from it, until the `tok` branch's `import/vocab.rs` (the same `Vocab` and
//! `VocabModel`, with SentencePiece support in the runtime) is merged: then this file
//! goes, `hf/tokenizer.rs` imports `crate::import::vocab::{Vocab, VocabModel}`, and
//! `VocabModel::ByteLevelBpe` gets its `pre` from `PreTokenizer::from_gguf_name(pre_name)`.

use anyhow::{anyhow, bail, Result};
use arq::format::keys;
use arq::format::writer::Meta;
use arq::tokenizer::PreTokenizer;

/// How the tokens are found in text.
#[derive(Clone, Debug, PartialEq)]
pub enum VocabModel {
    /// Byte-level BPE.
    ByteLevelBpe {
        /// `"left right"` per merge, highest priority first.
        merges: Vec<String>,
        /// The GGUF name of the pre-tokenizer (`gpt2`, `smollm`, `llama-bpe`, `qwen2`).
        pre_name: String,
    },
    /// SentencePiece pieces with byte fallback (Gemma); scores from the merge ranks.
    SentencePiece {
        scores: Vec<f32>,
        add_space_prefix: bool,
        /// Hugging Face's Gemma tokenizer (its rules for runs of spaces and merge order).
        gemma: bool,
    },
}

/// A vocabulary read from `tokenizer.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Vocab {
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub model: VocabModel,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

impl Vocab {
    /// `tokenizer.model` of the `.arq` file: `gpt2` or `llama`, as GGUF names them.
    pub fn model_name(&self) -> &'static str {
        match self.model {
            VocabModel::ByteLevelBpe { .. } => "gpt2",
            VocabModel::SentencePiece { .. } => "llama",
        }
    }

    /// The runtime's tokenizer blob.
    pub fn blob(&self) -> Result<Vec<u8>> {
        match &self.model {
            VocabModel::ByteLevelBpe { merges, pre_name } => {
                let pre = PreTokenizer::from_gguf_name(pre_name).ok_or_else(|| {
                    anyhow!("tokenizer.json: the {pre_name} pre-tokenizer is not in this runtime yet (supported: gpt2, smollm)")
                })?;
                arq::tokenizer::build_blob_with(pre, &self.tokens, &self.token_types, merges)
                    .map_err(|e| anyhow!("tokenizer.json: {e}"))
            }
            VocabModel::SentencePiece { .. } => {
                bail!("tokenizer.json: a SentencePiece-style tokenizer (byte_fallback, Gemma) is not in this runtime yet (supported: byte-level BPE)")
            }
        }
    }

    /// The `tokenizer.*` metadata of the `.arq` file.
    pub fn meta(&self) -> Vec<(String, Meta)> {
        let mut meta = vec![(keys::TOKENIZER_MODEL.to_string(), Meta::Str(self.model_name().into()))];
        if let VocabModel::ByteLevelBpe { pre_name, .. } = &self.model {
            meta.push((keys::TOKENIZER_PRE.into(), Meta::Str(pre_name.clone())));
        }
        meta.push((keys::TOKENIZER_ADD_BOS.into(), Meta::Bool(self.add_bos)));
        for (key, id) in
            [(keys::TOKENIZER_BOS_ID, self.bos), (keys::TOKENIZER_EOS_ID, self.eos), (keys::TOKENIZER_PAD_ID, self.pad)]
        {
            if let Some(id) = id {
                meta.push((key.into(), Meta::U32(id)));
            }
        }
        if let Some(t) = &self.chat_template {
            meta.push((keys::TOKENIZER_CHAT_TEMPLATE.into(), Meta::Str(t.clone())));
        }
        meta
    }
}
