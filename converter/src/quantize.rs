//! Weight types of an `.arq` file and the encoding of a matrix in one: what every importer
//! shares between reading its source and writing the file.

use arq::format::Dtype;
use arq::quant::{quantize_weights_q8, BlockQ4, QK4};

use crate::report;

/// Output weight type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    Q8,
    /// q4 layer matrices; the token embedding and the output head stay q8 (see
    /// [`Quant::dtype_of`]).
    Q4,
    F32,
}

impl Quant {
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q8 => "q8",
            Quant::Q4 => "q4",
            Quant::F32 => "f32",
        }
    }

    /// The dtype of matrix `name` in a file of this weight type.
    ///
    /// With q4, `token_embd` (which is also the output head when that is tied),
    /// `output` and GPT-2's `position_embd` are q8, as llama.cpp keeps the embeddings and
    /// the head above 4 bits in its Q4 files. On
    /// SmolLM2-135M (calibration KL against the unquantized model, built-in text) a q4
    /// embedding alone costs 0.064 nats/token and +6.3% perplexity; in q8 it costs 0.000,
    /// for 12 MB more (84 vs 96 MB).
    pub fn dtype_of(self, name: &str) -> Dtype {
        match self {
            Quant::Q8 => Dtype::Q8,
            Quant::Q4 if matches!(name, "token_embd" | "output" | "position_embd") => Dtype::Q8,
            Quant::Q4 => Dtype::Q4,
            Quant::F32 => Dtype::F32,
        }
    }
}

/// A tensor's name and relative quantization error.
pub type TensorError = (String, f64);

/// Refuses a weight tensor holding NaN or an infinity, which no weight type can encode
/// and which would make every output NaN: the one check all importers make, on the f32
/// values just before they are encoded.
pub fn check_finite(name: &str, values: &[f32]) -> anyhow::Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(at) => anyhow::bail!(
            "tensor '{}' holds {} at element {at}; weights must be finite",
            crate::message::name(name),
            values[at]
        ),
    }
}

/// Writes the f32 matrix `name` (`rows` x `cols`) into `w` in the type `quant` gives it,
/// after [`check_finite`], recording its quantization error in `errors`: what the ONNX
/// importers do for each weight matrix.
pub fn write_matrix(
    w: &mut arq::format::writer::ArqWriter,
    (quant, errors): (Quant, &mut Vec<TensorError>),
    name: &str,
    (rows, cols): (usize, usize),
    values: &[f32],
) -> anyhow::Result<()> {
    check_finite(name, values)?;
    let dtype = quant.dtype_of(name);
    let (data, err) = encode_matrix(values, dtype);
    if let Some(e) = err {
        errors.push((name.to_string(), e));
    }
    w.tensor(name, dtype, &[rows as u64, cols as u64], data)?;
    Ok(())
}

/// Writes the f32 vector `name` (norms, biases: never quantized) into `w`, after
/// [`check_finite`].
pub fn write_vector(w: &mut arq::format::writer::ArqWriter, name: &str, values: &[f32]) -> anyhow::Result<()> {
    check_finite(name, values)?;
    w.tensor(name, Dtype::F32, &[values.len() as u64], bytemuck::cast_slice(values).to_vec())?;
    Ok(())
}

/// A matrix's bytes in `dtype` (`Q8`, `Q4` or `F32`; the quantized types need rows of a
/// multiple of 32 values, which the caller checks) and, when quantized, its relative
/// quantization error.
pub fn encode_matrix(values: &[f32], dtype: Dtype) -> (Vec<u8>, Option<f64>) {
    let (data, deq) = match dtype {
        Dtype::Q8 => {
            let blocks = quantize_weights_q8(values);
            let mut deq = vec![0.0f32; values.len()];
            arq::quant::dequantize_row_q8(&blocks, &mut deq);
            (bytemuck::cast_slice(&blocks).to_vec(), Some(deq))
        }
        Dtype::Q4 => {
            let mut blocks = vec![BlockQ4 { d: [0; 2], m: [0; 2], qs: [0; QK4 / 2] }; values.len() / QK4];
            arq::quant::quantize_row_q4(values, &mut blocks);
            let mut deq = vec![0.0f32; values.len()];
            arq::quant::dequantize_row_q4(&blocks, &mut deq);
            (bytemuck::cast_slice(&blocks).to_vec(), Some(deq))
        }
        _ => (bytemuck::cast_slice(values).to_vec(), None),
    };
    let err = deq.map(|d| report::relative_error(values, &d));
    (data, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_keeps_the_embedding_and_head_in_q8() {
        assert_eq!(Quant::Q4.dtype_of("token_embd"), Dtype::Q8);
        assert_eq!(Quant::Q4.dtype_of("output"), Dtype::Q8);
        assert_eq!(Quant::Q4.dtype_of("position_embd"), Dtype::Q8);
        assert_eq!(Quant::Q4.dtype_of("blk.0.attn_q"), Dtype::Q4);
        assert_eq!(Quant::Q4.dtype_of("blk.29.ffn_down"), Dtype::Q4);
        assert_eq!(Quant::Q8.dtype_of("token_embd"), Dtype::Q8);
        assert_eq!(Quant::F32.dtype_of("blk.0.attn_q"), Dtype::F32);
        assert_eq!(Quant::Q4.name(), "q4");
    }
}
