//! Text transformers from a GGUF file as llama.cpp writes them (`llama`, `qwen2`,
//! `qwen3`, `gemma3`, `gpt2`): the hyperparameters from `{arch}.*` keys, the vocabulary
//! from `tokenizer.ggml.*`, the tensors dequantized by name. What happens next is shared
//! with the other text importers ([`crate::import::text`]).
//!
//! GGUF names tensors as `.arq` does (`blk.N.attn_q.weight` is `blk.N.attn_q`), stores
//! them in the layout the runtime reads (llama's q and k rows permuted for adjacent-pair
//! rotary embeddings, the others in the NeoX layout; Gemma's norms with their `+1`
//! added), and fuses GPT-2's q, k and v into one `attn_qkv`, which is split here.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use arq::format::keys;
use arq::format::writer::Meta;
use arq::models::transformer::family::Positions;
use arq::models::transformer::{gemma3, Family};

use super::{GgufFile, Value};
use crate::import::text::{self, HParams, TextSource, MAX_CONTEXT, MAX_DIM, MAX_LAYERS, MAX_VOCAB};
use crate::import::vocab::Vocab;
use crate::message::name as shown;
use crate::quantize::check_finite;
use crate::{ConvertOptions, ConvertSummary, InputFormat};

fn get_u64(g: &GgufFile, key: &str) -> Result<u64> {
    g.get(key).and_then(Value::as_u64).ok_or_else(|| anyhow!("GGUF metadata '{key}' is missing or not an integer"))
}
fn get_f32(g: &GgufFile, key: &str, default: f32) -> Result<f32> {
    match g.get(key) {
        None => Ok(default),
        Some(v) => v.as_f32().ok_or_else(|| anyhow!("GGUF metadata '{key}' is not a number")),
    }
}
/// `key`'s integer, refused above `cap`.
fn get_capped(g: &GgufFile, key: &str, cap: u64) -> Result<u64> {
    let v = get_u64(g, key)?;
    if v > cap {
        bail!("GGUF: {key} is {v}, more than the cap of {cap}");
    }
    Ok(v)
}

/// [`get_capped`], or `default` when the key is absent.
fn get_capped_or(g: &GgufFile, key: &str, cap: u64, default: u64) -> Result<u64> {
    if g.get(key).is_some() {
        get_capped(g, key, cap)
    } else {
        Ok(default)
    }
}

/// The sliding-window pattern (see [`arq::format::keys::HParamKeys`]) from
/// `{arch}.attention.sliding_window_pattern`: a number, or llama.cpp's per-layer booleans
/// (true = sliding) when they repeat with a full layer last; Gemma 3's 6 when absent.
fn sliding_pattern(g: &GgufFile, key: &str, n_layers: u64) -> Result<u64> {
    let Some(v) = g.get(key) else { return Ok(gemma3::DEFAULT_SLIDING_WINDOW_PATTERN as u64) };
    if let Some(n) = v.as_u64() {
        return if n <= MAX_LAYERS { Ok(n) } else { bail!("GGUF: {key} is {n}, more than the cap of {MAX_LAYERS}") };
    }
    let flags: Vec<bool> = v
        .as_array()
        .and_then(|a| a.iter().map(Value::as_bool).collect())
        .ok_or_else(|| anyhow!("GGUF: {key} is neither a number nor an array of booleans"))?;
    let n = flags.iter().position(|&sliding| !sliding).map_or(0, |i| i as u64 + 1);
    let periodic = flags.len() as u64 == n_layers
        && flags.iter().enumerate().all(|(l, &s)| s == (n == 0 || (l as u64) % n < n - 1));
    if !periodic {
        bail!("GGUF: {key} is not a repeating pattern of sliding layers and one full layer");
    }
    Ok(n)
}

/// The hyperparameters of `family` from its `{arch}.*` keys.
fn hparams(g: &GgufFile, family: Family, n_tokens: usize) -> Result<HParams> {
    let spec = family.spec();
    let k = |suffix: &str| format!("{}.{suffix}", spec.name);
    let n_layers = get_capped(g, &k("block_count"), MAX_LAYERS)?;
    let dim = get_capped(g, &k("embedding_length"), MAX_DIM)?;
    let n_heads = get_capped(g, &k("attention.head_count"), MAX_DIM)?;
    let n_kv_heads = get_capped_or(g, &k("attention.head_count_kv"), MAX_DIM, n_heads)?;
    let key_len = get_capped_or(g, &k("attention.key_length"), MAX_DIM, 0)?;
    let value_len = get_capped_or(g, &k("attention.value_length"), MAX_DIM, key_len)?;
    if value_len != key_len {
        bail!("GGUF: attention.value_length {value_len} differs from key_length {key_len}; not supported");
    }
    // Only a head dimension that differs from dim / heads is stored.
    let head_dim = (key_len != 0 && (n_heads == 0 || key_len * n_heads != dim)).then_some(key_len);
    let hd = head_dim.unwrap_or(dim.checked_div(n_heads).unwrap_or(0));
    if let Some(rd) = g.get(&k("rope.dimension_count")).and_then(Value::as_u64) {
        if rd != hd && spec.positions == Positions::Rotary {
            bail!("GGUF: partial rotary embeddings (rope.dimension_count {rd} != head dim {hd}) are not supported");
        }
    }
    if let Some(t) = g.get(&k("rope.scaling.type")).and_then(Value::as_str) {
        if t != "none" && get_f32(g, &k("rope.scaling.factor"), 1.0)? != 1.0 {
            bail!("GGUF: rope scaling '{}' is not supported", shown(t));
        }
    }
    let vocab = match g.get(&k("vocab_size")) {
        Some(_) => get_capped(g, &k("vocab_size"), MAX_VOCAB)?,
        None => n_tokens as u64,
    };
    let sliding = match get_capped_or(g, &k("attention.sliding_window"), MAX_CONTEXT, 0)? {
        w if w > 0 && spec.sliding_window => Some((
            w,
            sliding_pattern(g, &k("attention.sliding_window_pattern"), n_layers)?,
            get_f32(g, &k("rope.local_freq_base"), gemma3::DEFAULT_LOCAL_ROPE_BASE)?,
        )),
        _ => None,
    };
    // llama.cpp scales Gemma 3 27B (62 layers) by 1/sqrt(dim / heads), the others by
    // 1/sqrt(head_dim), after each checkpoint's `query_pre_attn_scalar`.
    let attn_scale =
        (family == Family::Gemma3 && n_layers == 62 && n_heads > 0).then(|| 1.0 / ((dim / n_heads) as f32).sqrt());
    let eps_key = match spec.norm {
        arq::models::transformer::family::NormKind::Rms => k("attention.layer_norm_rms_epsilon"),
        arq::models::transformer::family::NormKind::Layer => k("attention.layer_norm_epsilon"),
    };
    let hp = HParams {
        family,
        vocab,
        ctx: get_capped(g, &k("context_length"), MAX_CONTEXT)?,
        dim,
        n_layers,
        ffn: get_capped(g, &k("feed_forward_length"), 4 * MAX_DIM)?,
        n_heads,
        n_kv_heads,
        head_dim,
        rope_base: get_f32(g, &k("rope.freq_base"), 10000.0)?,
        norm_eps: get_f32(g, &eps_key, 1e-5)?,
        sliding,
        attn_scale,
    };
    hp.check("GGUF")?;
    Ok(hp)
}

/// Tensor `name` (`.arq` naming) in `.arq` layout with the shape `dims`, dequantized.
fn fetch(g: &GgufFile, family: Family, name: &str, dims: &[u64]) -> Result<Vec<f32>> {
    // GPT-2's q, k and v are thirds (by rows) of one fused `attn_qkv`.
    if family == Family::Gpt2 {
        for (i, part) in ["attn_q", "attn_k", "attn_v"].into_iter().enumerate() {
            let Some((layer, bias)) = name.strip_prefix("blk.").and_then(|r| {
                let (l, role) = r.split_once('.')?;
                (role == part || role == format!("{part}.bias")).then_some((l, role.ends_with(".bias")))
            }) else {
                continue;
            };
            let fused = format!("blk.{layer}.attn_qkv.{}", if bias { "bias" } else { "weight" });
            let mut fdims = dims.to_vec();
            fdims[0] *= 3;
            let all = read(g, &fused, &fdims)?;
            let n = all.len() / 3;
            return Ok(all[i * n..(i + 1) * n].to_vec());
        }
    }
    let gname = if name.ends_with(".bias") { name.to_string() } else { format!("{name}.weight") };
    read(g, &gname, dims)
}

/// GGUF tensor `gname`, checked to have the `.arq` shape `dims`, dequantized.
fn read(g: &GgufFile, gname: &str, dims: &[u64]) -> Result<Vec<f32>> {
    let t = g.tensor(gname).ok_or_else(|| anyhow!("GGUF: tensor '{}' is missing", shown(gname)))?;
    // GGUF lists dims innermost first; .arq outermost first.
    let have: Vec<u64> = t.dims.iter().rev().copied().collect();
    if have != dims {
        bail!("GGUF: tensor '{}' has shape {have:?}, the hyperparameters say {dims:?}", shown(gname));
    }
    let values = g.dequantize(t).map_err(|e| anyhow!("GGUF: {e}"))?;
    // Named as the file names it (the shared check after this one names the `.arq` tensor).
    check_finite(gname, &values).context("GGUF")?;
    Ok(values)
}

/// Reads a GGUF text model of any supported family.
pub fn read_gguf(path: &Path, progress: bool) -> Result<TextSource> {
    let g = GgufFile::open(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let arch = g.get("general.architecture").and_then(Value::as_str).unwrap_or("(none)");
    let family = text::family(arch, "architecture").map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut vocab = Vocab::from_gguf(&g)?;
    if vocab.chat_template.is_none() {
        vocab.chat_template = text::default_chat_template(family).map(String::from);
    }
    let hp = hparams(&g, family, vocab.tokens.len())?;
    let tokenizer_blob = vocab.blob()?;
    let mut meta = vec![
        (keys::GENERAL_NAME.into(), Meta::Str(g.get("general.name").and_then(Value::as_str).unwrap_or("").into())),
        (
            keys::GENERAL_SOURCE.into(),
            Meta::Str(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
        ),
    ];
    meta.extend(vocab.meta());
    let tied = g.tensor("output.weight").is_none();
    TextSource::read(&hp, tied, meta, tokenizer_blob, progress, |name, dims| fetch(&g, family, name, dims))
}

/// GGUF → `.arq` (see [`text::convert`]).
pub fn convert(input: &Path, out: &Path, opts: &ConvertOptions) -> Result<ConvertSummary> {
    text::convert(input, out, opts, InputFormat::Gguf, read_gguf)
}
