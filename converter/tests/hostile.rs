//! The committed corpus of hostile inputs (`tests/fixtures/hostile/`, written by its
//! `make.py`) and misuse of the flags, through the real `arq` binary: each gives exit code
//! 1 with exactly one line on stderr (2 with clap's usage message for a flag out of its
//! range), names the value and the cap, prints no panic and no raw control character,
//! and ends within seconds in 1 GiB of address space. Before issue 12 these aborted,
//! allocated gigabytes, ran unbounded or wrote escape sequences to the terminal.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The address space `arq` gets: far below what any of the reproducers used to ask for.
const ADDRESS_SPACE: libc::rlim_t = 1 << 30;
/// The time any refusal may take (they take milliseconds; a debug build is slower).
const TIME: Duration = Duration::from_secs(20);

fn hostile(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hostile/").to_string() + name
}

fn model(rel: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../models/").to_string() + rel
}

fn tmpdir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hostile").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `arq args` with its address space capped at [`ADDRESS_SPACE`].
fn arq(args: &[&str]) -> (Output, Duration) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arq"));
    cmd.args(args);
    // SAFETY: runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: setrlimit is one, and nothing here allocates.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: ADDRESS_SPACE, rlim_max: ADDRESS_SPACE };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    let out = cmd.output().expect("run arq");
    (out, t0.elapsed())
}

/// Exit code `code`, stderr holding every one of `needles`, one line when `code` is 1,
/// no panic, no control character but the line ends, within [`TIME`].
fn refused(args: &[&str], code: i32, needles: &[&str]) {
    let ((out, took), what) = (arq(args), args.join(" "));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{what}: expected '{needle}' in: {err}");
    }
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{what}: {err}");
    assert!(!err.chars().any(|c| c.is_control() && c != '\n'), "{what}: raw control character in {err:?}");
    if code == 1 {
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: not one line: {err}");
        assert!(err.len() < 400, "{what}: a {}-byte error line", err.len());
    }
    assert!(took < TIME, "{what}: took {took:?}");
}

#[test]
fn hostile_gguf_files_are_refused_in_one_line() {
    let d = tmpdir("gguf");
    let out = d.join("out.arq");
    let cases: &[(&str, &[&str])] = &[
        ("block_count_4m.gguf", &["llama.block_count is 4194304", "cap of 1024"]),
        ("block_count_1m.gguf", &["llama.block_count is 1048576", "cap of 1024"]),
        ("embedding_length_huge.gguf", &["llama.embedding_length is 1099511627776", "cap of 65536"]),
        ("tensor_count_huge.gguf", &["tensor count is 1099511627776", "cap of 65536"]),
        ("kv_count_huge.gguf", &["metadata count is 1099511627776", "cap of 65536"]),
        ("array_len_huge.gguf", &["'tokenizer.ggml.tokens' is 1099511627776", "cap of 16777216"]),
        ("string_len_huge.gguf", &["1099511627776 bytes long", "cap of 16777216"]),
        ("key_escape.gguf", &["duplicate metadata key '\\x1b[2J\\x1b]0;owned\\x07\\r'"]),
        ("arch_escape.gguf", &["unsupported architecture '\\x1b[31mllama\\r\\x1b[0m'"]),
        ("long_key.gguf", &["duplicate metadata key 'kkkk", "k…'"]),
        ("nan_weight.gguf", &["tensor 'token_embd.weight' holds NaN", "must be finite"]),
    ];
    for (file, needles) in cases {
        refused(&["convert", &hostile(file), "-o", s(&out)], 1, needles);
    }
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0, "a temporary file was left");
}

#[test]
fn hostile_npy_files_are_refused_in_one_line() {
    let m = model("pixelcnn/digits17-q8.arq");
    let cases: &[(&str, &[&str])] = &[
        ("npy_shape_20k_digits.npy", &["integer 99999999999999999999… (20000 digits) is too large"]),
        ("npy_shape_huge.npy", &["shape (18446744073709551615, 8, 8)"]),
        ("npy_shape_overclaims.npy", &["data is 64 bytes, but shape (1099511627776, 8, 8)"]),
    ];
    for (file, needles) in cases {
        refused(&["score", &m, &hostile(file)], 1, needles);
    }
}

#[test]
fn streams_directories_and_pipes_as_input() {
    use std::os::unix::fs::FileTypeExt;
    let (text, pixel) = (model("tinygpt/tinygpt-q8.arq"), model("pixelcnn/digits17-q8.arq"));
    // Read to the cap, never to the end: /dev/zero used to take 2.1 GB, then all memory.
    refused(&["score", &text, "/dev/zero"], 1, &["/dev/zero: the text is larger than the cap of 67108864 bytes"]);
    refused(&["score", &pixel, "/dev/zero"], 1, &["/dev/zero: not an .npy file"]);
    let d = tmpdir("dirs");
    let out = d.join("out.arq");
    refused(&["convert", s(&d), "-o", s(&out)], 1, &["is a directory"]);
    refused(&["generate", s(&d), "-p", "x"], 1, &["is a directory"]);
    refused(&["score", &text, s(&d)], 1, &["is a directory"]);
    refused(&["convert", &model("tinygpt/tinygpt.onnx"), "-o", s(&d)], 1, &["is a directory"]);
    let fifo = d.join("fifo");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    refused(&["convert", s(&fifo), "-o", s(&out)], 1, &["is a pipe (FIFO), not a file"]);
    refused(&["inspect", s(&fifo)], 1, &["is a pipe (FIFO), not a file"]);
    // A FIFO without a writer used to block the PNG reader's open forever; as an
    // output, a special file is never renamed over (as root, that replaced /dev/full).
    let (pixel, f) = (model("pixelcnn/digits17-q8.arq"), s(&fifo));
    refused(&["impute", &pixel, "--image", f, "--mask", f, "-o", s(&d.join("o.png"))], 1, &["is a pipe (FIFO)"]);
    refused(&["impute", &pixel, "--image", s(&d), "--mask", f, "-o", s(&d.join("o.png"))], 1, &["is a directory"]);
    refused(&["sample", &pixel, "-n", "1", "-o", f], 1, &["is a pipe (FIFO), not a file"]);
    refused(&["sample", &pixel, "-n", "1", "-o", s(&d.join("o.png")), "--npy", f], 1, &["is a pipe (FIFO)"]);
    let onnx = model("tinygpt/tinygpt.onnx");
    refused(&["convert", &onnx, "-o", f, "--force"], 1, &["is a pipe (FIFO), not a file"]);
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
}

#[test]
fn flags_beyond_their_caps_are_refused_before_allocating() {
    let (text, pixel) = (model("tinygpt/tinygpt-q8.arq"), model("pixelcnn/digits17-q8.arq"));
    let d = tmpdir("flags");
    let png = d.join("out.png");
    let png = s(&png);
    let flag = |args: &[&str], needles: &[&str]| refused(args, 2, needles);
    // 640 GB of grid, unbounded sampling, 3.7 GB of particles.
    flag(&["sample", &pixel, "-o", png, "-n", "1", "--scale", "100000"], &["100000", "0..=1024"]);
    flag(&["sample", &pixel, "-o", png, "-n", "100000"], &["100000", "0..=4096"]);
    flag(&["sample", &pixel, "-o", png, "--cols", "100000"], &["100000", "0..=4096"]);
    let (image, mask) = (png, png);
    flag(&["impute", &pixel, "--image", image, "--mask", mask, "-o", png, "--particles", "10000000"], &["0..=65536"]);
    flag(&["generate", &text, "-p", "x", "-n", "100000000"], &["100000000", "0..=16777216"]);
    flag(&["generate", &text, "-p", "x", "--ctx", "100000000"], &["0..=16777216"]);
    flag(&["score", &text, "x.txt", "--ctx", "100000000"], &["0..=16777216"]);
    flag(&["inspect", &text, "--ctx", "100000000"], &["0..=16777216"]);
    flag(&["bench", &text, "--reps", "100000"], &["0..=1000"]);
    flag(&["bench", &text, "--naive-reps", "100000"], &["0..=1000"]);
    flag(&["bench", &text, "--prompt-tokens", "100000000"], &["0..=16777216"]);
    flag(&["bench", &text, "--gen-tokens", "100000000"], &["0..=16777216"]);
    flag(&["generate", &text, "-p", "x", "--threads", "100000"], &["1..=256"]);
    // Within each flag's cap, but a grid past 16384 pixels a side: refused before sampling.
    refused(
        &["sample", &pixel, "-o", png, "-n", "4096", "--scale", "1024"],
        1,
        &["would be 524353x524353 pixels", "cap of 16384 a side"],
    );
    refused(
        &["sample", &pixel, "-o", png, "-n", "3", "--scale", "1024", "--cols", "3"],
        1,
        &["24580x8194", "cap of 16384"],
    );
    assert!(!d.join("out.png").exists());
}

/// NaN in an ONNX initializer is refused, naming the tensor (it used to be written, and
/// the report's "worst" line skipped it).
#[cfg(feature = "onnx")]
#[test]
fn nan_weights_in_onnx_are_refused() {
    use prost::Message;
    use tract_onnx::pb;
    let d = tmpdir("onnx-nan");
    for (src, name) in [("pixelcnn/digits17.onnx", "nan17.onnx"), ("tinygpt/tinygpt.onnx", "nangpt.onnx")] {
        let mut m = pb::ModelProto::decode(std::fs::read(model(src)).unwrap().as_slice()).unwrap();
        let graph = m.graph.as_mut().unwrap();
        let t = graph.initializer.iter_mut().filter(|t| t.data_type == 1).max_by_key(|t| t.raw_data.len()).unwrap();
        t.raw_data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        let path = d.join(name);
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        refused(&["convert", s(&path), "-o", s(&d.join("out.arq"))], 1, &["holds NaN at element 0", "must be finite"]);
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Two conversions to the same new path: one writes it, the other is refused (it used
/// to print "wrote" too, and the last rename won).
#[test]
fn conversions_to_one_output_do_not_race() {
    let d = tmpdir("race");
    let onnx = model("tinygpt/tinygpt.onnx");
    for round in 0..3 {
        let out = d.join(format!("out{round}.arq"));
        let spawn = || {
            Command::new(env!("CARGO_BIN_EXE_arq"))
                .args(["convert", &onnx, "-o", s(&out)])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let wrote = outs.iter().filter(|o| o.status.success()).count();
        let errs: Vec<String> = outs.iter().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).collect();
        assert_eq!(wrote, 1, "round {round}: {errs:?}");
        let refused = errs.iter().find(|e| e.starts_with("error:")).unwrap();
        assert!(
            refused.contains("appeared while converting; not replaced (use --force)")
                || refused.contains("already exists"),
            "{refused}"
        );
    }
    assert!(listing(&d).iter().all(|n| !n.contains("arq-tmp")), "{:?}", listing(&d));
    // --force replaces, and the name never names a directory.
    let out = d.join("out0.arq");
    refused(&["convert", &onnx, "-o", s(&out)], 1, &["already exists (use --force to overwrite)"]);
    assert!(arq(&["convert", &onnx, "-o", s(&out), "--force"]).0.status.success());
}

/// A temp file left by a killed conversion is removed by the next conversion to the
/// same output; one of a live process is not.
#[test]
fn stale_temp_files_are_removed_live_ones_kept() {
    let d = tmpdir("stale");
    let out = d.join("model.arq");
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = d.join(format!(".model.arq.arq-tmp.{dead}"));
    let live = d.join(format!(".model.arq.arq-tmp.{}", std::process::id()));
    let other = d.join(format!(".other.arq.arq-tmp.{dead}"));
    for p in [&stale, &live, &other] {
        std::fs::write(p, b"partial").unwrap();
    }
    let (o, _) = arq(&["convert", &model("tinygpt/tinygpt.onnx"), "-o", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!stale.exists(), "the stale temp file was kept");
    assert!(live.exists() && other.exists(), "{:?}", listing(&d));
}

/// A write error names the output, not the temp file (a full disk used to say only
/// "No space left on device"): here a file-size limit makes the write fail.
#[test]
fn write_errors_name_the_output() {
    use std::os::unix::process::CommandExt;
    let d = tmpdir("full");
    let out = d.join("out.arq");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arq"));
    cmd.args(["convert", &model("tinygpt/tinygpt.onnx"), "-o", s(&out)]);
    // SAFETY: between fork and exec; signal and setrlimit are async-signal-safe. An
    // ignored SIGXFSZ stays ignored across exec, so the write fails with EFBIG instead.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit { rlim_cur: 4096, rlim_max: 4096 };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot write {}: File too large", out.display())), "{err}");
    assert_eq!(listing(&d), Vec::<String>::new());
}

/// SIGTERM during a conversion leaves neither an output nor a temp file, at whatever
/// point it comes (the temp file exists only while the file is written and validated).
#[test]
fn sigterm_leaves_no_temp_file() {
    let d = tmpdir("sigterm");
    let onnx = model("tinygpt/tinygpt.onnx");
    let mut seen_temp = 0;
    for delay_ms in (0..200).step_by(10) {
        let out = d.join("out.arq");
        let mut child = Command::new(env!("CARGO_BIN_EXE_arq"))
            .args(["convert", &onnx, "-o", s(&out)])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(delay_ms) {
            if listing(&d).iter().any(|n| n.contains("arq-tmp")) {
                seen_temp += 1;
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        // SAFETY: signals our own child, which has not been waited for yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = child.wait().unwrap();
        let left = listing(&d);
        assert!(left.iter().all(|n| !n.contains("arq-tmp")), "after {delay_ms} ms ({status:?}): {left:?}");
        let _ = std::fs::remove_file(&out);
    }
    println!("temp file seen before SIGTERM in {seen_temp} of 20 runs");
}
