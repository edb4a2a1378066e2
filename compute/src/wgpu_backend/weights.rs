//! Uploading GGUF tensors to the device in the layout the kernels read.

use candle_core::quantized::GgmlDType;
use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::model::Model;

/// A weight matrix on the device.
#[derive(Debug)]
pub(crate) struct WeightBuffer {
    pub(crate) dtype: GgmlDType,
    pub(crate) rows: u32,
    pub(crate) blocks_per_row: u32,
    /// Block data as u32 words (quantized values, or raw F32/F16 bits).
    pub(crate) data: wgpu::Buffer,
    /// One (scale, min) pair per block, for the quantized types.
    pub(crate) scales: Option<wgpu::Buffer>,
}

/// IEEE half to single precision (GGUF block scales are f16).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = man * 2^-24.
            let v = man as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

fn le_u16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

/// Splits GGML blocks into aligned quant words and (d, m) pairs.
fn repack(dtype: GgmlDType, data: &[u8]) -> (Vec<u32>, Option<Vec<f32>>) {
    match dtype {
        GgmlDType::F32 | GgmlDType::F16 => (words(data).collect(), None),
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0 => {
            // (block bytes, bytes before the quants, whether a min follows the scale)
            let (size, head, has_min) = match dtype {
                GgmlDType::Q4_0 => (18, 2, false),
                GgmlDType::Q4_1 => (20, 4, true),
                _ => (34, 2, false),
            };
            let blocks = data.len() / size;
            let mut q = Vec::with_capacity(blocks * (size - head) / 4);
            let mut s = Vec::with_capacity(blocks * 2);
            for block in data.chunks_exact(size) {
                s.push(f16_to_f32(le_u16(&block[0..2])));
                s.push(if has_min { f16_to_f32(le_u16(&block[2..4])) } else { 0.0 });
                q.extend(words(&block[head..]));
            }
            (q, Some(s))
        }
        other => unreachable!("{other:?} is rejected before upload"),
    }
}

pub(crate) fn upload_f32(device: &wgpu::Device, label: &str, values: &[f32]) -> wgpu::Buffer {
    let mut data = values.to_vec();
    // Bindings must not be empty.
    if data.is_empty() {
        data.push(0.0);
    }
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: bytemuck::cast_slice(&data),
        usage: wgpu::BufferUsages::STORAGE,
    })
}

pub(crate) fn upload_weight(device: &wgpu::Device, model: &Model, name: &str) -> Result<WeightBuffer> {
    upload_stacked(device, model, &[name])?.ok_or_else(|| unreachable_mixed(name))
}

fn unreachable_mixed(name: &str) -> Error {
    Error::BadTensor { tensor: name.to_owned(), reason: "a single tensor cannot mix types".to_owned() }
}

/// Uploads matrices with the same type and width as one, their rows one after another, so
/// one product computes all of them (q, k and v; gate and up). `None` if the types differ.
pub(crate) fn upload_stacked(device: &wgpu::Device, model: &Model, names: &[&str]) -> Result<Option<WeightBuffer>> {
    let mut dtype = None;
    let mut width = None;
    let (mut rows, mut q, mut s) = (0usize, Vec::new(), Vec::new());
    for &name in names {
        let (t, shape, data) = model.tensor_data(name)?;
        let [r, cols] = shape[..] else {
            return Err(Error::BadTensor {
                tensor: name.to_owned(),
                reason: format!("expected a matrix, found shape {shape:?}"),
            });
        };
        if cols % 32 != 0 {
            return Err(Error::BadTensor {
                tensor: name.to_owned(),
                reason: format!("{cols} columns are not a multiple of 32, which the wgpu kernels need"),
            });
        }
        if dtype.is_some_and(|d| d != t) || width.is_some_and(|w| w != cols) {
            return Ok(None);
        }
        dtype = Some(t);
        width = Some(cols);
        let (tq, ts) = repack(t, data);
        q.extend(tq);
        s.extend(ts.unwrap_or_default());
        rows += r;
    }
    let (Some(dtype), Some(cols)) = (dtype, width) else {
        return Ok(None);
    };
    let label = names.join("+");
    let data = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(&label),
        contents: bytemuck::cast_slice(&q),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let scales = (!s.is_empty()).then(|| upload_f32(device, &label, &s));
    Ok(Some(WeightBuffer { dtype, rows: rows as u32, blocks_per_row: (cols / 32) as u32, data, scales }))
}

/// A norm's weights as f32 (GGUF stores them as F32, sometimes F16).
pub(crate) fn dequantize_norm(name: &str, dtype: GgmlDType, data: &[u8]) -> Result<Vec<f32>> {
    match dtype {
        GgmlDType::F32 => Ok(words(data).map(f32::from_bits).collect()),
        GgmlDType::F16 => Ok(data.chunks_exact(2).map(|h| f16_to_f32(le_u16(h))).collect()),
        other => Err(Error::UnsupportedTensorType {
            tensor: name.to_owned(),
            dtype: format!("{other:?}"),
            backend: "wgpu",
            supported: "F32, F16 (norm weights)",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn f16_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
