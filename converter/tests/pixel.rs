//! PixelCNN end to end with the trained digit models: the committed `.arq` files are
//! what the converter writes, test-split likelihoods against PyTorch's, seeded sampling,
//! imputation, and bad input through the `arq` binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arq::PixelCnn;
use arq_convert::aligned::ModelBytes;
use arq_convert::images::{self, Images};
use arq_convert::pixel::{self, ImputeMethod};

const MODELS: [&str; 3] = ["digits17", "digits-binary", "digits-dlm"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn models_dir() -> PathBuf {
    root().join("models/pixelcnn")
}

fn arq_file(name: &str, quant: &str) -> PathBuf {
    models_dir().join(format!("{name}-{quant}.arq"))
}

fn arq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arq")).args(args).output().expect("run arq")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pixel-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "arq failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Exit code 1, one line on stderr containing `needle`, no panic.
fn assert_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(models_dir().join("reference.json")).unwrap()).unwrap()
}

fn test_split() -> Images {
    images::read_npy_u8(&models_dir().join("digits_test.npy")).unwrap()
}

/// The test split as the binary model sees it (`x > 7`), written to `dir`.
fn binarized_test_split(dir: &Path) -> PathBuf {
    let t = test_split();
    let b = Images { data: t.data.iter().map(|&v| u8::from(v > 7)).collect(), ..t };
    let p = dir.join("digits_test_binary.npy");
    images::write_npy_u8(&p, &b).unwrap();
    p
}

#[test]
fn committed_arq_files_are_what_the_converter_writes() {
    let d = tmpdir("reconvert");
    for name in MODELS {
        for quant in ["f32", "q8"] {
            let out = d.join(format!("{name}-{quant}.arq"));
            let onnx = models_dir().join(format!("{name}.onnx"));
            ok(&arq(&["convert", s(&onnx), "-o", s(&out), "--quant", quant]));
            let fresh = std::fs::read(&out).unwrap();
            let committed = std::fs::read(arq_file(name, quant)).unwrap();
            assert!(fresh == committed, "{name}-{quant}.arq is stale: rerun models/pixelcnn/convert.sh");
        }
    }
}

/// Test-split NLL of every model: f32 matches PyTorch's, q8 is within 0.01 bits/dim.
#[test]
fn test_split_likelihoods_match_pytorch_and_q8_stays_close() {
    let d = tmpdir("score");
    let refs = reference();
    let binary = binarized_test_split(&d);
    let plain = models_dir().join("digits_test.npy");
    println!("| model | PyTorch f32 | arq f32 | arq q8 | q8 - f32 (bits/dim) |");
    for name in MODELS {
        let data = if name == "digits-binary" { &binary } else { &plain };
        let score = |quant: &str| -> serde_json::Value {
            let out = ok(&arq(&["score", s(&arq_file(name, quant)), s(data), "--json"]));
            serde_json::from_str(&out).unwrap()
        };
        let (f, q) = (score("f32"), score("q8"));
        assert_eq!(f["images"], 447);
        let torch = refs[name]["nll"]["test_nats_per_image"].as_f64().unwrap();
        let torch_bpd = refs[name]["nll"]["test_bits_per_dim"].as_f64().unwrap();
        let (fn_, fb) = (f["nats_per_image"].as_f64().unwrap(), f["bits_per_dim"].as_f64().unwrap());
        let qb = q["bits_per_dim"].as_f64().unwrap();
        println!(
            "| {name} | {torch:.3} nats ({torch_bpd:.5} b/d) | {fn_:.3} nats ({fb:.5} b/d) | {:.3} nats ({qb:.5} b/d) | {:+.5} |",
            q["nats_per_image"].as_f64().unwrap(),
            qb - fb
        );
        // reference.json rounds nats to 3 decimals; f32 summation orders differ.
        assert!((fn_ - torch).abs() < 2e-3, "{name}: arq f32 {fn_} vs PyTorch {torch}");
        assert!((qb - fb).abs() < 0.01, "{name}: q8 {qb} vs f32 {fb} bits/dim");
        let bpd = f["nll_nats"].as_f64().unwrap() / 447.0 / 64.0 / std::f64::consts::LN_2;
        assert!((bpd - fb).abs() < 1e-12);
    }
}

#[test]
fn sampling_is_reproducible_and_writes_a_png_grid() {
    let d = tmpdir("sample");
    let m = arq_file("digits17", "q8");
    let run = |seed: &str, name: &str| {
        let png = d.join(format!("{name}.png"));
        let npy = d.join(format!("{name}.npy"));
        ok(&arq(&["sample", s(&m), "-n", "4", "--seed", seed, "-o", s(&png), "--npy", s(&npy)]));
        (std::fs::read(&png).unwrap(), images::read_npy_u8(&npy).unwrap())
    };
    let (a, ia) = run("5", "a");
    let (b, ib) = run("5", "b");
    let (c, ic) = run("6", "c");
    assert_eq!(a, b);
    assert_eq!(ia, ib);
    assert_ne!(ia, ic);
    assert_ne!(a, c);
    // A 2x2 grid of 8x8 images scaled 4x with 1-pixel gaps.
    let (h, w, _) = images::read_png_gray(&d.join("a.png")).unwrap();
    assert_eq!((h, w), (2 * 32 + 3, 2 * 32 + 3));
    assert_eq!((ia.n, ia.height, ia.width), (4, 8, 8));
    assert!(ia.data.iter().all(|&v| v <= 16));

    // Samples are typical of the model: their NLL is near the test split's (79.7 nats),
    // nothing like noise (64 ln 17 = 181 nats).
    let bytes = ModelBytes::map(&m).unwrap();
    let model = PixelCnn::load(bytes.bytes()).unwrap();
    let many = pixel::sample_images(&model, 32, 100, 1.0).unwrap();
    let nll = pixel::score_images(&model, &many, 2).unwrap();
    let mean = nll.iter().sum::<f64>() / nll.len() as f64;
    assert!((40.0..110.0).contains(&mean), "mean NLL of samples {mean}");
    // The naive sampler (one full forward pass per pixel) draws the same image.
    assert_eq!(pixel::sample_naive(&model, 100, 1.0).unwrap(), many.image(0));
    // ASCII art: 8 lines of 16 characters per image.
    let art = ok(&arq(&["sample", s(&m), "-n", "1", "-o", s(&d.join("one.png")), "--ascii"]));
    assert_eq!(art.lines().filter(|l| l.len() == 16).count(), 8);
}

/// On held-out digits with the left half missing (observed pixels follow missing ones
/// in every row), sequential Monte Carlo fills the missing pixels closer to the truth
/// than clamped sampling (one particle, never reweighted).
#[test]
fn smc_imputation_beats_clamped_sampling_on_a_left_half_mask() {
    let bytes = ModelBytes::map(&arq_file("digits17", "q8")).unwrap();
    let model = PixelCnn::load(bytes.bytes()).unwrap();
    let t = test_split();
    let missing: Vec<bool> = (0..64).map(|i| i % 8 < 4).collect();
    let (mut err_smc, mut err_clamped, mut count) = (0.0, 0.0, 0usize);
    let mut ess = Vec::new();
    for i in 0..40 {
        let truth = t.image(i);
        let mut hidden = truth.to_vec();
        for (v, &m) in hidden.iter_mut().zip(&missing) {
            if m {
                *v = 0;
            }
        }
        let err = |img: &[u8]| -> f64 {
            img.iter()
                .zip(truth)
                .zip(&missing)
                .filter(|(_, &m)| m)
                .map(|((&a, &b), _)| (a as f64 - b as f64).abs())
                .sum()
        };
        let (smc, how) = pixel::impute(&model, &hidden, &missing, 32, i as u64, 1.0).unwrap();
        let (clamped, how1) = pixel::impute(&model, &hidden, &missing, 1, i as u64, 1.0).unwrap();
        // Observed pixels are kept.
        for ((&a, &b), &m) in smc.iter().zip(truth).zip(&missing) {
            assert!(m || a == b);
        }
        let ImputeMethod::Smc { particles: 32, final_ess, .. } = how else { panic!("{how:?}") };
        assert!(matches!(how1, ImputeMethod::Smc { particles: 1, .. }));
        assert!(final_ess > 0.99 && final_ess <= 32.0 + 1e-9);
        ess.push(final_ess);
        err_smc += err(&smc);
        err_clamped += err(&clamped);
        count += 32;
    }
    let (e1, e0) = (err_smc / count as f64, err_clamped / count as f64);
    println!("left-half imputation, 40 test digits: mean |error| SMC(32) {e1:.3} levels, clamped {e0:.3} levels");
    assert!(e1 < e0, "SMC {e1} vs clamped {e0}");

    // Bottom half missing: every observed pixel comes first, so sampling is exact.
    let bottom: Vec<bool> = (0..64).map(|i| i >= 32).collect();
    let (out, how) = pixel::impute(&model, t.image(0), &bottom, 32, 0, 1.0).unwrap();
    assert_eq!(how, ImputeMethod::Exact);
    assert_eq!(out[..32], t.image(0)[..32]);
}

#[test]
fn impute_command_reads_pngs_and_reports_the_method() {
    let d = tmpdir("impute");
    let m = arq_file("digits17", "q8");
    let t = test_split();
    let grey: Vec<u8> = t.image(3).iter().map(|&v| images::level_to_gray(v, 17)).collect();
    let img = d.join("in.png");
    images::write_png_gray(&img, 8, 8, &grey).unwrap();
    let left: Vec<u8> = (0..64).map(|i| if i % 8 < 4 { 255 } else { 0 }).collect();
    let mask = d.join("mask.png");
    images::write_png_gray(&mask, 8, 8, &left).unwrap();
    let out = d.join("out.png");
    let args = ["impute", s(&m), "--image", s(&img), "--mask", s(&mask), "-o", s(&out), "--particles", "16", "--json"];
    let v: serde_json::Value = serde_json::from_str(&ok(&arq(&args))).unwrap();
    assert_eq!(v["method"], "smc");
    assert_eq!(v["particles"], 16);
    assert_eq!(v["missing_pixels"], 32);
    assert!(v["ess"].as_f64().unwrap() >= 1.0);
    let (_, _, px) = images::read_png_gray(&out).unwrap();
    for i in (0..64).filter(|i| i % 8 >= 4) {
        assert_eq!(px[i], grey[i], "observed pixel {i} changed");
    }
    // Same seed, same output.
    let out2 = d.join("out2.png");
    let mut args2 = args;
    args2[7] = s(&out2);
    ok(&arq(&args2));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
    // Bottom half masked: exact.
    let bottom: Vec<u8> = (0..64).map(|i| if i >= 32 { 255 } else { 0 }).collect();
    images::write_png_gray(&mask, 8, 8, &bottom).unwrap();
    let out3 = d.join("out3.png");
    let e = String::from_utf8(arq(&["impute", s(&m), "--image", s(&img), "--mask", s(&mask), "-o", s(&out3)]).stderr)
        .unwrap();
    assert!(e.contains("exact sampling"), "{e}");
}

#[test]
fn bench_reports_cached_and_naive_sampling() {
    let m = arq_file("digits17", "q8");
    let out = ok(&arq(&["bench", s(&m), "--reps", "2", "--naive-reps", "1", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["cached_ms_per_image"].as_f64().unwrap() > 0.0);
    assert!(v["speedup"].as_f64().unwrap() > 1.0);
    assert!(v["arena_bytes"].as_u64().unwrap() > 0);
    let out = ok(&arq(&["bench", "--synthetic", "6x5", "--reps", "1", "--naive-reps", "1", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["height"].as_u64(), v["width"].as_u64()), (Some(6), Some(5)));
}

#[test]
fn inspect_shows_the_pixelcnn_geometry() {
    let v: serde_json::Value =
        serde_json::from_str(&ok(&arq(&["inspect", s(&arq_file("digits-dlm", "q8")), "--json", "--verify"]))).unwrap();
    assert_eq!(v["architecture"], "pixelcnn");
    let h = &v["hyperparameters"];
    assert_eq!((h["height"].as_u64(), h["width"].as_u64(), h["channels"].as_u64()), (Some(8), Some(8), Some(32)));
    assert_eq!(h["head"], "logistic_mixture");
    assert_eq!(h["head_channels"], 15);
    assert_eq!(h["layers"].as_array().unwrap().len(), 7);
}

#[test]
fn bad_input_gives_one_line_errors_and_writes_nothing() {
    let d = tmpdir("bad");
    let m = arq_file("digits17", "q8");
    let bin = arq_file("digits-binary", "q8");
    let plain = models_dir().join("digits_test.npy");
    let before = std::fs::read(&plain).unwrap();

    // Wrong image size.
    let small = d.join("small.npy");
    images::write_npy_u8(&small, &Images { n: 2, height: 4, width: 4, data: vec![0; 32] }).unwrap();
    assert_error(&arq(&["score", s(&m), s(&small)]), "images are 4x4, the model takes 8x8");
    // Values outside the model's range (levels 0..16 into a binary model).
    assert_error(&arq(&["score", s(&bin), s(&plain)]), "is not a level of the model (0 to 1)");
    // Not an .npy file.
    assert_error(&arq(&["score", s(&m), s(&models_dir().join("README.md"))]), "README.md");
    assert_eq!(std::fs::read(&plain).unwrap(), before, "input modified");

    // Imputation: a mask of another size, an image of another size.
    let img = d.join("in.png");
    images::write_png_gray(&img, 8, 8, &[0; 64]).unwrap();
    let mask = d.join("mask.png");
    images::write_png_gray(&mask, 8, 7, &[255; 56]).unwrap();
    let out = d.join("out.png");
    assert_error(
        &arq(&["impute", s(&m), "--image", s(&img), "--mask", s(&mask), "-o", s(&out)]),
        "mask is 8x7, the image is 8x8",
    );
    let big = d.join("big.png");
    images::write_png_gray(&big, 9, 9, &[0; 81]).unwrap();
    assert_error(
        &arq(&["impute", s(&m), "--image", s(&big), "--mask", s(&mask), "-o", s(&out)]),
        "image is 9x9, the model takes 8x8",
    );
    assert!(!out.exists());

    // Text commands on an image model, image commands on a text model.
    assert_error(&arq(&["generate", s(&m), "-p", "hi"]), "PixelCNN image model");
    let tiny = d.join("tiny.arq");
    std::fs::write(&tiny, common::tiny_llama_arq(1)).unwrap();
    let sample_out = d.join("grid.png");
    assert_error(&arq(&["sample", s(&tiny), "-o", s(&sample_out)]), "is a text model");
    assert_error(&arq(&["sample", s(&m), "-n", "0", "-o", s(&sample_out)]), "-n must be at least 1");
    assert_error(&arq(&["sample", s(&m), "--temp=-1", "-o", s(&sample_out)]), "--temp");
    assert!(!sample_out.exists());
    // An ONNX file that is not a PixelCNN is refused by the importer with the reason.
    let not_pixelcnn = d.join("x.onnx");
    std::fs::write(&not_pixelcnn, b"not a protobuf").unwrap();
    let conv = arq(&["convert", s(&not_pixelcnn), "-o", s(&d.join("x.arq"))]);
    assert_eq!(conv.status.code(), Some(1));
    assert!(!d.join("x.arq").exists());
}
