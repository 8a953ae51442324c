//! Image input and output for the PixelCNN commands (`arq score`, `arq sample`, `arq impute`).
//!
//! Images are stacks of same-size single-channel 8-bit images ([`Images`]). They come from
//! NumPy `.npy` files ([`read_npy_u8`]) or directories of PNG files ([`read_png_dir`]), and go out
//! as `.npy` ([`write_npy_u8`]) or PNG ([`write_png_gray`], usually of a [`grid`] of samples).
//!
//! A PixelCNN works on discrete levels `0..levels`; [`level_to_gray`] and [`gray_to_level`] map
//! between those and 8-bit grey, and [`read_levels`] reads model input from either source.
//!
//! Errors are one line, start with the file they are about (`path: problem`), and are
//! [`ImageError`] values inside `anyhow::Error` (so callers can `downcast_ref` them). Bad input
//! never panics, and writers go through a temporary file next to the target that is renamed into
//! place, so a failed write leaves no partial output behind.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A stack of same-size single-channel images, values as stored (u8), row-major.
///
/// `data` holds `n * height * width` values: image 0 row by row, then image 1, and so on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    pub n: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl Images {
    /// Pixels of image `i` (`height * width` values, row-major).
    ///
    /// Panics if `i >= n` or `data` is shorter than the dimensions say, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let len = self.height * self.width;
        &self.data[i * len..(i + 1) * len]
    }

    /// `n * height * width`, or `None` if that overflows.
    fn expected_len(&self) -> Option<usize> {
        self.n.checked_mul(self.height)?.checked_mul(self.width)
    }

    /// Checks that `data` has exactly `n * height * width` values.
    fn check_len(&self) -> Result<(), ErrorKind> {
        match self.expected_len() {
            Some(len) if len == self.data.len() => Ok(()),
            _ => Err(ErrorKind::Invalid(format!(
                "{} images of {}x{} need {} values, but {} are given",
                self.n,
                self.height,
                self.width,
                self.expected_len().map_or("too many".to_string(), |l| l.to_string()),
                self.data.len()
            ))),
        }
    }
}

/// An image input/output error: the file (or directory) it is about and what went wrong.
///
/// Displays as one line, `path: problem`.
#[derive(Debug)]
pub struct ImageError {
    pub path: PathBuf,
    pub kind: ErrorKind,
}

/// What went wrong in an [`ImageError`].
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An operating-system error while doing something ("open", "read", "write", ...).
    Io { doing: &'static str, error: io::Error },
    /// The file is not a (well-formed) `.npy` file; the string says why.
    NotNpy(String),
    /// An `.npy` format version other than 1.0, 2.0 or 3.0.
    NpyVersion(u8, u8),
    /// The `.npy` dtype (as written in its header) is not uint8.
    Dtype(String),
    /// The `.npy` array is stored in Fortran (column-major) order.
    FortranOrder,
    /// The images have this many channels; the models take one.
    Channels(u64),
    /// An `.npy` shape that is not (N, H, W), (N, H, W, 1) or (H, W).
    Shape(Vec<u64>),
    /// An `.npy` shape with a zero in it.
    Empty(Vec<u64>),
    /// The `.npy` data is not as long as its shape says.
    DataLength { shape: Vec<u64>, have: u64, need: u64 },
    /// The PNG file cannot be decoded; the string is the decoder's message.
    PngDecode(String),
    /// A directory has no `*.png` files.
    NoPngFiles,
    /// A PNG file's size (height, width) differs from the first file's.
    SizeMismatch { size: (usize, usize), first: PathBuf, first_size: (usize, usize) },
    /// A value is not a valid level for the model.
    LevelOutOfRange { image: usize, row: usize, col: usize, value: u8, levels: usize },
    /// Arguments that cannot work (sizes, lengths, level counts).
    Invalid(String),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.kind)
    }
}

impl std::error::Error for ImageError {}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Io { doing, error } => write!(f, "cannot {doing}: {error}"),
            ErrorKind::NotNpy(why) => write!(f, "not an .npy file ({why})"),
            ErrorKind::NpyVersion(major, minor) => {
                write!(f, "unsupported .npy format version {major}.{minor} (1.0, 2.0 and 3.0 are supported)")
            }
            ErrorKind::Dtype(dtype) => write!(f, "dtype {dtype}, expected uint8"),
            ErrorKind::FortranOrder => write!(f, "array is in Fortran order, expected C order"),
            ErrorKind::Channels(c) => write!(f, "images have {c} channels, the model takes 1"),
            ErrorKind::Shape(shape) => {
                write!(f, "shape {} is not (N, H, W), (N, H, W, 1) or (H, W)", Tuple(shape))
            }
            ErrorKind::Empty(shape) => write!(f, "shape {} holds no pixels", Tuple(shape)),
            ErrorKind::DataLength { shape, have, need } => {
                let what = if have < need { "truncated" } else { "trailing bytes" };
                write!(f, "data is {have} bytes, but shape {} needs {need} ({what})", Tuple(shape))
            }
            ErrorKind::PngDecode(message) => write!(f, "cannot decode PNG: {message}"),
            ErrorKind::NoPngFiles => write!(f, "no .png files in the directory"),
            ErrorKind::SizeMismatch { size, first, first_size } => write!(
                f,
                "image is {}x{} (height x width), but {} is {}x{}",
                size.0,
                size.1,
                first.file_name().map_or_else(|| first.display().to_string(), |n| n.to_string_lossy().into_owned()),
                first_size.0,
                first_size.1
            ),
            ErrorKind::LevelOutOfRange { image, row, col, value, levels } => write!(
                f,
                "image {image}, pixel (row {row}, col {col}): value {value} is not a level of the model (0 to {})",
                levels - 1
            ),
            ErrorKind::Invalid(message) => f.write_str(message),
        }
    }
}

/// Formats a shape like Python does: `(3, 8, 8)`, `(5,)`, `()`.
struct Tuple<'a>(&'a [u64]);

impl fmt::Display for Tuple<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [one] => write!(f, "({one},)"),
            dims => {
                let dims: Vec<String> = dims.iter().map(u64::to_string).collect();
                write!(f, "({})", dims.join(", "))
            }
        }
    }
}

/// The error for `path` as an `anyhow::Error`.
fn error(path: &Path, kind: ErrorKind) -> anyhow::Error {
    ImageError { path: path.to_path_buf(), kind }.into()
}

fn io_error<'a>(path: &'a Path, doing: &'static str) -> impl FnOnce(io::Error) -> anyhow::Error + 'a {
    move |e| error(path, ErrorKind::Io { doing, error: e })
}

// ---------------------------------------------------------------------------------------------
// .npy
// ---------------------------------------------------------------------------------------------

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a NumPy .npy file of dtype uint8 ('|u1' or '<u1'), C order, shape (N, H, W) or (N, H, W, 1)
/// (also accept (H, W) as one image). Supports format versions 1.0, 2.0 and 3.0 headers.
///
/// Errors (one line, naming the file): not an .npy file, dtype is not uint8 (e.g.
/// "dtype <f4, expected uint8"), Fortran order (unless that is the same layout, at most one
/// dimension above 1), a shape it cannot take (e.g. (N, H, W, 3): "images have 3 channels, the
/// model takes 1"; a zero anywhere in the shape), data shorter or longer than the shape says.
pub fn read_npy_u8(path: &Path) -> anyhow::Result<Images> {
    let mut file = File::open(path).map_err(io_error(path, "read"))?.take(MAX_NPY_BYTES + 1);
    // The magic first, so that a stream of something else is refused without reading on.
    let mut bytes = Vec::new();
    file.by_ref().take(NPY_MAGIC.len() as u64).read_to_end(&mut bytes).map_err(io_error(path, "read"))?;
    if bytes.starts_with(NPY_MAGIC) {
        file.read_to_end(&mut bytes).map_err(io_error(path, "read"))?;
    }
    if bytes.len() as u64 > MAX_NPY_BYTES {
        let why = format!("the file is larger than the cap of {MAX_NPY_BYTES} bytes ({} MiB)", MAX_NPY_BYTES >> 20);
        return Err(error(path, ErrorKind::Invalid(why)));
    }
    parse_npy_u8(&bytes).map_err(|kind| error(path, kind))
}

/// The largest `.npy` file read (256 MiB, 262,144 images of 32x32): it is read whole, and
/// a stream or device must not exhaust memory. A header's shape must match the data, so
/// this also caps what a shape can ask for.
pub const MAX_NPY_BYTES: u64 = 256 << 20;

/// [`read_npy_u8`] on the bytes of a file.
fn parse_npy_u8(bytes: &[u8]) -> Result<Images, ErrorKind> {
    let not_npy = |why: &str| ErrorKind::NotNpy(why.to_string());
    if !bytes.starts_with(NPY_MAGIC) {
        return Err(not_npy("no NumPy magic string at the start"));
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(&[major, minor]) => (major, minor),
        _ => return Err(not_npy("header is truncated")),
    };
    // Version 1.0 has a 2-byte header length, 2.0 and 3.0 (UTF-8 header) a 4-byte one.
    let (header_start, header_len): (usize, _) = match (major, minor) {
        (1, 0) => (10, bytes.get(8..10).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)),
        (2, 0) | (3, 0) => (12, bytes.get(8..12).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)),
        _ => return Err(ErrorKind::NpyVersion(major, minor)),
    };
    let header = header_len
        .and_then(|len| bytes.get(header_start..header_start.checked_add(len)?))
        .ok_or_else(|| not_npy("header is truncated"))?;
    let data = &bytes[header_start + header.len()..];

    let header = NpyHeader::parse(header).map_err(|why| ErrorKind::NotNpy(format!("bad header: {why}")))?;
    if !matches!(header.descr.as_str(), "|u1" | "<u1" | ">u1" | "=u1" | "u1") {
        return Err(ErrorKind::Dtype(header.descr));
    }
    let shape = header.shape;
    // Column-major order only differs from row-major when two or more dimensions exceed 1.
    if header.fortran_order && shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(ErrorKind::FortranOrder);
    }
    let (n, height, width) = match *shape.as_slice() {
        [h, w] => (1, h, w),
        [n, h, w] | [n, h, w, 1] => (n, h, w),
        [_, _, _, c] => return Err(ErrorKind::Channels(c)),
        _ => return Err(ErrorKind::Shape(shape)),
    };
    if n == 0 || height == 0 || width == 0 {
        return Err(ErrorKind::Empty(shape));
    }
    let need = n.checked_mul(height).and_then(|p| p.checked_mul(width));
    let have = data.len() as u64;
    if need != Some(have) {
        // A product that overflows u64 cannot match any file: report it as u64::MAX bytes.
        return Err(ErrorKind::DataLength { shape, have, need: need.unwrap_or(u64::MAX) });
    }
    // `need == have` fits in memory, so these conversions cannot fail.
    let dim = |d: u64| usize::try_from(d).map_err(|_| not_npy("shape too large"));
    Ok(Images { n: dim(n)?, height: dim(height)?, width: dim(width)?, data: data.to_vec() })
}

/// The three entries of an `.npy` header.
struct NpyHeader {
    /// The dtype string, or a description of a structured dtype.
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
}

impl NpyHeader {
    /// Parses the header, a Python dict literal such as
    /// `{'descr': '|u1', 'fortran_order': False, 'shape': (3, 8, 8), }` padded with spaces.
    fn parse(text: &[u8]) -> Result<NpyHeader, String> {
        let mut parser = PyParser { text, pos: 0, depth: 0 };
        let value = parser.value()?;
        parser.skip_space();
        if parser.pos != text.len() {
            return Err("text after the dictionary".into());
        }
        let PyValue::Dict(entries) = value else {
            return Err("not a dictionary".into());
        };
        let get = |key: &str| {
            entries
                .iter()
                .find(|(k, _)| matches!(k, PyValue::Str(s) if s == key))
                .map(|(_, v)| v)
                .ok_or_else(|| format!("no '{key}' entry"))
        };
        let descr = match get("descr")? {
            PyValue::Str(s) => s.clone(),
            PyValue::Seq(_) => "[...] (structured)".to_string(),
            _ => return Err("'descr' is not a string".into()),
        };
        let PyValue::Bool(fortran_order) = *get("fortran_order")? else {
            return Err("'fortran_order' is not True or False".into());
        };
        let PyValue::Seq(dims) = get("shape")? else {
            return Err("'shape' is not a tuple".into());
        };
        let shape = dims
            .iter()
            .map(|d| match d {
                PyValue::Int(i) => Ok(*i),
                _ => Err("'shape' holds something other than integers".to_string()),
            })
            .collect::<Result<Vec<u64>, String>>()?;
        Ok(NpyHeader { descr, fortran_order, shape })
    }
}

/// The Python literals an `.npy` header can hold.
enum PyValue {
    Str(String),
    Int(u64),
    Bool(bool),
    None,
    /// A tuple or a list.
    Seq(Vec<PyValue>),
    Dict(Vec<(PyValue, PyValue)>),
}

/// A parser for the small subset of Python literal syntax found in `.npy` headers.
struct PyParser<'a> {
    text: &'a [u8],
    pos: usize,
    /// Nesting depth, bounded so that hostile input cannot overflow the stack.
    depth: usize,
}

impl PyParser<'_> {
    const MAX_DEPTH: usize = 16;

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn value(&mut self) -> Result<PyValue, String> {
        self.skip_space();
        match self.peek() {
            Some(b'{') => self.nested(|p| p.items(b'}', true)),
            Some(b'(') => self.nested(|p| p.items(b')', false)),
            Some(b'[') => self.nested(|p| p.items(b']', false)),
            Some(quote @ (b'\'' | b'"')) => self.string(quote),
            Some(b'0'..=b'9') => self.integer(),
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
                    self.pos += 1;
                }
                match &self.text[start..self.pos] {
                    b"True" => Ok(PyValue::Bool(true)),
                    b"False" => Ok(PyValue::Bool(false)),
                    b"None" => Ok(PyValue::None),
                    name => Err(format!("unexpected name '{}'", String::from_utf8_lossy(name))),
                }
            }
            Some(c) => Err(format!("unexpected character '{}'", c.escape_ascii())),
            None => Err("unexpected end".into()),
        }
    }

    /// Runs `inner` one nesting level deeper, refusing to go past [`Self::MAX_DEPTH`].
    fn nested(&mut self, inner: impl FnOnce(&mut Self) -> Result<PyValue, String>) -> Result<PyValue, String> {
        if self.depth >= Self::MAX_DEPTH {
            return Err("nested too deeply".into());
        }
        self.depth += 1;
        let result = inner(self);
        self.depth -= 1;
        result
    }

    /// Comma-separated items after an opening bracket (at `pos`) up to `close`; `key: value`
    /// pairs when `dict`. A trailing comma is allowed.
    fn items(&mut self, close: u8, dict: bool) -> Result<PyValue, String> {
        self.pos += 1; // the opening bracket
        let (mut seq, mut pairs) = (Vec::new(), Vec::new());
        loop {
            self.skip_space();
            if self.peek() == Some(close) {
                break;
            }
            let item = self.value()?;
            if dict {
                self.skip_space();
                if self.peek() != Some(b':') {
                    return Err("expected ':' after a dictionary key".into());
                }
                self.pos += 1;
                pairs.push((item, self.value()?));
            } else {
                seq.push(item);
            }
            self.skip_space();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(c) if c == close => break,
                _ => return Err(format!("expected ',' or '{}'", close as char)),
            }
        }
        self.pos += 1; // the closing bracket
        Ok(if dict { PyValue::Dict(pairs) } else { PyValue::Seq(seq) })
    }

    fn string(&mut self, quote: u8) -> Result<PyValue, String> {
        self.pos += 1;
        let mut bytes = Vec::new();
        loop {
            match self.peek() {
                None => return Err("unterminated string".into()),
                Some(c) if c == quote => break,
                Some(b'\\') => {
                    self.pos += 1;
                    bytes.push(self.peek().ok_or("unterminated string")?);
                }
                Some(c) => bytes.push(c),
            }
            self.pos += 1;
        }
        self.pos += 1;
        Ok(PyValue::Str(String::from_utf8_lossy(&bytes).into_owned()))
    }

    fn integer(&mut self) -> Result<PyValue, String> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits = std::str::from_utf8(&self.text[start..self.pos]).map_err(|e| e.to_string())?;
        let value = digits.parse::<u64>().map_err(|_| match digits.get(..20) {
            Some(head) if digits.len() > 20 => format!("integer {head}… ({} digits) is too large", digits.len()),
            _ => format!("integer {digits} is too large"),
        })?;
        if self.peek() == Some(b'L') {
            self.pos += 1; // Python 2 long suffix, as in `(3L, 8L, 8L)`
        }
        Ok(PyValue::Int(value))
    }
}

/// Writes uint8 images as .npy version 1.0, shape (N, H, W), via a temp file + rename.
///
/// The bytes are those `numpy.save` writes for the same array.
pub fn write_npy_u8(path: &Path, images: &Images) -> anyhow::Result<()> {
    images.check_len().map_err(|kind| error(path, kind))?;
    let dict = format!(
        "{{'descr': '|u1', 'fortran_order': False, 'shape': ({}, {}, {}), }}",
        images.n, images.height, images.width
    );
    // Pad with spaces and a final newline so the data starts at a multiple of 64 bytes.
    let unpadded = NPY_MAGIC.len() + 4 + dict.len() + 1;
    let header = format!("{dict}{}\n", " ".repeat(unpadded.next_multiple_of(64) - unpadded));
    let header_len =
        u16::try_from(header.len()).map_err(|_| error(path, ErrorKind::Invalid("header too long".into())))?;
    write_atomically(path, |w| {
        w.write_all(NPY_MAGIC)?;
        w.write_all(&[1, 0])?;
        w.write_all(&header_len.to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        w.write_all(&images.data)
    })
}

/// Writes a file through a temporary file next to it (same directory, so the rename is atomic),
/// renamed over `path` once complete and synced; the temporary file is removed on any error.
fn write_atomically(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>) -> anyhow::Result<()> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name =
        path.file_name().ok_or_else(|| error(path, ErrorKind::Invalid("not a file name".into())))?.to_string_lossy();
    // A device or FIFO would be replaced by the rename; a directory makes the rename fail.
    if fs::metadata(path).is_ok_and(|m| !m.is_dir()) {
        crate::input::not_special(path)?;
    }
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{name}.{}-{unique}.tmp", std::process::id()));
    let file = File::options().write(true).create_new(true).open(&tmp).map_err(io_error(path, "create"))?;
    let result = (|| {
        let mut writer = BufWriter::new(file);
        write(&mut writer).map_err(io_error(path, "write"))?;
        let file =
            writer.into_inner().map_err(|e| error(path, ErrorKind::Io { doing: "write", error: e.into_error() }))?;
        file.sync_all().map_err(io_error(path, "write"))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_error(path, "rename the temporary file into place"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

// ---------------------------------------------------------------------------------------------
// PNG
// ---------------------------------------------------------------------------------------------

/// Largest decoded PNG accepted, in bytes (the png crate's own default allocation limit).
const MAX_PNG_BYTES: usize = 64 << 20;

/// Reads one PNG as 8-bit grey: grey and grey+alpha taken as is (alpha dropped), RGB/RGBA converted
/// to luma (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B, rounded), palette expanded, 16-bit reduced to
/// 8-bit (rounded: v * 255 / 65535), 1/2/4-bit grey scaled to 0..255. Returns (height, width, pixels).
pub fn read_png_gray(path: &Path) -> anyhow::Result<(usize, usize, Vec<u8>)> {
    crate::input::not_special(path)?;
    let file = File::open(path).map_err(io_error(path, "open"))?;
    decode_png_gray(BufReader::new(file)).map_err(|message| error(path, ErrorKind::PngDecode(message)))
}

/// [`read_png_gray`] of a PNG in memory (a request body); the error is the decoder's.
pub fn png_gray_from_bytes(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>), String> {
    decode_png_gray(io::Cursor::new(bytes))
}

fn decode_png_gray<R: io::BufRead + io::Seek>(reader: R) -> Result<(usize, usize, Vec<u8>), String> {
    let mut decoder = png::Decoder::new(reader);
    // EXPAND: palette -> RGB(A), 1/2/4-bit grey -> 8-bit (scaled), tRNS -> alpha. 16-bit stays
    // 16-bit so that it can be rounded below rather than truncated.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let (width, height) = reader.info().size();
    let size = reader.output_buffer_size().filter(|&s| s <= MAX_PNG_BYTES);
    let size = size.ok_or_else(|| format!("{height}x{width} image is too large"))?;
    let mut buffer = vec![0; size];
    let frame = reader.next_frame(&mut buffer).map_err(|e| e.to_string())?;
    let (height, width) = (frame.height as usize, frame.width as usize);

    let channels = frame.color_type.samples();
    let wide = frame.bit_depth == png::BitDepth::Sixteen;
    if frame.bit_depth != png::BitDepth::Eight && !wide {
        return Err(format!("unexpected {:?}-bit output from the decoder", frame.bit_depth));
    }
    let bytes_per_sample = if wide { 2 } else { 1 };
    let row_bytes = width * channels * bytes_per_sample;
    if frame.line_size < row_bytes || buffer.len() < frame.line_size * height {
        return Err("decoder output is shorter than the image".into());
    }
    // Every sample scaled to 0..=max; the result is rounded to 0..=255.
    let max: u64 = if wide { 65535 } else { 255 };
    let sample = |row: &[u8], i: usize| -> u64 {
        if wide {
            u16::from_be_bytes([row[2 * i], row[2 * i + 1]]) as u64
        } else {
            row[i] as u64
        }
    };
    let luma = match frame.color_type {
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => false,
        png::ColorType::Rgb | png::ColorType::Rgba => true,
        png::ColorType::Indexed => return Err("palette was not expanded".into()),
    };
    let mut pixels = Vec::with_capacity(width * height);
    for row in buffer.chunks(frame.line_size).take(height) {
        for x in 0..width {
            let i = x * channels;
            let grey = if luma {
                // round((299 R + 587 G + 114 B) / 1000 * 255 / max)
                let weighted = 299 * sample(row, i) + 587 * sample(row, i + 1) + 114 * sample(row, i + 2);
                (2 * weighted * 255 + 1000 * max) / (2000 * max)
            } else {
                (2 * sample(row, i) * 255 + max) / (2 * max)
            };
            pixels.push(grey as u8);
        }
    }
    Ok((height, width, pixels))
}

/// Every *.png in a directory (sorted by file name), all the same size, as one `Images`.
///
/// The extension is matched without regard to case; hidden files (names starting with `.`) are
/// skipped, as a shell's `*.png` would. Errors: no PNG files in it, a size mismatch (names the
/// file and both sizes).
pub fn read_png_dir(dir: &Path) -> anyhow::Result<Images> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir, "read the directory"))? {
        let path = entry.map_err(io_error(dir, "read the directory"))?.path();
        let is_png = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
        let hidden = path.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
        if is_png && !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let Some(first) = files.first() else {
        return Err(error(dir, ErrorKind::NoPngFiles));
    };
    let (height, width, mut data) = read_png_gray(first)?;
    for file in &files[1..] {
        let (h, w, pixels) = read_png_gray(file)?;
        if (h, w) != (height, width) {
            let kind = ErrorKind::SizeMismatch { size: (h, w), first: first.clone(), first_size: (height, width) };
            return Err(error(file, kind));
        }
        data.extend_from_slice(&pixels);
    }
    Ok(Images { n: files.len(), height, width, data })
}

/// Writes an 8-bit grey PNG atomically (temp file next to it, then rename; removed on error).
///
/// `pixels` must hold `height * width` values, row-major; both sizes must be at least 1.
pub fn write_png_gray(path: &Path, height: usize, width: usize, pixels: &[u8]) -> anyhow::Result<()> {
    let invalid = |message: String| error(path, ErrorKind::Invalid(message));
    if height == 0 || width == 0 {
        return Err(invalid(format!("cannot write an empty {height}x{width} PNG")));
    }
    let (h, w) = match (u32::try_from(height), u32::try_from(width)) {
        (Ok(h), Ok(w)) => (h, w),
        _ => return Err(invalid(format!("{height}x{width} is too large for PNG"))),
    };
    if height.checked_mul(width) != Some(pixels.len()) {
        return Err(invalid(format!("a {height}x{width} image needs {} pixels, got {}", height * width, pixels.len())));
    }
    write_atomically(path, |w_file| encode_png_gray(w_file, (h, w), pixels))
}

/// An 8-bit grey PNG in memory (`pixels`: `height * width` values, both sizes 1 to 2^16).
pub fn png_gray_to_bytes(height: usize, width: usize, pixels: &[u8]) -> Result<Vec<u8>, String> {
    let fits = |v: usize| (1..=1 << 16).contains(&v);
    if !fits(height) || !fits(width) || height * width != pixels.len() {
        return Err(format!("cannot encode {} pixels as a {height}x{width} PNG", pixels.len()));
    }
    let mut out = Vec::new();
    encode_png_gray(&mut out, (height as u32, width as u32), pixels).map_err(|e| e.to_string())?;
    Ok(out)
}

fn encode_png_gray(out: impl Write, (h, w): (u32, u32), pixels: &[u8]) -> io::Result<()> {
    let mut encoder = png::Encoder::new(out, w, h);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_to_io)?;
    writer.write_image_data(pixels).map_err(png_to_io)?;
    writer.finish().map_err(png_to_io)
}

/// Writes an 8-bit RGB PNG atomically, as [`write_png_gray`] does; `rgb` holds
/// `height * width * 3` values, row-major.
pub fn write_png_rgb(path: &Path, height: usize, width: usize, rgb: &[u8]) -> anyhow::Result<()> {
    let invalid = |message: String| error(path, ErrorKind::Invalid(message));
    let (Ok(h), Ok(w)) = (u32::try_from(height), u32::try_from(width)) else {
        return Err(invalid(format!("{height}x{width} is too large for PNG")));
    };
    if height == 0 || width == 0 || height.checked_mul(width).and_then(|n| n.checked_mul(3)) != Some(rgb.len()) {
        return Err(invalid(format!(
            "a {height}x{width} RGB image needs {} values, got {}",
            height * width * 3,
            rgb.len()
        )));
    }
    write_atomically(path, |w_file| {
        let mut encoder = png::Encoder::new(w_file, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(png_to_io)?;
        writer.write_image_data(rgb).map_err(png_to_io)?;
        writer.finish().map_err(png_to_io)
    })
}

fn png_to_io(e: png::EncodingError) -> io::Error {
    match e {
        png::EncodingError::IoError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Grids and levels
// ---------------------------------------------------------------------------------------------

/// Grey value of the separator lines in a [`grid`]: mid grey, so that tile edges stay visible
/// against both black and white image content.
pub const GRID_SEPARATOR: u8 = 128;

/// Tiles images into a grid `cols` wide (rows as needed), each pixel scaled up `scale` times
/// (nearest neighbour), with `gap` pixels of separator ([`GRID_SEPARATOR`], mid grey) between
/// tiles and around the border. Returns (height, width, pixels).
///
/// Values are copied as they are, so convert levels to grey first ([`level_to_gray`]). The grid
/// is `min(cols, n)` tiles wide, so a few images do not leave a row of empty cells; unused cells
/// in the last row are separator colour. `cols` or `scale` of 0 count as 1. No images (or images
/// with no pixels) give an empty 0x0 result.
pub fn grid(images: &Images, cols: usize, scale: usize, gap: usize) -> (usize, usize, Vec<u8>) {
    let pixels = images.height * images.width;
    if images.n == 0 || pixels == 0 {
        return (0, 0, Vec::new());
    }
    let scale = scale.max(1);
    let cols = cols.clamp(1, images.n);
    let rows = images.n.div_ceil(cols);
    let (tile_h, tile_w) = (images.height * scale, images.width * scale);
    let height = rows * tile_h + (rows + 1) * gap;
    let width = cols * tile_w + (cols + 1) * gap;
    let mut out = vec![GRID_SEPARATOR; height * width];
    // `chunks_exact` stops early rather than panicking if `data` is short.
    for (i, image) in images.data.chunks_exact(pixels).take(images.n).enumerate() {
        let top = gap + (i / cols) * (tile_h + gap);
        let left = gap + (i % cols) * (tile_w + gap);
        for y in 0..tile_h {
            let source = &image[(y / scale) * images.width..][..images.width];
            let target = &mut out[(top + y) * width + left..][..tile_w];
            for (x, value) in target.iter_mut().enumerate() {
                *value = source[x / scale];
            }
        }
    }
    (height, width, out)
}

/// Maps between a model's discrete levels 0..levels-1 and 8-bit grey: level -> round(level*255/(levels-1)),
/// grey -> round(grey*(levels-1)/255) (halves round up). Levels are 2..=256; a `levels` outside that
/// range is clamped into it, and a `level` above `levels - 1` maps as `levels - 1` (white).
/// The two are inverse: `gray_to_level(level_to_gray(l, n), n) == l`.
pub fn level_to_gray(level: u8, levels: usize) -> u8 {
    let top = levels.clamp(2, 256) as u32 - 1;
    let level = (level as u32).min(top);
    ((2 * level * 255 + top) / (2 * top)) as u8
}

/// See [`level_to_gray`].
pub fn gray_to_level(gray: u8, levels: usize) -> u8 {
    let top = levels.clamp(2, 256) as u32 - 1;
    ((2 * gray as u32 * top + 255) / 510) as u8
}

/// Reads images for scoring from an .npy file (values are levels as stored) or a directory of PNGs
/// (values are grey, converted with gray_to_level), dispatching on whether `path` is a directory.
/// Checks every value is < levels, else one-line error naming the image index, pixel (row, col) and value.
///
/// `levels` must be 2..=256.
pub fn read_levels(path: &Path, levels: usize) -> anyhow::Result<Images> {
    if !(2..=256).contains(&levels) {
        return Err(error(path, ErrorKind::Invalid(format!("a model has 2 to 256 levels, not {levels}"))));
    }
    let images = if path.is_dir() {
        let mut images = read_png_dir(path)?;
        images.data.iter_mut().for_each(|v| *v = gray_to_level(*v, levels));
        images
    } else {
        read_npy_u8(path)?
    };
    if let Some(at) = images.data.iter().position(|&v| v as usize >= levels) {
        let pixels = images.height * images.width;
        let kind = ErrorKind::LevelOutOfRange {
            image: at / pixels,
            row: at % pixels / images.width,
            col: at % images.width,
            value: images.data[at],
            levels,
        };
        return Err(error(path, kind));
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!("arq-images-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        /// Names of the files in the directory, sorted.
        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> =
                fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images").join(name)
    }

    /// The error message, checked to be one line that names `path`'s file.
    fn error_text<T: fmt::Debug>(result: anyhow::Result<T>, path: &Path) -> String {
        let message = format!("{:#}", result.unwrap_err());
        assert!(!message.contains('\n'), "not one line: {message}");
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(message.contains(&*name), "does not name {name}: {message}");
        message
    }

    /// An .npy file (version 1.0) with the given header entries and data.
    fn npy_bytes(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let order = if fortran { "True" } else { "False" };
        let dict = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}\n");
        let mut bytes = NPY_MAGIC.to_vec();
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        bytes.extend_from_slice(dict.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn sample_images(n: usize, height: usize, width: usize) -> Images {
        let data = (0..n * height * width).map(|i| (i * 37 % 251) as u8).collect();
        Images { n, height, width, data }
    }

    #[test]
    fn npy_round_trip() {
        let dir = TempDir::new("npy-round-trip");
        let path = dir.join("out.npy");
        let images = sample_images(3, 5, 7);
        write_npy_u8(&path, &images).unwrap();
        assert_eq!(read_npy_u8(&path).unwrap(), images);
        assert_eq!(images.image(1), &images.data[35..70]);
        // Overwriting works, and no temporary file is left behind.
        let other = sample_images(1, 2, 2);
        write_npy_u8(&path, &other).unwrap();
        assert_eq!(read_npy_u8(&path).unwrap(), other);
        assert_eq!(dir.names(), ["out.npy"]);
    }

    #[test]
    fn npy_writer_matches_numpy() {
        let numpy = fs::read(fixture("u8_3x8x8.npy")).unwrap();
        let data = (0..3 * 8 * 8).map(|i| (i * 7 % 256) as u8).collect();
        let dir = TempDir::new("npy-numpy");
        let path = dir.join("same.npy");
        write_npy_u8(&path, &Images { n: 3, height: 8, width: 8, data }).unwrap();
        assert_eq!(fs::read(&path).unwrap(), numpy);
    }

    #[test]
    fn reads_numpy_files() {
        let images = read_npy_u8(&fixture("u8_3x8x8.npy")).unwrap();
        assert_eq!((images.n, images.height, images.width), (3, 8, 8));
        assert!(images.data.iter().enumerate().all(|(i, &v)| v == (i * 7 % 256) as u8));

        let images = read_npy_u8(&fixture("u8_2x8x8x1.npy")).unwrap();
        assert_eq!((images.n, images.height, images.width), (2, 8, 8));
        assert!(images.data.iter().enumerate().all(|(i, &v)| v == (i * 7 % 256) as u8));

        for name in ["u8_1x2x3_v2.npy", "u8_1x2x3_v3.npy"] {
            let images = read_npy_u8(&fixture(name)).unwrap();
            assert_eq!(images, Images { n: 1, height: 2, width: 3, data: vec![0, 1, 2, 3, 4, 5] }, "{name}");
        }
    }

    #[test]
    fn reads_digits_test_set() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/pixelcnn/digits_test.npy");
        let images = read_npy_u8(&path).unwrap();
        assert_eq!((images.n, images.height, images.width), (447, 8, 8));
        assert_eq!(images.data.iter().max(), Some(&16));
        assert_eq!(read_levels(&path, 17).unwrap(), images);
        let message = error_text(read_levels(&path, 16), &path);
        assert!(message.contains("value 16 is not a level of the model (0 to 15)"), "{message}");
    }

    #[test]
    fn reads_other_shapes_and_layouts() {
        let dir = TempDir::new("npy-shapes");
        let path = dir.join("a.npy");
        let data: Vec<u8> = (0..6).collect();
        let cases = [
            ("|u1", false, "(2, 3)", (1, 2, 3)),
            ("<u1", false, "(1, 2, 3)", (1, 2, 3)),
            ("|u1", false, "(3L, 2L, 1L)", (3, 2, 1)),
            // Fortran order with one dimension above 1 is the same layout as C order.
            ("|u1", true, "(1, 6, 1)", (1, 6, 1)),
        ];
        for (descr, fortran, shape, (n, height, width)) in cases {
            fs::write(&path, npy_bytes(descr, fortran, shape, &data)).unwrap();
            let images = read_npy_u8(&path).unwrap();
            assert_eq!(images, Images { n, height, width, data: data.clone() }, "{shape}");
        }
    }

    #[test]
    fn bad_npy_files_give_one_line_errors() {
        let expect = |path: &Path, text: &str| {
            let message = error_text(read_npy_u8(path), path);
            assert!(message.contains(text), "{message:?} lacks {text:?}");
        };
        expect(&fixture("f32_2x8x8.npy"), "dtype <f4, expected uint8");
        expect(&fixture("u8_fortran_2x8x8.npy"), "array is in Fortran order, expected C order");
        expect(&fixture("u8_2x4x4x3.npy"), "images have 3 channels, the model takes 1");

        let dir = TempDir::new("npy-bad");
        let path = dir.join("bad.npy");
        expect(&path, "cannot read: ");
        let valid = fs::read(fixture("u8_3x8x8.npy")).unwrap();
        let data = [0u8; 6];
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"P5 8 8 255\n".to_vec(), "not an .npy file (no NumPy magic string at the start)"),
            (Vec::new(), "not an .npy file"),
            ([&valid[..6], &[4, 0], &valid[8..]].concat(), "unsupported .npy format version 4.0"),
            ([&valid[..], &[0]].concat(), "data is 193 bytes, but shape (3, 8, 8) needs 192 (trailing bytes)"),
            (valid[..valid.len() - 1].to_vec(), "data is 191 bytes, but shape (3, 8, 8) needs 192 (truncated)"),
            (npy_bytes("|b1", false, "(1, 2, 3)", &data), "dtype |b1, expected uint8"),
            (npy_bytes("<u2", false, "(1, 2, 3)", &data), "dtype <u2, expected uint8"),
            (npy_bytes("|u1", false, "(6,)", &data), "shape (6,) is not (N, H, W), (N, H, W, 1) or (H, W)"),
            (npy_bytes("|u1", false, "()", &data), "shape () is not"),
            (npy_bytes("|u1", false, "(1, 1, 1, 2, 3)", &data), "shape (1, 1, 1, 2, 3) is not"),
            (npy_bytes("|u1", false, "(0, 2, 3)", &[]), "shape (0, 2, 3) holds no pixels"),
            (npy_bytes("|u1", false, "(1, 2, 3, 2)", &data), "images have 2 channels"),
            (npy_bytes("|u1", false, "(99999999999, 99999999999, 9)", &data), "needs 18446744073709551615"),
            (
                npy_bytes("|u1", false, "(1, 2, 99999999999999999999)", &data),
                "integer 99999999999999999999 is too large",
            ),
            (npy_bytes("|u1", false, "(1, 2, -3)", &data), "bad header: unexpected character '-'"),
            (npy_bytes("|u1", false, "[1, 'x']", &data), "'shape' holds something other than integers"),
        ];
        for (bytes, text) in cases {
            fs::write(&path, bytes).unwrap();
            expect(&path, text);
        }
        // Structured dtypes and missing entries.
        let header = |dict: &str| {
            let mut bytes = NPY_MAGIC.to_vec();
            bytes.extend_from_slice(&[1, 0]);
            bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
            bytes.extend_from_slice(dict.as_bytes());
            bytes
        };
        let cases = [
            ("{'descr': [('a', '|u1')], 'fortran_order': False, 'shape': (1,1,1)}", "dtype [...] (structured)"),
            ("{'descr': '|u1', 'shape': (1, 1)}", "bad header: no 'fortran_order' entry"),
            ("{'descr': '|u1', 'fortran_order': 0, 'shape': (1, 1)}", "'fortran_order' is not True or False"),
            ("{'descr': '|u1', 'fortran_order': False, 'shape': (1, 1)} x", "bad header: text after the dictionary"),
            ("('descr', '|u1')", "bad header: not a dictionary"),
            ("{'descr': '|u1', 'fortran_order': False, 'shape': (1, 1}", "bad header: expected ',' or ')'"),
            ("{'descr': '|u1' 'fortran_order': False}", "bad header: expected ',' or '}'"),
            ("{'descr' '|u1'}", "bad header: expected ':' after a dictionary key"),
            ("{'descr': '|u1", "bad header: unterminated string"),
        ];
        for (dict, text) in cases {
            fs::write(&path, header(dict)).unwrap();
            expect(&path, text);
        }
        let deep = format!("{}{}", "(".repeat(30_000), ")".repeat(30_000));
        fs::write(&path, header(&deep)).unwrap();
        expect(&path, "bad header: nested too deeply");
    }

    #[test]
    fn truncated_npy_never_panics() {
        let valid = fs::read(fixture("u8_3x8x8.npy")).unwrap();
        let dir = TempDir::new("npy-truncated");
        let path = dir.join("cut.npy");
        for len in 0..valid.len() {
            fs::write(&path, &valid[..len]).unwrap();
            let message = error_text(read_npy_u8(&path), &path);
            let expected = if len < 128 { "not an .npy file" } else { "(truncated)" };
            assert!(message.contains(expected), "prefix {len}: {message}");
        }
        // The same for the 4-byte header length of format version 2.0.
        let valid = fs::read(fixture("u8_1x2x3_v2.npy")).unwrap();
        for len in 0..valid.len() {
            assert!(parse_npy_u8(&valid[..len]).is_err(), "prefix {len}");
        }
    }

    #[test]
    fn corrupt_npy_headers_never_panic() {
        let valid = fs::read(fixture("u8_3x8x8.npy")).unwrap();
        for pos in 0..128 {
            for byte in [0, b' ', b'(', b')', b'{', b'}', b'[', b'\'', b'"', b'\\', b',', b':', b'9', b'L', 0xff] {
                let mut bytes = valid.clone();
                bytes[pos] = byte;
                let _ = parse_npy_u8(&bytes);
            }
        }
        // A header length that points past the end of the file.
        let mut bytes = valid.clone();
        bytes[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(parse_npy_u8(&bytes), Err(ErrorKind::NotNpy(_))));
    }

    #[test]
    fn failed_writes_leave_no_files() {
        let dir = TempDir::new("write-failures");
        let bad = Images { n: 2, height: 3, width: 3, data: vec![0; 17] };
        let path = dir.join("bad.npy");
        let message = error_text(write_npy_u8(&path, &bad), &path);
        assert!(message.contains("2 images of 3x3 need 18 values, but 17 are given"), "{message}");
        let path = dir.join("missing/out.npy");
        let message = error_text(write_npy_u8(&path, &sample_images(1, 2, 2)), &path);
        assert!(message.contains("cannot create: "), "{message}");
        let path = dir.join("bad.png");
        let message = error_text(write_png_gray(&path, 2, 3, &[0; 5]), &path);
        assert!(message.contains("a 2x3 image needs 6 pixels, got 5"), "{message}");
        let message = error_text(write_png_gray(&path, 0, 3, &[]), &path);
        assert!(message.contains("cannot write an empty 0x3 PNG"), "{message}");
        // Renaming over a directory fails after the temporary file is complete: it is removed.
        fs::create_dir(dir.join("taken.png")).unwrap();
        let path = dir.join("taken.png");
        let message = error_text(write_png_gray(&path, 1, 1, &[7]), &path);
        assert!(message.contains("cannot rename the temporary file into place"), "{message}");
        assert_eq!(dir.names(), ["taken.png"]);
    }

    #[test]
    fn png_gray_round_trip() {
        let dir = TempDir::new("png-round-trip");
        let path = dir.join("grey.png");
        let pixels: Vec<u8> = (0..5 * 7).map(|i| (i * 7) as u8).collect();
        write_png_gray(&path, 5, 7, &pixels).unwrap();
        assert_eq!(read_png_gray(&path).unwrap(), (5, 7, pixels));
        assert_eq!(dir.names(), ["grey.png"]);
    }

    /// Writes a PNG of any colour type and depth with the png crate.
    fn write_png(path: &Path, width: u32, height: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) {
        write_png_with(path, width, height, color, depth, data, |_| {})
    }

    fn write_png_with(
        path: &Path,
        width: u32,
        height: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
        setup: impl FnOnce(&mut png::Encoder<'_, BufWriter<File>>),
    ) {
        let mut encoder = png::Encoder::new(BufWriter::new(File::create(path).unwrap()), width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        setup(&mut encoder);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
    }

    #[test]
    fn colour_and_other_depths_read_as_grey() {
        use png::{BitDepth, ColorType};
        let dir = TempDir::new("png-colour");
        let path = dir.join("colour.png");
        // BT.601 luma: red 76.245, green 149.685, blue 29.07, (10, 20, 30) 18.15, white 255.
        let rgb = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30, 255, 255, 255, 0, 0, 0];
        let luma = vec![76, 150, 29, 18, 255, 0];
        write_png(&path, 3, 2, ColorType::Rgb, BitDepth::Eight, &rgb);
        assert_eq!(read_png_gray(&path).unwrap(), (2, 3, luma.clone()));

        let rgba: Vec<u8> = rgb.chunks(3).flat_map(|p| [p[0], p[1], p[2], 99]).collect();
        write_png(&path, 3, 2, ColorType::Rgba, BitDepth::Eight, &rgba);
        assert_eq!(read_png_gray(&path).unwrap(), (2, 3, luma.clone()));

        let rgb16: Vec<u8> = rgb.iter().flat_map(|&v| [v, v]).collect(); // v * 257
        write_png(&path, 3, 2, ColorType::Rgb, BitDepth::Sixteen, &rgb16);
        assert_eq!(read_png_gray(&path).unwrap(), (2, 3, luma.clone()));

        let palette: Vec<u8> = rgb.to_vec();
        write_png_with(&path, 3, 2, ColorType::Indexed, BitDepth::Eight, &[0, 1, 2, 3, 4, 5], |e| {
            e.set_palette(palette)
        });
        assert_eq!(read_png_gray(&path).unwrap(), (2, 3, luma));

        write_png(&path, 2, 1, ColorType::GrayscaleAlpha, BitDepth::Eight, &[200, 0, 7, 255]);
        assert_eq!(read_png_gray(&path).unwrap(), (1, 2, vec![200, 7]));

        // 16-bit grey rounds: 0x1234 = 4660 -> 18.13, 0x8080 -> 128, 0xFF7F = 65407 -> 254.5 -> 255.
        write_png(&path, 3, 1, ColorType::Grayscale, BitDepth::Sixteen, &[0x12, 0x34, 0x80, 0x80, 0xff, 0x7f]);
        assert_eq!(read_png_gray(&path).unwrap(), (1, 3, vec![18, 128, 255]));

        // 4-bit grey 0, 7, 15 and 2-bit grey 1, 3 and 1-bit grey 1, 0 scale to 0..255.
        write_png(&path, 3, 1, ColorType::Grayscale, BitDepth::Four, &[0x07, 0xf0]);
        assert_eq!(read_png_gray(&path).unwrap(), (1, 3, vec![0, 119, 255]));
        write_png(&path, 2, 1, ColorType::Grayscale, BitDepth::Two, &[0b0111_0000]);
        assert_eq!(read_png_gray(&path).unwrap(), (1, 2, vec![85, 255]));
        write_png(&path, 2, 1, ColorType::Grayscale, BitDepth::One, &[0b1000_0000]);
        assert_eq!(read_png_gray(&path).unwrap(), (1, 2, vec![255, 0]));

        // Not a PNG, and a truncated one.
        fs::write(&path, b"not a png").unwrap();
        let message = error_text(read_png_gray(&path), &path);
        assert!(message.contains("cannot decode PNG: "), "{message}");
        write_png_gray(&path, 4, 4, &[9; 16]).unwrap();
        let bytes = fs::read(&path).unwrap();
        for len in 0..bytes.len() {
            fs::write(&path, &bytes[..len]).unwrap();
            // Only the final IEND chunk may be missing for the decoder to succeed.
            match read_png_gray(&path) {
                Ok(image) => assert_eq!(image, (4, 4, vec![9; 16]), "prefix {len}"),
                Err(e) => assert!(!format!("{e:#}").contains('\n')),
            }
        }
        let missing = dir.join("missing.png");
        assert!(error_text(read_png_gray(&missing), &missing).contains("cannot open: "));
    }

    #[test]
    fn png_directories() {
        let dir = TempDir::new("png-dir");
        // Sorted by name: a, b, c; other files and hidden files are ignored.
        write_png_gray(&dir.join("c.png"), 2, 2, &[3; 4]).unwrap();
        write_png_gray(&dir.join("a.png"), 2, 2, &[255, 0, 0, 255]).unwrap();
        write_png_gray(&dir.join("b.PNG"), 2, 2, &[2; 4]).unwrap();
        write_png_gray(&dir.join(".hidden.png"), 3, 3, &[0; 9]).unwrap();
        fs::write(dir.join("notes.txt"), "x").unwrap();
        let images = read_png_dir(&dir.0).unwrap();
        assert_eq!(images, Images { n: 3, height: 2, width: 2, data: vec![255, 0, 0, 255, 2, 2, 2, 2, 3, 3, 3, 3] });
        // As levels: grey is mapped to 17 levels (255 -> 16, 0..=7 -> 0, 8 -> 1).
        let levels = read_levels(&dir.0, 17).unwrap();
        assert_eq!(levels.data, [16, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0]);
        let message = error_text(read_levels(&dir.0, 1), &dir.0);
        assert!(message.contains("a model has 2 to 256 levels, not 1"), "{message}");

        write_png_gray(&dir.join("d.png"), 2, 3, &[0; 6]).unwrap();
        let path = dir.join("d.png");
        let message = error_text(read_png_dir(&dir.0), &path);
        assert!(message.contains("image is 2x3 (height x width), but a.png is 2x2"), "{message}");

        let empty = TempDir::new("png-dir-empty");
        fs::write(empty.join("readme.txt"), "x").unwrap();
        let message = error_text(read_png_dir(&empty.0), &empty.0);
        assert!(message.contains("no .png files in the directory"), "{message}");
        let missing = empty.join("missing");
        assert!(error_text(read_png_dir(&missing), &missing).contains("cannot read the directory: "));
    }

    #[test]
    fn levels_out_of_range_are_located() {
        let dir = TempDir::new("levels");
        let path = dir.join("levels.npy");
        let mut data = vec![0u8; 2 * 3 * 4];
        data[12 + 4 + 2] = 5; // image 1, row 1, col 2: the first one out of range is reported
        data[23] = 9;
        fs::write(&path, npy_bytes("|u1", false, "(2, 3, 4)", &data)).unwrap();
        assert_eq!(read_levels(&path, 10).unwrap().data, data);
        let message = error_text(read_levels(&path, 4), &path);
        assert!(
            message.contains("image 1, pixel (row 1, col 2): value 5 is not a level of the model (0 to 3)"),
            "{message}"
        );
    }

    #[test]
    fn grid_geometry_and_content() {
        let images = sample_images(5, 2, 3);
        let (scale, gap) = (2, 1);
        let (height, width, pixels) = grid(&images, 2, scale, gap);
        // 3 rows of 4-pixel tiles, 2 columns of 6-pixel tiles, separators between and around.
        assert_eq!((height, width), (3 * 4 + 4, 2 * 6 + 3));
        assert_eq!(pixels.len(), height * width);
        let mut is_image = vec![false; pixels.len()];
        for i in 0..5 {
            let (top, left) = (gap + (i / 2) * 5, gap + (i % 2) * 7);
            for y in 0..4 {
                for x in 0..6 {
                    let at = (top + y) * width + left + x;
                    assert_eq!(pixels[at], images.image(i)[(y / scale) * 3 + x / scale], "image {i} ({y}, {x})");
                    is_image[at] = true;
                }
            }
        }
        // Everything else (gaps, border, the unused sixth cell) is separator.
        let separator = pixels.iter().zip(&is_image).filter(|(_, &image)| !image);
        assert!(separator.clone().all(|(&v, _)| v == GRID_SEPARATOR));
        assert_eq!(separator.count(), height * width - 5 * 24);

        // Fewer images than columns: one row, only as wide as needed; no gap, scale 0 as 1.
        assert_eq!(
            grid(&images, 8, 0, 0),
            (2, 15, {
                let mut row_major = Vec::new();
                for y in 0..2 {
                    for i in 0..5 {
                        row_major.extend_from_slice(&images.image(i)[y * 3..y * 3 + 3]);
                    }
                }
                row_major
            })
        );
        assert_eq!(grid(&sample_images(0, 8, 8), 4, 2, 1), (0, 0, Vec::new()));
        // One column; a short `data` does not panic.
        assert_eq!(grid(&images, 0, 1, 2).0, 5 * 2 + 6 * 2);
        let short = Images { n: 2, height: 2, width: 2, data: vec![1; 5] };
        assert_eq!(grid(&short, 2, 1, 0), (2, 4, vec![1, 1, 128, 128, 1, 1, 128, 128]));
    }

    #[test]
    fn level_gray_mapping() {
        for levels in [2, 17, 256] {
            let top = (levels - 1) as u8;
            for level in 0..=top {
                assert_eq!(gray_to_level(level_to_gray(level, levels), levels), level, "{levels} levels");
            }
            assert_eq!((level_to_gray(0, levels), level_to_gray(top, levels)), (0, 255));
            assert_eq!((gray_to_level(0, levels), gray_to_level(255, levels)), (0, top));
            // Grey to level is monotonic and every level is reached.
            let mapped: Vec<u8> = (0..=255).map(|g| gray_to_level(g, levels)).collect();
            assert!(mapped.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1), "{levels} levels");
        }
        assert!((0..=255).all(|v| level_to_gray(v, 256) == v && gray_to_level(v, 256) == v));
        // 17 levels: 255 / 16 = 15.9375 per level; 8 * 15.9375 = 127.5 rounds up.
        assert_eq!([1, 8, 15].map(|l| level_to_gray(l, 17)), [16, 128, 239]);
        assert_eq!([7, 8, 120, 127, 128].map(|g| gray_to_level(g, 17)), [0, 1, 8, 8, 8]);
        assert_eq!([127, 128].map(|g| gray_to_level(g, 2)), [0, 1]);
        // Out-of-range arguments are clamped, not a panic.
        assert_eq!(level_to_gray(20, 17), 255);
        assert_eq!((level_to_gray(1, 0), gray_to_level(200, 1000)), (255, 200));
    }
}
