//! Text transformers from a Hugging Face directory as `transformers` saves it:
//! `config.json`, the weights in `model.safetensors` or in shards listed by
//! `model.safetensors.index.json`, and `tokenizer.json` (+ `tokenizer_config.json`,
//! `chat_template.jinja`). Architectures: `LlamaForCausalLM`, `Qwen2ForCausalLM`,
//! `Qwen3ForCausalLM`, `Gemma3ForCausalLM`, `GPT2LMHeadModel`; tensors in bf16, f16 or
//! f32. What happens after the read is shared with the other text importers
//! ([`crate::import::text`]).
//!
//! The safetensors files are mapped, never read whole; their headers are checked by the
//! `safetensors` crate (offsets inside the file, sizes agreeing with shapes) and each
//! tensor's shape against the one `config.json` implies before it is converted.

pub mod config;
pub mod names;
pub mod tokenizer;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use arq::format::keys;
use arq::format::writer::Meta;
use arq::models::transformer::Family;
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, Metadata, SafeTensors};
use serde_json::Value;

use crate::import::text::{self, HParams, TextSource};
use crate::message::name as shown;
use crate::{ConvertOptions, ConvertSummary, InputFormat};
use names::Layout;

pub use config::hparams;

/// The file that makes a directory a Hugging Face model.
pub const CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
/// The most shards an index may list (real checkpoints have a few dozen).
const MAX_SHARDS: usize = 1024;
/// The most bytes of a JSON file read (configs are KiB; `tokenizer.json` a few MiB).
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// A JSON file of the directory, capped in size.
pub fn read_json(path: &Path) -> Result<Value> {
    crate::input::regular_file(path)?;
    let bytes = crate::input::read_capped(path, MAX_JSON_BYTES, "the JSON file")?;
    serde_json::from_slice(&bytes).map_err(|e| anyhow!("{}: not valid JSON ({e})", path.display()))
}

/// Whether `path` names a whole model by one of its files: its `config.json` or its
/// shard index (`model.safetensors.index.json`).
pub fn names_the_model(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n == CONFIG || n.ends_with(".safetensors.index.json"))
}

/// The model directory of `input` (the directory itself, or the one holding the file
/// given) and the weight file given, if one was (not for `config.json` or the index).
pub fn locate(input: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    let meta = std::fs::metadata(input).map_err(|_| anyhow!("{}: no such file or directory", input.display()))?;
    let (dir, file) = if meta.is_dir() {
        (input.to_path_buf(), None)
    } else {
        crate::input::regular_file(input)?;
        let dir = match input.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file = (!names_the_model(input)).then(|| input.to_path_buf());
        (dir, file)
    };
    if !dir.join(CONFIG).exists() {
        if file.is_some() {
            bail!(
                "{}: no {CONFIG} beside it (a safetensors file converts with its model's {CONFIG} and tokenizer.json)",
                input.display()
            );
        }
        bail!(
            "{} is a directory without {CONFIG} (a Hugging Face model directory holds {CONFIG}, model.safetensors and tokenizer.json)",
            input.display()
        );
    }
    Ok((dir, file))
}

/// One mapped safetensors file and its checked header.
struct Shard {
    path: PathBuf,
    map: Mmap,
    header_len: usize,
    meta: Metadata,
}

/// The weights of a checkpoint, in one file or several.
pub struct Weights {
    shards: Vec<Shard>,
    /// Tensor name → index in `shards`.
    index: HashMap<String, usize>,
}

impl Weights {
    /// The weights of `dir`: `file` alone when given and not a shard of an index; the
    /// shards of `model.safetensors.index.json`; or `model.safetensors`.
    pub fn open(dir: &Path, file: Option<&Path>) -> Result<Weights> {
        let index_path = dir.join(INDEX);
        let listed = |f: &Path| -> Result<bool> {
            if !index_path.exists() {
                return Ok(false);
            }
            let files = shard_files(&index_path)?;
            Ok(f.file_name().is_some_and(|n| files.iter().any(|s| s.as_str() == n)))
        };
        let files: Vec<PathBuf> = match file {
            Some(f) if !listed(f)? => vec![f.to_path_buf()],
            _ if index_path.exists() => shard_files(&index_path)?.into_iter().map(|f| dir.join(f)).collect(),
            _ if dir.join(SINGLE).exists() => vec![dir.join(SINGLE)],
            _ => bail!("{}: no {SINGLE} and no {INDEX}", dir.display()),
        };
        let mut w = Weights { shards: Vec::new(), index: HashMap::new() };
        for path in files {
            crate::input::regular_file(&path)?;
            let f = File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
            // SAFETY: the map is read-only and private to this process; like every
            // reader of a mapped input, it assumes the file is not truncated meanwhile.
            let map = unsafe { Mmap::map(&f) }.with_context(|| format!("cannot map {}", path.display()))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map)
                .map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
            let i = w.shards.len();
            for name in meta.tensors().keys() {
                w.index.insert(name.clone(), i);
            }
            w.shards.push(Shard { path, map, header_len, meta });
        }
        Ok(w)
    }

    /// Whether the checkpoint has tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Every tensor name of the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Tensor `name` in f32 with its shape, refused unless its shape is `dims`.
    pub fn read(&self, name: &str, dims: &[u64]) -> Result<Vec<f32>> {
        let shard = self.index.get(name).map(|&i| &self.shards[i]);
        let Some((shard, info)) = shard.and_then(|s| Some((s, s.meta.info(name)?))) else {
            bail!("tensor '{}' is missing from the checkpoint", shown(name));
        };
        let have: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
        if have != dims {
            bail!("tensor '{}' has shape {have:?}, config.json says {dims:?}", shown(name));
        }
        let start = 8 + shard.header_len;
        let (a, b) = info.data_offsets;
        let bytes = start
            .checked_add(a)
            .zip(start.checked_add(b))
            .and_then(|(a, b)| shard.map.get(a..b))
            .ok_or_else(|| anyhow!("{}: tensor '{}' lies outside the file", shard.path.display(), shown(name)))?;
        let le16 = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
        Ok(match info.dtype {
            StDtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            StDtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_bits(le16(c)).to_f32()).collect(),
            StDtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_bits(le16(c)).to_f32()).collect(),
            other => bail!("tensor '{}' has dtype {other:?} (supported: BF16, F16, F32)", shown(name)),
        })
    }
}

/// The shard file names an index lists (`weight_map` values), deduplicated in order.
fn shard_files(index: &Path) -> Result<Vec<String>> {
    let v = read_json(index)?;
    let map =
        v.get("weight_map").and_then(Value::as_object).ok_or_else(|| anyhow!("{}: no weight_map", index.display()))?;
    let mut files: Vec<String> = Vec::new();
    for f in map.values() {
        let f = f.as_str().ok_or_else(|| anyhow!("{}: a weight_map entry is not a file name", index.display()))?;
        // A shard is a file of the directory, never a path out of it.
        if f.is_empty() || f.contains('/') || f.contains('\\') || f == "." || f == ".." {
            bail!("{}: shard '{}' is not a file name", index.display(), shown(f));
        }
        if !files.iter().any(|g| g == f) {
            if files.len() == MAX_SHARDS {
                bail!("{}: more than {MAX_SHARDS} shards", index.display());
            }
            files.push(f.to_string());
        }
    }
    Ok(files)
}

/// `.arq` tensor `name` (shape `dims`) from the checkpoint, in the runtime's layout.
pub fn fetch(w: &Weights, hp: &HParams, prefix: &str, name: &str, dims: &[u64]) -> Result<Vec<f32>> {
    let (hf, layout) = names::source(hp.family, name, hp.n_heads, hp.n_kv_heads)
        .ok_or_else(|| anyhow!("no Hugging Face tensor for '{name}' in family {}", hp.spec().name))?;
    // GPT-2's `transformer.` prefixes the body, not the output head.
    let hf = if hf.starts_with("lm_head.") { hf } else { format!("{prefix}{hf}") };
    match layout {
        Layout::AsIs => w.read(&hf, dims),
        Layout::PlusOne => Ok(w.read(&hf, dims)?.into_iter().map(|x| x + 1.0).collect()),
        Layout::PermuteRope { heads } => {
            let v = w.read(&hf, dims)?;
            names::permute_rope(&v, dims[0] as usize, dims[1] as usize, heads as usize)
                .ok_or_else(|| anyhow!("tensor '{hf}': {} rows do not split into {heads} heads of pairs", dims[0]))
        }
        Layout::Conv1D { part } => {
            // Stored [in, out]; the fused q, k, v has three times the rows of one.
            let parts = if part.is_some() { 3 } else { 1 };
            let (rows, cols) = (dims[0] * parts, dims.get(1).copied());
            let v = match cols {
                Some(cols) => {
                    let t = w.read(&hf, &[cols, rows])?;
                    names::transpose(&t, cols as usize, rows as usize)
                }
                None => w.read(&hf, &[rows])?,
            };
            Ok(match part {
                Some(i) => {
                    let n = v.len() / 3;
                    v[i * n..(i + 1) * n].to_vec()
                }
                None => v,
            })
        }
    }
}

/// The prefix of the checkpoint's tensor names that [`names::source`] leaves out:
/// GPT-2's `transformer.` (absent in the oldest checkpoints).
fn prefix(w: &Weights, family: Family) -> &'static str {
    if family == Family::Gpt2 && w.has("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    }
}

/// What [`open`] read: the hyperparameters, whether the output head is the embedding,
/// and the weights.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Value,
    pub hp: HParams,
    pub tied: bool,
    pub weights: Weights,
    prefix: &'static str,
}

/// Checkpoint tensors no family reads and that change nothing: GPT-2's causal-mask
/// buffers and rotary frequency tables that older transformers saved.
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name.ends_with("rotary_emb.inv_freq")
}

impl Checkpoint {
    /// `.arq` tensor `name` in the runtime's layout (see [`fetch`]).
    pub fn fetch(&self, name: &str, dims: &[u64]) -> Result<Vec<f32>> {
        fetch(&self.weights, &self.hp, self.prefix, name, dims)
    }

    /// Refuses a checkpoint with a tensor the family does not read (biases where
    /// config.json says none, layers past `num_hidden_layers`, ...): converting without
    /// it would make a different model. A saved output head that the config ties to the
    /// embedding is not read either, as transformers does not.
    pub fn check_all_read(&self) -> Result<()> {
        let mut read: std::collections::HashSet<String> = std::collections::HashSet::new();
        for (name, _, _) in self.hp.tensor_names(self.tied) {
            if let Some((hf, _)) = names::source(self.hp.family, &name, self.hp.n_heads, self.hp.n_kv_heads) {
                read.insert(if hf.starts_with("lm_head.") { hf } else { format!("{}{hf}", self.prefix) });
            }
        }
        let mut unread: Vec<&str> = self
            .weights
            .names()
            .filter(|n| !(read.contains(*n) || is_buffer(n) || (self.tied && *n == "lm_head.weight")))
            .collect();
        unread.sort_unstable();
        match unread.first() {
            None => Ok(()),
            Some(n) => bail!(
                "tensor '{}'{} is not part of a {} model as config.json describes it; not supported",
                shown(n),
                if unread.len() > 1 { format!(" (and {} more)", unread.len() - 1) } else { String::new() },
                self.hp.spec().name
            ),
        }
    }
}

/// Opens the model at `input` (a directory, or a `.safetensors` file beside its
/// `config.json`): config, hyperparameters and mapped weights; no tensor is read yet.
pub fn open(input: &Path) -> Result<Checkpoint> {
    let (dir, file) = locate(input)?;
    let config = read_json(&dir.join(CONFIG))?;
    let (hp, tie_default) = hparams(&config)?;
    let weights = Weights::open(&dir, file.as_deref())?;
    let prefix = prefix(&weights, hp.family);
    // Untied without `lm_head.weight` fails on reading it, naming it.
    let tied = config.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(tie_default);
    Ok(Checkpoint { dir, config, hp, tied, weights, prefix })
}

/// Reads a Hugging Face text model of any supported family.
pub fn read_hf(input: &Path, progress: bool) -> Result<TextSource> {
    let ck = open(input)?;
    ck.check_all_read()?;
    let vocab = crate::import::vocab::Vocab::from_tokenizer_json(&ck.dir, &ck.config, ck.hp.vocab)?;
    let blob = vocab.blob()?;
    let name = ck.config.get("_name_or_path").and_then(Value::as_str).unwrap_or("");
    let source = std::fs::canonicalize(&ck.dir).unwrap_or_else(|_| ck.dir.clone());
    let mut meta = vec![
        (keys::GENERAL_NAME.into(), Meta::Str(name.into())),
        (
            keys::GENERAL_SOURCE.into(),
            Meta::Str(source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
        ),
    ];
    meta.extend(vocab.meta());
    TextSource::read(&ck.hp, ck.tied, meta, blob, progress, |name, dims| ck.fetch(name, dims))
}

/// Whether the conversion reads the directory's file `name`: the output may not be one.
fn is_input_file(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".json") || name.ends_with(".jinja")
}

/// Hugging Face directory → `.arq` (see [`text::convert`]).
pub fn convert(input: &Path, out: &Path, opts: &ConvertOptions) -> Result<ConvertSummary> {
    let (dir, file) = locate(input)?;
    crate::output::check_dir_paths(&dir, out, opts.force, is_input_file)?;
    if let Some(f) = file {
        crate::output::check_paths(&f, out, opts.force)?;
    }
    text::convert(input, out, opts, InputFormat::HuggingFace, read_hf)
}
