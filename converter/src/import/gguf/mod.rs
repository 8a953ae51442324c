//! GGUF import: the reader (header, metadata and tensor table of a GGUF v2/v3 file, mapped
//! read-only, and dequantization of its tensors to f32) and, in [`text`], the importer of
//! text transformers (llama, qwen2, qwen3, gemma3, gpt2) from it.
//!
//! The format (ggml's `docs/gguf.md`), all little-endian:
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count x   (key: string, value_type u32, value)
//! tensor_count x (name: string, n_dims u32, dims u64 x n_dims, ggml_type u32, offset u64)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset
//! string = len u64 + UTF-8 bytes; array = elem_type u32 + count u64 + elements
//! ```
//!
//! The file is hostile input: every count, length and offset is checked with checked
//! arithmetic against the bytes that remain, so a bad file gives a [`GgufError`], never a
//! panic or an allocation larger than a small multiple of the file.

mod dequant;
pub mod text;

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::message::name as shown;

pub use dequant::{can_dequantize, dequantize, dequantize_into};

/// "GGUF" read as a little-endian u32.
const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are rejected (real files use depth 1).
const MAX_ARRAY_DEPTH: u32 = 8;
/// Caps on the counts and lengths of the header, checked before anything is allocated,
/// so that a file cannot make the reader build a table far larger than itself: the
/// `.arq` format's own table limits (a model with more could not be written anyway),
/// the tokenizer's limit for arrays (the largest arrays are its tokens and merges), and
/// 16 MiB for a string (chat templates, the longest strings, are a few KiB).
pub const MAX_TENSORS: u64 = arq::format::MAX_TENSORS as u64;
pub const MAX_KV: u64 = arq::format::MAX_META as u64;
pub const MAX_ARRAY_LEN: u64 = arq::tokenizer::MAX_TOKENS as u64;
pub const MAX_STRING_LEN: u64 = 1 << 24;

/// Why a GGUF file could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum GgufError {
    /// Opening, mapping or reading the file failed.
    Io(std::io::Error),
    /// The file does not start with the magic "GGUF".
    NotGguf,
    /// A GGUF version other than 2 or 3.
    UnsupportedVersion(u32),
    /// The file ends inside the named part.
    Truncated(&'static str),
    /// A structural error; the message names the key or tensor.
    Malformed(String),
    /// The tensor's type is one this reader cannot dequantize (`tensor` is empty when
    /// the free function [`dequantize`] was called without a tensor).
    UnsupportedType { tensor: String, ty: String },
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufError::Io(e) => write!(f, "cannot read GGUF file: {e}"),
            GgufError::NotGguf => {
                write!(f, "not a GGUF file (it does not start with the magic \"GGUF\")")
            }
            GgufError::UnsupportedVersion(v) if matches!(v.swap_bytes(), 2 | 3) => write!(
                f,
                "unsupported GGUF version {v}: this looks like a big-endian GGUF (version {}), \
                 only little-endian files are supported",
                v.swap_bytes()
            ),
            GgufError::UnsupportedVersion(v) => write!(
                f,
                "unsupported GGUF version {v}: only versions 2 and 3 are supported \
                 (re-convert the model with a current llama.cpp)"
            ),
            GgufError::Truncated(what) => {
                write!(f, "truncated GGUF file: {what} runs past the end of the file")
            }
            GgufError::Malformed(msg) => write!(f, "malformed GGUF file: {msg}"),
            GgufError::UnsupportedType { tensor, ty } => {
                if tensor.is_empty() {
                    write!(f, "cannot dequantize GGML type {ty}")?;
                } else {
                    write!(f, "tensor '{tensor}' has GGML type {ty}, which cannot be dequantized")?;
                }
                write!(
                    f,
                    " (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, \
                     Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)"
                )
            }
        }
    }
}

impl std::error::Error for GgufError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GgufError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for GgufError {
    fn from(e: std::io::Error) -> Self {
        GgufError::Io(e)
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    /// GGUF strings are UTF-8; invalid sequences are replaced by U+FFFD.
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Any integer that is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// F32, F64 (rounded) or any integer (rounded).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            Value::U64(v) => Some(v as f32),
            Value::I64(v) => Some(v as f32),
            ref other => other.as_i64().map(|v| v as f32),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of the value's type: "u32", "string", "array", ...
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::Str(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }
}

/// A ggml tensor type. Types without a variant keep their id in `Other`; sizes and names
/// of the other types ggml defines are still known, so their bytes can be located.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    BF16,
    Other(u32),
}

/// ggml's type table for ids without a variant: (id, name, block size, bytes per block).
const OTHER_TYPES: &[(u32, &str, u64, u64)] = &[
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    /// The type with ggml id `id`.
    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            15 => GgmlType::Q8_K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// The ggml id written in the file.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    fn other_entry(self) -> Option<&'static (u32, &'static str, u64, u64)> {
        match self {
            GgmlType::Other(id) => OTHER_TYPES.iter().find(|e| e.0 == id),
            _ => None,
        }
    }

    /// ggml's name ("Q4_K", "IQ4_NL", ...); "unknown" for ids ggml does not define.
    pub fn name(&self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
            GgmlType::BF16 => "BF16",
            GgmlType::Other(_) => self.other_entry().map_or("unknown", |e| e.1),
        }
    }

    /// Name and id, for messages: "IQ4_NL (id 20)".
    pub fn describe(&self) -> String {
        format!("{} (id {})", self.name(), self.id())
    }

    /// Elements per block; `None` for ids ggml does not define.
    pub fn block_size(&self) -> Option<u64> {
        Some(match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => 32,
            GgmlType::Q8_0 | GgmlType::Q8_1 => 32,
            GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K => 256,
            GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::Q8_K => 256,
            GgmlType::Other(_) => return self.other_entry().map(|e| e.2),
        })
    }

    /// Bytes per block; `None` for ids ggml does not define.
    pub fn type_size(&self) -> Option<u64> {
        Some(match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q8_1 => 40,
            GgmlType::Q2_K => 84,
            GgmlType::Q3_K => 110,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
            GgmlType::Q8_K => 292,
            GgmlType::Other(_) => return self.other_entry().map(|e| e.3),
        })
    }

    /// Whether [`dequantize`] handles this type.
    pub fn can_dequantize(&self) -> bool {
        can_dequantize(*self)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgmlType::Other(id) if self.other_entry().is_none() => write!(f, "unknown({id})"),
            _ => f.write_str(self.name()),
        }
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the innermost (row length), the reverse of numpy/PyTorch.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset of the data, relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Product of the dims (1 for a scalar); saturates at u64::MAX, which
    /// [`GgufFile::open`] never lets through.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// (rows, cols) of the tensor seen as a matrix: cols = `dims[0]`, rows = the product
    /// of the other dims. A PyTorch `[out, in]` weight gives (out, in).
    pub fn shape_rows_cols(&self) -> (u64, u64) {
        let cols = self.dims.first().copied().unwrap_or(1);
        let rows = self.dims.iter().skip(1).fold(1u64, |n, &d| n.saturating_mul(d));
        (rows, cols)
    }

    /// Bytes of data; `None` when the type's size is unknown, the row length is not a
    /// whole number of blocks, or the size overflows.
    pub fn n_bytes(&self) -> Option<u64> {
        let (block, size) = (self.ty.block_size()?, self.ty.type_size()?);
        let mut n = 1u64;
        for &d in &self.dims {
            n = n.checked_mul(d)?;
        }
        let cols = self.dims.first().copied().unwrap_or(1);
        if cols % block != 0 {
            return None;
        }
        (n / block).checked_mul(size)
    }
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An open GGUF file: parsed header and tensor table over the mapped bytes.
pub struct GgufFile {
    storage: Storage,
    pub version: u32,
    /// Key/value pairs in file order; keys are unique.
    pub metadata: Vec<(String, Value)>,
    /// Tensor table in file order; names are unique.
    pub tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("len", &self.storage.bytes().len())
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` read-only and parses its header and tensor table. Every tensor whose
    /// type has a known size is checked to lie inside the file.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let file = File::open(path)?;
        // SAFETY: the map is read-only and private to this struct; the converter never
        // writes its input. Another process truncating or rewriting the file while it is
        // mapped is outside what any mmap-based reader can guard against.
        let map = unsafe { Mmap::map(&file)? };
        GgufFile::parse(Storage::Mapped(map))
    }

    /// Parses a GGUF held in memory (tests, embedded fixtures).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        GgufFile::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<GgufFile, GgufError> {
        let header = parse_header(storage.bytes())?;
        Ok(GgufFile {
            storage,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            alignment: header.alignment,
            data_offset: header.data_offset,
        })
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `general.architecture` ("llama", "gpt2", ...).
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Alignment of the data section (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where the data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The raw bytes of tensor `t` (ggml block layout).
    pub fn tensor_data(&self, t: &TensorInfo) -> Result<&[u8], GgufError> {
        let bytes = self.storage.bytes();
        let (start, end) = tensor_range(t, self.data_offset, bytes.len() as u64)?;
        // tensor_range checked end <= len, so both fit a usize.
        bytes
            .get(start as usize..end as usize)
            .ok_or_else(|| GgufError::Malformed(format!("tensor '{}': data out of range", shown(&t.name))))
    }

    /// Tensor `t` as f32, in GGUF element order (row-major with rows of `dims[0]`).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        if !t.ty.can_dequantize() {
            return Err(GgufError::UnsupportedType { tensor: shown(&t.name), ty: t.ty.describe() });
        }
        let data = self.tensor_data(t)?;
        let n = usize::try_from(t.n_elements()).map_err(|_| {
            GgufError::Malformed(format!("tensor '{}': too many elements for this machine", shown(&t.name)))
        })?;
        dequantize(t.ty, data, n).map_err(|e| match e {
            GgufError::Malformed(msg) => GgufError::Malformed(format!("tensor '{}': {msg}", shown(&t.name))),
            other => other,
        })
    }
}

/// Absolute [start, end) of `t`'s data, checked against a file of `file_len` bytes.
fn tensor_range(t: &TensorInfo, data_offset: u64, file_len: u64) -> Result<(u64, u64), GgufError> {
    let name = shown(&t.name);
    if t.ty.block_size().is_none() {
        return Err(GgufError::UnsupportedType { tensor: name, ty: t.ty.describe() });
    }
    let n_bytes = t.n_bytes().ok_or_else(|| {
        GgufError::Malformed(format!(
            "tensor '{name}': dims {:?} do not make whole {} blocks of {} elements, or overflow",
            t.dims,
            t.ty.name(),
            t.ty.block_size().unwrap_or(1)
        ))
    })?;
    let start = data_offset.checked_add(t.offset);
    let end = start.and_then(|s| s.checked_add(n_bytes));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_len => Ok((start, end)),
        _ => Err(GgufError::Malformed(format!(
            "tensor '{name}': {n_bytes} bytes at offset {} (data section at {data_offset}) \
             run past the end of the file ({file_len} bytes)",
            t.offset
        ))),
    }
}

struct Header {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

fn parse_header(bytes: &[u8]) -> Result<Header, GgufError> {
    if bytes.len() < MAGIC.len() {
        return Err(if !bytes.is_empty() && MAGIC.starts_with(bytes) {
            GgufError::Truncated("the magic")
        } else {
            GgufError::NotGguf
        });
    }
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4, "the magic")? != MAGIC {
        return Err(GgufError::NotGguf);
    }
    let version = r.u32("the version")?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    let metadata = r.metadata(kv_count)?;
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => return Err(GgufError::Malformed(format!("general.alignment is {v:?}, expected a power of two"))),
        },
    };
    let tensors = r.tensor_table(tensor_count, alignment)?;

    let data_offset = (r.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| GgufError::Malformed("data section offset overflows".to_string()))?;
    let file_len = bytes.len() as u64;
    for t in &tensors {
        // Types of unknown size can still be listed; their bytes cannot be located.
        if t.ty.block_size().is_some() {
            tensor_range(t, data_offset, file_len)?;
        }
    }
    Ok(Header { version, metadata, tensors, alignment, data_offset })
}

/// Errors unless `value` (a count or length read as `what`) is at most `cap`.
fn cap(value: u64, cap: u64, what: &str) -> Result<(), GgufError> {
    if value > cap {
        return Err(GgufError::Malformed(format!("{what} is {value}, more than the cap of {cap}")));
    }
    Ok(())
}

/// A cursor over the file's bytes that never reads past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        let n = usize::try_from(n).map_err(|_| GgufError::Truncated(what))?;
        let end = self.pos.checked_add(n).ok_or(GgufError::Truncated(what))?;
        let out = self.bytes.get(self.pos..end).ok_or(GgufError::Truncated(what))?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        let b = self.take(N as u64, what)?;
        b.try_into().map_err(|_| GgufError::Truncated(what))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &'static str) -> Result<&'a [u8], GgufError> {
        let len = self.u64(what)?;
        if len > MAX_STRING_LEN {
            return Err(GgufError::Malformed(format!(
                "{what} is {len} bytes long, more than the cap of {MAX_STRING_LEN}"
            )));
        }
        self.take(len, what)
    }

    /// Errors unless `count` items of at least `min_size` bytes each fit in the rest of
    /// the file, which bounds every allocation sized by a count.
    fn check_count(&self, count: u64, min_size: u64, what: &'static str) -> Result<(), GgufError> {
        if count.checked_mul(min_size).is_none_or(|n| n > self.remaining() as u64) {
            return Err(GgufError::Truncated(what));
        }
        Ok(())
    }

    /// The `count` key/value pairs of the metadata table; keys are unique UTF-8.
    fn metadata(&mut self, count: u64) -> Result<Vec<(String, Value)>, GgufError> {
        // The smallest kv is an empty key, a type and a one-byte value: 13 bytes.
        cap(count, MAX_KV, "the metadata count")?;
        self.check_count(count, 13, "the metadata table")?;
        let mut metadata: Vec<(String, Value)> = Vec::with_capacity(count as usize);
        let mut keys = HashSet::with_capacity(count as usize);
        for _ in 0..count {
            let at = self.pos;
            let key = self.string("a metadata key")?;
            let key = String::from_utf8(key.to_vec())
                .map_err(|_| GgufError::Malformed(format!("metadata key at byte {at} is not UTF-8")))?;
            let ty = self.u32("a metadata value type")?;
            let value = self.value(ty, 0, &key)?;
            if !keys.insert(key.clone()) {
                return Err(GgufError::Malformed(format!("duplicate metadata key '{}'", shown(&key))));
            }
            metadata.push((key, value));
        }
        Ok(metadata)
    }

    /// The `count` entries of the tensor table: unique UTF-8 names, at most
    /// [`MAX_DIMS`] dims whose product fits, offsets on the `alignment`.
    fn tensor_table(&mut self, count: u64, alignment: u64) -> Result<Vec<TensorInfo>, GgufError> {
        // The smallest tensor entry: empty name, n_dims, type, offset: 24 bytes.
        cap(count, MAX_TENSORS, "the tensor count")?;
        self.check_count(count, 24, "the tensor table")?;
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(count as usize);
        let mut names = HashSet::with_capacity(count as usize);
        for _ in 0..count {
            let at = self.pos;
            let name = self.string("a tensor name")?;
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| GgufError::Malformed(format!("tensor name at byte {at} is not UTF-8")))?;
            let n_dims = self.u32("a tensor's dimension count")?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::Malformed(format!(
                    "tensor '{}' has {n_dims} dimensions, at most {MAX_DIMS} are allowed",
                    shown(&name)
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(self.u64("a tensor's dimensions")?);
            }
            let ty = GgmlType::from_id(self.u32("a tensor's type")?);
            let offset = self.u64("a tensor's offset")?;
            if !names.insert(name.clone()) {
                return Err(GgufError::Malformed(format!("duplicate tensor name '{}'", shown(&name))));
            }
            let total = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
            if total.is_none_or(|n| n > i64::MAX as u64) {
                return Err(GgufError::Malformed(format!(
                    "tensor '{}' has dims {dims:?}, whose element count overflows",
                    shown(&name)
                )));
            }
            if offset % alignment != 0 {
                return Err(GgufError::Malformed(format!(
                    "tensor '{}' has offset {offset}, not a multiple of the alignment {alignment}",
                    shown(&name)
                )));
            }
            tensors.push(TensorInfo { name, dims, ty, offset });
        }
        Ok(tensors)
    }

    fn value(&mut self, ty: u32, depth: u32, key: &str) -> Result<Value, GgufError> {
        const W: &str = "a metadata value";
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.array(W)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(W)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(W)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(W)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(W)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(W)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(W)?)),
            7 => match self.array::<1>(W)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(GgufError::Malformed(format!(
                        "metadata key '{}': bool byte is {b}, expected 0 or 1",
                        shown(key)
                    )))
                }
            },
            8 => Value::Str(String::from_utf8_lossy(self.string("a metadata string")?).into_owned()),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Malformed(format!(
                        "metadata key '{}': arrays nested deeper than {MAX_ARRAY_DEPTH}",
                        shown(key)
                    )));
                }
                let elem = self.u32("a metadata array type")?;
                let count = self.u64("a metadata array length")?;
                let min_size = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(GgufError::Malformed(format!(
                            "metadata key '{}': unknown array element type {other}",
                            shown(key)
                        )))
                    }
                };
                cap(count, MAX_ARRAY_LEN, &format!("the length of metadata array '{}'", shown(key)))?;
                self.check_count(count, min_size, "a metadata array")?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, depth + 1, key)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(W)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(W)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(W)?)),
            other => {
                return Err(GgufError::Malformed(format!("metadata key '{}': unknown value type {other}", shown(key))))
            }
        })
    }
}
