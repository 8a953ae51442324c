//! The `.arq` writer (std only). Lays out header, metadata, directory and 64-byte
//! aligned tensor data exactly as `FORMAT.md` specifies; the reader in the parent
//! module is its inverse, and the converter re-reads every file it writes.

use super::{
    checksum, meta_type, Dtype, ALIGN, HEADER_LEN, MAGIC, MAX_DIMS, TENSOR_ENTRY_LEN, TENSOR_NAME_LEN, VERSION,
};
use std::io::{self, Write};
use std::string::String;
use std::vec::Vec;

/// An owned metadata value to write.
#[derive(Clone, Debug, PartialEq)]
pub enum Meta {
    U32(u32),
    I32(i32),
    F32(f32),
    U64(u64),
    Bool(bool),
    Str(String),
}

struct Tensor {
    name: String,
    dtype: Dtype,
    dims: Vec<u64>,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then writes them in one pass.
#[derive(Default)]
pub struct ArqWriter {
    meta: Vec<(String, Meta)>,
    tensors: Vec<Tensor>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn pad_to(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

impl ArqWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn meta(&mut self, key: &str, value: Meta) {
        self.meta.push((key.into(), value));
    }

    /// Adds a tensor; `dims` outermost first, `data` already in `dtype`'s layout.
    pub fn tensor(&mut self, name: &str, dtype: Dtype, dims: &[u64], data: Vec<u8>) -> io::Result<()> {
        if name.is_empty() || name.len() >= TENSOR_NAME_LEN || name.contains('\0') {
            return Err(invalid(format!("tensor name '{name}' must be 1..{} bytes", TENSOR_NAME_LEN - 1)));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS || dims.contains(&0) {
            return Err(invalid(format!("tensor '{name}': shape {dims:?} not supported")));
        }
        // The dims come from an imported file: their product may overflow.
        let n = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        if n.and_then(|n| dtype.byte_len(n, dims[dims.len() - 1])) != Some(data.len() as u64) {
            return Err(invalid(format!("tensor '{name}': {} bytes do not fit {} {dims:?}", data.len(), dtype.name())));
        }
        self.tensors.push(Tensor { name: name.into(), dtype, dims: dims.to_vec(), data });
        Ok(())
    }

    fn meta_bytes(&self) -> io::Result<Vec<u8>> {
        let mut m = Vec::new();
        for (k, v) in &self.meta {
            let klen = u16::try_from(k.len()).map_err(|_| invalid(format!("metadata key too long: {k}")))?;
            m.extend_from_slice(&klen.to_le_bytes());
            m.extend_from_slice(k.as_bytes());
            match v {
                Meta::U32(x) => {
                    m.push(meta_type::U32);
                    m.extend_from_slice(&x.to_le_bytes());
                }
                Meta::I32(x) => {
                    m.push(meta_type::I32);
                    m.extend_from_slice(&x.to_le_bytes());
                }
                Meta::F32(x) => {
                    m.push(meta_type::F32);
                    m.extend_from_slice(&x.to_le_bytes());
                }
                Meta::U64(x) => {
                    m.push(meta_type::U64);
                    m.extend_from_slice(&x.to_le_bytes());
                }
                Meta::Bool(x) => {
                    m.push(meta_type::BOOL);
                    m.push(*x as u8);
                }
                Meta::Str(s) => {
                    m.push(meta_type::STR);
                    let len = u32::try_from(s.len()).map_err(|_| invalid(format!("metadata '{k}' too long")))?;
                    m.extend_from_slice(&len.to_le_bytes());
                    m.extend_from_slice(s.as_bytes());
                }
            }
        }
        Ok(m)
    }

    /// Writes the whole file to `out`; returns the number of bytes written.
    pub fn write<W: Write>(&self, out: &mut W) -> io::Result<u64> {
        let meta = self.meta_bytes()?;
        let meta_off = HEADER_LEN;
        let dir_off = pad_to(meta_off + meta.len());
        let dir_len = self.tensors.len() * TENSOR_ENTRY_LEN;
        let data_off = pad_to(dir_off + dir_len);

        let mut dir = Vec::with_capacity(dir_len);
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut data_len = 0usize;
        for t in &self.tensors {
            offsets.push(data_len);
            let mut e = [0u8; TENSOR_ENTRY_LEN];
            e[..t.name.len()].copy_from_slice(t.name.as_bytes());
            e[64..68].copy_from_slice(&t.dtype.to_u32().to_le_bytes());
            e[68..72].copy_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for (d, &dim) in t.dims.iter().enumerate() {
                e[72 + 8 * d..80 + 8 * d].copy_from_slice(&dim.to_le_bytes());
            }
            e[104..112].copy_from_slice(&(data_len as u64).to_le_bytes());
            e[112..120].copy_from_slice(&(t.data.len() as u64).to_le_bytes());
            dir.extend_from_slice(&e);
            data_len = pad_to(data_len + t.data.len());
        }

        // The checksum covers the data section including its zero padding.
        let mut data = Vec::with_capacity(data_len);
        for (t, &off) in self.tensors.iter().zip(&offsets) {
            data.resize(off, 0);
            data.extend_from_slice(&t.data);
        }
        data.resize(data_len, 0);

        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(&MAGIC);
        header[4..8].copy_from_slice(&VERSION.to_le_bytes());
        header[8..12].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        header[12..16].copy_from_slice(&(self.meta.len() as u32).to_le_bytes());
        header[16..20].copy_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        header[24..32].copy_from_slice(&(meta_off as u64).to_le_bytes());
        header[32..40].copy_from_slice(&(meta.len() as u64).to_le_bytes());
        header[40..48].copy_from_slice(&(dir_off as u64).to_le_bytes());
        header[48..56].copy_from_slice(&(data_off as u64).to_le_bytes());
        header[56..64].copy_from_slice(&(data_len as u64).to_le_bytes());
        header[64..72].copy_from_slice(&checksum(&data).to_le_bytes());

        out.write_all(&header)?;
        out.write_all(&meta)?;
        out.write_all(&vec![0u8; dir_off - meta_off - meta.len()])?;
        out.write_all(&dir)?;
        out.write_all(&vec![0u8; data_off - dir_off - dir_len])?;
        out.write_all(&data)?;
        Ok((data_off + data_len) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aligned::AlignedBytes;
    use crate::format::keys;
    use crate::format::{ArqFile, FormatError, MetaValue};

    fn sample() -> Vec<u8> {
        let mut w = ArqWriter::new();
        w.meta(keys::ARCHITECTURE, Meta::Str(keys::ARCH_LLAMA.into()));
        w.meta("n", Meta::U32(7));
        w.meta("x", Meta::F32(0.5));
        w.meta("b", Meta::Bool(true));
        w.tensor("a", Dtype::F32, &[2, 3], bytemuck::cast_slice(&[1.0f32, 2., 3., 4., 5., 6.]).to_vec()).unwrap();
        w.tensor("q", Dtype::Q8, &[1, 32], vec![0u8; 34]).unwrap();
        w.tensor("raw", Dtype::U8, &[5], vec![1, 2, 3, 4, 5]).unwrap();
        let mut out = Vec::new();
        w.write(&mut out).unwrap();
        out
    }

    #[test]
    fn roundtrip() {
        let bytes = sample();
        let buf = AlignedBytes::copy_of(&bytes);
        let f = ArqFile::parse(buf.bytes()).unwrap();
        assert_eq!(f.meta(keys::ARCHITECTURE), Some(MetaValue::Str(keys::ARCH_LLAMA)));
        assert_eq!(f.meta_u64("n"), Ok(7));
        assert_eq!(f.meta("b").and_then(|v| v.as_bool()), Some(true));
        assert_eq!(f.n_tensors(), 3);
        let (i, a) = f.find("a").unwrap();
        assert_eq!(i, 0);
        assert_eq!(a.shape.dims(), &[2, 3]);
        assert_eq!(a.as_f32().unwrap(), &[1.0, 2., 3., 4., 5., 6.]);
        assert_eq!(f.find("q").unwrap().1.as_q8().unwrap().len(), 1);
        assert_eq!(f.find("raw").unwrap().1.data, &[1, 2, 3, 4, 5]);
        f.verify_checksum().unwrap();
    }

    #[test]
    fn every_truncation_and_every_byte_flip_is_an_error_or_valid_never_a_panic() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            let buf = AlignedBytes::copy_of(&bytes[..cut]);
            assert!(ArqFile::parse(buf.bytes()).is_err(), "cut {cut}");
        }
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[at] ^= flip;
                let buf = AlignedBytes::copy_of(&b);
                if let Ok(f) = ArqFile::parse(buf.bytes()) {
                    // Whatever parsed must be readable in full without panicking.
                    for t in f.tensors() {
                        let _ = (t.as_f32(), t.as_q8());
                    }
                    let _ = f.meta_iter().count();
                    let _ = f.verify_checksum();
                }
            }
        }
    }

    #[test]
    fn data_corruption_is_caught_by_the_checksum() {
        let mut bytes = sample();
        let last = bytes.len() - 60; // inside the data section
        bytes[last] ^= 0x10;
        let buf = AlignedBytes::copy_of(&bytes);
        let f = ArqFile::parse(buf.bytes()).unwrap();
        assert!(matches!(f.verify_checksum(), Err(FormatError::ChecksumMismatch { .. })));
    }

    #[test]
    fn writer_refuses_inconsistent_tensors() {
        let mut w = ArqWriter::new();
        assert!(w.tensor("q", Dtype::Q8, &[1, 31], vec![0; 34]).is_err());
        assert!(w.tensor("f", Dtype::F32, &[3], vec![0; 8]).is_err());
        assert!(w.tensor("", Dtype::U8, &[1], vec![0]).is_err());
        // 2^64 elements: the product overflows.
        assert!(w.tensor("big", Dtype::U8, &[1 << 32, 1 << 32], vec![0]).is_err());
    }
}
