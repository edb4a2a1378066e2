//! Matrix products with Q4_1, Q5_0, Q5_1 and Q8_0 weights, in place of candle's `QMatMul` for
//! those types: candle 0.11 has SIMD dot products for Q4_0, Q8_0 and the K-quants, but
//! computes Q4_1 and the Q5 types one product at a time in scalar code (`vec_dot_unopt`),
//! which took 73% of SmolLM2 Q4_1's run time on the CPU. Q8_0 has a SIMD dot product in
//! candle, but one activation row at a time: the kernel here reads each weight row once for
//! the rows of a whole batch, which matters for the 49,152-row output projection of SmolLM2.
//!
//! The arithmetic is GGML's, so that logits follow llama.cpp's. Each row of activations is
//! quantized to blocks of 32 signed bytes (Q8_1): a scale `d_a = max|x| / 127`, the values
//! `q_a = round(x / d_a)` and, for the offset term, the block's sum `s_a = d_a · Σ q_a`. A
//! weight block (scale `d_w`, offset `m_w`, values `q_w` of 4 or 5 bits) against one
//! activation block then contributes `d_w · d_a · Σ q_w · q_a + m_w · s_a`. Q5_0 has no offset:
//! its values are centred (`q_w − 16`), which is the offset `m_w = −16 · d_w` against the exact
//! sum (llama.cpp takes Q8_0 activations there, which have no rounded sum); Q4_1 and Q5_1 use
//! Q8_1's sum rounded to f16, as llama.cpp does. The activations are quantized bit for bit as
//! candle and the device kernels quantize them (see `QuantMatrix::quantize_into`). Q8_0
//! weights (signed bytes, a scale per block) take Q8_0 activations, quantized and summed
//! exactly as candle's `vec_dot_q8_0_q8_0` does, so those products equal candle's bit for bit.
//!
//! Two kernels compute it, chosen at run time for the CPU at hand: AVX2 with FMA (through
//! `pulp`'s safe wrappers of the intrinsics, since this crate forbids `unsafe`), and a
//! portable scalar one. Both are tested against a plain f32 product of the dequantized
//! blocks. Output rows (the weight matrix's rows) are split across rayon's threads; each
//! weight row is read once per call and multiplied with up to four activation rows at a time
//! while it is in registers (and with the rest of the batch's rows from L1), so a batch of
//! decoding sequences reads each weight once per step, as one sequence does. The buffers a
//! product needs ([`Scratch`]) are kept by the caller between calls.

use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

/// Values per block, in every type here.
const BLOCK: usize = 32;
/// Blocks whose scales the AVX2 kernel converts at once: the scale rows are padded to it.
const GROUP: usize = 8;
/// Activation rows multiplied with one weight row while its unpacked blocks are in registers.
const TILE: usize = 4;

/// A weight matrix in one of the types here, its blocks split by field so that the kernels
/// read each field contiguously.
pub(super) struct QuantMatrix {
    dtype: GgmlDType,
    /// Output features (the matrix's rows).
    rows: usize,
    /// Input features.
    cols: usize,
    /// Blocks per row.
    blocks: usize,
    /// Blocks per row rounded up to [`GROUP`]: the stride of `d` and `m`.
    padded: usize,
    /// `rows × blocks`, 4- and 5-bit types: value `j` in the low nibble of byte `j`, value
    /// `16 + j` in its high one.
    qs: Vec<[u8; 16]>,
    /// `rows × blocks`, Q5 types only: bit `j` is the fifth bit of value `j`.
    qh: Vec<u32>,
    /// `rows × blocks`, Q8_0 only: the signed values.
    q8: Vec<[i8; BLOCK]>,
    /// `rows × padded`, f16 bits, zero in the padding: the scales.
    d: Vec<u16>,
    /// `rows × padded`, f16 bits, zero in the padding: the offsets (`−16 · d` for Q5_0); empty
    /// for Q8_0, which has none.
    m: Vec<u16>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantMatrix")
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

/// How a weight type wants its activations quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    /// Q8_1 with the block sums rounded to f16 (Q4_1, Q5_1).
    Q8_1,
    /// Q8_1 with exact block sums (Q5_0's centred values, see the module docs).
    Q8_1ExactSums,
    /// Q8_0 as candle quantizes it (scale reciprocal `1 / d`, no sums).
    Q8_0,
}

/// Activation rows quantized to 8-bit blocks, the fields split as the weights' are.
#[derive(Debug, Default)]
struct Activations {
    /// `rows × blocks`.
    q: Vec<[i8; BLOCK]>,
    /// `rows × padded`, zero in the padding: the scales, already rounded to f16.
    d: Vec<f32>,
    /// `rows × padded`, zero in the padding: the block sums `d_a · Σ q_a` (zero for Q8_0).
    s: Vec<f32>,
}

/// The buffers of a product besides its input and output, kept between calls so that a
/// forward pass allocates nothing once they have grown to its largest product.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    acts: Activations,
    /// The output, `rows × m`, before it is transposed to `m × rows` (for `m > 1`).
    transposed: Vec<f32>,
}

/// Which kernel computes the products.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kernel {
    /// Portable, one value at a time.
    Scalar,
    /// AVX2 and FMA, found on this CPU at run time.
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub(super) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            return Kernel::Avx2(simd);
        }
        Kernel::Scalar
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) => "AVX2+FMA",
        }
    }
}

impl QuantMatrix {
    /// Whether the engine computes products with `dtype` here. Q5_0 and Q5_1 are implemented
    /// and unit-tested, but on a tiny gemma3 model in Q5_1 the device's greedy path parts from
    /// this kernel's where it followed candle's (not understood yet), so the engine keeps
    /// candle's products for the Q5 types until it is.
    pub(super) fn supports(dtype: GgmlDType) -> bool {
        matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q8_0)
    }

    /// Reads a `[rows, cols]` matrix from its GGML blocks: per block, an f16 scale, an f16
    /// offset (Q4_1, Q5_1), 32 high bits (Q5 types), then 16 bytes of low nibbles; or for
    /// Q8_0 an f16 scale and 32 signed bytes.
    pub(super) fn from_ggml(dtype: GgmlDType, rows: usize, cols: usize, data: &[u8]) -> Result<Self, String> {
        let (has_m, has_qh, q8) = match dtype {
            GgmlDType::Q4_1 => (true, false, false),
            GgmlDType::Q5_0 => (false, true, false),
            GgmlDType::Q5_1 => (true, true, false),
            GgmlDType::Q8_0 => (false, false, true),
            other => return Err(format!("{other:?} is not one of Q4_1, Q5_0, Q5_1, Q8_0")),
        };
        if !cols.is_multiple_of(BLOCK) {
            return Err(format!("{cols} columns are not a whole number of {BLOCK}-value blocks"));
        }
        let block_bytes = if q8 { 2 + BLOCK } else { 2 + 2 * has_m as usize + 4 * has_qh as usize + 16 };
        debug_assert_eq!(block_bytes, dtype.type_size());
        let blocks = cols / BLOCK;
        if data.len() != rows * blocks * block_bytes {
            return Err(format!(
                "{} bytes for {rows}×{cols} {dtype:?}, {} expected",
                data.len(),
                rows * blocks * block_bytes
            ));
        }
        let padded = blocks.next_multiple_of(GROUP);
        let mut w = QuantMatrix {
            dtype,
            rows,
            cols,
            blocks,
            padded,
            qs: Vec::with_capacity(if q8 { 0 } else { rows * blocks }),
            qh: Vec::with_capacity(if has_qh { rows * blocks } else { 0 }),
            q8: Vec::with_capacity(if q8 { rows * blocks } else { 0 }),
            d: vec![0; rows * padded],
            m: if q8 { Vec::new() } else { vec![0; rows * padded] },
        };
        let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        for (i, b) in data.chunks_exact(block_bytes).enumerate() {
            let at = i / blocks * padded + i % blocks;
            let d = u16_at(b, 0);
            w.d[at] = d;
            if q8 {
                w.q8.push(std::array::from_fn(|j| b[2 + j] as i8));
                continue;
            }
            w.m[at] = if has_m { u16_at(b, 2) } else { f16::from_f32(-16.0 * f16::from_bits(d).to_f32()).to_bits() };
            let mut next = 2 + 2 * has_m as usize;
            if has_qh {
                w.qh.push(u32::from_le_bytes([b[next], b[next + 1], b[next + 2], b[next + 3]]));
                next += 4;
            }
            w.qs.push(b[next..next + 16].try_into().expect("16 bytes"));
        }
        Ok(w)
    }

    /// The rows of `parts` one after another, as one matrix: q, k and v (or gate and up) as
    /// one product, which reads the activations and splits the work across threads once
    /// instead of three times. Each output row is computed as in its own matrix, so the
    /// products do not change. `None` unless the parts share their type and width.
    pub(super) fn stack(parts: &[&QuantMatrix]) -> Option<QuantMatrix> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.dtype != first.dtype || p.cols != first.cols) {
            return None;
        }
        let gather = |field: fn(&QuantMatrix) -> &[u16]| parts.iter().flat_map(|p| field(p)).copied().collect();
        Some(QuantMatrix {
            rows: parts.iter().map(|p| p.rows).sum(),
            qs: parts.iter().flat_map(|p| &p.qs).copied().collect(),
            qh: parts.iter().flat_map(|p| &p.qh).copied().collect(),
            q8: parts.iter().flat_map(|p| &p.q8).copied().collect(),
            d: gather(|p| &p.d),
            m: gather(|p| &p.m),
            ..**first
        })
    }

    /// Output features.
    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    fn scheme(&self) -> Scheme {
        match self.dtype {
            GgmlDType::Q8_0 => Scheme::Q8_0,
            GgmlDType::Q5_0 => Scheme::Q8_1ExactSums,
            _ => Scheme::Q8_1,
        }
    }

    /// `x` (`m × cols`, row-major) times the transposed matrix: `m × rows`, row-major.
    #[cfg(test)]
    fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * self.rows];
        self.matmul_into(kernel, x, m, &mut out, &mut Scratch::default());
        out
    }

    /// `x` (`m × cols`, row-major) times the transposed matrix into `out` (`m × rows`,
    /// row-major), with `scratch`'s buffers.
    pub(super) fn matmul_into(&self, kernel: Kernel, x: &[f32], m: usize, out: &mut [f32], scratch: &mut Scratch) {
        assert_eq!(x.len(), m * self.cols, "{m} rows of {} activations", self.cols);
        assert_eq!(out.len(), m * self.rows, "{m} rows of {} outputs", self.rows);
        let Scratch { acts, transposed } = scratch;
        self.quantize_into(x, m, acts);
        let acts = &*acts;
        // Transposed (`rows × m`) so that each thread owns a contiguous run of output rows.
        let target = if m == 1 {
            &mut *out
        } else {
            transposed.clear();
            transposed.resize(self.rows * m, 0.0);
            transposed.as_mut_slice()
        };
        let work = self.rows * self.blocks * m;
        let threads = rayon::current_num_threads();
        if work < 16 * 1024 || threads == 1 {
            self.rows_with(kernel, acts, m, 0, target);
        } else {
            // Several chunks per thread, so that one slowed by other load does not hold up the
            // rest; each still large enough to amortise rayon's scheduling.
            let chunk = self.rows.div_ceil(4 * threads).max(8);
            target
                .par_chunks_mut(chunk * m)
                .enumerate()
                .for_each(|(c, out)| self.rows_with(kernel, acts, m, c * chunk, out));
        }
        if m > 1 {
            // In blocks of weight rows whose `m` outputs stay in L1 while each is written to
            // its row: element by element, the writes to `m` rows 196 kB apart (the output
            // projection's) missed the cache every time, 8% of a batch's step.
            const ROWS: usize = 256;
            for (b, block) in transposed.chunks(ROWS * m).enumerate() {
                for (r, out) in out.chunks_exact_mut(self.rows).enumerate() {
                    let out = &mut out[b * ROWS..][..block.len() / m];
                    for (o, col) in out.iter_mut().zip(block.chunks_exact(m)) {
                        *o = col[r];
                    }
                }
            }
        }
    }

    /// Weight rows `first..` into `out` (`m` values per weight row).
    fn rows_with(&self, kernel: Kernel, acts: &Activations, m: usize, first: usize, out: &mut [f32]) {
        match kernel {
            Kernel::Scalar => {
                for (i, out) in out.chunks_exact_mut(m).enumerate() {
                    for (r, o) in out.iter_mut().enumerate() {
                        *o = self.dot_scalar(first + i, acts, r);
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(simd) => simd.vectorize(|| avx2::rows(simd, self, acts, m, first, out)),
        }
    }

    /// Quantizes activation rows into `a` (its buffers reused). For Q8_1 as candle's
    /// `BlockQ8_1::from_float` and the device's `q8.wgsl` do, but for the reciprocal: halves
    /// rounded away from zero (llama.cpp's AVX2 quantizer rounds them to even) and
    /// `s = f16(f16(Σq) · f16(d))`, which keeps the two engines' logits within float summation
    /// order of each other (the wgpu-vs-candle tests hold them to 1e-4, the device sampler's
    /// test to its random draws). The scale's reciprocal is `127 / max|x|`: with candle's
    /// `1 / (max|x| / 127)` SmolLM2's logits left llama.cpp's by a whole top logit, which is
    /// not understood yet. For Q8_0 exactly as candle's `BlockQ8_0::from_float` does, the
    /// reciprocal included, so that Q8_0 products stay candle's.
    fn quantize_into(&self, x: &[f32], m: usize, a: &mut Activations) {
        let scheme = self.scheme();
        a.q.clear();
        a.q.reserve(m * self.blocks);
        for v in [&mut a.d, &mut a.s] {
            v.clear();
            v.resize(m * self.padded, 0.0);
        }
        for (r, row) in x.chunks_exact(self.cols).enumerate() {
            for (b, xs) in row.chunks_exact(BLOCK).enumerate() {
                let amax = xs.iter().fold(0f32, |a, x| a.max(x.abs()));
                let d = amax / 127.0;
                let at = r * self.padded + b;
                let mut q = [0i8; BLOCK];
                if scheme == Scheme::Q8_0 {
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    for (q, &x) in q.iter_mut().zip(xs) {
                        // Saturating, as candle's cast.
                        *q = (x * id).round() as i8;
                    }
                    a.d[at] = f16::from_f32(d).to_f32();
                    a.q.push(q);
                    continue;
                }
                let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                let mut sum = 0i32;
                for (q, &x) in q.iter_mut().zip(xs) {
                    // |x · id| ≤ 127 up to an ulp: the cast saturates, as candle's does.
                    *q = (x * id).round().clamp(-127.0, 127.0) as i8;
                    sum += *q as i32;
                }
                let d_rounded = f16::from_f32(d).to_f32();
                a.d[at] = d_rounded;
                a.s[at] = if scheme == Scheme::Q8_1ExactSums {
                    d_rounded * sum as f32
                } else {
                    f16::from_f32(f16::from_f32(sum as f32).to_f32() * d_rounded).to_f32()
                };
                a.q.push(q);
            }
        }
    }

    /// Block `b` of weight row `n`: its 32 values (0..16 or 0..32 unsigned; Q8_0's signed).
    fn values(&self, n: usize, b: usize) -> [i32; BLOCK] {
        let i = n * self.blocks + b;
        if let Some(q) = self.q8.get(i) {
            return q.map(i32::from);
        }
        let qs = &self.qs[i];
        let qh = self.qh.get(i).copied().unwrap_or(0);
        std::array::from_fn(|j| {
            let low = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
            (low | (((qh >> j) & 1) as u8) << 4) as i32
        })
    }

    /// Block `b`'s offset in row `n` (none for Q8_0).
    fn offset(&self, n: usize, b: usize) -> f32 {
        self.m.get(n * self.padded + b).map_or(0.0, |&m| f16::from_bits(m).to_f32())
    }

    fn dot_scalar(&self, n: usize, a: &Activations, r: usize) -> f32 {
        let mut sum = 0f32;
        for b in 0..self.blocks {
            let w = self.values(n, b);
            let q = &a.q[r * self.blocks + b];
            let dot: i32 = w.iter().zip(q).map(|(&w, &q)| w * q as i32).sum();
            let (wi, ai) = (n * self.padded + b, r * self.padded + b);
            let d = f16::from_bits(self.d[wi]).to_f32();
            sum += d * a.d[ai] * dot as f32 + self.offset(n, b) * a.s[ai];
        }
        sum
    }

    /// The matrix in f32, `rows × cols`: for tests and the reference products.
    #[cfg(test)]
    fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for n in 0..self.rows {
            for b in 0..self.blocks {
                let d = f16::from_bits(self.d[n * self.padded + b]).to_f32();
                let m = self.offset(n, b);
                out.extend(self.values(n, b).iter().map(|&q| q as f32 * d + m));
            }
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The AVX2+FMA kernel. Every function here is `#[inline(always)]` so that it is compiled
    //! into `V3::vectorize`'s body, which has the target features enabled.

    use std::arch::x86_64::{__m128i, __m256, __m256i};

    use pulp::cast;
    use pulp::x86::V3;

    use super::{Activations, GROUP, QuantMatrix, TILE};

    /// Weight rows `first..` against every activation row, into `out` (`m` per weight row).
    #[inline(always)]
    pub(super) fn rows(simd: V3, w: &QuantMatrix, a: &Activations, m: usize, first: usize, out: &mut [f32]) {
        if w.q8.is_empty() {
            rows_of::<false>(simd, w, a, m, first, out);
        } else {
            rows_of::<true>(simd, w, a, m, first, out);
        }
    }

    /// [`rows`] for 4- and 5-bit weights, or for Q8_0 (`Q8`).
    #[inline(always)]
    fn rows_of<const Q8: bool>(simd: V3, w: &QuantMatrix, a: &Activations, m: usize, first: usize, out: &mut [f32]) {
        for (i, out) in out.chunks_exact_mut(m).enumerate() {
            for (t, out) in out.chunks_mut(TILE).enumerate() {
                let r = t * TILE;
                match out.len() {
                    1 => out.copy_from_slice(&tile_of::<1, Q8>(simd, w, first + i, a, r)),
                    2 => out.copy_from_slice(&tile_of::<2, Q8>(simd, w, first + i, a, r)),
                    3 => out.copy_from_slice(&tile_of::<3, Q8>(simd, w, first + i, a, r)),
                    _ => out.copy_from_slice(&tile_of::<TILE, Q8>(simd, w, first + i, a, r)),
                }
            }
        }
    }

    #[inline(always)]
    fn tile_of<const R: usize, const Q8: bool>(
        simd: V3,
        w: &QuantMatrix,
        n: usize,
        a: &Activations,
        r: usize,
    ) -> [f32; R] {
        if Q8 { tile_q8::<R>(simd, w, n, a, r) } else { tile::<R>(simd, w, n, a, r) }
    }

    /// Weight row `n` against activation rows `r..r + R`. Per group of 8 blocks the scales
    /// are converted and multiplied together at once, and the offset terms accumulated; per
    /// block the values are unpacked once and multiplied with each activation row.
    #[inline(always)]
    fn tile<const R: usize>(simd: V3, w: &QuantMatrix, n: usize, a: &Activations, r: usize) -> [f32; R] {
        let zero = simd.avx._mm256_setzero_ps();
        let ones = simd.avx._mm256_set1_epi16(1);
        let mut acc = [zero; R];
        let mut acc_m = [zero; R];
        let scales = n * w.padded;
        for g in (0..w.blocks).step_by(GROUP) {
            let dw = f16x8(simd, scale_group(&w.d, scales + g));
            let mw = f16x8(simd, scale_group(&w.m, scales + g));
            let mut dd = [zero; R];
            for i in 0..R {
                let at = (r + i) * w.padded + g;
                let da: __m256 = cast(*scale_group(&a.d, at));
                let sa: __m256 = cast(*scale_group(&a.s, at));
                dd[i] = simd.avx._mm256_mul_ps(dw, da);
                acc_m[i] = simd.fma._mm256_fmadd_ps(mw, sa, acc_m[i]);
            }
            for j in 0..GROUP.min(w.blocks - g) {
                let b = g + j;
                let i_w = n * w.blocks + b;
                let wq = unpack(simd, w.qs[i_w], w.qh.get(i_w).copied());
                let lane = simd.avx._mm256_set1_epi32(j as i32);
                for i in 0..R {
                    let aq: __m256i = cast(a.q[(r + i) * w.blocks + b]);
                    // u8 × i8 pairs summed to i16 (at most 2 · 31 · 127: no saturation), then
                    // pairs of those to i32.
                    let dot = simd.avx2._mm256_madd_epi16(simd.avx2._mm256_maddubs_epi16(wq, aq), ones);
                    let scale = simd.avx2._mm256_permutevar8x32_ps(dd[i], lane);
                    acc[i] = simd.fma._mm256_fmadd_ps(simd.avx._mm256_cvtepi32_ps(dot), scale, acc[i]);
                }
            }
        }
        std::array::from_fn(|i| {
            let lanes: [f32; 8] = cast(simd.avx._mm256_add_ps(acc[i], acc_m[i]));
            lanes.iter().sum()
        })
    }

    /// Q8_0 weight row `n` against activation rows `r..r + R`, in candle's arithmetic
    /// (`vec_dot_q8_0_q8_0`): per block the scale `d_w · d_a`, the signed bytes multiplied in
    /// pairs (the weight's sign moved onto the activation, as `maddubs` takes one operand
    /// unsigned), summed into 8 lanes by FMA in block order and the lanes added in the order
    /// of candle's `hsum_float_8`. So the products are candle's bit for bit.
    #[inline(always)]
    fn tile_q8<const R: usize>(simd: V3, w: &QuantMatrix, n: usize, a: &Activations, r: usize) -> [f32; R] {
        let zero = simd.avx._mm256_setzero_ps();
        let ones = simd.avx._mm256_set1_epi16(1);
        let mut acc = [zero; R];
        let scales = n * w.padded;
        for g in (0..w.blocks).step_by(GROUP) {
            let dw = f16x8(simd, scale_group(&w.d, scales + g));
            let mut dd = [zero; R];
            for (i, dd) in dd.iter_mut().enumerate() {
                let da: __m256 = cast(*scale_group(&a.d, (r + i) * w.padded + g));
                *dd = simd.avx._mm256_mul_ps(dw, da);
            }
            for j in 0..GROUP.min(w.blocks - g) {
                let b = g + j;
                let wq: __m256i = cast(w.q8[n * w.blocks + b]);
                let magnitude = simd.avx2._mm256_sign_epi8(wq, wq);
                let lane = simd.avx._mm256_set1_epi32(j as i32);
                for i in 0..R {
                    let aq: __m256i = cast(a.q[(r + i) * w.blocks + b]);
                    // |w| · (a with w's sign): pairs of at most 2 · 128 · 127, no saturation.
                    let signed = simd.avx2._mm256_sign_epi8(aq, wq);
                    let dot = simd.avx2._mm256_madd_epi16(simd.avx2._mm256_maddubs_epi16(magnitude, signed), ones);
                    let scale = simd.avx2._mm256_permutevar8x32_ps(dd[i], lane);
                    acc[i] = simd.fma._mm256_fmadd_ps(scale, simd.avx._mm256_cvtepi32_ps(dot), acc[i]);
                }
            }
        }
        std::array::from_fn(|i| {
            let l: [f32; 8] = cast(acc[i]);
            ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
        })
    }

    /// The 8 entries of a padded scale row from `at`.
    #[inline(always)]
    fn scale_group<T>(v: &[T], at: usize) -> &[T; GROUP] {
        v[at..at + GROUP].try_into().expect("scale rows are padded to whole groups")
    }

    /// A block's 32 values as unsigned bytes, in order: its low nibbles `qs` and, for the Q5
    /// types, its fifth bits `qh`.
    #[inline(always)]
    fn unpack(simd: V3, qs: [u8; 16], qh: Option<u32>) -> __m256i {
        let low: __m128i = cast(qs);
        let high = simd.sse2._mm_srli_epi16::<4>(low);
        let nibbles = simd.avx2._mm256_and_si256(simd.avx._mm256_set_m128i(high, low), simd.avx._mm256_set1_epi8(0x0F));
        match qh {
            None => nibbles,
            Some(qh) => {
                // Byte j takes byte j / 8 of qh, keeps bit j % 8 of it and becomes 16 if set.
                let spread = simd.avx2._mm256_shuffle_epi8(
                    simd.avx._mm256_set1_epi32(qh as i32),
                    cast([[0u8; 8], [1; 8], [2; 8], [3; 8]]),
                );
                let bit: __m256i = cast([[1u8, 2, 4, 8, 16, 32, 64, 128]; 4]);
                let set = simd.avx2._mm256_cmpeq_epi8(simd.avx2._mm256_and_si256(spread, bit), bit);
                simd.avx2._mm256_or_si256(nibbles, simd.avx2._mm256_and_si256(set, simd.avx._mm256_set1_epi8(0x10)))
            }
        }
    }

    /// 8 f16 bit patterns to f32, exactly for finite values (normal and subnormal): the
    /// exponent and mantissa shifted into f32's places read as a number 2^112 too small.
    /// Infinities and NaNs, which no scale is, become large finite values.
    #[inline(always)]
    fn f16x8(simd: V3, h: &[u16; GROUP]) -> __m256 {
        let h = simd.avx2._mm256_cvtepu16_epi32(cast(*h));
        let sign = simd.avx2._mm256_slli_epi32::<16>(simd.avx2._mm256_and_si256(h, simd.avx._mm256_set1_epi32(0x8000)));
        let magnitude =
            simd.avx2._mm256_slli_epi32::<13>(simd.avx2._mm256_and_si256(h, simd.avx._mm256_set1_epi32(0x7FFF)));
        let value = simd.avx._mm256_mul_ps(
            simd.avx._mm256_castsi256_ps(magnitude),
            simd.avx._mm256_set1_ps(f32::from_bits(0x7780_0000)),
        );
        simd.avx._mm256_or_ps(value, simd.avx._mm256_castsi256_ps(sign))
    }

    #[cfg(test)]
    pub(super) fn f16x8_for_test(simd: V3, h: &[u16; GROUP]) -> [f32; GROUP] {
        simd.vectorize(|| cast(f16x8(simd, h)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    use super::*;

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Uniform in [-1, 1).
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// A random `rows × cols` matrix in `dtype`, quantized by candle from f32 values whose
    /// rows have different ranges and offsets; and its GGML bytes.
    fn random_matrix(dtype: GgmlDType, rows: usize, cols: usize, rng: &mut Rng) -> (QuantMatrix, QTensor) {
        let mut v = Vec::with_capacity(rows * cols);
        for _ in 0..rows {
            let (scale, offset) = (0.01 + rng.unit().abs(), 0.3 * rng.unit());
            v.extend((0..cols).map(|_| offset + scale * rng.unit()));
        }
        let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let w = QuantMatrix::from_ggml(dtype, rows, cols, &q.data().unwrap()).unwrap();
        (w, q)
    }

    fn random_activations(m: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
        // Some blocks all zero, to cover a zero scale.
        (0..m * cols).map(|i| if (i / BLOCK) % 7 == 3 { 0.0 } else { 2.0 * rng.unit() }).collect()
    }

    fn quantized(w: &QuantMatrix, x: &[f32], m: usize) -> Activations {
        let mut a = Activations::default();
        w.quantize_into(x, m, &mut a);
        a
    }

    const TYPES: [GgmlDType; 4] = [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q8_0];

    /// The plain reference: the dequantized weights times the dequantized activations, in f64.
    fn reference(w: &QuantMatrix, x: &[f32], m: usize) -> Vec<f32> {
        let wf = w.dequantize();
        let a = quantized(w, x, m);
        let xf: Vec<f64> = (0..m * w.cols)
            .map(|i| {
                let (r, c) = (i / w.cols, i % w.cols);
                a.q[r * w.blocks + c / BLOCK][c % BLOCK] as f64 * a.d[r * w.padded + c / BLOCK] as f64
            })
            .collect();
        let mut out = vec![0f32; m * w.rows];
        for r in 0..m {
            for n in 0..w.rows {
                let row = &wf[n * w.cols..(n + 1) * w.cols];
                let dot: f64 = row.iter().zip(&xf[r * w.cols..]).map(|(&w, &x)| w as f64 * x).sum();
                out[r * w.rows + n] = dot as f32;
            }
        }
        out
    }

    /// What Q8_1's f16 block sums may move each product by: half an f16 ulp of every sum,
    /// times the weight block's offset.
    fn sum_rounding(w: &QuantMatrix, x: &[f32], m: usize) -> Vec<f32> {
        let a = quantized(w, x, m);
        let mut out = vec![0f32; m * w.rows];
        for r in 0..m {
            for n in 0..w.rows {
                out[r * w.rows + n] = (0..w.blocks)
                    .map(|b| {
                        let offset = w.offset(n, b);
                        // Σq and its product with d are each rounded to f16 (half an ulp,
                        // 2^-12, each; Σq's f16 ulp is 2 past 2048): within 2^-10 of s.
                        (offset * a.s[r * w.padded + b]).abs() / 1024.0
                    })
                    .sum();
            }
        }
        out
    }

    /// Largest difference, relative to the largest magnitude among the expected values.
    fn relative_error(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(1e-6f32, |a, w| a.max(w.abs()));
        got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max) / scale
    }

    fn kernels() -> Vec<Kernel> {
        let mut k = vec![Kernel::Scalar];
        if !matches!(Kernel::detect(), Kernel::Scalar) {
            k.push(Kernel::detect());
        } else {
            eprintln!("no AVX2+FMA on this CPU: only the scalar kernel is tested");
        }
        k
    }

    /// Odd shapes: a row of one block, block counts on both sides of a group of 8, batches
    /// that do not fill a tile, and a matrix large enough to be split across threads.
    #[test]
    fn kernels_match_the_f32_reference_on_random_blocks() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let shapes = [(1, 32, 1), (3, 32, 2), (5, 64, 3), (7, 224, 1), (9, 288, 4), (17, 576, 5), (600, 320, 9)];
        for dtype in TYPES {
            for &(rows, cols, m) in &shapes {
                let (w, _) = random_matrix(dtype, rows, cols, &mut rng);
                let x = random_activations(m, cols, &mut rng);
                let want = reference(&w, &x, m);
                let rounding = sum_rounding(&w, &x, m);
                let scale = want.iter().fold(1e-6f32, |a, w| a.max(w.abs()));
                for kernel in kernels() {
                    let got = w.matmul_with(kernel, &x, m);
                    // Only the f16 rounding of Q8_1's block sums and the order of f32 sums
                    // separate the kernels from the reference.
                    for (i, ((g, w), r)) in got.iter().zip(&want).zip(&rounding).enumerate() {
                        assert!(
                            (g - w).abs() <= r + 1e-5 * scale,
                            "{dtype:?} {rows}×{cols}, {m} rows, {}: product {i} is {g}, {w} expected",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }

    /// The kernels against each other: the same blocks, the same arithmetic, so they differ
    /// only in the order of f32 sums.
    #[test]
    fn avx2_and_scalar_kernels_agree() {
        let kernel = Kernel::detect();
        if matches!(kernel, Kernel::Scalar) {
            eprintln!("no AVX2+FMA on this CPU: nothing to compare");
            return;
        }
        let mut rng = Rng(7);
        for dtype in TYPES {
            let (w, _) = random_matrix(dtype, 33, 416, &mut rng);
            let x = random_activations(6, 416, &mut rng);
            let err = relative_error(&w.matmul_with(kernel, &x, 6), &w.matmul_with(Kernel::Scalar, &x, 6));
            assert!(err < 1e-5, "{dtype:?}: relative error {err}");
        }
    }

    /// Candle's `QMatMul` of the same blocks and activations.
    fn candles_product(q: QTensor, x: &[f32], m: usize, cols: usize) -> Vec<f32> {
        use candle_core::Module;
        let xt = Tensor::from_vec(x.to_vec(), (m, cols), &Device::Cpu).unwrap();
        let theirs = candle_core::quantized::QMatMul::from_qtensor(q).unwrap().forward(&xt).unwrap();
        theirs.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The block layouts are read as candle writes them: the same products as candle's own
    /// (scalar, GGML-following) `QMatMul` gives.
    #[test]
    fn products_match_candles_qmatmul() {
        let mut rng = Rng(42);
        for dtype in TYPES {
            let (rows, cols, m) = (40, 256, 3);
            let (w, q) = random_matrix(dtype, rows, cols, &mut rng);
            let x = random_activations(m, cols, &mut rng);
            let theirs = candles_product(q, &x, m, cols);
            let ours = w.matmul_with(Kernel::detect(), &x, m);
            let err = relative_error(&ours, &theirs);
            assert!(err < 2e-3, "{dtype:?}: relative error {err} against candle");
        }
    }

    /// Q8_0 (SmolLM2's output projection and embedding) in the SIMD kernel is candle's
    /// arithmetic in candle's order: the logits do not move when the engine switches from
    /// candle's product to this one, for a single row (decode) and for a batch.
    #[test]
    fn q8_0_products_are_candles_bit_for_bit() {
        if matches!(Kernel::detect(), Kernel::Scalar) {
            eprintln!("no AVX2+FMA on this CPU: candle's order is the SIMD kernel's");
            return;
        }
        let mut rng = Rng(3);
        for (rows, cols, m) in [(37, 576, 1), (64, 320, 5), (9, 32, 2)] {
            let (w, q) = random_matrix(GgmlDType::Q8_0, rows, cols, &mut rng);
            let x = random_activations(m, cols, &mut rng);
            let theirs = candles_product(q, &x, m, cols);
            let ours = w.matmul_with(Kernel::detect(), &x, m);
            for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(o.to_bits(), t.to_bits(), "{rows}×{cols}, {m} rows: product {i} is {o}, candle's {t}");
            }
        }
    }

    /// Stacked matrices give each part's products, in order, bit for bit.
    #[test]
    fn a_stack_computes_each_part_as_alone() {
        let mut rng = Rng(11);
        let kernel = Kernel::detect();
        let parts: Vec<QuantMatrix> =
            [40, 8, 8].iter().map(|&r| random_matrix(GgmlDType::Q4_1, r, 96, &mut rng).0).collect();
        let stacked = QuantMatrix::stack(&parts.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(stacked.rows(), 56);
        for m in [1, 3, 6] {
            let x = random_activations(m, 96, &mut rng);
            let all = stacked.matmul_with(kernel, &x, m);
            let mut at = 0;
            for p in &parts {
                let alone = p.matmul_with(kernel, &x, m);
                for r in 0..m {
                    let got = &all[r * 56 + at..][..p.rows()];
                    let want = &alone[r * p.rows()..][..p.rows()];
                    assert!(got.iter().zip(want).all(|(g, w)| g.to_bits() == w.to_bits()), "{m} rows, part at {at}");
                }
                at += p.rows();
            }
        }
        let other = random_matrix(GgmlDType::Q8_0, 8, 96, &mut rng).0;
        assert!(QuantMatrix::stack(&[&parts[0], &other]).is_none(), "types differ");
    }

    /// A scratch that served a larger product serves a smaller one of another type.
    #[test]
    fn scratch_is_reused_across_shapes_and_types() {
        let mut rng = Rng(5);
        let kernel = Kernel::detect();
        let mut scratch = Scratch::default();
        for (dtype, rows, cols, m) in
            [(GgmlDType::Q4_1, 70, 320, 6), (GgmlDType::Q8_0, 20, 64, 2), (GgmlDType::Q5_0, 9, 96, 1)]
        {
            let (w, _) = random_matrix(dtype, rows, cols, &mut rng);
            let x = random_activations(m, cols, &mut rng);
            let mut out = vec![0f32; m * rows];
            w.matmul_into(kernel, &x, m, &mut out, &mut scratch);
            assert_eq!(out, w.matmul_with(kernel, &x, m), "{dtype:?}");
        }
    }

    #[test]
    fn simd_f16_conversion_is_exact() {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            // Every finite f16, positive and negative, subnormals and zeros included.
            let finite: Vec<u16> = (0..=u16::MAX).filter(|&h| f16::from_bits(h).is_finite()).collect();
            for chunk in finite.chunks_exact(GROUP) {
                let got = super::avx2::f16x8_for_test(simd, chunk.try_into().unwrap());
                for (&h, g) in chunk.iter().zip(got) {
                    assert_eq!(g.to_bits(), f16::from_bits(h).to_f32().to_bits(), "f16 bits {h:#06x}");
                }
            }
        }
    }

    #[test]
    fn rejects_a_wrong_size_or_type() {
        assert!(QuantMatrix::from_ggml(GgmlDType::Q4_1, 2, 32, &[0; 39]).is_err());
        assert!(QuantMatrix::from_ggml(GgmlDType::Q4_1, 1, 48, &[0; 30]).is_err());
        assert!(QuantMatrix::from_ggml(GgmlDType::Q8_0, 1, 32, &[0; 34]).is_ok());
        assert!(QuantMatrix::from_ggml(GgmlDType::Q8_0, 1, 32, &[0; 36]).is_err());
        assert!(QuantMatrix::from_ggml(GgmlDType::Q4K, 1, 256, &[0; 144]).is_err());
        assert!(QuantMatrix::from_ggml(GgmlDType::Q5_1, 1, 32, &[0; 24]).is_ok());
    }
}
