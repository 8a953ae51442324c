//! `config.json` → [`HParams`]: the keys each architecture's `transformers` config class
//! defines, with that class's defaults where a key is absent, every number capped
//! before use, and the options the runtime does not implement refused by name.

use anyhow::{anyhow, bail, Result};
use arq::models::transformer::Family;
use serde_json::Value;

use crate::import::text::{HParams, MAX_CONTEXT, MAX_DIM, MAX_LAYERS, MAX_VOCAB};
use crate::message::name as shown;

/// `architectures[0]` values read, with their family.
pub const ARCHITECTURES: &[(&str, Family)] = &[
    ("LlamaForCausalLM", Family::Llama),
    ("Qwen2ForCausalLM", Family::Qwen2),
    ("Qwen3ForCausalLM", Family::Qwen3),
    ("Gemma3ForCausalLM", Family::Gemma3),
    ("GPT2LMHeadModel", Family::Gpt2),
];

fn supported() -> String {
    ARCHITECTURES.iter().map(|a| a.0).collect::<Vec<_>>().join(", ")
}

/// Reads keys of one config with the messages naming `config.json` and the key.
struct Config<'a>(&'a Value);

impl Config<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    /// Integer `key` (the first key of `keys` present), or `default`; refused above `cap`.
    fn uint(&self, keys: &[&str], default: Option<u64>, cap: u64) -> Result<u64> {
        let found = keys.iter().find_map(|k| self.get(k).map(|v| (*k, v)));
        let (key, v) = match (found, default) {
            (Some(kv), _) => kv,
            (None, Some(d)) => return Ok(d),
            (None, None) => bail!("config.json: '{}' is missing", keys[0]),
        };
        let n = v.as_u64().ok_or_else(|| anyhow!("config.json: '{key}' is not a non-negative integer"))?;
        if n > cap {
            bail!("config.json: {key} is {n}, more than the cap of {cap}");
        }
        Ok(n)
    }

    /// Integer `key` if present; refused above `cap`.
    fn opt_uint(&self, key: &str, cap: u64) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.uint(&[key], None, cap).map(Some),
        }
    }

    /// Number `key`, or `default`; refused unless finite and positive.
    fn float(&self, key: &str, default: f64) -> Result<f32> {
        let x = match self.get(key) {
            None => default,
            Some(v) => v.as_f64().ok_or_else(|| anyhow!("config.json: '{key}' is not a number"))?,
        };
        if !(x.is_finite() && x > 0.0 && x < f32::MAX as f64) {
            bail!("config.json: {key} is {x}, not a positive number");
        }
        Ok(x as f32)
    }

    fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    fn flag(&self, key: &str) -> bool {
        self.get(key).and_then(Value::as_bool).unwrap_or(false)
    }

    /// Refuses `key` set to anything but null.
    fn must_be_null(&self, key: &str, what: &str) -> Result<()> {
        match self.get(key) {
            None => Ok(()),
            Some(v) => bail!("config.json: {key} is {}; {what} is not supported", shown(&v.to_string())),
        }
    }
}

/// The family of `architectures`, or an error naming it and the supported ones.
pub fn family(config: &Value) -> Result<Family> {
    let arch = config
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("config.json: no 'architectures' (supported: {})", supported()))?;
    if let Some((_, f)) = ARCHITECTURES.iter().find(|a| a.0 == arch) {
        return Ok(*f);
    }
    let hint = if arch == "Gemma3ForConditionalGeneration" {
        " (Gemma 3 with its vision tower; only the text-only Gemma3ForCausalLM checkpoints, 1B and 270M, convert)"
    } else {
        ""
    };
    bail!("config.json: architecture '{}' is not supported{hint} (supported: {})", shown(arch), supported())
}

/// The RoPE base of `rope_parameters` (transformers 5) or `rope_theta`; refuses any
/// rope scaling (`rope_scaling` / `rope_parameters.rope_type` other than "default"
/// with a factor other than 1). `layer_type` picks Gemma 3's per-layer-type entry.
fn rope(c: &Config, layer_type: Option<&str>, theta_key: &str, default: f64) -> Result<f32> {
    let params = ["rope_parameters", "rope_scaling"].into_iter().find_map(|k| c.get(k).map(|v| (k, v)));
    let Some((key, mut p)) = params else { return c.float(theta_key, default) };
    if let Some(entry) = layer_type.and_then(|t| p.get(t)) {
        p = entry;
    }
    let ty = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
    let factor = p.get("factor").and_then(Value::as_f64).unwrap_or(1.0);
    // "linear" or "dynamic" by a factor of 1 is no scaling.
    if !(ty == "default" || (matches!(ty, "linear" | "dynamic") && factor == 1.0)) {
        bail!("config.json: {key} asks for '{}' rope scaling (factor {factor}); not supported", shown(ty));
    }
    match p.get("rope_theta") {
        Some(_) => Config(p).float("rope_theta", default),
        None => c.float(theta_key, default),
    }
}

/// Gemma 3's sliding-window pattern `n` (layer `l` slides unless `l % n == n - 1`) from
/// `layer_types` or `sliding_window_pattern` (6 when both are absent).
fn sliding_pattern(c: &Config, n_layers: u64) -> Result<u64> {
    let Some(types) = c.get("layer_types") else {
        return c.uint(&["sliding_window_pattern"], Some(6), MAX_LAYERS);
    };
    let sliding: Vec<bool> = types
        .as_array()
        .and_then(|a| {
            a.iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Some(true),
                    Some("full_attention") => Some(false),
                    _ => None,
                })
                .collect()
        })
        .ok_or_else(|| {
            anyhow!("config.json: layer_types holds something other than sliding_attention and full_attention")
        })?;
    let n = sliding.iter().position(|&s| !s).map_or(0, |i| i as u64 + 1);
    let periodic = sliding.len() as u64 == n_layers
        && sliding.iter().enumerate().all(|(l, &s)| s == (n == 0 || (l as u64) % n < n - 1));
    if !periodic {
        bail!("config.json: layer_types is not a repeating pattern of sliding layers and one full layer");
    }
    Ok(n)
}

/// The hyperparameters of `config.json`, and whether the output head defaults to the
/// embedding (`tie_word_embeddings` when absent) for its architecture.
pub fn hparams(config: &Value) -> Result<(HParams, bool)> {
    let family = family(config)?;
    let c = Config(config);
    let hp = match family {
        // No Hugging Face architecture maps to it (`family` never returns it); its
        // importer is the ONNX one.
        Family::TorchEncoder => bail!("config.json: torch_encoder models are imported from ONNX only"),
        Family::Gpt2 => {
            let act = c.str("activation_function").unwrap_or("gelu_new");
            if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
                bail!(
                    "config.json: activation_function '{}' is not supported (supported: gelu_new, gelu_pytorch_tanh)",
                    shown(act)
                );
            }
            if c.flag("scale_attn_by_inverse_layer_idx")
                || c.get("scale_attn_weights").and_then(Value::as_bool) == Some(false)
            {
                bail!("config.json: GPT-2 attention scaling other than 1/sqrt(head_dim) is not supported");
            }
            let dim = c.uint(&["n_embd", "hidden_size"], Some(768), MAX_DIM)?;
            let n_heads = c.uint(&["n_head", "num_attention_heads"], Some(12), MAX_DIM)?;
            HParams {
                family,
                vocab: c.uint(&["vocab_size"], Some(50257), MAX_VOCAB)?,
                ctx: c.uint(&["n_positions", "max_position_embeddings"], Some(1024), MAX_CONTEXT)?,
                dim,
                n_layers: c.uint(&["n_layer", "num_hidden_layers"], Some(12), MAX_LAYERS)?,
                ffn: c.uint(&["n_inner"], Some(4 * dim), 4 * MAX_DIM)?,
                n_heads,
                n_kv_heads: n_heads,
                head_dim: None,
                rope_base: 10000.0,
                norm_eps: c.float("layer_norm_epsilon", 1e-5)?,
                sliding: None,
                attn_scale: None,
            }
        }
        Family::Llama | Family::Qwen2 | Family::Qwen3 | Family::Gemma3 => {
            let gemma = family == Family::Gemma3;
            let act_key = if gemma { "hidden_activation" } else { "hidden_act" };
            let act = c.str(act_key).or_else(|| c.str("hidden_act")).unwrap_or(if gemma {
                "gelu_pytorch_tanh"
            } else {
                "silu"
            });
            let want = if gemma { "gelu_pytorch_tanh" } else { "silu" };
            if act != want {
                bail!("config.json: {act_key} '{}' is not supported (this family needs {want})", shown(act));
            }
            if family == Family::Llama && (c.flag("attention_bias") || c.flag("mlp_bias")) {
                bail!("config.json: LLaMA with attention_bias or mlp_bias is not supported");
            }
            if matches!(family, Family::Qwen3 | Family::Gemma3) && c.flag("attention_bias") {
                bail!("config.json: attention_bias is not supported for this family");
            }
            if family == Family::Qwen2 && c.flag("use_sliding_window") {
                bail!("config.json: Qwen2 with use_sliding_window is not supported");
            }
            if gemma {
                c.must_be_null("final_logit_softcapping", "logit soft-capping")?;
                c.must_be_null("attn_logit_softcapping", "attention soft-capping")?;
            }
            if c.get("partial_rotary_factor").and_then(Value::as_f64).is_some_and(|f| f != 1.0) {
                bail!("config.json: partial_rotary_factor is not 1; partial rotary embeddings are not supported");
            }
            let dim = c.uint(&["hidden_size"], None, MAX_DIM)?;
            let n_heads = c.uint(&["num_attention_heads"], None, MAX_DIM)?;
            let n_layers = c.uint(&["num_hidden_layers"], None, MAX_LAYERS)?;
            let default_hd = match family {
                Family::Qwen3 => Some(128),
                Family::Gemma3 => Some(256),
                _ => None,
            };
            let hd = c.opt_uint("head_dim", MAX_DIM)?.or(default_hd).filter(|&hd| hd > 0);
            // Like the GGUF importer: a head dimension is stored only when it is not dim / heads.
            let head_dim = hd.filter(|&hd| n_heads == 0 || hd * n_heads != dim);
            let eff_hd = hd.unwrap_or(dim.checked_div(n_heads).unwrap_or(0));
            let (default_base, layer) = if gemma { (1_000_000.0, Some("full_attention")) } else { (10_000.0, None) };
            let rope_base = rope(&c, layer, "rope_theta", default_base)?;
            let (sliding, attn_scale) = if gemma {
                let window = c.uint(&["sliding_window"], Some(4096), MAX_CONTEXT)?;
                let pattern = sliding_pattern(&c, n_layers)?;
                let local = rope(&c, Some("sliding_attention"), "rope_local_base_freq", 10_000.0)?;
                let scalar = c.float("query_pre_attn_scalar", 256.0)?;
                let scale = (scalar != eff_hd as f32).then(|| 1.0 / scalar.sqrt());
                (Some((window, pattern, local)), scale)
            } else {
                (None, None)
            };
            let default_ctx = match family {
                Family::Gemma3 => 131_072,
                Family::Qwen2 | Family::Qwen3 => 32_768,
                _ => 2048,
            };
            HParams {
                family,
                vocab: c.uint(&["vocab_size"], None, MAX_VOCAB)?,
                ctx: c.uint(&["max_position_embeddings"], Some(default_ctx), MAX_CONTEXT)?,
                dim,
                n_layers,
                ffn: c.uint(&["intermediate_size"], None, 4 * MAX_DIM)?,
                n_heads,
                n_kv_heads: c.uint(&["num_key_value_heads"], Some(n_heads), MAX_DIM)?,
                head_dim,
                rope_base,
                norm_eps: c.float("rms_norm_eps", 1e-6)?,
                sliding,
                attn_scale,
            }
        }
    };
    hp.check("config.json")?;
    let tie_default = matches!(family, Family::Gemma3 | Family::Gpt2);
    Ok((hp, tie_default))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llama() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
               "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
               "vocab_size": 300, "rope_theta": 50000, "rms_norm_eps": 1e-5, "max_position_embeddings": 256})
    }

    #[test]
    fn llama_config() {
        let (hp, tied) = hparams(&llama()).unwrap();
        assert_eq!(
            (hp.dim, hp.n_layers, hp.ffn, hp.n_heads, hp.n_kv_heads, hp.vocab, hp.ctx),
            (64, 2, 128, 4, 2, 300, 256)
        );
        assert_eq!((hp.rope_base, hp.norm_eps, hp.head_dim, tied), (50000.0, 1e-5, None, false));
    }

    #[test]
    fn rope_parameters_and_scaling() {
        let mut c = llama();
        c["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 123456.0});
        assert_eq!(hparams(&c).unwrap().0.rope_base, 123456.0);
        c["rope_parameters"] = json!({"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0});
        let e = hparams(&c).unwrap_err().to_string();
        assert!(e.contains("'llama3' rope scaling"), "{e}");
    }

    #[test]
    fn gemma3_config() {
        let c = json!({"architectures": ["Gemma3ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 4,
            "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
            "vocab_size": 300, "sliding_window": 16, "query_pre_attn_scalar": 64,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
            "final_logit_softcapping": null, "attn_logit_softcapping": null});
        let (hp, tied) = hparams(&c).unwrap();
        assert_eq!(hp.sliding, Some((16, 3, 10000.0)));
        assert_eq!((hp.rope_base, hp.attn_scale, hp.head_dim, tied), (1e6, Some(0.125), None, true));
        let mut bad = c.clone();
        bad["layer_types"] = json!(["full_attention", "sliding_attention", "full_attention", "full_attention"]);
        assert!(hparams(&bad).unwrap_err().to_string().contains("not a repeating pattern"));
        let mut bad = c.clone();
        bad["final_logit_softcapping"] = json!(30.0);
        assert!(hparams(&bad).unwrap_err().to_string().contains("final_logit_softcapping is 30.0"));
    }

    #[test]
    fn refusals() {
        let e = hparams(&json!({"architectures": ["MistralForCausalLM"]})).unwrap_err().to_string();
        assert!(e.contains("'MistralForCausalLM' is not supported") && e.contains("GPT2LMHeadModel"), "{e}");
        let e = hparams(&json!({"architectures": ["Gemma3ForConditionalGeneration"]})).unwrap_err().to_string();
        assert!(e.contains("Gemma3ForConditionalGeneration"), "{e}");
        let mut c = llama();
        c["num_hidden_layers"] = json!(1u64 << 40);
        assert!(hparams(&c).unwrap_err().to_string().contains("more than the cap"));
    }
}
