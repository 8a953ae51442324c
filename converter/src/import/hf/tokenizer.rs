//! `tokenizer.json` (+ `tokenizer_config.json`, `chat_template.jinja`) → the vocabulary
//! tables GGUF stores and the runtime's tokenizer blob is built from: tokens (byte-level
//! BPE tokens in GPT-2's byte alphabet, as `tokenizer.json` spells them), token types
//! (1 normal, 3 control for a special added token, 4 user-defined for another added
//! token, 5 unused for the padding rows past the tokenizer's last id), merges as
//! `"left right"`, the pre-tokenizer recognised from `pre_tokenizer`, and the special ids.
//!
//! Gemma's `tokenizer.json` is a SentencePiece-style BPE over `▁`-pieces with byte
//! fallback and no scores. Its scores are derived from the merge ranks: a piece made by
//! merge `r` (0 = first) scores `-(r + 1)`, a piece no merge makes (single characters,
//! the `<0xAB>` byte pieces, added tokens) scores 0. Merging the pair whose result
//! scores highest, as SentencePiece's BPE does, then merges in rank order, which is what
//! Hugging Face's BPE does with the merges (the tiny Gemma 3 test model's scores order
//! its merged pieces as those llama.cpp takes from `tokenizer.model`). Byte pieces are
//! type 6, as in GGUF. The runtime of this branch has no SentencePiece tokenizer yet:
//! such a vocabulary is read but [`Vocab::blob`] refuses it (see `vocab.rs`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use super::read_json;
use crate::import::vocab::{Vocab, VocabModel};
use crate::message::name as shown;
use arq::tokenizer::PreTokenizer;

/// GPT-2's pattern with `use_regex` in a `ByteLevel` pre-tokenizer; these two are Llama
/// 3's and Qwen2's `Split` patterns (GGUF `llama-bpe` and `qwen2`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer's GGUF name from `tokenizer.json`'s `pre_tokenizer` and the BPE
/// model's `ignore_merges` (a piece that is a token is that token: llama.cpp's
/// `llama-bpe` does it, its `dbrx` has Llama 3's pattern without it), or an error that
/// shows it.
fn pre_name(pre: &Value, ignore_merges: bool) -> Result<&'static str> {
    let ty = |v: &Value| v.get("type").and_then(Value::as_str).unwrap_or("").to_string();
    let steps: Vec<&Value> = match ty(pre).as_str() {
        "Sequence" => {
            pre.get("pretokenizers").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
        }
        _ => vec![pre],
    };
    let byte_level = |v: &Value, regex: bool| {
        ty(v) == "ByteLevel" && v.get("use_regex").and_then(Value::as_bool).unwrap_or(true) == regex
    };
    fn split(v: &Value) -> Option<&str> {
        let ty = v.get("type").and_then(Value::as_str);
        (ty == Some("Split")
            && v.get("behavior").and_then(Value::as_str) == Some("Isolated")
            && !v.get("invert").and_then(Value::as_bool).unwrap_or(false))
        .then(|| v.get("pattern").and_then(|p| p.get("Regex")).and_then(Value::as_str))
        .flatten()
    }
    let name = match steps.as_slice() {
        _ if ignore_merges && !matches!(steps.first().map(|s| split(s)), Some(Some(LLAMA3_REGEX))) => None,
        [b] if byte_level(b, true) => Some("gpt2"),
        [d, b]
            if ty(d) == "Digits"
                && d.get("individual_digits").and_then(Value::as_bool) == Some(true)
                && byte_level(b, true) =>
        {
            Some("smollm")
        }
        [s, b] if byte_level(b, false) => match split(s) {
            Some(LLAMA3_REGEX) if ignore_merges => Some("llama-bpe"),
            Some(LLAMA3_REGEX) => Some("dbrx"),
            Some(QWEN2_REGEX) => Some("qwen2"),
            _ => None,
        },
        _ => None,
    };
    name.ok_or_else(|| {
        anyhow!(
            "tokenizer.json: pre-tokenizer {}{} is not supported (supported: GPT-2's ByteLevel, SmolLM's Digits + ByteLevel, Llama 3's and Qwen2's Split + ByteLevel)",
            shown(&pre.to_string()),
            if ignore_merges { " with ignore_merges" } else { "" }
        )
    })
}

/// A special token named in `tokenizer_config.json` (a string or `{"content": ...}`).
fn token_text(v: Option<&Value>) -> Option<&str> {
    let v = v?;
    v.as_str().or_else(|| v.get("content").and_then(Value::as_str))
}

/// The merges of a BPE model: `"a b"` strings, or `[a, b]` pairs (tokenizers ≥ 0.20).
fn merges(model: &Value) -> Result<Vec<String>> {
    let Some(list) = model.get("merges").and_then(Value::as_array) else { return Ok(Vec::new()) };
    if list.len() > arq::tokenizer::MAX_MERGES as usize {
        bail!("tokenizer.json: {} merges, more than the cap of {}", list.len(), arq::tokenizer::MAX_MERGES);
    }
    list.iter()
        .map(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Array(p) => match p.as_slice() {
                [Value::String(a), Value::String(b)] => Some(format!("{a} {b}")),
                _ => None,
            },
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| anyhow!("tokenizer.json: a merge is neither \"a b\" nor [a, b]"))
}

/// The special token a `TemplateProcessing` post-processor (alone or in a `Sequence`)
/// puts first in a single sequence: the BOS a tokenizer adds itself.
fn template_first(post: Option<&Value>) -> Option<&str> {
    let post = post?;
    match post.get("type").and_then(Value::as_str)? {
        "Sequence" => post.get("processors")?.as_array()?.iter().find_map(|p| template_first(Some(p))),
        "TemplateProcessing" => post.get("single")?.get(0)?.get("SpecialToken")?.get("id")?.as_str(),
        _ => None,
    }
}

impl Vocab {
    /// The vocabulary of the model directory `dir`, padded to `n_vocab` tokens (the
    /// embedding's rows; checkpoints round them up past the tokenizer's last id).
    pub fn from_tokenizer_json(dir: &Path, config: &Value, n_vocab: u64) -> Result<Vocab> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            bail!("{}: no tokenizer.json", dir.display());
        }
        let tj = read_json(&path)?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc = if tc_path.exists() { read_json(&tc_path)? } else { Value::Null };
        let model = tj.get("model").ok_or_else(|| anyhow!("tokenizer.json: no model"))?;
        let ty = model.get("type").and_then(Value::as_str).unwrap_or("(none)");
        if ty != "BPE" {
            bail!("tokenizer.json: model type '{}' is not supported (supported: BPE)", shown(ty));
        }
        let vocab =
            model.get("vocab").and_then(Value::as_object).ok_or_else(|| anyhow!("tokenizer.json: no model.vocab"))?;
        let added: Vec<(u64, String, bool)> = tj
            .get("added_tokens")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| {
                        let id = t.get("id")?.as_u64()?;
                        let content = t.get("content")?.as_str()?.to_string();
                        Some((id, content, t.get("special").and_then(Value::as_bool).unwrap_or(false)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let last = vocab.values().filter_map(Value::as_u64).chain(added.iter().map(|a| a.0)).max().unwrap_or(0);
        let n = (last + 1).max(n_vocab);
        if n > n_vocab {
            bail!("tokenizer.json: token id {last} is past the model's vocab_size {n_vocab}");
        }
        let n = n as usize;
        let mut tokens: Vec<Option<String>> = vec![None; n];
        let mut types = vec![1i32; n];
        for (text, id) in vocab {
            let id =
                id.as_u64().ok_or_else(|| anyhow!("tokenizer.json: the id of '{}' is not an integer", shown(text)))?;
            tokens[id as usize] = Some(text.clone());
        }
        for (id, content, special) in &added {
            tokens[*id as usize] = Some(content.clone());
            types[*id as usize] = if *special { 3 } else { 4 };
        }
        let tokens: Vec<String> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                t.unwrap_or_else(|| {
                    types[i] = 5;
                    format!("[PAD{i}]")
                })
            })
            .collect();

        let byte_fallback = model.get("byte_fallback").and_then(Value::as_bool).unwrap_or(false);
        let merges = merges(model)?;
        let model = if byte_fallback {
            // SentencePiece-style: scores from the merge ranks (see the module doc).
            let by_text: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
            let mut scores = vec![0.0f32; n];
            for (rank, m) in merges.iter().enumerate().rev() {
                if let Some(&id) = m.split_once(' ').and_then(|(a, b)| by_text.get(format!("{a}{b}").as_str())) {
                    scores[id] = -(rank as f32 + 1.0);
                }
            }
            for (i, t) in tokens.iter().enumerate() {
                if t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && types[i] == 1 {
                    types[i] = 6;
                }
            }
            let add_space_prefix = tj.get("normalizer").is_some_and(|n| n.to_string().contains("\"Prepend\""));
            let gemma = matches!(
                config.get("model_type").and_then(Value::as_str),
                Some("gemma" | "gemma2" | "gemma3" | "gemma3_text")
            ) || tc.get("tokenizer_class").and_then(Value::as_str) == Some("GemmaTokenizer");
            VocabModel::SentencePiece { scores, add_space_prefix, gemma }
        } else {
            // Qwen2's NFC changes no NFC text (what the runtime assumes); others change ids.
            let norm = tj.get("normalizer").unwrap_or(&Value::Null);
            let norm_type = norm.get("type").and_then(Value::as_str);
            if !(norm.is_null() || norm_type == Some("NFC")) {
                bail!(
                    "tokenizer.json: normalizer {} is not supported for byte-level BPE (supported: none, NFC)",
                    shown(&norm.to_string())
                );
            }
            let pre = tj.get("pre_tokenizer").unwrap_or(&Value::Null);
            let ignore_merges = model.get("ignore_merges").and_then(Value::as_bool).unwrap_or(false);
            let pre_name = pre_name(pre, ignore_merges)?;
            let pre = PreTokenizer::from_gguf_name(pre_name)
                .ok_or_else(|| anyhow!("tokenizer.json: the pre-tokenizer '{pre_name}' is not in this runtime"))?;
            VocabModel::ByteLevelBpe { merges, pre, pre_name: pre_name.to_string() }
        };

        let id_of = |text: &str| tokens.iter().position(|t| t == text).map(|i| i as u32);
        let config_id = |key: &str| {
            let v = config.get(key)?;
            v.as_u64().or_else(|| v.as_array()?.first()?.as_u64()).and_then(|i| u32::try_from(i).ok())
        };
        // The special tokens of tokenizer_config.json, as transformers reads them; the ids
        // of config.json only when it names none (GPT-2's original checkpoint).
        let named =
            ["bos_token", "eos_token", "pad_token", "unk_token"].iter().any(|k| token_text(tc.get(*k)).is_some());
        let special = |key: &str| match named {
            true => token_text(tc.get(key)).and_then(id_of),
            false => config_id(&format!("{key}_id")),
        };
        let bos = special("bos_token");
        // add_bos_token when given; else whether the post-processor puts bos first.
        let add_bos = match tc.get("add_bos_token").and_then(Value::as_bool) {
            Some(b) => b,
            None => bos.is_some() && template_first(tj.get("post_processor")).and_then(id_of) == bos,
        };
        let template_path = dir.join("chat_template.jinja");
        let chat_template = if template_path.exists() {
            let bytes = crate::input::read_capped(&template_path, super::MAX_JSON_BYTES, "the chat template")?;
            Some(String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8", template_path.display()))?)
        } else {
            match tc.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: the default one.
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(String::from)),
                _ => None,
            }
        };
        let (eos, unk, pad) = (special("eos_token"), special("unk_token"), special("pad_token"));
        Ok(Vocab { tokens, token_types: types, model, bos, eos, unk, pad, add_bos, chat_template })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sentencepiece_scores_from_merge_ranks() {
        let dir = std::env::temp_dir().join(format!("arq-hf-spm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tj = json!({"added_tokens": [{"id": 0, "content": "<pad>", "special": true}],
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            "model": {"type": "BPE", "byte_fallback": true, "merges": [["▁", "t"], ["h", "e"], ["▁t", "he"]],
                      "vocab": {"<pad>": 0, "<0x41>": 1, "▁": 2, "t": 3, "h": 4, "e": 5, "▁t": 6, "he": 7, "▁the": 8}}});
        std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
        let v = Vocab::from_tokenizer_json(&dir, &json!({"model_type": "gemma3_text"}), 10).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let VocabModel::SentencePiece { scores, add_space_prefix, gemma } = &v.model else { panic!("{v:?}") };
        assert_eq!(scores, &[0., 0., 0., 0., 0., 0., -1., -2., -3., 0.]);
        assert!(!add_space_prefix && *gemma);
        assert_eq!(v.token_types, [3, 6, 1, 1, 1, 1, 1, 1, 1, 5]);
        assert_eq!(v.model_name(), "llama");
    }

    #[test]
    fn pre_tokenizers_are_recognised() {
        let bl =
            |r: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": r});
        assert_eq!(pre_name(&bl(true), false).unwrap(), "gpt2");
        let smol =
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, bl(true)]});
        assert_eq!(pre_name(&smol, false).unwrap(), "smollm");
        let split = |r: &str| {
            json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}, bl(false)]})
        };
        assert_eq!(pre_name(&split(LLAMA3_REGEX), true).unwrap(), "llama-bpe");
        assert_eq!(pre_name(&split(LLAMA3_REGEX), false).unwrap(), "dbrx");
        assert_eq!(pre_name(&split(QWEN2_REGEX), false).unwrap(), "qwen2");
        assert!(pre_name(&split(QWEN2_REGEX), true).unwrap_err().to_string().contains("with ignore_merges"));
        let e = pre_name(&json!({"type": "Whitespace"}), false).unwrap_err().to_string();
        assert!(e.contains("Whitespace") && e.contains("not supported"), "{e}");
    }
}
