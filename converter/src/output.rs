//! Writing a converted file: the path checks every conversion makes first, and the
//! atomic, validated write that ends it.
//!
//! Conversions cannot race or litter: the data goes to a temp file `.OUT.arq-tmp.PID`
//! beside the output, and the last step creates the output exclusively (a hard link,
//! which fails if the output appeared meanwhile) unless `--force` asked to replace it.
//! A run to an output removes the temp files that earlier runs to it left behind when
//! their process is gone (killed by SIGKILL, say); SIGINT and SIGTERM remove the temp
//! file of the write in progress before the process ends.

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
    check_output(input, out, force)
}

/// [`check_paths`] for an input that is a directory of files (a Hugging Face model):
/// the output is not the directory, nor any file in it that `reads` names.
pub fn check_dir_paths(dir: &Path, out: &Path, force: bool, reads: impl Fn(&str) -> bool) -> Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    check_output(dir, out, force)?;
    let (Ok(d), Some(name)) = (dir.canonicalize(), out.file_name()) else { return Ok(()) };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if parent.canonicalize().is_ok_and(|p| p == d) && reads(&name.to_string_lossy()) {
        bail!("output {} is one of the input files", out.display());
    }
    Ok(())
}

/// The checks of the output against one input path.
fn check_output(input: &Path, out: &Path, force: bool) -> Result<()> {
    crate::input::not_special(out)?;
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

/// What marks a temp file of this module: `.OUT.arq-tmp.PID`.
const TEMP_TAG: &str = ".arq-tmp.";

/// The name part of `out` for its temp files.
fn out_name(out: &Path) -> String {
    out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out.arq".into())
}

/// Temporary path next to `out`, so the final link or rename stays on one filesystem.
fn temp_path(out: &Path) -> PathBuf {
    out.with_file_name(format!(".{}{TEMP_TAG}{}", out_name(out), std::process::id()))
}

/// Whether process `pid` exists (`kill(pid, 0)` succeeds, or fails only for permission).
fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes the temp files of earlier conversions to `out` whose process no longer
/// exists (and one of this process's id, which can only be left from a process that had
/// the id before). A file of a live process is never touched; failures are ignored, the
/// conversion does not depend on them.
fn remove_stale_temps(out: &Path) {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = format!(".{}{TEMP_TAG}", out_name(out));
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&prefix)).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || !pid_alive(pid) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether the runtime's loader for the file's architecture accepts it (for a text
/// model, its tokenizer tables too).
pub fn check_loads(file: ArqFile<'_>) -> Result<(), arq::Error> {
    match Loaded::from_file(file)? {
        Loaded::Text(m) => m.tokenizer().map(|_| ()),
        Loaded::Pixel(_) | Loaded::Graph(_) => Ok(()),
        Loaded::Recurrent(m) if m.head().is_some() => Ok(()),
        Loaded::Recurrent(m) => m.tokenizer().map(|_| ()),
    }
}

/// Writes `bytes` to `out` atomically: a temp file, fsync, re-open and validate with
/// the runtime's reader (structure, checksum, model), then a hard link to `out`, which
/// fails if `out` appeared since [`check_paths`] (with `force`, a rename over it).
/// I/O errors name `out`.
pub fn write_validated(bytes: &[u8], out: &Path, force: bool) -> Result<()> {
    remove_stale_temps(out);
    let tmp = temp_path(out);
    let _cleanup = signals::RemoveOnSignal::new(&tmp);
    let result = (|| -> Result<()> {
        let cannot_write = || format!("cannot write {}", out.display());
        let f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp).with_context(cannot_write)?;
        let mut bw = BufWriter::new(f);
        bw.write_all(bytes).with_context(cannot_write)?;
        bw.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all()).with_context(cannot_write)?;
        let mapped = ModelBytes::map(&tmp)?;
        let file = ArqFile::parse(mapped.bytes()).map_err(|e| anyhow!("written file failed validation: {e}"))?;
        file.verify_checksum().map_err(|e| anyhow!("written file failed validation: {e}"))?;
        check_loads(file).map_err(|e| anyhow!("written file failed validation: {e}"))?;
        drop(mapped);
        move_into_place(&tmp, out, force)
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// The final step: `tmp` becomes `out`. Without `force`, a hard link, which never
/// replaces a file that appeared meanwhile (another conversion to the same new path);
/// on a filesystem without hard links, a rename after one more check.
fn move_into_place(tmp: &Path, out: &Path, force: bool) -> Result<()> {
    let appeared = || anyhow!("{} appeared while converting; not replaced (use --force)", out.display());
    if force {
        return fs::rename(tmp, out).with_context(|| format!("cannot rename into {}", out.display()));
    }
    match fs::hard_link(tmp, out) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(appeared()),
        Err(_) if out.exists() => Err(appeared()),
        Err(_) => fs::rename(tmp, out).with_context(|| format!("cannot rename into {}", out.display())),
    }
}

/// Removal of the temp file being written when SIGINT or SIGTERM ends the process.
mod signals {
    use std::ffi::CString;
    use std::path::Path;
    use std::ptr;
    use std::sync::atomic::{AtomicPtr, Ordering};

    /// The temp file the handler removes; null when no write is in progress. One slot:
    /// a second write at the same time in one process goes without signal cleanup.
    static TEMP: AtomicPtr<libc::c_char> = AtomicPtr::new(ptr::null_mut());
    const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

    extern "C" fn on_signal(sig: libc::c_int) {
        let p = TEMP.swap(ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: unlink, signal and raise are async-signal-safe; `p` is null or the
        // NUL-terminated path a live guard owns (it clears the slot before freeing it).
        unsafe {
            if !p.is_null() {
                libc::unlink(p);
            }
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }

    /// Holds the handlers while a temp file exists; restores the previous ones on drop.
    pub struct RemoveOnSignal {
        path: Option<CString>,
        previous: [libc::sighandler_t; 2],
    }

    impl RemoveOnSignal {
        pub fn new(tmp: &Path) -> Self {
            use std::os::unix::ffi::OsStrExt;
            let mut guard = RemoveOnSignal { path: None, previous: [libc::SIG_DFL; 2] };
            let Ok(path) = CString::new(tmp.as_os_str().as_bytes()) else { return guard };
            let claimed =
                TEMP.compare_exchange(ptr::null_mut(), path.as_ptr().cast_mut(), Ordering::SeqCst, Ordering::SeqCst);
            if claimed.is_err() {
                return guard;
            }
            let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            for (i, &sig) in SIGNALS.iter().enumerate() {
                // SAFETY: installs a handler that only makes async-signal-safe calls.
                guard.previous[i] = unsafe { libc::signal(sig, handler) };
            }
            guard.path = Some(path);
            guard
        }
    }

    impl Drop for RemoveOnSignal {
        fn drop(&mut self) {
            if self.path.is_none() {
                return;
            }
            for (i, &sig) in SIGNALS.iter().enumerate() {
                // SAFETY: puts back the disposition that was there before `new`.
                unsafe { libc::signal(sig, self.previous[i]) };
            }
            TEMP.store(ptr::null_mut(), Ordering::SeqCst);
        }
    }
}
