//! Reads a safetensors file one tensor at a time, with positioned reads into the tensor's own
//! buffer: loading a model then costs the model plus one small read buffer.
//!
//! Why not candle's memory-mapped loader: every page of the mapping that a tensor is copied out
//! of stays resident until the whole file is unmapped, so a load briefly held the file (95 MB for
//! the default model) on top of the weights it built from it, and a reload, with the old model
//! still serving, went to ~2.6x the steady RSS (`benches/reload_memory.sh`). Reading through the
//! page cache costs the same I/O and none of the process's memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// Largest header accepted (the format's own limit is 100 MB; a model's is a few KB).
const MAX_HEADER_BYTES: u64 = 100 << 20;
/// Bytes converted at a time.
const CHUNK_BYTES: usize = 1 << 16;

struct Entry {
    shape: Vec<usize>,
    /// F32, or U8 (a 4-bit word table's blocks, see `word_table`).
    dtype: DType,
    /// Absolute offset of the first byte in the file.
    start: u64,
}

/// A safetensors file opened for reading tensor by tensor (F32 tensors, and U8 for 4-bit word
/// tables: what `intentd train` writes). The header is checked on open: every tensor lies inside the file
/// and has the size its shape says, so a truncated file is an error here, not a crash later.
pub struct TensorFile {
    file: File,
    path: PathBuf,
    tensors: HashMap<String, Entry>,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file =
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let file_len = file.metadata()?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .with_context(|| format!("{}: too short for a safetensors header", path.display()))?;
        let header_len = u64::from_le_bytes(n);
        if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
            bail!(
                "{}: header of {header_len} bytes does not fit in the file ({file_len} bytes): damaged or truncated",
                path.display()
            );
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
            .with_context(|| format!("{}: the header is not valid JSON", path.display()))?;
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        let mut tensors = HashMap::new();
        for (name, v) in header {
            if name == "__metadata__" {
                continue;
            }
            #[derive(serde::Deserialize)]
            struct Info {
                dtype: String,
                shape: Vec<usize>,
                data_offsets: (u64, u64),
            }
            let info: Info = serde_json::from_value(v)
                .with_context(|| format!("{}: tensor {name}: bad header entry", path.display()))?;
            let (dtype, width) = match info.dtype.as_str() {
                "F32" => (DType::F32, 4),
                "U8" => (DType::U8, 1),
                other => bail!(
                    "{}: tensor {name} is {other}; only F32 (and U8 4-bit blocks) are read (as `intentd train` writes them)",
                    path.display(),
                ),
            };
            let (begin, end) = info.data_offsets;
            let want = info.shape.iter().product::<usize>() as u64 * width;
            if end < begin || end - begin != want {
                bail!(
                    "{}: tensor {name}: offsets {begin}..{end} do not hold shape {:?}",
                    path.display(),
                    info.shape
                );
            }
            if end > data_len {
                bail!(
                    "{}: tensor {name} ends at byte {end} of the data, but the file holds {data_len}: truncated",
                    path.display()
                );
            }
            tensors.insert(
                name,
                Entry {
                    shape: info.shape,
                    dtype,
                    start: data_start + begin,
                },
            );
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            tensors,
        })
    }

    fn read(&self, name: &str) -> candle_core::Result<Tensor> {
        let Some(e) = self.tensors.get(name) else {
            candle_core::bail!("{}: no tensor {name}", self.path.display())
        };
        let n: usize = e.shape.iter().product();
        if e.dtype == DType::U8 {
            let mut bytes = vec![0u8; n];
            self.file
                .read_exact_at(&mut bytes, e.start)
                .map_err(|err| {
                    candle_core::Error::Msg(format!(
                        "{}: reading tensor {name}: {err}",
                        self.path.display()
                    ))
                })?;
            return Tensor::from_vec(bytes, e.shape.as_slice(), &Device::Cpu);
        }
        let mut values: Vec<f32> = Vec::with_capacity(n);
        let mut buf = vec![0u8; CHUNK_BYTES.min(n * 4)];
        let mut at = e.start;
        while values.len() < n {
            let take = ((n - values.len()) * 4).min(buf.len());
            self.file
                .read_exact_at(&mut buf[..take], at)
                .map_err(|err| {
                    candle_core::Error::Msg(format!(
                        "{}: reading tensor {name}: {err}",
                        self.path.display()
                    ))
                })?;
            values.extend(
                buf[..take]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            at += take as u64;
        }
        Tensor::from_vec(values, e.shape.as_slice(), &Device::Cpu)
    }
}

impl SimpleBackend for TensorFile {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            }
            .bt());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarBuilder;

    fn write(dir: &Path) -> PathBuf {
        let p = dir.join("w.safetensors");
        let a = Tensor::arange(0f32, 100_000f32, &Device::Cpu)
            .unwrap()
            .reshape((250, 400))
            .unwrap();
        let b = Tensor::new(&[1.5f32, -2.0, 3.25], &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &HashMap::from([
                ("layer.weight".to_string(), a),
                ("layer.bias".to_string(), b),
            ]),
            &p,
        )
        .unwrap();
        p
    }

    #[test]
    fn reads_what_candle_wrote_tensor_by_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path());
        let f = TensorFile::open(&p).unwrap();
        let vb = VarBuilder::from_backend(Box::new(f), DType::F32, Device::Cpu);
        let w = vb.pp("layer").get((250, 400), "weight").unwrap();
        assert_eq!(
            w.get(1)
                .unwrap()
                .get(2)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            402.0
        );
        let all = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(all.iter().enumerate().all(|(i, &v)| v == i as f32));
        let b = vb.pp("layer").get(3, "bias").unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap(), [1.5, -2.0, 3.25]);
        assert!(vb.pp("layer").get((3, 1), "bias").is_err(), "shape checked");
        assert!(vb.get(3, "missing").is_err());
    }

    #[test]
    fn a_truncated_or_damaged_file_is_an_error_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path());
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        let e = format!("{:#}", TensorFile::open(&p).err().unwrap());
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(&p, [255u8; 16]).unwrap();
        let e = format!("{:#}", TensorFile::open(&p).err().unwrap());
        assert!(e.contains("does not fit in the file"), "{e}");
        std::fs::write(&p, [1u8; 3]).unwrap();
        let e = format!("{:#}", TensorFile::open(&p).err().unwrap());
        assert!(e.contains("too short"), "{e}");
    }
}
