//! A text model's vocabulary, independent of the file it came from, and the tokenizer
//! blob and `tokenizer.*` metadata the `.arq` file stores for it.
//!
//! Two models: byte-level BPE (GGUF `tokenizer.ggml.model = "gpt2"`: merges and a
//! pre-tokenizer) and SentencePiece-style pieces with byte fallback (`"llama"`: scores).
//! Each importer fills a [`Vocab`] from its own format ([`Vocab::from_gguf`] here) and
//! writes [`Vocab::blob`] and [`Vocab::meta`].

use anyhow::{anyhow, bail, Result};
use arq::format::keys;
use arq::format::writer::Meta;
use arq::tokenizer::{PreTokenizer, SpmOptions};

use super::gguf::{GgufFile, Value};
use crate::message::name as shown;

/// The tokenizer models [`Vocab::from_gguf`] reads (GGUF `tokenizer.ggml.model`).
pub const SUPPORTED_MODELS: &[&str] = &["gpt2", "llama"];

/// GGUF architectures whose `llama` vocabulary follows Hugging Face's Gemma rules (see
/// [`SpmOptions::gemma`]): the list transformers builds Gemma tokenizers for.
const GEMMA_ARCHITECTURES: &[&str] = &["gemma", "gemma2", "gemma3"];

/// How the tokens are found in text.
#[derive(Clone, Debug, PartialEq)]
pub enum VocabModel {
    /// Byte-level BPE: token texts in GPT-2's byte alphabet.
    ByteLevelBpe {
        /// `"left right"` per merge, highest priority first.
        merges: Vec<String>,
        pre: PreTokenizer,
        /// The pre-tokenizer's name as the source spelled it (`tokenizer.pre`).
        pre_name: String,
    },
    /// SentencePiece pieces (`▁` for a space, `<0xAB>` byte tokens).
    SentencePiece {
        /// One per token; empty where `gemma` (Gemma's merge order is the token order).
        scores: Vec<f32>,
        add_space_prefix: bool,
        /// Hugging Face's Gemma rules ([`SpmOptions::gemma`]).
        gemma: bool,
    },
}

/// A vocabulary: tokens, their types, the model's tables, the special ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Vocab {
    pub tokens: Vec<String>,
    /// GGUF's token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte), one per token.
    pub token_types: Vec<i32>,
    pub model: VocabModel,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// Whether plain text gets `bos` prepended.
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

fn strings(g: &GgufFile, key: &str) -> Result<Vec<String>> {
    let arr = g.get(key).and_then(Value::as_array).ok_or_else(|| anyhow!("GGUF metadata '{key}' is missing"))?;
    arr.iter().map(|v| v.as_str().map(String::from).ok_or_else(|| anyhow!("GGUF '{key}' holds a non-string"))).collect()
}

fn id(g: &GgufFile, key: &str) -> Option<u32> {
    g.get(key).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok())
}

impl Vocab {
    /// The vocabulary of a GGUF file (llama.cpp's `tokenizer.ggml.*` keys).
    pub fn from_gguf(g: &GgufFile) -> Result<Vocab> {
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let token_types: Vec<i32> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_i64().and_then(|t| i32::try_from(t).ok()).unwrap_or(-1)).collect(),
            None => vec![1; tokens.len()],
        };
        let model_name = g.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("(none)");
        let flag = |key: &str, default: bool| g.get(key).and_then(Value::as_bool).unwrap_or(default);
        let model = match model_name {
            "gpt2" => {
                let pre_name = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("gpt2");
                let pre = PreTokenizer::from_gguf_name(pre_name).ok_or_else(|| {
                    anyhow!(
                        "GGUF: pre-tokenizer '{}' is not supported (supported: {})",
                        shown(pre_name),
                        PreTokenizer::GGUF_NAMES.join(", ")
                    )
                })?;
                VocabModel::ByteLevelBpe {
                    merges: strings(g, "tokenizer.ggml.merges")?,
                    pre,
                    pre_name: pre_name.into(),
                }
            }
            "llama" => {
                let arch = g.architecture().unwrap_or("");
                let gemma = GEMMA_ARCHITECTURES.contains(&arch);
                if arch == "phi3" {
                    bail!("GGUF: the SentencePiece vocabulary of architecture 'phi3' is not supported (supported: llama, gemma, gemma2, gemma3 and others without a normalizer)");
                }
                let scores = match g.get("tokenizer.ggml.scores").and_then(Value::as_array) {
                    Some(a) => a
                        .iter()
                        .map(|v| v.as_f32().ok_or_else(|| anyhow!("GGUF 'tokenizer.ggml.scores' holds a non-number")))
                        .collect::<Result<Vec<f32>>>()?,
                    None if gemma => Vec::new(),
                    None => bail!("GGUF metadata 'tokenizer.ggml.scores' is missing"),
                };
                // llama.cpp's default for a SentencePiece vocabulary is a space prefix.
                VocabModel::SentencePiece {
                    scores,
                    add_space_prefix: flag("tokenizer.ggml.add_space_prefix", true),
                    gemma,
                }
            }
            other => bail!(
                "GGUF: tokenizer model '{}' is not supported (supported: {})",
                shown(other),
                SUPPORTED_MODELS.join(", ")
            ),
        };
        let sentencepiece = matches!(model, VocabModel::SentencePiece { .. });
        Ok(Vocab {
            tokens,
            token_types,
            model,
            bos: id(g, "tokenizer.ggml.bos_token_id"),
            eos: id(g, "tokenizer.ggml.eos_token_id"),
            unk: id(g, "tokenizer.ggml.unknown_token_id"),
            pad: id(g, "tokenizer.ggml.padding_token_id"),
            // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
            add_bos: flag("tokenizer.ggml.add_bos_token", sentencepiece),
            chat_template: g.get("tokenizer.chat_template").and_then(Value::as_str).map(String::from),
        })
    }

    /// `tokenizer.model` of the `.arq` file: `gpt2` or `llama`, as GGUF names them.
    pub fn model_name(&self) -> &'static str {
        match self.model {
            VocabModel::ByteLevelBpe { .. } => "gpt2",
            VocabModel::SentencePiece { .. } => "llama",
        }
    }

    /// The runtime's tokenizer blob (`arq::tokenizer::Tokenizer::from_blob`).
    pub fn blob(&self) -> Result<Vec<u8>> {
        let blob = match &self.model {
            VocabModel::ByteLevelBpe { merges, pre, .. } => {
                arq::tokenizer::build_blob_with(*pre, &self.tokens, &self.token_types, merges)
            }
            VocabModel::SentencePiece { scores, add_space_prefix, gemma } => arq::tokenizer::build_spm_blob(
                &self.tokens,
                &self.token_types,
                scores,
                SpmOptions { add_space_prefix: *add_space_prefix, unk: self.unk, gemma: *gemma },
            ),
        };
        blob.map_err(|e| anyhow!("tokenizer: {e}"))
    }

    /// The `tokenizer.*` metadata of the `.arq` file.
    pub fn meta(&self) -> Vec<(String, Meta)> {
        let mut meta = vec![(keys::TOKENIZER_MODEL.to_string(), Meta::Str(self.model_name().into()))];
        if let VocabModel::ByteLevelBpe { pre_name, .. } = &self.model {
            meta.push((keys::TOKENIZER_PRE.into(), Meta::Str(pre_name.clone())));
        }
        meta.push((keys::TOKENIZER_ADD_BOS.into(), Meta::Bool(self.add_bos)));
        for (key, id) in [
            (keys::TOKENIZER_BOS_ID, self.bos),
            (keys::TOKENIZER_EOS_ID, self.eos),
            (keys::TOKENIZER_PAD_ID, self.pad),
            (keys::TOKENIZER_UNK_ID, self.unk),
        ] {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// GGUF metadata values the tests write.
    enum V<'a> {
        Str(&'a str),
        Strs(&'a [&'a str]),
        I32s(&'a [i32]),
        F32s(&'a [f32]),
        U32(u32),
        Bool(bool),
    }

    /// A GGUF v3 file with metadata only.
    fn gguf(kv: &[(&str, V<'_>)]) -> GgufFile {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend_from_slice(&(s.len() as u64).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        };
        let array_head = |b: &mut Vec<u8>, ty: u32, n: usize| {
            b.extend_from_slice(&9u32.to_le_bytes());
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&(n as u64).to_le_bytes());
        };
        for (k, v) in kv {
            string(&mut b, k);
            match v {
                V::Str(s) => {
                    b.extend_from_slice(&8u32.to_le_bytes());
                    string(&mut b, s);
                }
                V::Strs(a) => {
                    array_head(&mut b, 8, a.len());
                    a.iter().for_each(|s| string(&mut b, s));
                }
                V::I32s(a) => {
                    array_head(&mut b, 5, a.len());
                    a.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
                }
                V::F32s(a) => {
                    array_head(&mut b, 6, a.len());
                    a.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
                }
                V::U32(x) => {
                    b.extend_from_slice(&4u32.to_le_bytes());
                    b.extend_from_slice(&x.to_le_bytes());
                }
                V::Bool(x) => {
                    b.extend_from_slice(&7u32.to_le_bytes());
                    b.push(u8::from(*x));
                }
            }
        }
        GgufFile::from_bytes(b).unwrap()
    }

    const PIECES: &[&str] =
        &["<unk>", "<s>", "</s>", "<0x41>", "▁", "a", "b", "ab", "▁ab", "<0xE4>", "<0xB8>", "<0xAD>"];
    const TYPES: &[i32] = &[2, 3, 3, 6, 1, 1, 1, 1, 1, 6, 6, 6];
    const SCORES: &[f32] = &[0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, 0.0, 0.0, 0.0];

    #[test]
    fn sentencepiece_vocabulary_from_gguf() {
        let g = gguf(&[
            ("general.architecture", V::Str("llama")),
            ("tokenizer.ggml.model", V::Str("llama")),
            ("tokenizer.ggml.tokens", V::Strs(PIECES)),
            ("tokenizer.ggml.token_type", V::I32s(TYPES)),
            ("tokenizer.ggml.scores", V::F32s(SCORES)),
            ("tokenizer.ggml.unknown_token_id", V::U32(0)),
            ("tokenizer.ggml.bos_token_id", V::U32(1)),
        ]);
        let v = Vocab::from_gguf(&g).unwrap();
        assert!(matches!(v.model, VocabModel::SentencePiece { add_space_prefix: true, gemma: false, .. }));
        assert!(v.add_bos, "llama.cpp's default for SentencePiece");
        let meta = v.meta();
        assert!(meta.contains(&(keys::TOKENIZER_MODEL.into(), Meta::Str("llama".into()))));
        assert!(meta.contains(&(keys::TOKENIZER_UNK_ID.into(), Meta::U32(0))));
        assert!(!meta.iter().any(|(k, _)| k == keys::TOKENIZER_PRE));
        let blob = v.blob().unwrap();
        let tok = arq::tokenizer::Tokenizer::from_blob(&blob).unwrap();
        // Space prefix, then "▁ab" by merging; "中" by byte fallback; "c" unknown.
        assert_eq!(tok.encode("ab", false), [8]);
        assert_eq!(tok.encode("ab中", false), [8, 9, 10, 11]);
        assert_eq!(tok.encode("abcc", false), [8, 0]);
        assert_eq!(tok.decode(&[8, 9, 10, 11]), " ab中");
    }

    #[test]
    fn unsupported_models_and_pre_tokenizers_are_named_with_the_supported_ones() {
        let err = Vocab::from_gguf(&gguf(&[
            ("tokenizer.ggml.model", V::Str("bert")),
            ("tokenizer.ggml.tokens", V::Strs(&["a"])),
        ]))
        .unwrap_err()
        .to_string();
        assert_eq!(err, "GGUF: tokenizer model 'bert' is not supported (supported: gpt2, llama)");
        let err = Vocab::from_gguf(&gguf(&[
            ("tokenizer.ggml.model", V::Str("gpt2")),
            ("tokenizer.ggml.pre", V::Str("tekken")),
            ("tokenizer.ggml.tokens", V::Strs(&["a"])),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("GGUF: pre-tokenizer 'tekken' is not supported (supported: gpt2, gpt-2, smollm, llama3,")
        );
        assert!(err.contains("llama-bpe") && err.contains("qwen2") && !err.contains('\n'), "{err}");
        let err = Vocab::from_gguf(&gguf(&[
            ("general.architecture", V::Str("llama")),
            ("tokenizer.ggml.model", V::Str("llama")),
            ("tokenizer.ggml.tokens", V::Strs(PIECES)),
            ("tokenizer.ggml.token_type", V::I32s(TYPES)),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("tokenizer.ggml.scores"), "{err}");
    }

    #[test]
    fn gemma_rules_follow_the_architecture() {
        let kv = |arch| {
            gguf(&[
                ("general.architecture", V::Str(arch)),
                ("tokenizer.ggml.model", V::Str("llama")),
                ("tokenizer.ggml.tokens", V::Strs(PIECES)),
                ("tokenizer.ggml.token_type", V::I32s(TYPES)),
                ("tokenizer.ggml.add_space_prefix", V::Bool(false)),
                ("tokenizer.ggml.add_bos_token", V::Bool(true)),
            ])
        };
        let v = Vocab::from_gguf(&kv("gemma3")).unwrap();
        assert!(matches!(v.model, VocabModel::SentencePiece { add_space_prefix: false, gemma: true, .. }));
        let tok_blob = v.blob().unwrap();
        let tok = arq::tokenizer::Tokenizer::from_blob(&tok_blob).unwrap();
        assert_eq!(tok.encode(" ab", false), [8]);
        assert_eq!(tok.encode("ab", false), [7]);
        // Without Gemma's rules a llama vocabulary needs its scores.
        assert!(Vocab::from_gguf(&kv("llama")).is_err());
    }
}
