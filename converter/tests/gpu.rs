//! The GPU backend end to end on the tiny synthetic LLaMA: teacher-forced log-probs
//! against the CPU backend's, greedy tokens, and the `--backend` flag of the CLI.
//!
//! Without an adapter these tests print a note and pass, unless `ARQ_REQUIRE_GPU` is set
//! (as `scripts/test-all.sh` does, with lavapipe installed), when they fail.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use arq::gpu::{GpuDevice, GpuError, GpuMatmul, GpuOptions};
use arq::{math, Model, Session, SessionConfig};

/// Teacher-forced log-probs of the GPU backend may differ from the CPU's by this much
/// (nats): the kernels' integers are exact, only fused float operations differ.
const LOGPROB_TOLERANCE: f64 = 1e-3;

fn device() -> Option<GpuDevice> {
    match GpuDevice::new(&GpuOptions::default()) {
        Ok(d) => Some(d),
        Err(GpuError::NoAdapter) if std::env::var_os("ARQ_REQUIRE_GPU").is_none() => {
            eprintln!("note: no GPU adapter (install mesa-vulkan-drivers for lavapipe); skipping the GPU tests");
            None
        }
        Err(e) => panic!("the GPU path must run (ARQ_REQUIRE_GPU): {e}"),
    }
}

fn tiny() -> Vec<u8> {
    common::tiny_llama_arq(42)
}

/// Log-probs of `ids[1..]`, teacher-forced in batches of 8, and the argmax at each position.
fn score(model: &Model<'_>, gpu: Option<&GpuMatmul>, ids: &[u32]) -> (Vec<f64>, Vec<usize>) {
    let cfg = SessionConfig { ctx: ids.len(), batch: 8, threads: 1, ..Default::default() };
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut s = Session::new(model, &mut arena, cfg).unwrap();
    s.set_offload(gpu.map(|g| g as _)).unwrap();
    let (mut lps, mut top) = (Vec::new(), Vec::new());
    s.forward_all(ids, |i, logits| {
        if i + 1 < ids.len() {
            lps.push(math::log_prob(logits, ids[i + 1] as usize));
            top.push(math::argmax(logits));
        }
    })
    .unwrap();
    (lps, top)
}

fn greedy(model: &Model<'_>, gpu: Option<&GpuMatmul>, prompt: &[u32], steps: usize) -> Vec<u32> {
    let cfg = SessionConfig { ctx: 64, batch: 8, threads: 1, ..Default::default() };
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut s = Session::new(model, &mut arena, cfg).unwrap();
    s.set_offload(gpu.map(|g| g as _)).unwrap();
    let mut next = math::argmax(s.prefill(prompt).unwrap()) as u32;
    let mut out = vec![next];
    while out.len() < steps {
        next = math::argmax(s.step(next).unwrap()) as u32;
        out.push(next);
    }
    out
}

#[test]
fn tiny_llama_gpu_log_probs_and_greedy_tokens_match_the_cpu() {
    let Some(dev) = device() else { return };
    let bytes = arq_convert::aligned::ModelBytes::copy_of(&tiny());
    let model = Model::load(bytes.bytes()).unwrap();
    assert!(model.tied_embeddings(), "the tiny model exercises a head shared with the embedding");
    let gpu = GpuMatmul::for_model(dev, &model, 8).unwrap();
    let ids: Vec<u32> =
        b"The quick brown fox jumps over the lazy dog; 0123456789!".iter().map(|&b| b as u32 + 3).collect();
    let (cpu_lp, cpu_top) = score(&model, None, &ids);
    let (gpu_lp, gpu_top) = score(&model, Some(&gpu), &ids);
    let max_diff = cpu_lp.iter().zip(&gpu_lp).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    eprintln!(
        "tiny llama on {}: max |log-prob diff| {max_diff:e} over {} tokens",
        gpu.device().describe(),
        ids.len() - 1
    );
    assert!(max_diff <= LOGPROB_TOLERANCE, "max |diff| {max_diff}");
    assert_eq!(cpu_top, gpu_top);
    let (calls, _) = gpu.stats();
    assert!(calls > 0, "the GPU served no products");

    let prompt = &ids[..5];
    assert_eq!(greedy(&model, None, prompt, 16), greedy(&model, Some(&gpu), prompt, 16));
}

#[test]
fn a_session_batch_over_the_upload_plan_is_refused() {
    let Some(dev) = device() else { return };
    let bytes = arq_convert::aligned::ModelBytes::copy_of(&tiny());
    let model = Model::load(bytes.bytes()).unwrap();
    let gpu = GpuMatmul::for_model(dev, &model, 4).unwrap();
    let cfg = SessionConfig { ctx: 16, batch: 8, threads: 1, ..Default::default() };
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut s = Session::new(&model, &mut arena, cfg).unwrap();
    assert!(s.set_offload(Some(&gpu)).is_err());
}

fn arq(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arq")).args(args).envs(env.iter().copied()).output().expect("run arq")
}

fn tiny_file(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("tiny.arq");
    std::fs::write(&p, tiny()).unwrap();
    p
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn cli_backend_gpu_generates_and_scores_like_the_cpu() {
    if device().is_none() {
        return;
    }
    let model = tiny_file("gpu-cli");
    let m = model.to_str().unwrap();
    let gen = |backend| arq(&["generate", m, "-p", "Hello", "-n", "16", "--temp", "0", "--backend", backend], &[]);
    let (cpu, gpu) = (gen("cpu"), gen("gpu"));
    assert!(gpu.status.success(), "{}", text(&gpu.stderr));
    assert_eq!(text(&cpu.stdout), text(&gpu.stdout), "greedy text differs");
    assert!(text(&gpu.stderr).contains("backend: gpu: "), "{}", text(&gpu.stderr));

    let corpus = model.with_file_name("text.txt");
    std::fs::write(&corpus, "A short text to score with both backends, twice over. ".repeat(3)).unwrap();
    let score = |backend| {
        let o = arq(&["score", m, corpus.to_str().unwrap(), "--json", "--backend", backend], &[]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["nll_nats"].as_f64().unwrap()
    };
    let (a, b) = (score("cpu"), score("gpu"));
    assert!((a - b).abs() < 1e-2, "nll cpu {a} gpu {b}");

    let o = arq(
        &["bench", m, "--prompt-tokens", "8", "--gen-tokens", "4", "--reps", "1", "--json", "--backend", "gpu"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["backend"], "gpu");
    assert!(v["adapter"].as_str().is_some_and(|s| !s.is_empty()), "{v}");

    let o = arq(&["generate", m, "-p", "Hi", "-n", "4", "--backend", "auto"], &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("backend auto: "), "{}", text(&o.stderr));
}

#[test]
fn cli_backend_gpu_without_an_adapter_is_a_one_line_error() {
    let model = tiny_file("gpu-cli-none");
    let m = model.to_str().unwrap();
    // No Vulkan driver manifests: the loader finds no device.
    let none = [("VK_ICD_FILENAMES", "/nonexistent.json"), ("VK_DRIVER_FILES", "/nonexistent.json")];
    let o = arq(&["generate", m, "-p", "Hi", "-n", "2", "--backend", "gpu"], &none);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: --backend gpu: ") && err.trim_end().lines().count() == 1, "{err}");
    assert!(err.contains("adapter"), "{err}");
    // auto falls back and says so.
    let o = arq(&["generate", m, "-p", "Hi", "-n", "2", "--backend", "auto"], &none);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("backend auto: cpu (gpu unavailable: "), "{}", text(&o.stderr));
}
