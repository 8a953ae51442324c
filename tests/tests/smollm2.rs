//! SmolLM2-135M-Instruct end to end against the independent reference: Hugging Face
//! transformers in f32 on the same GGUF (`models/reference_smollm2.py`, fixture in
//! `models/fixtures/smollm2_reference.json`).
//!
//! The GGUF comes from `models/fetch_smollm2.sh`; `scripts/test-all.sh` fetches it and
//! sets `ARQ_SMOLLM2_GGUF`. Without that variable and without the default file the
//! tests print a note and pass; with the variable set, a missing file fails.

use std::path::PathBuf;
use std::sync::OnceLock;

mod common;

use arq::{math, Error, Model, Session, SessionConfig};
use arq_convert::aligned::ModelBytes;
use arq_convert::import::gguf::text::read_gguf;
use arq_convert::quantize::Quant;
use common::{ids_of, teacher_forced};
use serde_json::Value;

fn gguf_path() -> Option<PathBuf> {
    common::fetched_gguf("ARQ_SMOLLM2_GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf", "fetch_smollm2.sh")
}

struct Converted {
    q8: ModelBytes,
    q4: ModelBytes,
    f32: ModelBytes,
}

/// The three conversions, made once per test binary.
fn models() -> Option<&'static Converted> {
    static M: OnceLock<Option<Converted>> = OnceLock::new();
    M.get_or_init(|| {
        let src = read_gguf(&gguf_path()?, false).expect("convert SmolLM2");
        let (q8, _) = src.to_arq(Quant::Q8, false).expect("q8");
        let (q4, _) = src.to_arq(Quant::Q4, false).expect("q4");
        let (f32, _) = src.to_arq(Quant::F32, false).expect("f32");
        Some(Converted { q8: ModelBytes::copy_of(&q8), q4: ModelBytes::copy_of(&q4), f32: ModelBytes::copy_of(&f32) })
    })
    .as_ref()
}

fn reference() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fixtures/smollm2_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// (our perplexity, reference perplexity, top-1 agreement) over all reference texts.
fn compare_with_reference(model: &Model<'_>) -> (f64, f64, f64) {
    let r = reference();
    let (mut nll, mut nll_ref, mut n, mut agree) = (0.0, 0.0, 0usize, 0usize);
    for (name, t) in r["texts"].as_object().unwrap() {
        let ids = ids_of(&t["ids"]);
        let (lps, top) = teacher_forced(model, &ids, 32, 1);
        let ref_lps: Vec<f64> = t["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let ref_top = ids_of(&t["argmax"]);
        assert_eq!(lps.len(), ref_lps.len(), "{name}");
        let text_nll: f64 = -lps.iter().sum::<f64>();
        eprintln!(
            "  {name:<10} ppl {:.4} (reference {:.4})",
            (text_nll / lps.len() as f64).exp(),
            t["perplexity"].as_f64().unwrap()
        );
        nll += text_nll;
        nll_ref -= ref_lps.iter().sum::<f64>();
        n += lps.len();
        agree += top.iter().zip(&ref_top).filter(|(a, b)| a == b).count();
    }
    ((nll / n as f64).exp(), (nll_ref / n as f64).exp(), agree as f64 / n as f64)
}

#[test]
fn q8_perplexity_within_1_percent_and_top1_at_least_97_percent() {
    let Some(m) = models() else { return };
    let model = Model::load(m.q8.bytes()).unwrap();
    let (ppl, ppl_ref, top1) = compare_with_reference(&model);
    let rel = ppl / ppl_ref - 1.0;
    eprintln!(
        "q8: perplexity {ppl:.4} vs transformers f32 {ppl_ref:.4} ({:+.3}%), top-1 agreement {:.2}%",
        100.0 * rel,
        100.0 * top1
    );
    assert!(rel.abs() < 0.01, "q8 perplexity off by {:.3}%", 100.0 * rel);
    assert!(top1 >= 0.97, "q8 top-1 agreement {:.2}%", 100.0 * top1);
}

#[test]
fn q4_perplexity_within_1_percent_and_top1_at_least_96_percent() {
    // The GGUF's layer matrices are Q4_1 blocks, which q4 stores exactly, and its Q8_0
    // embedding stays q8: only the q8 activations differ from the f32 conversion.
    let Some(m) = models() else { return };
    let model = Model::load(m.q4.bytes()).unwrap();
    let (ppl, ppl_ref, top1) = compare_with_reference(&model);
    let rel = ppl / ppl_ref - 1.0;
    eprintln!(
        "q4: perplexity {ppl:.4} vs transformers f32 {ppl_ref:.4} ({:+.3}%), top-1 agreement {:.2}%",
        100.0 * rel,
        100.0 * top1
    );
    assert!(rel.abs() < 0.01, "q4 perplexity off by {:.3}%", 100.0 * rel);
    assert!(top1 >= 0.96, "q4 top-1 agreement {:.2}%", 100.0 * top1);
}

#[test]
fn f32_perplexity_within_0_1_percent() {
    let Some(m) = models() else { return };
    let model = Model::load(m.f32.bytes()).unwrap();
    let (ppl, ppl_ref, top1) = compare_with_reference(&model);
    let rel = ppl / ppl_ref - 1.0;
    eprintln!(
        "f32: perplexity {ppl:.4} vs transformers f32 {ppl_ref:.4} ({:+.4}%), top-1 agreement {:.2}%",
        100.0 * rel,
        100.0 * top1
    );
    assert!(rel.abs() < 0.001, "f32 perplexity off by {:.4}%", 100.0 * rel);
    assert!(top1 >= 0.99, "f32 top-1 agreement {:.2}%", 100.0 * top1);
}

/// Every teacher-forced logits row of `ids` (ctx = the window), in passes of 64 tokens.
fn all_logits(model: &Model<'_>, ids: &[u32]) -> Vec<f32> {
    let cfg = SessionConfig { ctx: ids.len(), batch: 64, threads: 1, ..Default::default() };
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut s = Session::new(model, &mut arena, cfg).unwrap();
    let mut out = Vec::with_capacity(ids.len() * model.config().vocab);
    s.forward_all(ids, |_, l| out.extend_from_slice(l)).unwrap();
    out
}

/// `KL(softmax(p) || softmax(q))` in nats, in f64.
fn kl(p: &[f32], q: &[f32]) -> f64 {
    let (lp, lq) = (math::log_sum_exp(p), math::log_sum_exp(q));
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let la = a as f64 - lp;
            la.exp() * (la - (b as f64 - lq))
        })
        .sum()
}

/// The held-out measurement (`models/reference_smollm2_heldout.py`): 3,900 tokens that
/// are not the reference texts, in two groups (prose written for the project, and the
/// tinygpt corpus's held-out split, which SmolLM2 itself generated). For q8 and q4 it
/// prints per group the top-1 agreement with transformers f32 and with arq's f32
/// conversion, the perplexity against transformers', and the mean KL from arq f32, and
/// bounds them on all of it. Run it with
/// `cargo test --release -p arq-tests --test smollm2 -- --ignored --nocapture heldout`.
#[test]
#[ignore = "about a minute on one core; run with --ignored"]
fn heldout_q8_and_q4_against_f32() {
    let Some(m) = models() else { return };
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fixtures/smollm2_heldout.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let f32 = Model::load(m.f32.bytes()).unwrap();
    let (q8, q4) = (Model::load(m.q8.bytes()).unwrap(), Model::load(m.q4.bytes()).unwrap());
    let vocab = f32.config().vocab;
    // Per (model, group): scored tokens, agreements with transformers and with arq f32,
    // our NLL, the reference NLL, the KL sum.
    let mut stats: Vec<(&str, String, [f64; 6])> = Vec::new();
    for (window, t) in r["texts"].as_object().unwrap() {
        let group = window.split('/').next().unwrap();
        let ids = ids_of(&t["ids"]);
        let ref_top = ids_of(&t["argmax"]);
        let ref_lps = common::floats(&t["logprobs"]);
        let lf = all_logits(&f32, &ids);
        for (name, model) in [("f32", None), ("q8", Some(&q8)), ("q4", Some(&q4))] {
            let lq = model.map(|m| all_logits(m, &ids));
            let lq = lq.as_deref().unwrap_or(&lf);
            let mut acc = [0.0; 6];
            for i in 0..ids.len() - 1 {
                let (q, f) = (&lq[i * vocab..][..vocab], &lf[i * vocab..][..vocab]);
                let top = math::argmax(q) as u32;
                acc[0] += 1.0;
                acc[1] += (top == ref_top[i]) as u32 as f64;
                acc[2] += (top == math::argmax(f) as u32) as u32 as f64;
                acc[3] -= math::log_prob(q, ids[i + 1] as usize);
                acc[4] -= ref_lps[i];
                acc[5] += kl(f, q);
            }
            for g in [group, "all"] {
                match stats.iter_mut().find(|s| s.0 == name && s.1 == g) {
                    Some(s) => s.2.iter_mut().zip(acc).for_each(|(a, b)| *a += b),
                    None => stats.push((name, g.to_string(), acc)),
                }
            }
        }
    }
    stats.sort_by_key(|s| (s.0 != "f32", s.0 != "q8", s.1 == "all"));
    for (name, group, [n, agree, agree_f32, nll, nll_ref, kl_sum]) in &stats {
        let (ppl, ppl_ref) = ((nll / n).exp(), (nll_ref / n).exp());
        eprintln!(
            "held-out {name} {group:<8} {n:>5} tokens: top-1 vs transformers f32 {:.2}%, vs arq f32 {:.2}%, \
             perplexity {ppl:.4} vs {ppl_ref:.4} ({:+.3}%), KL from arq f32 {:.5}",
            100.0 * agree / n,
            100.0 * agree_f32 / n,
            100.0 * (ppl / ppl_ref - 1.0),
            kl_sum / n
        );
    }
    // What the measured schemes support (see README, "Accuracy"): issue 15's 97 % is
    // not reached on this text; these bounds catch a regression.
    for (name, max_ppl, min_top1) in [("f32", 0.001, 0.995), ("q8", 0.01, 0.955), ("q4", 0.01, 0.96)] {
        let (_, _, [n, agree, _, nll, nll_ref, _]) = stats.iter().find(|s| s.0 == name && s.1 == "all").unwrap();
        let rel = ((nll - nll_ref) / n).exp() - 1.0;
        assert!(rel.abs() < max_ppl, "{name}: held-out perplexity off by {:.3}%", 100.0 * rel);
        assert!(agree / n >= min_top1, "{name}: held-out top-1 agreement {:.2}%", 100.0 * agree / n);
    }
}

#[test]
fn tokenizer_ids_equal_the_reference_tokenization() {
    let Some(m) = models() else { return };
    let model = Model::load(m.q8.bytes()).unwrap();
    let tok = model.tokenizer().unwrap();
    for (name, t) in reference()["texts"].as_object().unwrap() {
        let text = t["text"].as_str().unwrap();
        // transformers always matches added special tokens; arq does in chat mode.
        let special = text.contains("<|im_start|>");
        assert_eq!(tok.encode(text, special), ids_of(&t["ids"]), "{name}");
    }
}

#[test]
fn next_token_distribution_matches_reference() {
    let Some(m) = models() else { return };
    let r = &reference()["next_token_top5"];
    let model = Model::load(m.f32.bytes()).unwrap();
    let ids = ids_of(&r["ids"]);
    let cfg = SessionConfig { ctx: 64, batch: 32, threads: 1, ..Default::default() };
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut s = Session::new(&model, &mut arena, cfg).unwrap();
    let logits = s.prefill(&ids).unwrap();
    for (id, lp) in ids_of(&r["top5_ids"]).iter().zip(r["top5_logprobs"].as_array().unwrap()) {
        let ours = math::log_prob(logits, *id as usize);
        assert!((ours - lp.as_f64().unwrap()).abs() < 2e-3, "token {id}: {ours} vs {lp}");
    }
    assert_eq!(math::argmax(logits) as u32, ids_of(&r["top5_ids"])[0]);
}

fn greedy(model: &Model<'_>, prompt: &[u32], steps: usize) -> Vec<u32> {
    let cfg = SessionConfig { ctx: 64, batch: 32, threads: 1, ..Default::default() };
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut s = Session::new(model, &mut arena, cfg).unwrap();
    let mut next = math::argmax(s.prefill(prompt).unwrap()) as u32;
    let mut out = vec![next];
    while out.len() < steps {
        next = math::argmax(s.step(next).unwrap()) as u32;
        out.push(next);
    }
    out
}

#[test]
fn greedy_continuation_matches_reference() {
    let Some(m) = models() else { return };
    let r = &reference()["greedy"];
    let expected = ids_of(&r["continuation_ids"]);
    let f32 = greedy(&Model::load(m.f32.bytes()).unwrap(), &ids_of(&r["ids"]), expected.len());
    assert_eq!(f32, expected);
    let q8 = greedy(&Model::load(m.q8.bytes()).unwrap(), &ids_of(&r["ids"]), expected.len());
    let same = q8.iter().zip(&expected).take_while(|(a, b)| a == b).count();
    eprintln!("q8 greedy: first {same} of {} tokens equal the reference", expected.len());
    assert!(same >= 8, "q8 greedy diverges after {same} tokens");
}

#[test]
fn kv_cache_decoding_equals_full_recompute_bit_for_bit() {
    let Some(m) = models() else { return };
    for bytes in [&m.q8, &m.q4] {
        kv_cache_equals_full_recompute(&Model::load(bytes.bytes()).unwrap());
    }
}

fn kv_cache_equals_full_recompute(model: &Model<'_>) {
    let ids: Vec<u32> = ids_of(&reference()["texts"]["prose"]["ids"])[..48].to_vec();
    let vocab = model.config().vocab;
    let cfg = SessionConfig { ctx: 64, batch: 16, threads: 1, ..Default::default() };

    // Full recompute: one teacher-forced pass over the whole prefix (batched).
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut full = Vec::new();
    {
        let mut s = Session::new(model, &mut arena, cfg).unwrap();
        s.forward_all(&ids, |_, l| full.extend_from_slice(l)).unwrap();
    }
    // Incremental: prefill a prefix, then one token per step through the KV cache.
    let mut s = Session::new(model, &mut arena, cfg).unwrap();
    let split = 21;
    let l = s.prefill(&ids[..split]).unwrap();
    assert_eq!(bits(l), bits(&full[(split - 1) * vocab..split * vocab]));
    for (i, &t) in ids.iter().enumerate().skip(split) {
        let l = s.step(t).unwrap();
        assert_eq!(bits(l), bits(&full[i * vocab..(i + 1) * vocab]), "position {i}");
    }
}

#[test]
fn arena_contents_do_not_matter() {
    // Session::new does not zero the arena: every buffer is written before it is read.
    let Some(m) = models() else { return };
    let model = Model::load(m.q8.bytes()).unwrap();
    let ids: Vec<u32> = ids_of(&reference()["texts"]["factual"]["ids"])[..24].to_vec();
    let cfg = SessionConfig { ctx: 32, batch: 8, threads: 2, ..Default::default() };
    let pool = arq::parallel::ThreadPool::new(2).unwrap();
    let run = |fill: u8| {
        let mut arena = vec![fill; model.memory_plan(&cfg).unwrap()];
        let mut s = Session::new(&model, &mut arena, cfg).unwrap();
        s.set_parallel(&pool).unwrap();
        let mut out = Vec::new();
        s.forward_all(&ids[..20], |_, l| out.extend_from_slice(l)).unwrap();
        for &t in &ids[20..] {
            out.extend_from_slice(s.step(t).unwrap());
        }
        bits(&out)
    };
    assert_eq!(run(0x00), run(0xff)); // 0xffffffff is a NaN in every f32 buffer
}

#[test]
fn threads_give_bit_identical_logits() {
    let Some(m) = models() else { return };
    let model = Model::load(m.q8.bytes()).unwrap();
    let ids: Vec<u32> = ids_of(&reference()["texts"]["python"]["ids"])[..40].to_vec();
    let run = |threads: usize| {
        let cfg = SessionConfig { ctx: 64, batch: 16, threads, ..Default::default() };
        let pool = arq::parallel::ThreadPool::new(threads).unwrap();
        let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
        let mut s = Session::new(&model, &mut arena, cfg).unwrap();
        s.set_parallel(&pool).unwrap();
        let mut out = Vec::new();
        s.forward_all(&ids[..30], |_, l| out.extend_from_slice(l)).unwrap(); // batched
        for &t in &ids[30..] {
            out.extend_from_slice(s.step(t).unwrap()); // one token: rows and heads split
        }
        bits(&out)
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}

#[test]
fn q4_conversion_is_exact_and_every_kernel_tier_gives_identical_logits() {
    let Some(m) = models() else { return };
    // The GGUF's layer matrices are Q4_1 blocks: q4 must store them exactly.
    let src = read_gguf(&gguf_path().unwrap(), false).unwrap();
    let (_, errors) = src.to_arq(Quant::Q4, false).unwrap();
    let layers: Vec<_> = errors.iter().filter(|(name, _)| name.starts_with("blk.")).collect();
    assert_eq!(layers.len(), 30 * 7);
    for (name, err) in layers {
        assert!(*err == 0.0, "{name}: relative error {err}");
    }
    let ids: Vec<u32> = ids_of(&reference()["texts"]["chat"]["ids"])[..24].to_vec();
    let mut logits = Vec::new();
    for k in arq::kernels::available() {
        let mut model = Model::load(m.q4.bytes()).unwrap();
        model.set_kernels(k);
        let cfg = SessionConfig { ctx: 32, batch: 8, threads: 1, ..Default::default() };
        let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
        let mut s = Session::new(&model, &mut arena, cfg).unwrap();
        let mut out = Vec::new();
        s.forward_all(&ids[..20], |_, l| out.extend_from_slice(l)).unwrap();
        for &t in &ids[20..] {
            out.extend_from_slice(s.step(t).unwrap());
        }
        logits.push((k.name, bits(&out)));
    }
    for (name, l) in &logits[1..] {
        assert!(l == &logits[0].1, "{name} differs from {}", logits[0].0);
    }
    eprintln!("q4 logits identical on {:?}", logits.iter().map(|l| l.0).collect::<Vec<_>>());
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn arena_plan_is_exact_and_errors_are_typed() {
    let Some(m) = models() else { return };
    let model = Model::load(m.q8.bytes()).unwrap();
    let cfg = SessionConfig { ctx: 2048, batch: 32, threads: 1, ..Default::default() };
    let need = model.memory_plan(&cfg).unwrap();
    eprintln!("arena for ctx 2048, batch 32: {need} bytes");
    let mut arena = vec![0u8; need];
    assert!(Session::new(&model, &mut arena, cfg).is_ok());
    assert_eq!(
        Session::new(&model, &mut arena[..need - 1], cfg).err(),
        Some(Error::ArenaTooSmall { need, have: need - 1 })
    );
    let small = SessionConfig { ctx: 4, batch: 4, threads: 1, ..Default::default() };
    let mut arena = vec![0u8; model.memory_plan(&small).unwrap()];
    let mut s = Session::new(&model, &mut arena, small).unwrap();
    assert!(s.prefill(&[1, 2, 3, 4]).is_ok());
    assert_eq!(s.step(5).err(), Some(Error::ContextFull { ctx: 4 }));
    s.reset();
    assert_eq!(s.step(49152).err(), Some(Error::TokenOutOfRange { id: 49152, vocab: 49152 }));
}

/// The GPU backend on SmolLM2 q8 and q4 against the CPU backend on the same inputs:
/// teacher-forced log-probs within 2e-3 nats and the same greedy continuation. Without an
/// adapter it prints a note and passes, unless `ARQ_REQUIRE_GPU` is set.
#[test]
fn gpu_backend_matches_the_cpu_backend() {
    use arq::gpu::{GpuDevice, GpuError, GpuMatmul, GpuOptions};
    let Some(m) = models() else { return };
    let dev = match GpuDevice::new(&GpuOptions::default()) {
        Ok(d) => d,
        Err(GpuError::NoAdapter) if std::env::var_os("ARQ_REQUIRE_GPU").is_none() => {
            eprintln!("note: no GPU adapter (install mesa-vulkan-drivers for lavapipe); skipping");
            return;
        }
        Err(e) => panic!("the GPU path must run (ARQ_REQUIRE_GPU): {e}"),
    };
    let ids: Vec<u32> = ids_of(&reference()["texts"]["prose"]["ids"])[..48].to_vec();
    let greedy_prompt = ids_of(&reference()["greedy"]["ids"]);
    for (name, bytes) in [("q8", &m.q8), ("q4", &m.q4)] {
        let model = Model::load(bytes.bytes()).unwrap();
        let gpu = GpuMatmul::for_model(dev.clone(), &model, 16).unwrap();
        let run = |off: Option<&GpuMatmul>| {
            let cfg = SessionConfig { ctx: 64, batch: 16, threads: 1, ..Default::default() };
            let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
            let mut s = Session::new(&model, &mut arena, cfg).unwrap();
            s.set_offload(off.map(|g| g as _)).unwrap();
            let mut lps = Vec::new();
            s.forward_all(&ids, |i, l| {
                if i + 1 < ids.len() {
                    lps.push(math::log_prob(l, ids[i + 1] as usize));
                }
            })
            .unwrap();
            s.reset();
            let mut next = math::argmax(s.prefill(&greedy_prompt).unwrap()) as u32;
            let mut tokens = vec![next];
            while tokens.len() < 16 {
                next = math::argmax(s.step(next).unwrap()) as u32;
                tokens.push(next);
            }
            (lps, tokens)
        };
        let (cpu_lp, cpu_tokens) = run(None);
        let (gpu_lp, gpu_tokens) = run(Some(&gpu));
        let max_diff = cpu_lp.iter().zip(&gpu_lp).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        eprintln!(
            "SmolLM2 {name} on {}: max |log-prob diff| {max_diff:e} over {} tokens; greedy 16 tokens equal: {}",
            dev.describe(),
            cpu_lp.len(),
            cpu_tokens == gpu_tokens
        );
        assert!(max_diff <= 2e-3, "{name}: max |diff| {max_diff}");
        assert_eq!(cpu_tokens, gpu_tokens, "{name}: greedy tokens differ");
    }
}
