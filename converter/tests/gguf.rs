//! The GGUF reader against gguf-py: fixtures written by gguf.GGUFWriter and dequantized by
//! gguf.quants.dequantize (models/make_gguf_fixtures.py), hostile variants of them, and the
//! real SmolLM2 GGUF when it is cached.

use std::path::{Path, PathBuf};

use arq_convert::import::gguf::{self, GgmlType, GgufError, GgufFile, TensorInfo, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf").join(name)
}

fn read_json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name)).expect("fixture json");
    serde_json::from_str(&text).expect("valid json")
}

fn bits(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("bits array").iter().map(|b| b.as_u64().expect("u32 bits") as u32).collect()
}

fn tiny_bytes() -> Vec<u8> {
    std::fs::read(fixture("tiny.gguf")).expect("tiny.gguf")
}

/// A file under cargo's per-test scratch folder, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, bytes: &[u8]) -> TempFile {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gguf-{}-{tag}.gguf", std::process::id()));
        std::fs::write(&path, bytes).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Compares two f32 slices bit for bit and names the first difference.
fn assert_bits_eq(name: &str, got: &[f32], want: &[u32]) {
    assert_eq!(got.len(), want.len(), "{name}: element count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            *w,
            "{name}[{i}]: got {g:e} ({:#010x}), gguf-py {:e} ({w:#010x})",
            g.to_bits(),
            f32::from_bits(*w)
        );
    }
}

/// Opening the file and, if that works, reading every tensor must never panic.
fn open_and_touch(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    let f = GgufFile::from_bytes(bytes)?;
    for t in &f.tensors {
        let _ = f.tensor_data(t);
        let _ = f.dequantize(t);
    }
    Ok(f)
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not in fixture", String::from_utf8_lossy(needle)))
}

/// Byte position just after the length-prefixed string `s` (a key or tensor name).
fn after_string(bytes: &[u8], s: &str) -> usize {
    let at = find(bytes, s.as_bytes());
    assert_eq!(&bytes[at - 8..at], &(s.len() as u64).to_le_bytes(), "length prefix of {s}");
    at + s.len()
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn metadata_of_every_value_type() {
    let f = GgufFile::open(&fixture("tiny.gguf")).expect("open tiny.gguf");
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(f.architecture(), Some("llama"));

    let get = |k: &str| f.get(k).unwrap_or_else(|| panic!("missing key {k}")).clone();
    assert_eq!(get("test.u8"), Value::U8(200));
    assert_eq!(get("test.i8"), Value::I8(-100));
    assert_eq!(get("test.u16"), Value::U16(60000));
    assert_eq!(get("test.i16"), Value::I16(-30000));
    assert_eq!(get("test.u32"), Value::U32(4_000_000_000));
    assert_eq!(get("test.i32"), Value::I32(-2_000_000_000));
    assert_eq!(get("test.f32"), Value::F32(0.1));
    assert_eq!(get("test.bool_true"), Value::Bool(true));
    assert_eq!(get("test.bool_false"), Value::Bool(false));
    assert_eq!(get("test.str"), Value::Str("héllo, GGUF ✓".into()));
    assert_eq!(get("test.str_empty"), Value::Str(String::new()));
    assert_eq!(get("test.u64"), Value::U64(18_000_000_000_000_000_000));
    assert_eq!(get("test.i64"), Value::I64(-9_000_000_000_000_000_000));
    assert_eq!(get("test.f64"), Value::F64(std::f64::consts::PI));
    let strs = ["<s>", "</s>", "Ġthe", "ĊĊ", ""];
    assert_eq!(get("test.arr_str"), Value::Array(strs.iter().map(|s| Value::Str(s.to_string())).collect()));
    assert_eq!(get("test.arr_u8"), Value::Array(vec![Value::U8(0), Value::U8(1), Value::U8(255)]));
    assert_eq!(get("test.arr_u16"), Value::Array(vec![Value::U16(7), Value::U16(65535)]));
    assert_eq!(get("test.arr_i64"), Value::Array(vec![Value::I64(-1), Value::I64(1 << 62)]));
    assert_eq!(get("test.arr_f64"), Value::Array(vec![Value::F64(0.5), Value::F64(-2.25)]));
    assert_eq!(get("test.arr_i32"), Value::Array(vec![Value::I32(1), Value::I32(-2), Value::I32(3)]));
    assert_eq!(get("test.arr_f32"), Value::Array(vec![Value::F32(1.5), Value::F32(-0.25)]));
    assert_eq!(get("test.arr_bool"), Value::Array(vec![Value::Bool(true), Value::Bool(false), Value::Bool(true)]));
    assert_eq!(
        get("test.arr_nested"),
        Value::Array(vec![Value::Array(vec![Value::I32(1), Value::I32(2)]), Value::Array(vec![Value::I32(3)]),])
    );
    assert_eq!(get("general.name").as_str(), Some("arq tiny gguf fixture"));
    assert!(f.get("no.such.key").is_none());

    // The accessors.
    assert_eq!(get("test.u8").as_u64(), Some(200));
    assert_eq!(get("test.i8").as_u64(), None);
    assert_eq!(get("test.i8").as_i64(), Some(-100));
    assert_eq!(get("test.u64").as_i64(), None);
    assert_eq!(get("test.u64").as_u64(), Some(18_000_000_000_000_000_000));
    assert_eq!(get("test.i32").as_f32(), Some(-2e9));
    assert_eq!(get("test.f64").as_f32(), Some(std::f32::consts::PI));
    assert_eq!(get("test.f32").as_f32(), Some(0.1));
    assert_eq!(get("test.str").as_f32(), None);
    assert_eq!(get("test.bool_true").as_bool(), Some(true));
    assert_eq!(get("test.u8").as_bool(), None);
    assert_eq!(get("test.arr_str").as_array().map(<[Value]>::len), Some(5));
    assert_eq!(get("test.arr_str").type_name(), "array");
    assert_eq!(get("llama.context_length").as_u64(), Some(64));
}

#[test]
fn every_tensor_dequantizes_like_gguf_py() {
    let f = GgufFile::open(&fixture("tiny.gguf")).expect("open tiny.gguf");
    let expected = read_json("tiny.json");
    let expected = expected.as_object().expect("object");
    assert_eq!(f.tensors.len(), expected.len());

    let mut seen = Vec::new();
    for t in &f.tensors {
        let want = &expected[&t.name];
        assert_eq!(t.ty.name(), want["type"].as_str().unwrap(), "{}: type", t.name);
        let dims: Vec<u64> = want["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(t.dims, dims, "{}: dims", t.name);
        assert_eq!(t.offset % 32, 0);
        let data = f.tensor_data(t).expect("tensor data");
        assert_eq!(Some(data.len() as u64), t.n_bytes());
        match want.get("f32_bits") {
            Some(b) => {
                let got = f.dequantize(t).unwrap_or_else(|e| panic!("{}: {e}", t.name));
                assert_bits_eq(&t.name, &got, &bits(b));
                // The free function on the raw bytes agrees.
                let free = gguf::dequantize(t.ty, data, t.n_elements() as usize).unwrap();
                assert_eq!(free.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), bits(b));
                seen.push(t.ty);
            }
            None => {
                let err = f.dequantize(t).expect_err("unsupported type");
                assert!(
                    matches!(&err, GgufError::UnsupportedType { tensor, ty }
                        if tensor == &t.name && ty.contains("IQ4_NL")),
                    "{err:?}"
                );
                let msg = err.to_string();
                assert!(msg.contains("t.iq4_nl") && msg.contains("IQ4_NL"), "{msg}");
            }
        }
    }
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        assert!(seen.contains(&ty), "no fixture tensor of type {ty}");
        assert!(ty.can_dequantize());
    }
}

#[test]
fn shapes_in_gguf_order() {
    let f = GgufFile::open(&fixture("tiny.gguf")).unwrap();
    let t = f.tensor("t.bf16").unwrap();
    assert_eq!(t.dims, vec![16, 3, 2]);
    assert_eq!(t.n_elements(), 96);
    assert_eq!(t.shape_rows_cols(), (6, 16));
    let t = f.tensor("t.norm").unwrap();
    assert_eq!(t.shape_rows_cols(), (1, 40));
    let t = f.tensor("t.q4_k").unwrap();
    assert_eq!((t.shape_rows_cols(), t.n_bytes()), ((2, 256), Some(2 * 144)));
    assert!(f.tensor("missing").is_none());
    let scalar = TensorInfo { name: "s".into(), dims: vec![], ty: GgmlType::F32, offset: 0 };
    assert_eq!((scalar.n_elements(), scalar.shape_rows_cols()), (1, (1, 1)));
}

#[test]
fn custom_alignment() {
    let f = GgufFile::open(&fixture("aligned64.gguf")).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    let expected = read_json("aligned64.json");
    for t in &f.tensors {
        assert_eq!(t.offset % 64, 0);
        let got = f.dequantize(t).unwrap();
        assert_bits_eq(&t.name, &got, &bits(&expected[&t.name]["f32_bits"]));
    }
    assert_eq!(f.tensors.len(), 2);
}

#[test]
fn types_ids_names_and_sizes() {
    for id in 0..64u32 {
        let ty = GgmlType::from_id(id);
        assert_eq!(ty.id(), id);
        assert_eq!(ty.block_size().is_some(), ty.type_size().is_some());
    }
    assert_eq!(GgmlType::from_id(12), GgmlType::Q4_K);
    assert_eq!(GgmlType::from_id(30), GgmlType::BF16);
    assert_eq!(GgmlType::Q6_K.type_size(), Some(210));
    assert_eq!(GgmlType::Q8_K.type_size(), Some(292));
    assert_eq!(GgmlType::Other(20).name(), "IQ4_NL");
    assert_eq!(GgmlType::Other(999).name(), "unknown");
    assert_eq!(GgmlType::Other(999).block_size(), None);
    assert!(!GgmlType::Q8_1.can_dequantize());
    assert!(!GgmlType::Q8_K.can_dequantize());
}

#[test]
fn free_dequantize_checks_sizes() {
    let block = [0u8; 18];
    assert_eq!(gguf::dequantize(GgmlType::Q4_0, &block, 32).unwrap().len(), 32);
    assert!(gguf::dequantize(GgmlType::Q4_0, &block, 0).is_err());
    assert!(gguf::dequantize(GgmlType::Q4_0, &block[..17], 32).is_err());
    assert!(gguf::dequantize(GgmlType::Q4_0, &block, 31).is_err());
    assert!(gguf::dequantize(GgmlType::Q4_0, &block, 64).is_err());
    assert!(gguf::dequantize(GgmlType::Q4_0, &[], 0).unwrap().is_empty());
    assert!(gguf::dequantize(GgmlType::F32, &[0; 7], 2).is_err());
    assert!(gguf::dequantize(GgmlType::Q6_K, &[0; 210], usize::MAX).is_err());
    for ty in [GgmlType::Q8_1, GgmlType::Q8_K, GgmlType::Other(20), GgmlType::Other(999)] {
        let err = gguf::dequantize(ty, &[0; 64], 32).unwrap_err();
        assert!(matches!(err, GgufError::UnsupportedType { .. }), "{ty}: {err:?}");
    }
    let mut out = [1.0f32; 32];
    gguf::dequantize_into(GgmlType::Q8_0, &[0u8; 34], &mut out).unwrap();
    assert_eq!(out, [0.0; 32]);
}

#[test]
fn version_2_is_read_others_are_refused() {
    let mut bytes = tiny_bytes();
    put_u32(&mut bytes, 4, 2);
    let f = GgufFile::from_bytes(bytes.clone()).expect("v2");
    assert_eq!(f.version, 2);
    assert_eq!(f.tensors.len(), 15);

    for v in [0u32, 1, 4, 0x0300_0000, u32::MAX] {
        put_u32(&mut bytes, 4, v);
        let err = GgufFile::from_bytes(bytes.clone()).unwrap_err();
        assert!(matches!(err, GgufError::UnsupportedVersion(x) if x == v), "{err:?}");
    }
    let msg = GgufError::UnsupportedVersion(0x0300_0000).to_string();
    assert!(msg.contains("big-endian"), "{msg}");
}

#[test]
fn bad_magic_and_io_errors() {
    let mut bytes = tiny_bytes();
    bytes[0] = b'X';
    let tmp = TempFile::new("magic", &bytes);
    let err = GgufFile::open(&tmp.0).unwrap_err();
    assert!(matches!(err, GgufError::NotGguf), "{err:?}");
    assert!(err.to_string().contains("not a GGUF file"), "{err}");

    let empty = TempFile::new("empty", &[]);
    assert!(matches!(GgufFile::open(&empty.0), Err(GgufError::NotGguf)));
    let short = TempFile::new("short", b"GG");
    assert!(matches!(GgufFile::open(&short.0), Err(GgufError::Truncated(_))));
    let text = TempFile::new("text", b"{\"not\": \"gguf\"}");
    assert!(matches!(GgufFile::open(&text.0), Err(GgufError::NotGguf)));

    let err = GgufFile::open(Path::new("/nonexistent/dir/model.gguf")).unwrap_err();
    assert!(matches!(err, GgufError::Io(_)), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    let bytes = tiny_bytes();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    let end_of_data =
        f.tensors.iter().map(|t| f.data_offset() + t.offset + t.n_bytes().unwrap()).max().unwrap() as usize;
    for cut in 0..bytes.len() {
        let r = open_and_touch(bytes[..cut].to_vec());
        if cut < end_of_data {
            let err = r.expect_err("truncated file opened");
            let msg = err.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "cut {cut}: {msg}");
        } else {
            assert!(r.is_ok(), "cut {cut} only drops trailing padding");
        }
    }
    // The same through the file system, at a few offsets.
    for cut in [0, 3, 4, 7, 8, 20, 24, 100, 500, end_of_data - 1] {
        let tmp = TempFile::new(&format!("cut{cut}"), &bytes[..cut]);
        assert!(GgufFile::open(&tmp.0).is_err(), "cut {cut}");
    }
}

#[test]
fn hostile_counts_lengths_and_offsets() {
    let base = tiny_bytes();
    let huge = [u64::MAX, u64::MAX / 2, 1 << 62, 1 << 40, base.len() as u64, base.len() as u64 / 8];
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut case = |name: String, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = base.clone();
        f(&mut b);
        cases.push((name, b));
    };

    for &h in &huge {
        case(format!("tensor_count={h}"), &|b| put_u64(b, 8, h));
        case(format!("kv_count={h}"), &|b| put_u64(b, 16, h));
        // The first key's length.
        case(format!("key_len={h}"), &|b| put_u64(b, 24, h));
        // An array of strings: its count, and the length of its first string.
        let at = after_string(&base, "test.arr_str");
        case(format!("arr_count={h}"), &|b| put_u64(b, at + 8, h));
        case(format!("arr_str_len={h}"), &|b| put_u64(b, at + 16, h));
        let at = after_string(&base, "test.str");
        case(format!("str_len={h}"), &|b| put_u64(b, at + 4, h));
        // A tensor name's length, a dim, the offset.
        let at = after_string(&base, "t.q4_k");
        case(format!("tensor_name_len={h}"), &|b| put_u64(b, at - 6 - 8, h));
        case(format!("dim0={h}"), &|b| put_u64(b, at + 4, h));
        case(format!("dim1={h}"), &|b| put_u64(b, at + 12, h));
        if h >= base.len() as u64 {
            case(format!("offset={h}"), &|b| put_u64(b, at + 24, h & !31));
        }
    }
    let at = after_string(&base, "t.q4_k");
    case("n_dims=5".into(), &|b| put_u32(b, at, 5));
    case("n_dims=max".into(), &|b| put_u32(b, at, u32::MAX));
    case("dim0 not whole blocks".into(), &|b| put_u64(b, at + 4, 255));
    case("offset misaligned".into(), &|b| put_u64(b, at + 24, 4));
    let last = f_last_offset(&base);
    case("offset past end".into(), &|b| put_u64(b, at + 24, last + 4096));
    case("duplicate tensor name".into(), &|b| {
        let at = find(b, b"t.q4_k");
        b[at..at + 6].copy_from_slice(b"t.q5_k");
    });
    case("duplicate key".into(), &|b| {
        let at = find(b, b"test.u16");
        b[at..at + 8].copy_from_slice(b"test.i16");
    });
    let at = after_string(&base, "test.u8");
    case("unknown value type".into(), &|b| put_u32(b, at, 13));
    case("unknown value type max".into(), &|b| put_u32(b, at, u32::MAX));
    let at = after_string(&base, "test.bool_true");
    case("bool byte 2".into(), &|b| b[at + 4] = 2);
    let at = after_string(&base, "test.arr_u8");
    case("array of unknown type".into(), &|b| put_u32(b, at + 4, 77));
    case("invalid utf-8 key".into(), &|b| {
        let at = find(b, b"test.u32");
        b[at] = 0xFF;
    });

    for (name, bytes) in &cases {
        let err = open_and_touch(bytes.clone()).expect_err(name);
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "{name}: {msg}");
        println!("{name}: {msg}");
    }
    // A few through the file system.
    for (i, (name, bytes)) in cases.iter().enumerate().step_by(7) {
        let tmp = TempFile::new(&format!("hostile{i}"), bytes);
        assert!(GgufFile::open(&tmp.0).is_err(), "{name}");
    }
}

fn f_last_offset(bytes: &[u8]) -> u64 {
    let f = GgufFile::from_bytes(bytes.to_vec()).unwrap();
    f.tensors.iter().map(|t| t.offset).max().unwrap()
}

#[test]
fn alignment_must_be_a_power_of_two() {
    // aligned64.gguf stores general.alignment = 64 as a u32.
    let base = std::fs::read(fixture("aligned64.gguf")).unwrap();
    let at = after_string(&base, "general.alignment");
    assert_eq!(u32::from_le_bytes(base[at..at + 4].try_into().unwrap()), 4, "u32 type");
    for bad in [0u32, 3, 48, u32::MAX] {
        let mut b = base.clone();
        put_u32(&mut b, at + 4, bad);
        let err = GgufFile::from_bytes(b).unwrap_err();
        assert!(matches!(err, GgufError::Malformed(_)), "{bad}: {err:?}");
        assert!(err.to_string().contains("general.alignment"), "{err}");
    }
    // 32 moves the data start and the tensors with it: still a valid file, other values.
    let mut b = base.clone();
    put_u32(&mut b, at + 4, 32);
    let _ = open_and_touch(b);
}

#[test]
fn unknown_tensor_type_is_listed_but_not_read() {
    let mut b = tiny_bytes();
    let at = after_string(&b, "t.q4_k");
    put_u32(&mut b, at + 20, 999);
    let f = GgufFile::from_bytes(b).expect("unknown types are listed");
    let t = f.tensor("t.q4_k").unwrap();
    assert_eq!(t.ty, GgmlType::Other(999));
    for err in [f.tensor_data(t).unwrap_err(), f.dequantize(t).unwrap_err()] {
        assert!(
            matches!(&err, GgufError::UnsupportedType { tensor, ty } if tensor == "t.q4_k" && ty.contains("999")),
            "{err:?}"
        );
    }
}

#[test]
fn random_byte_flips_never_panic() {
    let base = tiny_bytes();
    let header_len = GgufFile::from_bytes(base.clone()).unwrap().data_offset() as usize;
    // xorshift64*, seeded: reproducible.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut opened = 0;
    for _ in 0..3000 {
        let mut b = base.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % header_len as u64) as usize;
            b[at] = match next() % 4 {
                0 => 0xFF,
                1 => 0,
                2 => b[at] ^ (1 << (next() % 8)),
                _ => next() as u8,
            };
        }
        if open_and_touch(b).is_ok() {
            opened += 1;
        }
    }
    println!("{opened} of 3000 mutated headers still opened");
}

/// The real SmolLM2-135M-Instruct GGUF (models/fetch_smollm2.sh), when cached.
#[test]
fn smollm2_matches_gguf_py() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/cache/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!("note: {} missing (run models/fetch_smollm2.sh); skipping", path.display());
        return;
    }
    let f = GgufFile::open(&path).expect("open SmolLM2");
    assert_eq!(f.version, 3);
    assert_eq!(f.architecture(), Some("llama"));
    let u = |k: &str| f.get(k).and_then(Value::as_u64);
    assert_eq!(u("llama.block_count"), Some(30));
    assert_eq!(u("llama.embedding_length"), Some(576));
    assert_eq!(u("llama.feed_forward_length"), Some(1536));
    assert_eq!(u("llama.attention.head_count"), Some(9));
    assert_eq!(u("llama.attention.head_count_kv"), Some(3));
    assert_eq!(u("llama.context_length"), Some(8192));
    assert_eq!(u("llama.vocab_size"), Some(49152));
    assert_eq!(u("llama.rope.dimension_count"), Some(64));
    assert_eq!(f.get("llama.rope.freq_base"), Some(&Value::F32(100000.0)));
    assert_eq!(f.get("llama.attention.layer_norm_rms_epsilon"), Some(&Value::F32(1e-5)));
    assert_eq!(f.get("tokenizer.ggml.model").and_then(Value::as_str), Some("gpt2"));
    assert_eq!(f.get("tokenizer.ggml.pre").and_then(Value::as_str), Some("smollm"));
    let tokens = f.get("tokenizer.ggml.tokens").and_then(Value::as_array).unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens[1].as_str(), Some("<|im_start|>"));
    assert_eq!(f.get("tokenizer.ggml.merges").and_then(Value::as_array).map(<[Value]>::len), Some(48900));
    assert_eq!(u("tokenizer.ggml.bos_token_id"), Some(1));
    assert_eq!(u("tokenizer.ggml.eos_token_id"), Some(2));

    for (k, v) in &f.metadata {
        match v {
            Value::Array(a) => println!("{k}: array of {} x {}", a.len(), a.first().map_or("-", Value::type_name)),
            Value::Str(s) if s.len() > 60 => println!("{k}: string ({} bytes)", s.len()),
            v => println!("{k}: {} = {v:?}", v.type_name()),
        }
    }

    let count = |ty: GgmlType| f.tensors.iter().filter(|t| t.ty == ty).count();
    assert_eq!(f.tensors.len(), 272);
    assert_eq!((count(GgmlType::Q4_1), count(GgmlType::F32), count(GgmlType::Q8_0)), (210, 61, 1));

    let reference = read_json("smollm2_rows.json");
    assert_eq!(reference["file_size"].as_u64(), Some(std::fs::metadata(&path).unwrap().len()));
    for entry in reference["tensors"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let t = f.tensor(name).unwrap();
        assert_eq!(t.ty.name(), entry["type"].as_str().unwrap());
        let (rows, cols) = t.shape_rows_cols();
        let row_bytes = (t.n_bytes().unwrap() / rows) as usize;
        let data = f.tensor_data(t).unwrap();
        for (row, want) in entry["rows"].as_object().unwrap() {
            let r: usize = row.parse().unwrap();
            let got = gguf::dequantize(t.ty, &data[r * row_bytes..][..row_bytes], cols as usize).unwrap();
            assert_bits_eq(&format!("{name} row {r}"), &got, &bits(want));
        }
    }
    // The whole-tensor path agrees with the row path on a Q4_1 matrix.
    let t = f.tensor("blk.0.attn_q.weight").unwrap();
    let all = f.dequantize(t).unwrap();
    let want = bits(&reference["tensors"][0]["rows"]["575"]);
    assert_bits_eq("blk.0.attn_q.weight row 575", &all[575 * 576..], &want);
}

/// Counts and lengths above the reader's caps are refused by name before anything is
/// allocated, and fast; so are the LLaMA importer's hyperparameters (a block count of
/// 2^22 used to build 9 x 2^22 tensor names first, then abort).
#[test]
fn caps_refuse_before_allocating() {
    let base = tiny_bytes();
    let at_arr = after_string(&base, "test.arr_str");
    let at_str = after_string(&base, "test.str");
    let cases: [(&str, usize, u64, String); 4] = [
        (
            "tensor count",
            8,
            gguf::MAX_TENSORS + 1,
            format!("the tensor count is 65537, more than the cap of {}", gguf::MAX_TENSORS),
        ),
        (
            "kv count",
            16,
            gguf::MAX_KV + 1,
            format!("the metadata count is 65537, more than the cap of {}", gguf::MAX_KV),
        ),
        (
            "array length",
            at_arr + 8,
            1 << 40,
            format!("metadata array 'test.arr_str' is 1099511627776, more than the cap of {}", gguf::MAX_ARRAY_LEN),
        ),
        (
            "string length",
            at_str + 4,
            1 << 40,
            format!("1099511627776 bytes long, more than the cap of {}", gguf::MAX_STRING_LEN),
        ),
    ];
    for (name, at, value, want) in cases {
        let mut b = base.clone();
        put_u64(&mut b, at, value);
        let t0 = std::time::Instant::now();
        let err = GgufFile::from_bytes(b).expect_err(name).to_string();
        assert!(err.contains(&want) && !err.contains('\n'), "{name}: {err}");
        assert!(t0.elapsed().as_millis() < 100, "{name}: {:?}", t0.elapsed());
    }
    let hostile = |f: &str| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile").join(f);
    for (file, want) in [
        ("block_count_4m.gguf", "llama.block_count is 4194304, more than the cap of 1024"),
        ("embedding_length_huge.gguf", "llama.embedding_length is 1099511627776, more than the cap of 65536"),
    ] {
        let t0 = std::time::Instant::now();
        let err = arq_convert::import::gguf::text::read_gguf(&hostile(file), false).err().expect(file).to_string();
        assert!(err.contains(want), "{file}: {err}");
        assert!(t0.elapsed().as_millis() < 100, "{file}: {:?}", t0.elapsed());
    }
}
