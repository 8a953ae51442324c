//! A series model (`models/series`: an LSTM with a mixture-of-Gaussians head over the
//! yearly sunspot numbers): the log densities against PyTorch's
//! (`models/series/reference.json`), f32 within 1e-4 per step; sampling statistics of
//! many one-step samples against the mixture's analytic mean and quantiles; the CLI's
//! score, next and forecast (the PNG written); refusals of bad CSV files.

mod common;
use common::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arq::{Rnn, RnnSession};
use arq_convert::aligned::ModelBytes;
use arq_convert::import::onnx::{convert_onnx, OnnxConvertOptions};
use arq_convert::quantize::Quant;
use arq_convert::series;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/series")
}

fn arq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arq")).args(args).output().expect("run arq")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap()).unwrap()
}

fn convert(quant: Quant, tmp: &TempDir) -> ModelBytes {
    let out = tmp.path(&format!("sunspots-{}.arq", quant.name()));
    let opts = OnnxConvertOptions { quant, force: false, head: None, vocab: None };
    convert_onnx(&dir().join("sunspots.onnx"), &out, &opts).unwrap();
    ModelBytes::map(&out).unwrap()
}

fn log_densities(bytes: &ModelBytes, values: &[f64]) -> Vec<f64> {
    let model = Rnn::load(bytes.bytes()).unwrap();
    let mut arena = vec![0u8; model.memory_plan().unwrap()];
    let mut session = RnnSession::new(&model, &mut arena).unwrap();
    series::score(&mut session, values).unwrap()
}

#[test]
fn log_density_matches_pytorch() {
    let r = reference();
    let tmp = TempDir::new("series-ref");
    let test = series::read_csv(&dir().join("sunspots-test.csv")).unwrap();
    assert_eq!(test.column, "SUNACTIVITY");
    assert_eq!(test.values.len() as u64, r["values"].as_u64().unwrap());

    let f32_bytes = convert(Quant::F32, &tmp);
    let lp = log_densities(&f32_bytes, &test.values);
    let want: Vec<f64> = r["per_step"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let worst = lp.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-4, "f32 per-step log densities differ from PyTorch by up to {worst:e}");
    let (total, total_ref) = (lp.iter().sum::<f64>(), r["log_density_nats"].as_f64().unwrap());

    // The first step's mixture parameters, before any value.
    let model = Rnn::load(f32_bytes.bytes()).unwrap();
    let mut arena = vec![0u8; model.memory_plan().unwrap()];
    let mut session = RnnSession::new(&model, &mut arena).unwrap();
    let p0 = session.start_value().unwrap();
    let want0: Vec<f64> = r["first_params"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (a, b) in p0.iter().zip(&want0) {
        assert!((*a as f64 - b).abs() < 1e-4, "first parameters {p0:?} vs {want0:?}");
    }

    let lq = log_densities(&convert(Quant::Q8, &tmp), &test.values);
    let total_q8 = lq.iter().sum::<f64>();
    eprintln!("sunspots test log density: PyTorch {total_ref:.5}, arq f32 {total:.5}, q8 {total_q8:.5} nats");
    assert!((total_q8 - total_ref).abs() / total_ref.abs() < 0.01, "q8 {total_q8} vs PyTorch {total_ref}");
}

/// The mixture's CDF at `x`.
fn cdf(mix: &[(f64, f64, f64)], x: f64) -> f64 {
    let phi = |z: f64| 0.5 * (1.0 + libm_erf(z / std::f64::consts::SQRT_2));
    mix.iter().map(|&(w, m, sd)| w * phi((x - m) / sd)).sum()
}

/// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), enough for quantile checks.
fn libm_erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592)
            * t
            * (-x * x).exp();
    y.copysign(x)
}

#[test]
fn one_step_samples_follow_the_mixture() {
    let tmp = TempDir::new("series-samples");
    let bytes = convert(Quant::F32, &tmp);
    let model = Rnn::load(bytes.bytes()).unwrap();
    let train = series::read_csv(&dir().join("sunspots-train.csv")).unwrap();
    let mut arena = vec![0u8; model.memory_plan().unwrap()];
    let mut session = RnnSession::new(&model, &mut arena).unwrap();
    let mix = series::next_mixture(&mut session, &train.values).unwrap();
    assert!((mix.iter().map(|c| c.0).sum::<f64>() - 1.0).abs() < 1e-9);

    let n = 20000;
    let paths = series::forecast(&mut session, &train.values, 1, n, 42).unwrap();
    let xs: Vec<f64> = paths.iter().map(|p| p[0]).collect();
    let mean: f64 = mix.iter().map(|&(w, m, _)| w * m).sum();
    let var: f64 = mix.iter().map(|&(w, m, sd)| w * (sd * sd + m * m)).sum::<f64>() - mean * mean;
    let sample_mean = xs.iter().sum::<f64>() / n as f64;
    let tol = 4.0 * (var / n as f64).sqrt();
    assert!((sample_mean - mean).abs() < tol, "sample mean {sample_mean} vs mixture mean {mean} (± {tol})");
    let mut sorted = xs.clone();
    sorted.sort_by(f64::total_cmp);
    for q in [0.05, 0.25, 0.5, 0.75, 0.95] {
        let at = series::quantile(&sorted, q);
        let f = cdf(&mix, at);
        assert!((f - q).abs() < 0.015, "the sample {q} quantile {at} has mixture CDF {f}");
    }
    // The same seed gives the same paths.
    assert_eq!(series::forecast(&mut session, &train.values, 1, 5, 42).unwrap()[..], paths[..5]);
}

#[test]
fn cli_scores_forecasts_and_writes_the_fan_chart() {
    let tmp = TempDir::new("series-cli");
    let model = tmp.path("sunspots.arq");
    let o = arq(&["convert", s(&dir().join("sunspots.onnx")), "-o", s(&model), "--quant", "f32"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let test = dir().join("sunspots-test.csv");
    let o = arq(&["score", s(&model), s(&test), "--json", "--per-step"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = reference();
    let total = v["log_density_nats"].as_f64().unwrap();
    assert!((total - r["log_density_nats"].as_f64().unwrap()).abs() < 1e-3, "{v}");
    assert_eq!(v["per_step"].as_array().unwrap().len(), 50);
    assert_eq!(v["column"], "SUNACTIVITY");

    let png = tmp.path("fan.png");
    let train = dir().join("sunspots-train.csv");
    let o = arq(&[
        "forecast",
        s(&model),
        s(&train),
        "-n",
        "24",
        "--samples",
        "200",
        "--seed",
        "3",
        "-o",
        s(&png),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let q = &v["quantiles"];
    for t in 0..24 {
        let at = |k: &str| q[k][t].as_f64().unwrap();
        assert!(at("p05") <= at("p25") && at("p25") <= at("p50") && at("p50") <= at("p75") && at("p75") <= at("p95"));
    }
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let reader = decoder.read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (960, 480));

    let o = arq(&["next", s(&model), "-f", s(&train), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["components"].as_array().unwrap().len(), 3);

    // One column without a header is read too.
    let plain = tmp.path("plain.csv");
    std::fs::write(&plain, "12.5\n30\n41.25\n").unwrap();
    let o = arq(&["score", s(&model), s(&plain), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["values"].as_u64(), v["column"].as_str()), (Some(3), Some("column 1")));
}

#[test]
fn bad_series_are_refused_in_one_line() {
    let tmp = TempDir::new("series-bad");
    let model = tmp.path("sunspots.arq");
    let o = arq(&["convert", s(&dir().join("sunspots.onnx")), "-o", s(&model)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = tmp.path("fan.png");
    for (name, text, want) in [
        ("word.csv", "year,value\n1700,5\n1701,abc\n", "line 3: 'abc' in column 'value' is not a number"),
        ("missing.csv", "year,value\n1700,5\n1701,\n", "line 3: missing value in column 'value'"),
        ("nan.csv", "1\n2\nNaN\n", "line 3: missing value"),
        ("ragged.csv", "a,b\n1,2\n3\n", "line 3: 1 cells, the first row has 2"),
        ("header.csv", "year,value\n", "no values"),
        ("empty.csv", "", "no values"),
    ] {
        let path = tmp.path(name);
        std::fs::write(&path, text).unwrap();
        for args in [vec!["score", s(&model), s(&path)], vec!["forecast", s(&model), s(&path), "-o", s(&png)]] {
            let o = arq(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{name}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
            assert!(err.contains(want), "{name}: {err}");
        }
    }
    assert!(!png.exists(), "no fan chart from a refused series");
    // Steps x paths are capped before anything is sampled.
    let train = dir().join("sunspots-train.csv");
    let o = arq(&["forecast", s(&model), s(&train), "-n", "4096", "--samples", "65536", "-o", s(&png)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!((o.status.code(), err.trim().lines().count()), (Some(1), 1), "{err}");
    assert!(err.contains("sampled values"), "{err}");
    // A text model cannot forecast; a series model does not generate text.
    let text_model = tmp.path("words.arq");
    let rnn = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/rnn");
    let o = arq(&[
        "convert",
        s(&rnn.join("word-gru.onnx")),
        "--vocab",
        s(&rnn.join("word-gru.vocab.json")),
        "-o",
        s(&text_model),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = arq(&["forecast", s(&text_model), s(&train), "-o", s(&png)]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let o = arq(&["generate", s(&model), "-p", "x"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
}
