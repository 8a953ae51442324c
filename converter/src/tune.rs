//! The machine's kernel settings ([`arq::kernels::tune`]): where they come from and the
//! cache `arq tune` writes.
//!
//! Every tier is bit-exact with the scalar contract, so these settings change speed
//! only. In order of precedence: the environment (`ARQ_PREFETCH` in bytes,
//! `ARQ_DECODE_TIER` = `own` | `avx2`, `ARQ_DECODE_ROWS` = `tile` | `one`), then the
//! cache file written by `arq tune` when it was measured on a CPU of the same model,
//! then the defaults for the CPU's vendor ([`vendor_default`]).
//!
//! The cache is `$ARQ_TUNE_FILE`, else `$XDG_CACHE_HOME/arq/tune.json`, else
//! `$HOME/.cache/arq/tune.json`. A cache that cannot be read, is malformed or belongs
//! to another CPU is ignored (the defaults apply): it only ever makes things faster.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use arq::kernels::tune::{self, DecodeRows, DecodeTier, Tuning, MAX_PREFETCH};
use serde_json::json;

/// Where the settings in force came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    /// The cache file at this path.
    Cache(PathBuf),
    Env,
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Default => format!("defaults for {}", vendor()),
            Source::Cache(p) => format!("measured by arq tune ({})", p.display()),
            Source::Env => "ARQ_PREFETCH / ARQ_DECODE_TIER / ARQ_DECODE_ROWS".into(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Cache(_) => "arq tune",
            Source::Env => "env",
        }
    }
}

/// The largest cache file read (it holds a few hundred bytes).
const MAX_CACHE_BYTES: u64 = 64 * 1024;

/// The CPU this process runs on, as the cache keys it: `/proc/cpuinfo`'s model name,
/// family, model and stepping (Linux), else the architecture.
pub fn cpu_id() -> String {
    match cpuinfo_field("model name") {
        Some(model) => {
            let extra: Vec<String> =
                ["cpu family", "model", "stepping"].iter().filter_map(|f| cpuinfo_field(f)).collect();
            format!("{model} ({})", extra.join("/"))
        }
        None => std::env::consts::ARCH.to_string(),
    }
}

/// The first `name : value` line of `/proc/cpuinfo` (Linux), its value trimmed.
fn cpuinfo_field(name: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines().filter_map(|l| l.split_once(':')).find(|(k, _)| k.trim() == name).map(|(_, v)| v.trim().to_string())
}

/// The CPU vendor as `/proc/cpuinfo` names it (`AuthenticAMD`, `GenuineIntel`), or
/// `unknown`.
fn vendor() -> String {
    cpuinfo_field("vendor_id").unwrap_or_else(|| "unknown".into())
}

/// The settings before `arq tune` has run, from what was measured on three CPUs: on an
/// AMD EPYC Zen 4 (family 25) one row at a time decoded about a third faster than the
/// tiles, with the prefetch distance of little effect; on an AMD EPYC Zen 5 (family 26)
/// the tiles with 8 KiB of prefetch decoded 15-25 % faster than one row at a time at 1
/// thread and 5-20 % at 2 (`arq tune`, and `arq bench` alternating both), as on a
/// Sapphire Rapids, where they were the fastest too (the kernels' own defaults, kept for
/// every CPU but AMD's family 25).
pub fn vendor_default() -> Tuning {
    let family_25 = vendor() == "AuthenticAMD" && cpuinfo_field("cpu family").as_deref() == Some("25");
    if family_25 {
        Tuning { decode_rows: DecodeRows::One, ..Tuning::default() }
    } else {
        Tuning::default()
    }
}

/// The cache file's path, if a home or cache directory is known.
pub fn cache_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ARQ_TUNE_FILE") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("arq").join("tune.json"))
}

/// The settings in force after [`apply`], and their source.
static APPLIED: std::sync::Mutex<Option<(Tuning, Source)>> = std::sync::Mutex::new(None);

/// Sets the kernels' settings from the environment, else this CPU's cache entry, else
/// the defaults. A malformed environment value is an error; a bad cache is ignored.
pub fn apply() -> Result<(Tuning, Source)> {
    let (t, source) = match from_env()? {
        Some(t) => (t, Source::Env),
        None => match cache_path().and_then(|p| read_cache(&p).map(|t| (t, p))) {
            Some((t, p)) => (t, Source::Cache(p)),
            None => (vendor_default(), Source::Default),
        },
    };
    tune::set(t);
    *APPLIED.lock().unwrap_or_else(|e| e.into_inner()) = Some((t, source.clone()));
    Ok((t, source))
}

/// What [`apply`] set (the defaults if it has not run).
pub fn applied() -> (Tuning, Source) {
    APPLIED.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or((tune::get(), Source::Default))
}

/// The settings as JSON (for `bench --json` and `tune --json`).
pub fn to_json(t: &Tuning, source: &Source) -> serde_json::Value {
    json!({
        "prefetch_bytes": t.prefetch,
        "decode_tier": t.decode_tier.name(),
        "decode_rows": t.decode_rows.name(),
        "source": source.name(),
    })
}

fn from_env() -> Result<Option<Tuning>> {
    let prefetch = std::env::var("ARQ_PREFETCH").ok();
    let tier = std::env::var("ARQ_DECODE_TIER").ok();
    let rows = std::env::var("ARQ_DECODE_ROWS").ok();
    if prefetch.is_none() && tier.is_none() && rows.is_none() {
        return Ok(None);
    }
    // What the environment leaves out keeps this CPU's default.
    let mut t = vendor_default();
    if let Some(p) = prefetch {
        t.prefetch = match p.trim().parse::<usize>() {
            Ok(n) if n <= MAX_PREFETCH => n,
            _ => bail!("ARQ_PREFETCH must be a byte count in 0..={MAX_PREFETCH}, not {:?}", p),
        };
    }
    if let Some(d) = tier {
        t.decode_tier =
            DecodeTier::parse(&d).with_context(|| format!("ARQ_DECODE_TIER must be own or avx2, not {:?}", d))?;
    }
    if let Some(r) = rows {
        t.decode_rows =
            DecodeRows::parse(&r).with_context(|| format!("ARQ_DECODE_ROWS must be tile or one, not {:?}", r))?;
    }
    Ok(Some(t))
}

/// This CPU's entry of the cache at `path`, if the file holds one that is valid.
fn read_cache(path: &std::path::Path) -> Option<Tuning> {
    let text = crate::input::read_capped(path, MAX_CACHE_BYTES, "tune cache").ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    if v.get("cpu")?.as_str()? != cpu_id() {
        return None;
    }
    let prefetch = usize::try_from(v.get("prefetch_bytes")?.as_u64()?).ok().filter(|&p| p <= MAX_PREFETCH)?;
    let decode_tier = DecodeTier::parse(v.get("decode_tier")?.as_str()?)?;
    let decode_rows = DecodeRows::parse(v.get("decode_rows")?.as_str()?)?;
    Some(Tuning { prefetch, decode_tier, decode_rows })
}

/// Writes `t` as this CPU's settings to the cache (replacing the file atomically), with
/// `measured` (what `arq tune` timed) for the record. Returns the path.
pub fn write_cache(t: &Tuning, measured: serde_json::Value) -> Result<PathBuf> {
    let path = cache_path().context("no cache directory: set ARQ_TUNE_FILE, XDG_CACHE_HOME or HOME")?;
    let dir = path.parent().context("the tune cache path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let body = json!({
        "cpu": cpu_id(),
        "arq": env!("CARGO_PKG_VERSION"),
        "prefetch_bytes": t.prefetch,
        "decode_tier": t.decode_tier.name(),
        "decode_rows": t.decode_rows.name(),
        "measured": measured,
    });
    let tmp = dir.join(format!(".tune.json.{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&body)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(path)
}
