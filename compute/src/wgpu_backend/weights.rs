//! Uploading GGUF tensors to the device in the layout the kernels read.

use candle_core::quantized::GgmlDType;
use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::model::Model;

/// A weight matrix on the device.
#[derive(Debug)]
pub(crate) struct WeightBuffer {
    /// The device layout ([`device_layout`] of the file's type).
    pub(crate) dtype: GgmlDType,
    pub(crate) rows: u32,
    pub(crate) blocks_per_row: u32,
    /// Block data as u32 words (quantized values, or raw F32/F16 bits).
    pub(crate) data: wgpu::Buffer,
    /// One pair per 32-value block, for the quantized types (see [`Unpacked`]).
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

/// The layout a file's tensor type takes on the device. Every quantized layout is built
/// of 32-value blocks with a pair of f32s each, so that one set of kernels serves them all:
/// K-quants are re-laid out on upload, losslessly, into the layout of the simple type with
/// the same values (Q4_K's 4-bit values with a scale and a minimum per 32 are Q4_1's; Q5_K's
/// are Q5_1's). Q6_K has a scale per 16 values and keeps a layout of its own (`Q6K`).
pub(crate) fn device_layout(dtype: GgmlDType) -> Option<GgmlDType> {
    match dtype {
        GgmlDType::F32
        | GgmlDType::F16
        | GgmlDType::Q4_0
        | GgmlDType::Q4_1
        | GgmlDType::Q5_0
        | GgmlDType::Q5_1
        | GgmlDType::Q8_0
        | GgmlDType::Q6K => Some(dtype),
        GgmlDType::Q4K => Some(GgmlDType::Q4_1),
        GgmlDType::Q5K => Some(GgmlDType::Q5_1),
        _ => None,
    }
}

/// The values of a quantized tensor as the device layouts hold them: each value's
/// unsigned integer (the layout's offset, -8, -16 or -32, is applied by the kernels), and
/// per 32-value block the pair the kernels scale with: (d, m) with value = q * d + m, or
/// for Q6_K (d of the first 16 values, d of the last 16).
#[derive(Debug, Default)]
struct Unpacked {
    q: Vec<u8>,
    pairs: Vec<f32>,
}

/// Q4_K's and Q5_K's 6-bit scale and minimum `j` of 8 (GGML's `get_scale_min_k4`).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Splits GGML blocks into each value's integer and each 32-value block's pair, in GGML's
/// own arithmetic (the products of an f16 and a 6- or 8-bit integer are exact in f32).
fn unpack(dtype: GgmlDType, data: &[u8]) -> Unpacked {
    let mut u = Unpacked::default();
    match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
            let (size, has_min, has_high) = match dtype {
                GgmlDType::Q4_0 => (18, false, false),
                GgmlDType::Q4_1 => (20, true, false),
                GgmlDType::Q5_0 => (22, false, true),
                _ => (24, true, true),
            };
            for b in data.chunks_exact(size) {
                u.pairs.push(f16_to_f32(le_u16(&b[0..2])));
                u.pairs.push(if has_min { f16_to_f32(le_u16(&b[2..4])) } else { 0.0 });
                let mut at = if has_min { 4 } else { 2 };
                let high = if has_high {
                    at += 4;
                    u32::from_le_bytes([b[at - 4], b[at - 3], b[at - 2], b[at - 1]])
                } else {
                    0
                };
                let qs = &b[at..at + 16];
                for e in 0..32 {
                    let nibble = if e < 16 { qs[e] & 0xF } else { qs[e - 16] >> 4 };
                    u.q.push(nibble | ((((high >> e) & 1) as u8) << 4));
                }
            }
        }
        GgmlDType::Q8_0 => {
            for b in data.chunks_exact(34) {
                u.pairs.extend([f16_to_f32(le_u16(&b[0..2])), 0.0]);
                // Stored as the two's-complement byte: the Q8_0 kernels read signed bytes.
                u.q.extend_from_slice(&b[2..34]);
            }
        }
        GgmlDType::Q4K | GgmlDType::Q5K => {
            let five = dtype == GgmlDType::Q5K;
            for b in data.chunks_exact(if five { 176 } else { 144 }) {
                let (d, dmin) = (f16_to_f32(le_u16(&b[0..2])), f16_to_f32(le_u16(&b[2..4])));
                let scales = &b[4..16];
                let (qh, qs) = if five { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
                // Four 64-value chunks; each 32-byte run of qs holds one chunk, its first
                // 32 values in the low nibbles and the next 32 in the high ones.
                for chunk in 0..4 {
                    for half in 0..2 {
                        let (sc, m) = scale_min_k4(chunk * 2 + half, scales);
                        u.pairs.push(d * f32::from(sc));
                        u.pairs.push(-(dmin * f32::from(m)));
                        for l in 0..32 {
                            let byte = qs[chunk * 32 + l];
                            let nibble = if half == 0 { byte & 0xF } else { byte >> 4 };
                            let bit = if five { (qh[l] >> (chunk * 2 + half)) & 1 } else { 0 };
                            u.q.push(nibble | (bit << 4));
                        }
                    }
                }
            }
        }
        GgmlDType::Q6K => {
            for b in data.chunks_exact(210) {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_to_f32(le_u16(&b[208..210]));
                let mut q = [0u8; 256];
                // Two 128-value halves; in each, value l + 32k takes its low bits from ql
                // and bits 2k, 2k+1 of qh[l] (GGML's dequantize_row_q6_K).
                for half in 0..2 {
                    let (ql, qh) = (&ql[half * 64..], &qh[half * 32..]);
                    for l in 0..32 {
                        let at = half * 128 + l;
                        q[at] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                        q[at + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                        q[at + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        q[at + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
                }
                u.q.extend_from_slice(&q);
                for pair in sc.chunks_exact(2) {
                    u.pairs.extend(pair.iter().map(|&s| d * f32::from(s as i8)));
                }
            }
        }
        other => unreachable!("{other:?} has no device layout"),
    }
    u
}

/// Packs unpacked values into `layout`'s words: per 32-value block, four words of nibbles
/// (byte j holds value j low and value j + 16 high), then for 5-bit layouts a word of fifth
/// bits (bit e for value e) and for Q6K two words of 2-bit high parts (value e at bits
/// 2 (e % 16) of word e / 16). Q8_0 keeps its bytes.
fn pack(layout: GgmlDType, u: &Unpacked) -> Vec<u32> {
    let mut words = Vec::new();
    for q in u.q.chunks_exact(32) {
        if layout == GgmlDType::Q8_0 {
            words.extend(self::words(q));
            continue;
        }
        let nibbles: Vec<u8> = (0..16).map(|j| (q[j] & 0xF) | ((q[j + 16] & 0xF) << 4)).collect();
        words.extend(self::words(&nibbles));
        match layout {
            GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
                words.push((0..32).fold(0u32, |w, e| w | (u32::from(q[e] >> 4) << e)));
            }
            GgmlDType::Q6K => {
                for half in q.chunks_exact(16) {
                    words.push(half.iter().enumerate().fold(0u32, |w, (e, v)| w | (u32::from(v >> 4) << (2 * e))));
                }
            }
            _ => {}
        }
    }
    words
}

/// A tensor's words and pairs in its device layout.
fn repack(dtype: GgmlDType, data: &[u8]) -> (Vec<u32>, Option<Vec<f32>>) {
    match dtype {
        GgmlDType::F32 | GgmlDType::F16 => (words(data).collect(), None),
        _ => {
            let layout = device_layout(dtype).expect("checked before upload");
            let u = unpack(dtype, data);
            (pack(layout, &u), Some(u.pairs))
        }
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

/// Uploads a matrix as consecutive blocks of whole rows, each within `max_binding` bytes
/// (a buffer binding's limit: lavapipe's is 128 MiB, under the 160 MiB that Gemma 3's
/// 262k-row embedding takes on the device), with the first row of each.
pub(crate) fn upload_rows(
    device: &wgpu::Device,
    model: &Model,
    name: &str,
    max_binding: usize,
) -> Result<Vec<(u32, WeightBuffer)>> {
    let (t, shape, data) = model.tensor_data(name)?;
    let (rows, cols) = matrix_shape(name, &shape)?;
    let layout = device_layout(t).expect("checked before upload");
    let row_bytes = data.len() / rows.max(1);
    let (q1, s1) = repack(t, &data[..row_bytes]);
    // The larger of the row's two buffers bounds how many rows fit in one binding.
    let device_row = (q1.len() * 4).max(s1.map_or(0, |s| s.len() * 4)).max(1);
    let per_chunk = (max_binding / device_row).max(1);
    let mut out = Vec::new();
    for first in (0..rows).step_by(per_chunk) {
        let n = per_chunk.min(rows - first);
        let (q, s) = repack(t, &data[first * row_bytes..(first + n) * row_bytes]);
        let label = format!("{name}[{first}..]");
        out.push((first as u32, weight_buffer(device, &label, layout, (n, cols), &q, s.as_deref())));
    }
    Ok(out)
}

/// `[rows, columns]` of a matrix the kernels can read (columns in whole 32-value blocks).
fn matrix_shape(name: &str, shape: &[usize]) -> Result<(usize, usize)> {
    let bad = |reason: String| Error::BadTensor { tensor: name.to_owned(), reason };
    let [rows, cols] = shape[..] else {
        return Err(bad(format!("expected a matrix, found shape {shape:?}")));
    };
    if !cols.is_multiple_of(32) {
        return Err(bad(format!("{cols} columns are not a multiple of 32, which the wgpu kernels need")));
    }
    Ok((rows, cols))
}

/// Uploads a matrix's words (and pairs, for quantized layouts) in a device layout.
fn weight_buffer(
    device: &wgpu::Device,
    label: &str,
    dtype: GgmlDType,
    (rows, cols): (usize, usize),
    words: &[u32],
    pairs: Option<&[f32]>,
) -> WeightBuffer {
    let data = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: bytemuck::cast_slice(words),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let scales = pairs.map(|s| upload_f32(device, label, s));
    WeightBuffer { dtype, rows: rows as u32, blocks_per_row: (cols / 32) as u32, data, scales }
}

fn unreachable_mixed(name: &str) -> Error {
    Error::BadTensor { tensor: name.to_owned(), reason: "a single tensor cannot mix types".to_owned() }
}

/// Uploads matrices with the same type and width as one, their rows one after another, so
/// one product computes all of them (q, k and v; gate and up). `None` if the types differ.
pub(crate) fn upload_stacked(device: &wgpu::Device, model: &Model, names: &[&str]) -> Result<Option<WeightBuffer>> {
    // Whether they stack is decided from the header, before any data is read: in Q4_K_M
    // files q/k and v often differ in type, and each would otherwise be read twice.
    let mut layouts = Vec::with_capacity(names.len());
    for &name in names {
        let (t, shape) = model
            .tensor_layout(name)
            .ok_or_else(|| Error::BadTensor { tensor: name.to_owned(), reason: "absent from the file".to_owned() })?;
        let (_, cols) = matrix_shape(name, &shape)?;
        layouts.push((device_layout(t).expect("checked before upload"), cols));
    }
    let Some(&(dtype, cols)) = layouts.first() else { return Ok(None) };
    if layouts.iter().any(|&l| l != (dtype, cols)) {
        return Ok(None);
    }
    let (mut rows, mut q, mut s) = (0usize, Vec::new(), Vec::new());
    for &name in names {
        let (t, shape, data) = model.tensor_data(name)?;
        let (tq, ts) = repack(t, &data);
        q.extend(tq);
        s.extend(ts.unwrap_or_default());
        rows += shape[0];
    }
    let pairs = (!s.is_empty()).then_some(s.as_slice());
    Ok(Some(weight_buffer(device, &names.join("+"), dtype, (rows, cols), &q, pairs)))
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
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::{device_layout, f16_to_f32, pack, unpack};

    /// The values the kernels compute with, from the unpacked integers and pairs (each
    /// layout's offset applied as the WGSL does).
    fn values(dtype: GgmlDType, q: &[u8], pairs: &[f32]) -> Vec<f32> {
        q.iter()
            .enumerate()
            .map(|(i, &q)| {
                let (block, within) = (i / 32, i % 32);
                let (d, m) = (pairs[block * 2], pairs[block * 2 + 1]);
                match dtype {
                    GgmlDType::Q4_0 => f32::from(q as i8 - 8) * d,
                    GgmlDType::Q5_0 => f32::from(q as i8 - 16) * d,
                    GgmlDType::Q8_0 => f32::from(q as i8) * d,
                    GgmlDType::Q6K => f32::from(q as i8 - 32) * if within < 16 { d } else { m },
                    _ => f32::from(q) * d + m,
                }
            })
            .collect()
    }

    #[test]
    fn every_layout_holds_exactly_the_values_candle_dequantizes() {
        let (rows, cols) = (3, 512);
        let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 / 250.0 - 2.0).powi(3)).collect();
        let x = Tensor::from_vec(x, (rows, cols), &Device::Cpu).unwrap();
        // Every quantized type a model may hold (the float ones are uploaded as they are).
        let quantized = crate::model::LOADABLE_TYPES.iter().filter(|t| !matches!(t, GgmlDType::F32 | GgmlDType::F16));
        for &dtype in quantized {
            let qt = QTensor::quantize(&x, dtype).unwrap();
            let want: Vec<f32> = qt.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let u = unpack(dtype, &qt.data().unwrap());
            let layout = device_layout(dtype).unwrap();
            assert_eq!(values(layout, &u.q, &u.pairs), want, "{dtype:?}");
            // The packed words hold every bit of every value: 4 words of nibbles per block,
            // plus a word of fifth bits (Q5) or two of sixth and seventh (Q6K).
            let per_block = match layout {
                GgmlDType::Q8_0 => 8,
                GgmlDType::Q5_0 | GgmlDType::Q5_1 => 5,
                GgmlDType::Q6K => 6,
                _ => 4,
            };
            assert_eq!(pack(layout, &u).len(), rows * cols / 32 * per_block, "{dtype:?}");
        }
    }

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
