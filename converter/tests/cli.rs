//! The `arq` binary as a user runs it: outputs, JSON shapes, and bad input — a one-line
//! error, exit code 1 (2 for bad arguments), no panic, no partial output, input intact.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn arq<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arq")).args(args).output().expect("run arq")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny_model(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.arq");
    std::fs::write(&p, common::tiny_llama_arq(42)).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exit code `code`, exactly one line on stderr that contains `needle`, no panic text.
fn assert_error(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
    if code == 1 {
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    }
}

fn only_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn generate_is_deterministic_for_a_seed_and_reports_speed() {
    let d = tmpdir("generate");
    let m = tiny_model(&d);
    let run = |seed: &str| arq(&["generate", s(&m), "-p", "hello", "-n", "12", "--temp", "1.0", "--seed", seed]);
    let (a, b, c) = (run("7"), run("7"), run("8"));
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
    assert_ne!(a.stdout, c.stdout);
    assert!(String::from_utf8_lossy(&a.stdout).starts_with("hello"));
    let err = String::from_utf8_lossy(&a.stderr);
    assert!(err.contains("prompt: 5 tokens") && err.contains("generation: ") && err.contains("tok/s"), "{err}");
    let chat = arq(&["generate", s(&m), "--chat", "-p", "hi", "-n", "4", "--temp", "0"]);
    assert!(chat.status.success(), "{}", String::from_utf8_lossy(&chat.stderr));
}

#[test]
fn next_score_and_inspect_print_the_documented_json() {
    let d = tmpdir("json");
    let m = tiny_model(&d);
    let out = arq(&["next", s(&m), "-p", "abc", "--top", "5", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let top = v["top"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    assert!(top[0]["prob"].as_f64().unwrap() >= top[4]["prob"].as_f64().unwrap());

    let text = d.join("essay.txt");
    std::fs::write(&text, "The quick brown fox jumps over the lazy dog. ".repeat(4)).unwrap();
    let out = arq(&["score", s(&m), s(&text), "--json", "--per-token", "--ctx", "64"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 180 bytes = 180 byte tokens; no BOS, so the first token is the condition.
    assert_eq!(v["tokens"], 179);
    assert!(v["windows"]["count"].as_u64().unwrap() > 1, "ctx 64 < 180 tokens needs windows");
    let nll = v["nll_nats"].as_f64().unwrap();
    let per: Vec<f64> = v["per_token"].as_array().unwrap().iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
    assert_eq!(per.len(), 179);
    assert!((nll + per.iter().sum::<f64>()).abs() < 1e-6);
    let ppl = v["perplexity"].as_f64().unwrap();
    assert!((ppl - (nll / 179.0).exp()).abs() < 1e-9);
    assert!((v["bits_per_token"].as_f64().unwrap() - nll / 179.0 / std::f64::consts::LN_2).abs() < 1e-9);
    for key in ["pos", "id", "logprob", "top_id", "top_logprob"] {
        assert!(v["per_token"][0].get(key).is_some(), "{key}");
    }

    let out = arq(&["inspect", s(&m), "--ctx", "64", "--verify", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hyperparameters"]["layers"], 2);
    assert_eq!(v["tokenizer"]["vocab"], 259);
    assert!(v["arena"]["bytes"].as_u64().unwrap() > 0);
}

#[test]
fn bench_reports_the_documented_json() {
    let d = tmpdir("bench");
    let m = tiny_model(&d);
    let out =
        arq(&["bench", s(&m), "--prompt-tokens", "16", "--gen-tokens", "8", "--reps", "2", "--threads", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["threads"], 2);
    for key in ["load_ms", "first_token_ms", "prompt_tokens_per_s", "gen_tokens_per_s", "peak_rss_bytes"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {}", v[key]);
    }
    let too_long = arq(&["bench", s(&m), "--prompt-tokens", "60", "--gen-tokens", "8"]);
    assert_error(&too_long, 1, "exceed the model's context");
}

#[test]
fn bad_inputs_fail_cleanly() {
    let d = tmpdir("bad");
    let m = tiny_model(&d);
    let out_arq = d.join("out.arq");

    assert_error(&arq(&["convert", s(&d.join("missing.gguf")), "-o", s(&out_arq)]), 1, "no such file");
    let text = d.join("notes.txt");
    std::fs::write(&text, "this is not a model\n").unwrap();
    assert_error(&arq(&["convert", s(&text), "-o", s(&out_arq)]), 1, "not a GGUF");
    let gpt9 = d.join("gpt9.gguf");
    let gguf = common::gguf_with_strings(&[("general.architecture", "gpt9")]);
    std::fs::write(&gpt9, &gguf).unwrap();
    assert_error(&arq(&["convert", s(&gpt9), "-o", s(&out_arq)]), 1, "unsupported architecture 'gpt9'");
    assert_eq!(std::fs::read(&gpt9).unwrap(), gguf, "input modified");
    assert_error(&arq(&["convert", s(&gpt9), "-o", s(&out_arq), "--quant", "q3"]), 2, "q3");

    // Nothing but the inputs is left behind: no partial or temporary output.
    assert_eq!(only_files(&d), ["gpt9.gguf", "notes.txt", "tiny.arq"]);

    // An existing output is not overwritten without --force.
    assert_error(&arq(&["convert", s(&gpt9), "-o", s(&m)]), 1, "already exists");

    // Truncated and corrupted .arq files.
    let bytes = std::fs::read(&m).unwrap();
    let trunc = d.join("trunc.arq");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    assert_error(&arq(&["generate", s(&trunc), "-p", "x"]), 1, "truncated");
    let mut bad = bytes.clone();
    bad[0] = b'X';
    let badmagic = d.join("badmagic.arq");
    std::fs::write(&badmagic, &bad).unwrap();
    assert_error(&arq(&["inspect", s(&badmagic)]), 1, "not an .arq file");
    let mut flipped = bytes.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 0x55;
    let corrupt = d.join("corrupt.arq");
    std::fs::write(&corrupt, &flipped).unwrap();
    assert_error(&arq(&["inspect", s(&corrupt), "--verify"]), 1, "checksum mismatch");
    assert_error(&arq(&["score", s(&m), s(&d.join("nope.txt"))]), 1, "cannot read");

    // Prompt longer than the context; context longer than the model's; bad sampler args.
    let long = "word ".repeat(40);
    assert_error(&arq(&["generate", s(&m), "-p", &long, "--ctx", "16"]), 1, "longer than the context");
    assert_error(&arq(&["generate", s(&m), "-p", "x", "--ctx", "100000"]), 1, "training context");
    assert_error(&arq(&["generate", s(&m), "-p", "x", "--top-k", "0"]), 2, "top-k");
    assert_error(&arq(&["generate", s(&m), "-p", "x", "--top-p", "1.5"]), 1, "top-p");
    assert_error(&arq(&["next", s(&m), "-p", "x", "--top", "0"]), 2, "top");
    assert_eq!(std::fs::read(&m).unwrap(), bytes, "model modified");
}

/// The real model through the CLI: convert (with the accuracy report), then score and
/// predict. Skipped, with a note, when the SmolLM2 GGUF has not been fetched.
#[test]
fn smollm2_convert_report_score_and_next() {
    let gguf = match std::env::var("ARQ_SMOLLM2_GGUF") {
        Ok(p) => PathBuf::from(p),
        Err(_) => {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/cache/SmolLM2-135M-Instruct.Q4_1.gguf"))
        }
    };
    if !gguf.exists() {
        eprintln!("note: {} missing (run models/fetch_smollm2.sh); skipping", gguf.display());
        return;
    }
    let d = tmpdir("smollm2");
    let out = d.join("smollm2-q8.arq");
    let conv = arq(&["convert", s(&gguf), "-o", s(&out), "--quant", "q8"]);
    let err = String::from_utf8_lossy(&conv.stderr);
    assert!(conv.status.success(), "{err}");
    assert!(err.contains("per-tensor relative error (211 matrices)"), "{err}");
    assert!(err.contains("calibration") && err.contains("top-1 agreement"), "{err}");
    assert_eq!(only_files(&d), ["smollm2-q8.arq"], "temporary file left behind");

    let next = arq(&["next", s(&out), "-p", "The capital of France is", "--top", "5", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&next.stdout).unwrap();
    assert_eq!(v["top"][0]["token"], " Paris");

    let text = d.join("essay.txt");
    std::fs::write(&text, "The quick brown fox jumps over the lazy dog.").unwrap();
    let score = arq(&["score", s(&out), s(&text), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&score.stdout).unwrap();
    assert_eq!(v["tokens"], 9, "10 tokens, the first is the condition");
    let ppl = v["perplexity"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < 100.0, "perplexity {ppl}");
}

/// `arq` with `input` on its standard input.
fn arq_stdin<S: AsRef<std::ffi::OsStr>>(args: &[S], input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_arq"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run arq");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn prompts_and_texts_come_from_files_and_standard_input() {
    let d = tmpdir("prompt-files");
    let m = tiny_model(&d);
    let text = "hello there\nsecond line";
    let f = d.join("prompt.txt");
    std::fs::write(&f, text).unwrap();
    let gen = |src: &[&str]| -> Vec<String> {
        ["generate", s(&m), "-n", "8", "--temp", "0"].iter().chain(src).map(|a| a.to_string()).collect()
    };
    let want = arq(&gen(&["-p", text]));
    assert!(want.status.success(), "{}", String::from_utf8_lossy(&want.stderr));
    assert_eq!(arq(&gen(&["-f", s(&f)])).stdout, want.stdout);
    assert_eq!(arq_stdin(&gen(&["-f", "-"]), text.as_bytes()).stdout, want.stdout);
    let next = arq(&["next", s(&m), "-p", text, "--json"]);
    assert!(next.status.success());
    assert_eq!(arq(&["next", s(&m), "--file", s(&f), "--json"]).stdout, next.stdout);
    assert_eq!(arq_stdin(&["next", s(&m), "-f", "-", "--json"], text.as_bytes()).stdout, next.stdout);
    let score = arq(&["score", s(&m), s(&f), "--json"]);
    assert!(score.status.success());
    assert_eq!(arq_stdin(&["score", s(&m), "-", "--json"], text.as_bytes()).stdout, score.stdout);
    // Both sources at once, neither for `next`, a missing file, bytes that are not UTF-8.
    assert_error(&arq(&["generate", s(&m), "-p", "x", "-f", s(&f)]), 2, "cannot be used with");
    assert_error(&arq(&["next", s(&m)]), 2, "--prompt");
    assert_error(&arq(&["next", s(&m), "-f", s(&d.join("absent.txt"))]), 1, "absent.txt");
    assert_error(&arq_stdin(&["next", s(&m), "-f", "-"], b"ok \xff"), 1, "standard input: the prompt is not UTF-8");
}

#[test]
fn generation_goes_on_past_a_full_context() {
    // tinygpt: GPT-2 with 64 learned positions; each shift re-encodes the last 32 tokens.
    let m = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tinygpt/tinygpt-q8.arq");
    let out = arq(&["generate", m, "-p", "Once upon a time", "-n", "200", "--temp", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("generation: 200 tokens") && err.contains("(length, context shifted"), "{err}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("Once upon a time") && text.trim_end().len() > 150, "{text}");
    // Within the context nothing changes: the first 40 tokens are those of a short run.
    let short = arq(&["generate", m, "-p", "Once upon a time", "-n", "40", "--temp", "0"]);
    let short = String::from_utf8(short.stdout).unwrap();
    assert!(text.starts_with(short.trim_end()), "{short:?} vs {text:?}");
}

#[test]
fn interactive_chat_keeps_the_cache_between_turns() {
    let d = tmpdir("interactive");
    let m = tiny_model(&d);
    let args = ["generate", s(&m), "--interactive", "-n", "6", "--temp", "0"];
    let out = arq_stdin(&args, b"hello\n\nhow are you\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let turns: Vec<&str> = err.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(turns.len(), 2, "{err}");
    let reused = |t: &str| -> usize { t.split(", ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap() };
    assert_eq!(reused(turns[0]), 0, "{err}");
    assert!(reused(turns[1]) > 0, "the second turn fed the whole conversation again: {err}");
    // The first reply is what a one-shot --chat generation answers.
    let one = arq(&["generate", s(&m), "--chat", "-p", "hello", "-n", "6", "--temp", "0"]);
    assert!(out.stdout.starts_with(&one.stdout), "{:?} vs {:?}", out.stdout, one.stdout);
    assert_error(&arq(&["generate", s(&m), "--interactive", "--chat"]), 2, "cannot be used with");
}

/// `arq tune` times every candidate, caches the chosen setting for this CPU model, and
/// every command then reports where its setting came from; the environment overrides
/// the cache, a bad value is a one-line error, another CPU's cache is ignored.
#[test]
fn tune_caches_a_setting_per_cpu_that_commands_report() {
    let d = tmpdir("tune");
    let m = tiny_model(&d);
    let cache = d.join("tune.json");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_arq"))
            .args(args)
            .env("ARQ_TUNE_FILE", &cache)
            .env_remove("ARQ_PREFETCH")
            .env_remove("ARQ_DECODE_TIER")
            .envs(env.iter().copied())
            .output()
            .expect("run arq")
    };
    let json = |out: &Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let bench =
        ["bench", s(&m), "--prompt-tokens", "4", "--gen-tokens", "4", "--reps", "1", "--threads", "1", "--json"];

    let v = json(&run(&bench, &[]));
    assert_eq!(v["tuning"]["source"], "default");
    assert_eq!(v["tuning"]["prefetch_bytes"], 8192);

    let dry = json(&run(&["tune", s(&m), "--rounds", "1", "--threads", "1", "--json", "--no-save"], &[]));
    assert!(dry["saved"].is_null() && !cache.exists(), "--no-save wrote the cache");
    let v = json(&run(&["tune", s(&m), "--rounds", "2", "--threads", "1", "--json"], &[]));
    let candidates = v["candidates"].as_array().unwrap();
    assert!(candidates.len() >= 6, "{v}");
    assert!(candidates.iter().all(|c| c["ms_per_token"].as_f64().is_some_and(|ms| ms > 0.0)), "{v}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(saved["cpu"], v["cpu"]);
    assert_eq!(saved["prefetch_bytes"], v["chosen"]["prefetch_bytes"]);

    let b = json(&run(&bench, &[]));
    assert_eq!(b["tuning"]["source"], "arq tune");
    assert_eq!(b["tuning"]["prefetch_bytes"], v["chosen"]["prefetch_bytes"]);
    assert_eq!(b["tuning"]["decode_tier"], v["chosen"]["decode_tier"]);
    assert_eq!(b["tuning"]["decode_rows"], v["chosen"]["decode_rows"]);

    let b = json(&run(&bench, &[("ARQ_PREFETCH", "0"), ("ARQ_DECODE_TIER", "avx2")]));
    assert_eq!((&b["tuning"]["source"], &b["tuning"]["prefetch_bytes"]), (&"env".into(), &0.into()));
    assert_eq!(b["tuning"]["decode_tier"], "avx2");
    let b = json(&run(&bench, &[("ARQ_DECODE_ROWS", "one")]));
    assert_eq!((&b["tuning"]["decode_rows"], &b["tuning"]["source"]), (&"one".into(), &"env".into()));
    assert_error(&run(&bench, &[("ARQ_DECODE_ROWS", "two")]), 1, "ARQ_DECODE_ROWS");
    assert_error(&run(&bench, &[("ARQ_PREFETCH", "lots")]), 1, "ARQ_PREFETCH");
    assert_error(&run(&bench, &[("ARQ_PREFETCH", "99999999")]), 1, "ARQ_PREFETCH");
    assert_error(&run(&bench, &[("ARQ_DECODE_TIER", "avx1024")]), 1, "ARQ_DECODE_TIER");

    // Another CPU's measurements, or a file that is not JSON, are ignored.
    std::fs::write(&cache, r#"{"cpu":"another CPU","prefetch_bytes":0,"decode_tier":"own","decode_rows":"one"}"#)
        .unwrap();
    assert_eq!(json(&run(&bench, &[]))["tuning"]["source"], "default");
    std::fs::write(&cache, "not json").unwrap();
    assert_eq!(json(&run(&bench, &[]))["tuning"]["source"], "default");
}

#[test]
fn bench_bandwidth_reports_the_read_ceiling() {
    let out = arq(&["bench", "--bandwidth", "--threads", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["threads"], 2);
    assert!(v["read_gb_per_s"].as_f64().is_some_and(|g| g > 0.1), "{v}");
    assert_error(&arq(&["bench", "--bandwidth", "m.arq"]), 2, "cannot be used with");
}

/// `score --stride/--min-context`: the default is a stride of half the context; a stride
/// of the whole context scores every position once from one evaluation each;
/// `--min-context` leaves out positions with too little context, as llama-perplexity
/// scores only the second half of each chunk.
#[test]
fn score_windows_follow_stride_and_min_context() {
    let d = tmpdir("stride");
    let m = tiny_model(&d);
    let text = d.join("text.txt");
    std::fs::write(&text, "the quick brown fox jumps over the lazy dog. ".repeat(3)).unwrap();
    let score = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["score", s(&m), s(&text), "--ctx", "16", "--json", "--per-token", "--threads", "1"];
        args.extend_from_slice(extra);
        let out = arq(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let default = score(&[]);
    let n = default["tokens"].as_u64().unwrap() as usize + 1;
    assert!(n > 64, "{n} tokens");
    assert_eq!(default, score(&["--stride", "8"]), "the default stride is ctx/2");
    assert_eq!(default["windows"]["stride"], 8);
    let count = |v: &serde_json::Value| v["windows"]["count"].as_u64().unwrap() as usize;
    let evaluated = |v: &serde_json::Value| v["windows"]["evaluated_tokens"].as_u64().unwrap() as usize;
    // Every window is 16 tokens but the last, which ends the text.
    assert_eq!(evaluated(&default), 16 * (count(&default) - 1) + n - 8 * (count(&default) - 1));

    // A stride one short of the context: every position once, each token evaluated
    // once but the one each window repeats as its first condition.
    let chunks = score(&["--stride", "15"]);
    assert_eq!(chunks["tokens"].as_u64().unwrap() as usize, n - 1, "every position once");
    assert_eq!(evaluated(&chunks), n + count(&chunks) - 1);
    let pos = |v: &serde_json::Value| -> Vec<u64> {
        v["per_token"].as_array().unwrap().iter().map(|t| t["pos"].as_u64().unwrap()).collect()
    };
    assert_eq!(pos(&chunks), (1..n as u64).collect::<Vec<_>>());
    // A stride of the whole context: each window's first token is a condition only.
    let disjoint = score(&["--stride", "16"]);
    assert_eq!(pos(&disjoint), (1..n as u64).filter(|p| p % 16 != 0).collect::<Vec<_>>());
    assert_eq!(evaluated(&disjoint), n);
    // The first window is the same in both: the same contexts, the same log-probs.
    assert_eq!(chunks["per_token"].as_array().unwrap()[..15], default["per_token"].as_array().unwrap()[..15]);

    let halves = score(&["--stride", "16", "--min-context", "9"]);
    let want: Vec<u64> = (0..n as u64).filter(|p| p % 16 >= 9).collect();
    assert_eq!(pos(&halves), want, "only the second half of each chunk");
    assert_eq!(halves["windows"]["min_context"], 9);

    assert_error(&arq(&["score", s(&m), s(&text), "--ctx", "16", "--stride", "17"]), 1, "longer than the context");
    assert_error(&arq(&["score", s(&m), s(&text), "--ctx", "16", "--min-context", "16"]), 1, "nothing to score");
}
