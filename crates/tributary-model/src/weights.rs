//! Host-side named tensors and their safetensors encoding.
//!
//! Checkpoints, expert packages and merges are manipulations of named `f32`
//! arrays; only the forward pass and training move them onto a burn device.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use sha2::{Digest, Sha256};

use crate::error::ModelError;

/// One tensor held in host memory, row-major `f32`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor from its shape and values; fails when they disagree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, ModelError> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(ModelError::Tensor(format!(
                "shape {shape:?} holds {n} values, got {}",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }

    /// Little-endian bytes of the values, as safetensors stores `F32`.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() * 4);
        for v in &self.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// SHA-256 of the little-endian `F32` bytes, lowercase hex.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        for chunk in self.data.chunks(4096) {
            let mut buf = Vec::with_capacity(chunk.len() * 4);
            for v in chunk {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            h.update(&buf);
        }
        hex::encode(h.finalize())
    }

    /// Euclidean norm of all values (computed in f64).
    pub fn l2_norm(&self) -> f64 {
        self.data
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt()
    }

    /// Rows `[start, start + len)` of a rank-2 tensor.
    pub fn rows(&self, start: usize, len: usize) -> Result<HostTensor, ModelError> {
        let [r, c] = self.dims2()?;
        if start + len > r {
            return Err(ModelError::Tensor(format!(
                "rows {start}..{} of a {r}-row tensor",
                start + len
            )));
        }
        HostTensor::new(
            vec![len, c],
            self.data[start * c..(start + len) * c].to_vec(),
        )
    }

    /// The two dimensions of a rank-2 tensor.
    pub fn dims2(&self) -> Result<[usize; 2], ModelError> {
        match self.shape.as_slice() {
            [a, b] => Ok([*a, *b]),
            other => Err(ModelError::Tensor(format!(
                "expected a matrix, got shape {other:?}"
            ))),
        }
    }

    /// Stacks rank-2 tensors with equal column counts along the rows.
    pub fn vstack(parts: &[&HostTensor]) -> Result<HostTensor, ModelError> {
        let mut cols = None;
        let mut rows = 0;
        let mut data = Vec::new();
        for p in parts {
            let [r, c] = p.dims2()?;
            if *cols.get_or_insert(c) != c {
                return Err(ModelError::Tensor(
                    "stacked matrices differ in width".into(),
                ));
            }
            rows += r;
            data.extend_from_slice(&p.data);
        }
        HostTensor::new(vec![rows, cols.unwrap_or(0)], data)
    }
}

/// An ordered map from tensor name to tensor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorMap(pub BTreeMap<String, HostTensor>);

impl TensorMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: HostTensor) {
        self.0.insert(name.into(), tensor);
    }

    /// The tensor called `name`, or a clear error.
    pub fn get(&self, name: &str) -> Result<&HostTensor, ModelError> {
        self.0
            .get(name)
            .ok_or_else(|| ModelError::Tensor(format!("missing tensor {name}")))
    }

    /// The tensor called `name` with exactly `shape`, or a clear error.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&HostTensor, ModelError> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(ModelError::Tensor(format!(
                "{name} has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        Ok(t)
    }

    /// Removes and returns a tensor.
    pub fn take(&mut self, name: &str) -> Result<HostTensor, ModelError> {
        self.0
            .remove(name)
            .ok_or_else(|| ModelError::Tensor(format!("missing tensor {name}")))
    }

    /// Parses safetensors bytes; `F32`, `F16` and `BF16` are read as `f32`.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, ModelError> {
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| ModelError::SafeTensors(e.to_string()))?;
        let mut map = BTreeMap::new();
        for (name, view) in st.iter() {
            let data = decode(name, &view)?;
            map.insert(
                name.to_owned(),
                HostTensor::new(view.shape().to_vec(), data)?,
            );
        }
        Ok(Self(map))
    }

    /// Reads a safetensors file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_safetensors(&bytes)
            .map_err(|e| ModelError::SafeTensors(format!("{}: {e}", path.display())))
    }

    /// Encodes every tensor as `F32` safetensors (deterministic: sorted by name).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ModelError> {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .0
            .iter()
            .map(|(n, t)| (n.clone(), t.to_le_bytes(), t.shape.clone()))
            .collect();
        let mut views = Vec::with_capacity(bytes.len());
        for (name, data, shape) in &bytes {
            let view = TensorView::new(Dtype::F32, shape.clone(), data)
                .map_err(|e| ModelError::SafeTensors(format!("{name}: {e}")))?;
            views.push((name.as_str(), view));
        }
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_owned(), "pt".to_owned());
        safetensors::serialize(views, Some(meta))
            .map_err(|e| ModelError::SafeTensors(e.to_string()))
    }

    /// Writes the map as a safetensors file (via a temporary file and a rename,
    /// so a crash never leaves a half-written file under the final name).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        write_atomic(path, &self.to_safetensors()?)
    }
}

/// Writes `bytes` to `path` through a sibling temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    replace_file(path, bytes, false)
}

/// [`write_atomic`], with the new file flushed to disk before the rename and
/// the rename flushed after it: once this returns, `path` holds `bytes` even
/// after a power loss.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    replace_file(path, bytes, true)
}

fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> Result<(), ModelError> {
    let tmp = path.with_extension("partial");
    let io = |e| ModelError::io(&tmp, e);
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    std::io::Write::write_all(&mut file, bytes).map_err(io)?;
    if durable {
        file.sync_all().map_err(io)?;
    }
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))?;
    match path.parent() {
        Some(dir) if durable => sync_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }),
        _ => Ok(()),
    }
}

/// Flushes a directory's entries (new and renamed files) to disk.
pub fn sync_dir(dir: &Path) -> Result<(), ModelError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| ModelError::io(dir, e))
}

fn decode(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>, ModelError> {
    let raw = view.data();
    let out = match view.dtype() {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        other => {
            return Err(ModelError::Tensor(format!(
                "{name}: dtype {other:?} is not supported"
            )));
        }
    };
    Ok(out)
}

/// IEEE half precision to single precision.
fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip_is_exact() {
        let mut m = TensorMap::new();
        m.insert(
            "b",
            HostTensor::new(
                vec![2, 3],
                vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE, 0.0, -0.0],
            )
            .unwrap(),
        );
        m.insert("a", HostTensor::new(vec![1], vec![42.0]).unwrap());
        let bytes = m.to_safetensors().unwrap();
        let back = TensorMap::from_safetensors(&bytes).unwrap();
        assert_eq!(back, m);
        // Deterministic encoding.
        assert_eq!(bytes, back.to_safetensors().unwrap());
    }

    #[test]
    fn half_precision_decodes() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        assert!(HostTensor::new(vec![2, 2], vec![1.0]).is_err());
        let mut m = TensorMap::new();
        m.insert("x", HostTensor::new(vec![2], vec![1.0, 2.0]).unwrap());
        assert!(m.get_shaped("x", &[3]).is_err());
        assert!(m.get("y").is_err());
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(TensorMap::from_safetensors(b"not a safetensors file").is_err());
    }
}
