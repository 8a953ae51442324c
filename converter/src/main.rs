//! `arq`: convert models to `.arq`, inspect them, generate, predict and score.
//!
//! Exit codes: 0 on success, 1 on an error (one line on stderr), 2 for bad arguments
//! (clap's usage message).

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`arq inspect m.arq | head`) instead of failing on the broken pipe.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; restores the default
    // disposition of one signal, which the Rust runtime set to ignore.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // lavapipe probes for a Wayland display when wgpu opens it, and libwayland prints an
    // error line on a headless machine without XDG_RUNTIME_DIR; give it a directory to look
    // in (and find nothing) so `--backend gpu` output stays clean. Set before any thread.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    std::panic::set_hook(Box::new(|info| {
        eprintln!("arq: internal error: {info}");
    }));
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", arq_convert::message::line(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}
