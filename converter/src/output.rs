//! Writing a converted file: the path checks every conversion makes first, and the
//! atomic, validated write that ends it.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use arq::format::ArqFile;

use crate::aligned::ModelBytes;
use crate::model::Loaded;

/// The checks every conversion makes before reading anything: the input exists, the
/// output does not (unless `force`), and they are not the same file.
pub fn check_paths(input: &Path, out: &Path, force: bool) -> Result<()> {
    crate::input::regular_file(input)?;
    if out.is_dir() {
        bail!("{} is a directory", out.display());
    }
    if out.exists() && !force {
        bail!("{} already exists (use --force to overwrite)", out.display());
    }
    if let (Ok(a), Ok(b)) = (input.canonicalize(), out.canonicalize()) {
        if a == b {
            bail!("output {} is the input file", out.display());
        }
    }
    Ok(())
}

/// Temporary path next to `out`, so the final rename stays on one filesystem.
fn temp_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out.arq".into());
    out.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Whether the runtime's loader for the file's architecture accepts it (for a text
/// model, its tokenizer tables too).
pub fn check_loads(file: ArqFile<'_>) -> Result<(), arq::Error> {
    match Loaded::from_file(file)? {
        Loaded::Text(m) => m.tokenizer().map(|_| ()),
        Loaded::Pixel(_) => Ok(()),
    }
}

/// Writes `bytes` to `out` atomically: a temp file, fsync, re-open and validate with
/// the runtime's reader (structure, checksum, model), then rename.
pub fn write_validated(bytes: &[u8], out: &Path) -> Result<()> {
    let tmp = temp_path(out);
    let result = (|| -> Result<()> {
        let f = fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut bw = BufWriter::new(f);
        bw.write_all(bytes)?;
        bw.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        let mapped = ModelBytes::map(&tmp)?;
        let file = ArqFile::parse(mapped.bytes()).map_err(|e| anyhow!("written file failed validation: {e}"))?;
        file.verify_checksum().map_err(|e| anyhow!("written file failed validation: {e}"))?;
        check_loads(file).map_err(|e| anyhow!("written file failed validation: {e}"))?;
        fs::rename(&tmp, out).with_context(|| format!("cannot rename into {}", out.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
