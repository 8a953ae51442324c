//! The `.arq` file: the only parser of its bytes (and, with `std`, its writer), and in
//! [`keys`] the table of its metadata keys and architecture names.
//!
//! Normative spec: `runtime/FORMAT.md`. The reader borrows the file's bytes (`&'a [u8]`:
//! an mmap, or a `static` blob in flash), copies nothing and allocates nothing. Every
//! count, size and offset is checked with overflow-safe arithmetic in [`ArqFile::parse`],
//! so later accessors cannot fail on structure, and no byte sequence makes it panic.

pub mod keys;
#[cfg(feature = "std")]
pub mod writer;

use crate::quant::{BlockQ4, BlockQ8};
use core::fmt;

#[cfg(target_endian = "big")]
compile_error!("the .arq format is little-endian and tensors are cast in place");

pub const MAGIC: [u8; 4] = *b"ARQF";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 128;
pub const TENSOR_ENTRY_LEN: usize = 128;
pub const TENSOR_NAME_LEN: usize = 64;
pub const ALIGN: usize = 64;
pub const MAX_DIMS: usize = 4;
/// Caps that keep a hostile header from describing absurd tables.
pub const MAX_META: u32 = 1 << 16;
pub const MAX_TENSORS: u32 = 1 << 16;

/// A structural problem with an `.arq` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than the fixed header.
    TooShort {
        len: usize,
    },
    BadMagic,
    UnsupportedVersion(u32),
    /// A section, entry or tensor reaches past the end of the file (or its section).
    OutOfBounds(&'static str),
    /// An offset that must be a multiple of 64 is not, or the file's base address is
    /// not 64-byte aligned (tensors are cast in place).
    Misaligned(&'static str),
    /// A count or size over its cap, or arithmetic that would overflow.
    TooLarge(&'static str),
    BadUtf8(&'static str),
    UnknownDtype(u32),
    UnknownMetaType(u8),
    /// A tensor's byte length disagrees with its dtype and shape.
    BadTensorSize {
        index: u32,
    },
    BadShape {
        index: u32,
    },
    ChecksumMismatch {
        stored: u64,
        computed: u64,
    },
    /// A required metadata key is missing or has the wrong type.
    MissingMeta(&'static str),
    /// Sections overlap or are not in the order header, metadata, directory, data.
    BadLayout(&'static str),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FormatError::*;
        match self {
            TooShort { len } => write!(f, "file is {len} bytes, shorter than the {HEADER_LEN}-byte .arq header"),
            BadMagic => write!(f, "not an .arq file (bad magic)"),
            UnsupportedVersion(v) => write!(f, "unsupported .arq format version {v} (this build reads {VERSION})"),
            OutOfBounds(what) => {
                write!(f, "truncated or corrupt file: {what} reaches past its end")
            }
            Misaligned(what) => write!(f, "misaligned {what} (must be 64-byte aligned)"),
            TooLarge(what) => write!(f, "corrupt file: {what} is too large"),
            BadUtf8(what) => write!(f, "corrupt file: {what} is not valid UTF-8"),
            UnknownDtype(d) => write!(f, "unknown tensor dtype {d}"),
            UnknownMetaType(t) => write!(f, "unknown metadata value type {t}"),
            BadTensorSize { index } => write!(f, "tensor #{index}: byte length does not match dtype and shape"),
            BadShape { index } => write!(f, "tensor #{index}: invalid shape"),
            ChecksumMismatch { stored, computed } => {
                write!(f, "data checksum mismatch (stored {stored:016x}, computed {computed:016x}): file is corrupt")
            }
            MissingMeta(k) => write!(f, "missing or mistyped metadata key '{k}'"),
            BadLayout(what) => write!(f, "corrupt file: bad section layout ({what})"),
        }
    }
}

/// Tensor element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    /// [`BlockQ8`] blocks of 32 along the last dimension.
    Q8,
    /// Raw bytes (e.g. the tokenizer tables), shape `[len]`.
    U8,
    /// [`BlockQ4`] blocks of 32 along the last dimension.
    Q4,
}

impl Dtype {
    pub fn from_u32(v: u32) -> Result<Dtype, FormatError> {
        Ok(match v {
            0 => Dtype::F32,
            1 => Dtype::F16,
            2 => Dtype::Q8,
            3 => Dtype::U8,
            4 => Dtype::Q4,
            other => return Err(FormatError::UnknownDtype(other)),
        })
    }
    pub fn to_u32(self) -> u32 {
        match self {
            Dtype::F32 => 0,
            Dtype::F16 => 1,
            Dtype::Q8 => 2,
            Dtype::U8 => 3,
            Dtype::Q4 => 4,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Q8 => "q8",
            Dtype::U8 => "u8",
            Dtype::Q4 => "q4",
        }
    }
    /// Bytes for a tensor whose last dimension is `last` and which has `n` elements,
    /// or `None` when the shape does not fit the dtype (q8 and q4 need `last % 32 == 0`).
    pub fn byte_len(self, n: u64, last: u64) -> Option<u64> {
        match self {
            Dtype::F32 => n.checked_mul(4),
            Dtype::F16 => n.checked_mul(2),
            Dtype::U8 => Some(n),
            Dtype::Q8 => {
                if !last.is_multiple_of(32) {
                    return None;
                }
                (n / 32).checked_mul(core::mem::size_of::<BlockQ8>() as u64)
            }
            Dtype::Q4 => {
                if !last.is_multiple_of(32) {
                    return None;
                }
                (n / 32).checked_mul(core::mem::size_of::<BlockQ4>() as u64)
            }
        }
    }
}

/// A typed metadata value, borrowed from the file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetaValue<'a> {
    U32(u32),
    I32(i32),
    F32(f32),
    U64(u64),
    Bool(bool),
    Str(&'a str),
}

impl<'a> MetaValue<'a> {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I32(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetaValue::F32(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// Metadata value type tags.
pub mod meta_type {
    pub const U32: u8 = 0;
    pub const I32: u8 = 1;
    pub const F32: u8 = 2;
    pub const U64: u8 = 3;
    pub const BOOL: u8 = 4;
    pub const STR: u8 = 5;
}

/// A tensor's shape, outermost dimension first (row-major).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    dims: [u64; MAX_DIMS],
    ndim: usize,
}

impl Shape {
    pub fn dims(&self) -> &[u64] {
        &self.dims[..self.ndim]
    }
    pub fn n_elements(&self) -> u64 {
        // Checked in `parse`: cannot overflow for a parsed tensor.
        self.dims().iter().product()
    }
}

/// A borrowed, typed view of one tensor.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: Shape,
    pub data: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// The data as f32 (the dtype must be F32).
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        match self.dtype {
            Dtype::F32 => bytemuck::try_cast_slice(self.data).ok(),
            _ => None,
        }
    }
    /// The data as q8 blocks (the dtype must be Q8).
    pub fn as_q8(&self) -> Option<&'a [BlockQ8]> {
        match self.dtype {
            Dtype::Q8 => bytemuck::try_cast_slice(self.data).ok(),
            _ => None,
        }
    }
    /// The data as q4 blocks (the dtype must be Q4).
    pub fn as_q4(&self) -> Option<&'a [BlockQ4]> {
        match self.dtype {
            Dtype::Q4 => bytemuck::try_cast_slice(self.data).ok(),
            _ => None,
        }
    }
}

/// A parsed, validated `.arq` file.
#[derive(Clone, Copy, Debug)]
pub struct ArqFile<'a> {
    meta: &'a [u8],
    n_meta: u32,
    dir: &'a [u8],
    n_tensors: u32,
    data: &'a [u8],
    checksum: u64,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}
fn to_usize(v: u64, what: &'static str) -> Result<usize, FormatError> {
    usize::try_from(v).map_err(|_| FormatError::TooLarge(what))
}

/// A read position in the metadata section; every step is bounds- and overflow-checked.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    const OOB: FormatError = FormatError::OutOfBounds("metadata entry");

    fn take(&mut self, len: usize) -> Result<&'a [u8], FormatError> {
        let end = self.at.checked_add(len).ok_or(Self::OOB)?;
        let s = self.bytes.get(self.at..end).ok_or(Self::OOB)?;
        self.at = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        self.take(N)?.try_into().map_err(|_| Self::OOB)
    }
}

/// One metadata entry: key, value, and the offset of the next entry.
fn parse_meta_entry(meta: &[u8], at: usize) -> Result<(&str, MetaValue<'_>, usize), FormatError> {
    let mut c = Cursor { bytes: meta, at };
    let klen = u16::from_le_bytes(c.array()?);
    let key = core::str::from_utf8(c.take(klen.into())?).map_err(|_| FormatError::BadUtf8("metadata key"))?;
    let [ty] = c.array()?;
    let value = match ty {
        meta_type::U32 => MetaValue::U32(u32::from_le_bytes(c.array()?)),
        meta_type::I32 => MetaValue::I32(i32::from_le_bytes(c.array()?)),
        meta_type::F32 => MetaValue::F32(f32::from_le_bytes(c.array()?)),
        meta_type::U64 => MetaValue::U64(u64::from_le_bytes(c.array()?)),
        meta_type::BOOL => match c.array()? {
            [0] => MetaValue::Bool(false),
            [1] => MetaValue::Bool(true),
            _ => return Err(FormatError::BadLayout("bool metadata value not 0 or 1")),
        },
        meta_type::STR => {
            let len = to_usize(u32::from_le_bytes(c.array()?).into(), "metadata string")?;
            let text = core::str::from_utf8(c.take(len)?).map_err(|_| FormatError::BadUtf8("metadata string"))?;
            MetaValue::Str(text)
        }
        other => return Err(FormatError::UnknownMetaType(other)),
    };
    Ok((key, value, c.at))
}

/// Iterates over the metadata entries of a parsed file.
pub struct MetaIter<'a> {
    meta: &'a [u8],
    at: usize,
    left: u32,
}

impl<'a> Iterator for MetaIter<'a> {
    type Item = (&'a str, MetaValue<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        // Every entry was validated by `ArqFile::parse`.
        let (k, v, next) = parse_meta_entry(self.meta, self.at).ok()?;
        self.at = next;
        self.left -= 1;
        Some((k, v))
    }
}

/// FNV-1a, 64-bit, over bytes: the data checksum (cheap and dependency-free; it detects
/// corruption, it is not a cryptographic seal).
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl<'a> ArqFile<'a> {
    /// Parses and validates the whole structure (not the checksum: see
    /// [`ArqFile::verify_checksum`]). `bytes` must start 64-byte aligned.
    pub fn parse(bytes: &'a [u8]) -> Result<ArqFile<'a>, FormatError> {
        if bytes.len() < HEADER_LEN {
            return Err(FormatError::TooShort { len: bytes.len() });
        }
        if bytes[..4] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let h = |at| u32_at(bytes, at).ok_or(FormatError::TooShort { len: bytes.len() });
        let h64 = |at| u64_at(bytes, at).ok_or(FormatError::TooShort { len: bytes.len() });
        let version = h(4)?;
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        if h(8)? != HEADER_LEN as u32 {
            return Err(FormatError::BadLayout("header length"));
        }
        if !(bytes.as_ptr() as usize).is_multiple_of(ALIGN) {
            return Err(FormatError::Misaligned("file start in memory"));
        }
        let n_meta = h(12)?;
        let n_tensors = h(16)?;
        if n_meta > MAX_META {
            return Err(FormatError::TooLarge("metadata count"));
        }
        if n_tensors > MAX_TENSORS {
            return Err(FormatError::TooLarge("tensor count"));
        }
        let meta_off = to_usize(h64(24)?, "metadata offset")?;
        let meta_len = to_usize(h64(32)?, "metadata length")?;
        let dir_off = to_usize(h64(40)?, "directory offset")?;
        let data_off = to_usize(h64(48)?, "data offset")?;
        let data_len = to_usize(h64(56)?, "data length")?;
        let checksum = h64(64)?;

        // Every end is computed with checked arithmetic: the header's offsets and lengths
        // are arbitrary u64s, and a sum that wraps must be an error, not a panic (with
        // overflow checks) or a bogus layout that happens to pass (without).
        let end = |off: usize, len: usize, what: &'static str| off.checked_add(len).ok_or(FormatError::TooLarge(what));
        let dir_len = to_usize(u64::from(n_tensors), "tensor directory")?
            .checked_mul(TENSOR_ENTRY_LEN)
            .ok_or(FormatError::TooLarge("tensor directory"))?;
        let meta_end = end(meta_off, meta_len, "metadata section")?;
        let dir_end = end(dir_off, dir_len, "tensor directory")?;
        let data_end = end(data_off, data_len, "data section")?;
        if meta_off < HEADER_LEN || dir_off < meta_end || data_off < dir_end {
            return Err(FormatError::BadLayout("sections out of order or overlapping"));
        }
        if data_off % ALIGN != 0 {
            return Err(FormatError::Misaligned("data section"));
        }
        let section = |off: usize, end: usize, what| bytes.get(off..end).ok_or(FormatError::OutOfBounds(what));
        let meta = section(meta_off, meta_end, "metadata section")?;
        let dir = section(dir_off, dir_end, "tensor directory")?;
        let data = section(data_off, data_end, "data section")?;

        // Every metadata entry must parse and the entries must fill the section exactly.
        let mut at = 0;
        for _ in 0..n_meta {
            at = parse_meta_entry(meta, at)?.2;
        }
        if at != meta.len() {
            return Err(FormatError::BadLayout("metadata section length"));
        }
        let file = ArqFile { meta, n_meta, dir, n_tensors, data, checksum };
        for i in 0..n_tensors as usize {
            file.tensor_checked(i)?;
        }
        Ok(file)
    }

    fn tensor_checked(&self, index: usize) -> Result<TensorView<'a>, FormatError> {
        let idx = u32::try_from(index).map_err(|_| FormatError::TooLarge("tensor index"))?;
        let e =
            self.dir.chunks_exact(TENSOR_ENTRY_LEN).nth(index).ok_or(FormatError::OutOfBounds("tensor directory"))?;
        let name_field = &e[..TENSOR_NAME_LEN];
        let name_len = name_field.iter().position(|&b| b == 0).unwrap_or(TENSOR_NAME_LEN);
        if name_len == 0 || name_len == TENSOR_NAME_LEN || name_field[name_len..].iter().any(|&b| b != 0) {
            return Err(FormatError::BadLayout("tensor name not NUL-padded"));
        }
        let name = core::str::from_utf8(&name_field[..name_len]).map_err(|_| FormatError::BadUtf8("tensor name"))?;
        let oob = FormatError::OutOfBounds("tensor entry");
        let dtype = Dtype::from_u32(u32_at(e, 64).ok_or(oob)?)?;
        let ndim = u32_at(e, 68).ok_or(oob)? as usize;
        if ndim == 0 || ndim > MAX_DIMS {
            return Err(FormatError::BadShape { index: idx });
        }
        let mut dims = [0u64; MAX_DIMS];
        let mut n: u64 = 1;
        for (d, dim) in dims.iter_mut().enumerate() {
            *dim = u64_at(e, 72 + 8 * d).ok_or(oob)?;
            if d < ndim {
                if *dim == 0 {
                    return Err(FormatError::BadShape { index: idx });
                }
                n = n.checked_mul(*dim).ok_or(FormatError::TooLarge("tensor shape"))?;
            } else if *dim != 0 {
                return Err(FormatError::BadShape { index: idx });
            }
        }
        let offset = to_usize(u64_at(e, 104).ok_or(oob)?, "tensor offset")?;
        let nbytes = u64_at(e, 112).ok_or(oob)?;
        if offset % ALIGN != 0 {
            return Err(FormatError::Misaligned("tensor offset"));
        }
        if dtype.byte_len(n, dims[ndim - 1]) != Some(nbytes) {
            return Err(FormatError::BadTensorSize { index: idx });
        }
        let end = offset.checked_add(to_usize(nbytes, "tensor size")?).ok_or(FormatError::TooLarge("tensor size"))?;
        let data = self.data.get(offset..end).ok_or(FormatError::OutOfBounds("tensor data"))?;
        Ok(TensorView { name, dtype, shape: Shape { dims, ndim }, data })
    }

    pub fn n_tensors(&self) -> usize {
        self.n_tensors as usize
    }
    pub fn n_meta(&self) -> usize {
        self.n_meta as usize
    }

    /// Tensor `index` of the directory (`None` past the end).
    pub fn tensor(&self, index: usize) -> Option<TensorView<'a>> {
        if index >= self.n_tensors() {
            return None;
        }
        // Validated in `parse`.
        self.tensor_checked(index).ok()
    }

    /// The first tensor named `name`, with its directory index.
    pub fn find(&self, name: &str) -> Option<(usize, TensorView<'a>)> {
        (0..self.n_tensors()).find_map(|i| self.tensor(i).filter(|t| t.name == name).map(|t| (i, t)))
    }

    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'a>> + '_ {
        (0..self.n_tensors()).filter_map(|i| self.tensor(i))
    }

    pub fn meta_iter(&self) -> MetaIter<'a> {
        MetaIter { meta: self.meta, at: 0, left: self.n_meta }
    }

    /// The value of metadata key `key` (the first, if repeated).
    pub fn meta(&self, key: &str) -> Option<MetaValue<'a>> {
        self.meta_iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn meta_u64(&self, key: &'static str) -> Result<u64, FormatError> {
        self.meta(key).and_then(|v| v.as_u64()).ok_or(FormatError::MissingMeta(key))
    }
    pub fn meta_f32(&self, key: &'static str) -> Result<f32, FormatError> {
        self.meta(key).and_then(|v| v.as_f32()).ok_or(FormatError::MissingMeta(key))
    }
    pub fn meta_str(&self, key: &'static str) -> Result<&'a str, FormatError> {
        self.meta(key).and_then(|v| v.as_str()).ok_or(FormatError::MissingMeta(key))
    }

    /// Bytes of the data section (all tensors and their padding).
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// Recomputes the data checksum and compares it with the header's.
    pub fn verify_checksum(&self) -> Result<(), FormatError> {
        let computed = checksum(self.data);
        if computed == self.checksum {
            Ok(())
        } else {
            Err(FormatError::ChecksumMismatch { stored: self.checksum, computed })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_ids_round_trip_and_unknown_ids_are_refused() {
        for id in 0..=4 {
            assert_eq!(Dtype::from_u32(id).unwrap().to_u32(), id);
        }
        assert_eq!(Dtype::from_u32(4), Ok(Dtype::Q4));
        assert_eq!(Dtype::Q4.name(), "q4");
        assert_eq!(Dtype::from_u32(5), Err(FormatError::UnknownDtype(5)));
    }

    /// A 64-byte aligned header of an empty file (no metadata, no tensors), with the
    /// u64 fields at bytes 24 ..= 56 set to `fields` and the counts to `counts`.
    fn header(counts: [u32; 2], fields: [u64; 5]) -> Header {
        let mut h = Header([0; 24]);
        let b: &mut [u8] = bytemuck::cast_slice_mut(&mut h.0);
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[12..16].copy_from_slice(&counts[0].to_le_bytes());
        b[16..20].copy_from_slice(&counts[1].to_le_bytes());
        for (i, v) in fields.iter().enumerate() {
            b[24 + 8 * i..32 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        h
    }

    /// 192 bytes: the header and a 64-byte data section.
    #[repr(align(64))]
    struct Header([u64; 24]);

    fn parse_header(h: &Header) -> Result<(), FormatError> {
        ArqFile::parse(bytemuck::cast_slice(&h.0)).map(|_| ())
    }

    /// [meta_off, meta_len, dir_off, data_off, data_len] of the empty file `header` makes.
    const EMPTY: [u64; 5] = [128, 0, 128, 128, 64];

    #[test]
    fn huge_section_offsets_and_lengths_are_typed_errors() {
        use FormatError::*;
        assert_eq!(parse_header(&header([0, 0], EMPTY)), Ok(()));
        let m = u64::MAX;
        // Sums that overflow only when added, and values that overflow alone.
        let cases: [([u32; 2], [u64; 5], FormatError); 7] = [
            ([0, 0], [128, m - 127, 128, 128, 64], TooLarge("metadata section")),
            ([0, 0], [128, m, 128, 128, 64], TooLarge("metadata section")),
            ([0, 1], [128, 0, m - 127, 128, 64], TooLarge("tensor directory")),
            ([0, 0], [128, 0, 128, m - 63, 64], TooLarge("data section")),
            ([0, 0], [128, 0, 128, 128, m - 127], TooLarge("data section")),
            ([0, 0], [m, m, m, m, m], TooLarge("metadata section")),
            ([0, 0], [m, 0, 128, 128, 64], BadLayout("sections out of order or overlapping")),
        ];
        for (counts, fields, want) in cases {
            assert_eq!(parse_header(&header(counts, fields)), Err(want), "{counts:?} {fields:?}");
        }
        assert_eq!(parse_header(&header([0, 0], [128, 0, 128, 128, 1 << 40])), Err(OutOfBounds("data section")));
    }

    /// Every pair of header fields set to every pair of extreme values: an error or a
    /// valid file, never a panic (the test profiles check overflow).
    #[test]
    fn extreme_header_values_never_panic() {
        let m = u64::MAX;
        let values = [0, 1, 63, 64, 127, 128, 192, u32::MAX as u64, 1 << 32, m / 2, m - 127, m - 63, m - 1, m];
        let count = |v: u64| v.min(u32::MAX as u64) as u32;
        for i in 0..7 {
            for j in i..7 {
                for &a in &values {
                    for &b in &values {
                        let (mut counts, mut fields) = ([0u32; 2], EMPTY);
                        for (k, v) in [(i, a), (j, b)] {
                            match k {
                                0 | 1 => counts[k] = count(v),
                                _ => fields[k - 2] = v,
                            }
                        }
                        let _ = parse_header(&header(counts, fields));
                    }
                }
            }
        }
    }

    #[test]
    fn q4_byte_len_is_20_bytes_per_32_values() {
        assert_eq!(Dtype::Q4.byte_len(3 * 64, 64), Some(6 * 20));
        assert_eq!(Dtype::Q4.byte_len(32, 32), Some(20));
        assert_eq!(Dtype::Q4.byte_len(2 * 48, 48), None);
        // 20 / 32 < 1: no element count overflows it.
        assert_eq!(Dtype::Q4.byte_len(u64::MAX / 32 * 32, 32), Some(u64::MAX / 32 * 20));
    }

    #[cfg(feature = "std")]
    #[test]
    fn q4_tensors_round_trip_through_the_writer() {
        use crate::quant::{quantize_row_q4, QK4};

        let x: Vec<f32> = (0..2 * 64).map(|i| (i as f32 * 0.3).sin()).collect();
        let mut blocks = vec![<BlockQ4 as bytemuck::Zeroable>::zeroed(); x.len() / QK4];
        quantize_row_q4(&x, &mut blocks);
        let mut w = writer::ArqWriter::new();
        w.tensor("w", Dtype::Q4, &[2, 64], bytemuck::cast_slice(&blocks).to_vec()).unwrap();
        assert!(w.tensor("bad", Dtype::Q4, &[2, 48], vec![0; 60]).is_err());
        assert!(w.tensor("short", Dtype::Q4, &[2, 64], vec![0; 79]).is_err());
        let mut bytes = Vec::new();
        w.write(&mut bytes).unwrap();

        // The reader needs a 64-byte aligned start.
        let mut buf = vec![0u8; bytes.len() + ALIGN];
        let at = buf.as_ptr().align_offset(ALIGN);
        buf[at..at + bytes.len()].copy_from_slice(&bytes);
        let f = ArqFile::parse(&buf[at..at + bytes.len()]).unwrap();
        let (_, t) = f.find("w").unwrap();
        assert_eq!(t.dtype, Dtype::Q4);
        assert_eq!(t.shape.dims(), &[2, 64]);
        assert_eq!(t.as_q4().unwrap(), &blocks[..]);
        assert!(t.as_q8().is_none() && t.as_f32().is_none());

        // A q4 entry whose byte length disagrees with its shape is refused.
        let dir = f.dir.as_ptr() as usize - buf[at..].as_ptr() as usize;
        let mut bad = buf[at..at + bytes.len()].to_vec();
        bad[dir + 112..dir + 120].copy_from_slice(&60u64.to_le_bytes());
        let mut buf2 = vec![0u8; bad.len() + ALIGN];
        let at2 = buf2.as_ptr().align_offset(ALIGN);
        buf2[at2..at2 + bad.len()].copy_from_slice(&bad);
        assert_eq!(ArqFile::parse(&buf2[at2..at2 + bad.len()]).err(), Some(FormatError::BadTensorSize { index: 0 }));
    }
}
