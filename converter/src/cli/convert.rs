//! `arq convert`: runs the library's conversion and reports what it wrote on stderr.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use arq_convert::{ConvertOptions, ConvertSummary, InputFormat};

pub fn run(input: &Path, output: &Path, opts: &ConvertOptions) -> Result<()> {
    let t0 = Instant::now();
    let s = arq_convert::convert(input, output, opts)?;
    let secs = t0.elapsed().as_secs_f64();
    let (bytes, quant) = (s.bytes, opts.quant.name());
    match s.format {
        InputFormat::Onnx => {
            if let Some(d) = &s.description {
                eprintln!("{d}");
            }
            eprintln!("wrote {} ({bytes} bytes, {quant}) in {secs:.2} s", output.display());
            print_tensor_errors(&s.tensor_errors, false);
        }
        InputFormat::Gguf | InputFormat::HuggingFace => {
            eprintln!("wrote {} ({bytes} bytes, {quant}) in {secs:.1} s", output.display());
            print_tensor_errors(&s.tensor_errors, true);
            print_accuracy(&s);
        }
    }
    Ok(())
}

/// The per-matrix quantization errors of a conversion: mean and worst, and with
/// `each`, every matrix.
fn print_tensor_errors(errors: &[(String, f64)], each: bool) {
    if errors.is_empty() {
        return;
    }
    let mean = errors.iter().map(|e| e.1).sum::<f64>() / errors.len() as f64;
    let worst = errors.iter().max_by(|a, b| a.1.total_cmp(&b.1)).map_or(("", 0.0), |e| (e.0.as_str(), e.1));
    eprintln!("per-tensor relative error ({} matrices):", errors.len());
    if each {
        for (name, err) in errors {
            eprintln!("  {name:<24} {err:.5}");
        }
    }
    eprintln!("  mean {mean:.5}, worst {} {:.5}", worst.0, worst.1);
}

fn print_accuracy(s: &ConvertSummary) {
    if let Some(a) = &s.accuracy {
        eprintln!(
            "calibration ({} tokens) vs unquantized: KL {:.5} nats/token, top-1 agreement {:.2}%, perplexity {:.3} (unquantized {:.3}, {:+.2}%)",
            a.tokens,
            a.kl_mean,
            100.0 * a.top1_agreement,
            a.ppl_quantized,
            a.ppl_reference,
            100.0 * (a.ppl_quantized / a.ppl_reference - 1.0)
        );
    }
}
