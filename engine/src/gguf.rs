//! A reader for GGUF files (llama.cpp's model format, versions 2 and 3).
//!
//! It memory-maps the file, parses the header, the metadata key/values (the tokenizer and the
//! model hyper-parameters live there) and the tensor directory, and dequantises tensors to f32
//! exactly as ggml defines its block formats. Supported tensor types: F32, F16, BF16, Q8_0,
//! Q4_0 and Q4_1; anything else is an error naming the file, the tensor and the type.

use half::{bf16, f16};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open GGUF file {path}: {error}")]
    Open { path: PathBuf, error: std::io::Error },
    #[error("{path} is not a GGUF file: expected magic \"GGUF\", found {found:?}")]
    BadMagic { path: PathBuf, found: [u8; 4] },
    #[error("{path}: unsupported GGUF version {found}: expected 2 or 3")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: truncated or corrupt at byte {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("{path}: tensor {tensor:?} has type {type_name} (ggml type {type_id}), which pspace cannot dequantise: expected one of F32, F16, BF16, Q8_0, Q4_0, Q4_1")]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        type_id: u32,
        type_name: String,
    },
    #[error("{path}: no tensor named {tensor:?}")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: metadata key {key:?} {problem}")]
    Metadata {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) if v >= 0 => Some(v as u64),
            GgufValue::I16(v) if v >= 0 => Some(v as u64),
            GgufValue::I32(v) if v >= 0 => Some(v as u64),
            GgufValue::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().map(|v| v as i64),
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The ggml tensor types this reader knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
    Other(u32),
}

impl GgmlType {
    fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }
    pub fn name(self) -> String {
        match self {
            GgmlType::F32 => "F32".into(),
            GgmlType::F16 => "F16".into(),
            GgmlType::Q4_0 => "Q4_0".into(),
            GgmlType::Q4_1 => "Q4_1".into(),
            GgmlType::Q8_0 => "Q8_0".into(),
            GgmlType::BF16 => "BF16".into(),
            GgmlType::Other(id) => match id {
                6 => "Q5_0".into(),
                7 => "Q5_1".into(),
                10 => "Q2_K".into(),
                11 => "Q3_K".into(),
                12 => "Q4_K".into(),
                13 => "Q5_K".into(),
                14 => "Q6_K".into(),
                15 => "Q8_K".into(),
                other => format!("type#{other}"),
            },
        }
    }
    /// (elements per block, bytes per block) of the supported types.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::BF16 => Some((1, 2)),
            GgmlType::Q4_0 => Some((32, 18)),
            GgmlType::Q4_1 => Some((32, 20)),
            GgmlType::Q8_0 => Some((32, 34)),
            GgmlType::Other(_) => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Shape in PyTorch (row-major) order: GGUF stores the fastest dimension first, so this is
    /// the file's dimension list reversed.
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the file.
    pub offset: u64,
}

impl TensorInfo {
    /// The number of elements; None when the product of the dimensions overflows (a corrupt
    /// header).
    pub fn element_count(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }
}

/// GGML_MAX_DIMS: llama.cpp refuses tensors of more dimensions.
const MAX_DIMS: usize = 4;
/// Nesting of metadata arrays accepted (llama.cpp's gguf reader accepts none beyond one level
/// of arrays of arrays); deeper nesting is a corrupt or hostile file, not a model.
const MAX_ARRAY_DEPTH: usize = 2;

/// An open, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| GgufError::Corrupt {
                path: self.path.to_path_buf(),
                offset: self.pos as u64,
                what: format!(
                    "{what} needs {n} bytes but the file ends at byte {}",
                    self.bytes.len()
                ),
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn corrupt(&self, what: String) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_path_buf(),
            offset: self.pos as u64,
            what,
        }
    }
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = usize::try_from(self.u64(what)?).unwrap_or(usize::MAX);
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| GgufError::Corrupt {
            path: self.path.to_path_buf(),
            offset: self.pos as u64,
            what: format!("{what} is not valid UTF-8"),
        })
    }
    fn value(&mut self, type_id: u32, key: &str, depth: usize) -> Result<GgufValue, GgufError> {
        let b = |c: &mut Self, n: usize| c.take(n, key);
        Ok(match type_id {
            0 => GgufValue::U8(b(self, 1)?[0]),
            1 => GgufValue::I8(b(self, 1)?[0] as i8),
            2 => {
                let x = b(self, 2)?;
                GgufValue::U16(u16::from_le_bytes([x[0], x[1]]))
            }
            3 => {
                let x = b(self, 2)?;
                GgufValue::I16(i16::from_le_bytes([x[0], x[1]]))
            }
            4 => GgufValue::U32(self.u32(key)?),
            5 => GgufValue::I32(self.u32(key)? as i32),
            6 => GgufValue::F32(f32::from_bits(self.u32(key)?)),
            7 => GgufValue::Bool(b(self, 1)?[0] != 0),
            8 => GgufValue::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.corrupt(format!(
                        "metadata key {key:?} nests arrays more than {MAX_ARRAY_DEPTH} deep"
                    )));
                }
                let elem_type = self.u32(key)?;
                let count = self.u64(key)?;
                // Every element takes at least one byte: a count beyond the bytes left is corrupt,
                // and the allocation is never sized by the header alone.
                let left = (self.bytes.len() - self.pos) as u64;
                if count > left {
                    return Err(self.corrupt(format!(
                        "metadata key {key:?} declares {count} array elements but only {left} bytes follow"
                    )));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_type, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(self.u64(key)? as i64),
            12 => GgufValue::F64(f64::from_bits(self.u64(key)?)),
            other => {
                return Err(GgufError::Corrupt {
                    path: self.path.to_path_buf(),
                    offset: self.pos as u64,
                    what: format!("metadata key {key:?} has unknown value type {other}"),
                })
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let file = File::open(path).map_err(|error| GgufError::Open {
            path: path.to_path_buf(),
            error,
        })?;
        // SAFETY: the map is read-only; a model file changing under a running process is outside
        // what any loader can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|error| GgufError::Open {
            path: path.to_path_buf(),
            error,
        })?;
        let mut c = Cursor {
            bytes: &map,
            pos: 0,
            path,
        };
        let magic = c.take(4, "magic").map_err(|_| GgufError::BadMagic {
            path: path.to_path_buf(),
            found: [0; 4],
        })?;
        if magic != GGUF_MAGIC {
            let mut found = [0u8; 4];
            found.copy_from_slice(magic);
            return Err(GgufError::BadMagic {
                path: path.to_path_buf(),
                found,
            });
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let tensor_count = c.u64("tensor count")?;
        let kv_count = c.u64("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = c.string("metadata key")?;
            let type_id = c.u32(&key)?;
            let value = c.value(type_id, &key, 0)?;
            metadata.insert(key, value);
        }
        // A tensor entry takes at least 24 bytes (name length, dims count, type, offset).
        let left = (c.bytes.len() - c.pos) as u64;
        if tensor_count > left / 24 {
            return Err(c.corrupt(format!(
                "the header declares {tensor_count} tensors but only {left} bytes follow"
            )));
        }
        let mut raw = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims > MAX_DIMS {
                return Err(c.corrupt(format!(
                    "tensor {name:?} has {n_dims} dimensions: expected at most {MAX_DIMS}"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(usize::try_from(c.u64(&name)?).unwrap_or(usize::MAX));
            }
            let type_id = c.u32(&name)?;
            let offset = c.u64(&name)?;
            dims.reverse();
            raw.push((name, dims, GgmlType::from_id(type_id), offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::Metadata {
                        path: path.to_path_buf(),
                        key: "general.alignment".into(),
                        problem: format!("must be a power of two, found {v:?}"),
                    })
                }
            },
        };
        let data_start = (c.pos as u64).div_ceil(alignment).saturating_mul(alignment);
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(raw.len());
        for (name, shape, ggml_type, offset) in raw {
            let offset = data_start.checked_add(offset).ok_or_else(|| GgufError::Corrupt {
                path: path.to_path_buf(),
                offset: data_start,
                what: format!("tensor {name:?} has an offset beyond any file size ({offset})"),
            })?;
            tensors.push(TensorInfo {
                name,
                shape,
                ggml_type,
                offset,
            });
        }
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            tensors,
            by_name,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(GgufValue::as_u64)
    }
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(GgufValue::as_f64)
    }
    /// A metadata array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?.as_array()?.iter().map(GgufValue::as_str).collect()
    }
    /// A required numeric key, with an error naming the file and key when absent.
    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_u64(key).ok_or_else(|| GgufError::Metadata {
            path: self.path.clone(),
            key: key.to_string(),
            problem: "is missing or not an integer".into(),
        })
    }

    /// Dequantises a tensor to f32 and returns (shape, values).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), GgufError> {
        let info = self.tensor_info(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        })?;
        let (block_elems, block_bytes) =
            info.ggml_type.block().ok_or_else(|| GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: name.to_string(),
                type_id: info.ggml_type.id(),
                type_name: info.ggml_type.name(),
            })?;
        let corrupt = |what: String| GgufError::Corrupt {
            path: self.path.clone(),
            offset: info.offset,
            what,
        };
        let n = info.element_count().ok_or_else(|| {
            corrupt(format!(
                "tensor {name:?} has dimensions {:?} whose product overflows",
                info.shape
            ))
        })?;
        if n % block_elems != 0 {
            return Err(GgufError::Corrupt {
                path: self.path.clone(),
                offset: info.offset,
                what: format!(
                    "tensor {name:?} has {n} elements, not a multiple of the block size {block_elems}"
                ),
            });
        }
        let len = (n / block_elems).checked_mul(block_bytes);
        let start = usize::try_from(info.offset).ok();
        let range = start.zip(len).and_then(|(s, l)| Some(s..s.checked_add(l)?));
        let bytes = range.clone().and_then(|r| self.map.get(r)).ok_or_else(|| {
            corrupt(format!(
                "tensor {name:?} needs {} bytes from byte {} but the file has {}",
                len.map_or("more than addressable".to_string(), |l| l.to_string()),
                info.offset,
                self.map.len()
            ))
        })?;
        Ok((info.shape.clone(), dequantize(info.ggml_type, bytes, n)))
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantises `n` elements of a supported type (callers check support first).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for block in bytes.chunks_exact(34) {
                let d = f16_at(block, 0);
                out.extend(block[2..34].iter().map(|&q| (q as i8) as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            for block in bytes.chunks_exact(18) {
                let d = f16_at(block, 0);
                let qs = &block[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0x0f) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for block in bytes.chunks_exact(20) {
                let d = f16_at(block, 0);
                let m = f16_at(block, 2);
                let qs = &block[4..20];
                out.extend(qs.iter().map(|&q| (q & 0x0f) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        GgmlType::Other(_) => {}
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A metadata value for `write_gguf`.
    #[derive(Clone)]
    pub(crate) enum Meta {
        Str(&'static str),
        U32(u32),
        F32(f32),
        Strs(Vec<&'static str>),
    }

    /// Writes a minimal GGUF v3 file with the given metadata and raw tensors
    /// (name, dims fastest-first as GGUF stores them, ggml type id, bytes).
    pub(crate) fn write_gguf(
        path: &Path,
        meta: &[(&str, Meta)],
        tensors: &[(String, Vec<u64>, u32, Vec<u8>)],
    ) {
        let mut f = Vec::new();
        f.extend(b"GGUF");
        f.extend(3u32.to_le_bytes());
        f.extend((tensors.len() as u64).to_le_bytes());
        f.extend((meta.len() as u64).to_le_bytes());
        let s = |f: &mut Vec<u8>, x: &str| {
            f.extend((x.len() as u64).to_le_bytes());
            f.extend(x.as_bytes());
        };
        for (k, v) in meta {
            s(&mut f, k);
            match v {
                Meta::Str(v) => {
                    f.extend(8u32.to_le_bytes());
                    s(&mut f, v);
                }
                Meta::U32(v) => {
                    f.extend(4u32.to_le_bytes());
                    f.extend(v.to_le_bytes());
                }
                Meta::F32(v) => {
                    f.extend(6u32.to_le_bytes());
                    f.extend(v.to_le_bytes());
                }
                Meta::Strs(items) => {
                    f.extend(9u32.to_le_bytes());
                    f.extend(8u32.to_le_bytes());
                    f.extend((items.len() as u64).to_le_bytes());
                    for item in items {
                        s(&mut f, item);
                    }
                }
            }
        }
        let mut offset = 0u64;
        for (name, dims, ty, data) in tensors {
            s(&mut f, name);
            f.extend((dims.len() as u32).to_le_bytes());
            for d in dims.iter() {
                f.extend(d.to_le_bytes());
            }
            f.extend(ty.to_le_bytes());
            f.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while f.len() % 32 != 0 {
            f.push(0);
        }
        for (_, _, _, data) in tensors {
            f.extend(data);
            while f.len() % 32 != 0 {
                f.push(0);
            }
        }
        std::fs::File::create(path).unwrap().write_all(&f).unwrap();
    }

    #[test]
    fn q4_1_blocks_dequantise_as_ggml_defines_them() {
        // d = 0.5, m = -1.0; byte j holds element j (low nibble) and j + 16 (high nibble).
        let mut block = Vec::new();
        block.extend(f16::from_f32(0.5).to_bits().to_le_bytes());
        block.extend(f16::from_f32(-1.0).to_bits().to_le_bytes());
        block.extend((0..16u8).map(|j| (15 - j) << 4 | j));
        let v = dequantize(GgmlType::Q4_1, &block, 32);
        for j in 0..16 {
            assert_eq!(v[j], j as f32 * 0.5 - 1.0);
            assert_eq!(v[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
    }

    #[test]
    fn q4_0_and_q8_0_blocks_dequantise_as_ggml_defines_them() {
        let mut block = Vec::new();
        block.extend(f16::from_f32(2.0).to_bits().to_le_bytes());
        block.extend((0..16u8).map(|j| 0x30 | (j % 16)));
        let v = dequantize(GgmlType::Q4_0, &block, 32);
        assert_eq!(v[0], -16.0);
        assert_eq!(v[15], 14.0);
        assert_eq!(v[16], (3 - 8) as f32 * 2.0);
        let mut block = Vec::new();
        block.extend(f16::from_f32(0.25).to_bits().to_le_bytes());
        block.extend((0..32i8).map(|q| (q - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &block, 32);
        assert_eq!(v[0], -4.0);
        assert_eq!(v[31], 15.0 * 0.25);
    }

    #[test]
    fn reads_metadata_and_tensors_and_names_unsupported_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let floats: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        write_gguf(
            &path,
            &[
                ("general.architecture", Meta::Str("llama")),
                ("general.alignment", Meta::U32(32)),
                ("llama.rope.freq_base", Meta::F32(1e6)),
                ("tokenizer.ggml.tokens", Meta::Strs(vec!["<s>", "a b", "\u{e9}"])),
            ],
            &[
                ("w".into(), vec![3, 2], 0, floats),
                ("k".into(), vec![256], 12, vec![0u8; 144]),
            ],
        );
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.get_str("general.architecture"), Some("llama"));
        assert_eq!(g.get_u64("general.alignment"), Some(32));
        assert_eq!(g.get_f64("llama.rope.freq_base"), Some(1e6));
        assert_eq!(
            g.get_str_array("tokenizer.ggml.tokens"),
            Some(vec!["<s>", "a b", "\u{e9}"])
        );
        assert_eq!(g.tensor_infos().len(), 2);
        let (shape, values) = g.tensor_f32("w").unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let err = g.tensor_f32("k").unwrap_err().to_string();
        assert!(
            err.contains("t.gguf") && err.contains("\"k\"") && err.contains("Q4_K"),
            "{err}"
        );
        let err = g.tensor_f32("nope").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn rejects_files_that_are_not_gguf_or_are_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        std::fs::write(&path, b"PK\x03\x04rest").unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("x.gguf") && err.contains("magic"), "{err}");
        std::fs::write(&path, b"GGUF\x03\x00\x00\x00\x05").unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }
}
