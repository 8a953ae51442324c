//! Checking the files a command reads or writes before it does: a model or a conversion's
//! source must be a regular file (it is mapped, and mapping a pipe or a directory fails
//! with "No such device"); a text may be any stream but is read only up to a cap, so
//! that `/dev/zero` or a huge file cannot exhaust memory.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The text of a prompt given as `-f FILE` (`-`: standard input), at most
/// [`MAX_TEXT_BYTES`], in UTF-8; the file's bytes as they are (a final newline stays).
pub fn read_prompt(path: &Path) -> Result<String> {
    let bytes = read_capped(path, MAX_TEXT_BYTES, "the prompt")?;
    String::from_utf8(bytes).map_err(|e| {
        let name = if path.as_os_str() == "-" { "standard input".into() } else { path.display().to_string() };
        anyhow::anyhow!("{name}: the prompt is not UTF-8 (invalid byte at offset {})", e.utf8_error().valid_up_to())
    })
}

/// The most `arq score` reads of a text: 64 MiB, some 16 million tokens, hours of
/// scoring on the models arq runs.
pub const MAX_TEXT_BYTES: u64 = 64 << 20;

/// What kind of file `meta` is, for a refusal: "a directory", "a pipe (FIFO)", ...
fn kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a pipe (FIFO)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Errors unless `path` is a regular file (after symlinks): "X: no such file", "X is a
/// directory", "X is a pipe (FIFO), not a file".
pub fn regular_file(path: &Path) -> Result<()> {
    let meta = match fs::metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => bail!("{}: no such file", path.display()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        Ok(meta) => meta,
    };
    match kind(&meta) {
        _ if meta.is_file() => Ok(()),
        "a directory" => bail!("{} is a directory", path.display()),
        other => bail!("{} is {other}, not a file", path.display()),
    }
}

/// Errors when `path` exists and is not a regular file: "X is a directory", "X is a
/// device, not a file". For outputs, which are renamed into place (as root, a rename
/// over `/dev/full` replaced the device), and for inputs that are opened, not mapped,
/// where a FIFO without a writer would block the open forever. A missing path is left
/// to the caller's own open or create.
pub fn not_special(path: &Path) -> Result<()> {
    match fs::metadata(path) {
        Ok(meta) if !meta.is_file() => match kind(&meta) {
            "a directory" => bail!("{} is a directory", path.display()),
            other => bail!("{} is {other}, not a file", path.display()),
        },
        _ => Ok(()),
    }
}

/// The bytes of `path` (a file or a stream; `-` is standard input), refused past `cap`
/// bytes after reading at most `cap + 1`; `what` names the content in the refusal ("the
/// text").
pub fn read_capped(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().take(cap + 1).read_to_end(&mut bytes).context("cannot read standard input")?;
    } else {
        if path.is_dir() {
            bail!("{} is a directory", path.display());
        }
        let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        file.take(cap + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    }
    if bytes.len() as u64 > cap {
        bail!("{}: {what} is larger than the cap of {cap} bytes ({} MiB)", path.display(), cap >> 20);
    }
    Ok(bytes)
}
