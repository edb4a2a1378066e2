//! Matrix products with Q4_1 and Q8_0 weights, in place of candle's `QMatMul` for those
//! types: candle 0.11 computes Q4_1 one product at a time in scalar code (`vec_dot_unopt`),
//! which took 73% of SmolLM2 Q4_1's run time on the CPU, and Q8_0 one activation row at a
//! time, so a batch of sequences read each weight once per sequence. (Q5_0 and Q5_1 stay
//! candle's: see [`QuantMatrix::supports`].)
//!
//! The arithmetic is GGML's, so that logits follow llama.cpp's. Each row of activations is
//! quantized to blocks of 32 signed bytes (Q8_1): a scale `d_a = max|x| / 127`, the values
//! `q_a = round(x / d_a)` and, for the offset term, the block's sum `s_a = d_a · Σ q_a`,
//! rounded to f16 as llama.cpp rounds it. A Q4_1 weight block (scale `d_w`, offset `m_w`, 32
//! values `q_w` of 4 bits) against one activation block then contributes
//! `d_w · d_a · Σ q_w · q_a + m_w · s_a`. Q8_0 weights (signed bytes, a scale per block) take
//! Q8_0 activations, quantized exactly as candle's `BlockQ8_0::from_float` does, and contribute
//! `d_w · d_a · Σ q_w · q_a`. The activations are quantized bit for bit as candle and the device
//! kernels quantize them (see `QuantMatrix::quantize_into`).
//!
//! The layout is made for a batch: the weight rows are interleaved in groups of [`LANES`], so
//! that each 32-bit lane of an AVX-512 register (or of two AVX2 registers) holds one weight
//! row, 4 bytes of it. A group's block is unpacked once and multiplied with each of up to
//! [`TILE`] activation rows, whose 4-byte pieces are broadcast to every lane, so each product
//! ends as one lane of one register: no horizontal sums, and a batch of B rows costs the
//! integer work of B rows but the unpacking and weight reads of one. (The row-at-a-time layout
//! before this spent a dozen instructions per block and activation row, and a step of 8
//! sequences took 4× a step of one.)
//!
//! Three kernels compute it, chosen at run time for the CPU at hand ([`Kernel::detect`]):
//! AVX-512 (F and BW), AVX2 with FMA, and a portable scalar one, the first two through
//! `pulp`'s safe wrappers of the intrinsics since this crate forbids `unsafe`. (AVX-512 VNNI's
//! `vpdpbusd`, one instruction for `maddubs` + `madd`, is not among pulp 0.22's wrappers.)
//! Every lane does the same exact integer sum per block and then the same f32 operations in
//! the same order (one multiply of the scales, one fused multiply-add per term), so the three
//! kernels give the same products bit for bit, and a row's products do not depend on the
//! other rows of its batch (tested). Groups of weight rows are split across rayon's threads.
//! The buffers a product needs ([`Scratch`]) are kept by the caller between calls.

use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

/// Values per block, in every type here.
const BLOCK: usize = 32;
/// Weight rows interleaved in a group: one per 32-bit lane of a 512-bit register.
const LANES: usize = 16;
/// Bytes of a weight row in one chunk: a lane's 32 bits.
const WORD: usize = 4;
/// A chunk: one word of each row of a group.
type Chunk = [u8; LANES * WORD];
/// Activation rows multiplied with a group's block while it is unpacked in registers.
const TILE: usize = 8;

/// A weight matrix in one of the types here, its rows interleaved in groups of [`LANES`]
/// (the last group padded with zero rows), its fields split so the kernels read each one
/// contiguously.
pub(super) struct QuantMatrix {
    dtype: GgmlDType,
    /// Output features (the matrix's rows).
    rows: usize,
    /// Input features.
    cols: usize,
    /// Blocks per row.
    blocks: usize,
    /// Groups of [`LANES`] rows.
    groups: usize,
    /// `groups × blocks × chunks`: chunk `k` of a group's block holds bytes `4k..4k + 4` of
    /// each of its rows' block in turn. Q4_1 has 4 chunks per block, its 16 bytes of nibbles
    /// (value `j` in the low nibble of byte `j`, value `16 + j` in its high one); Q8_0 has 8,
    /// its 32 signed values.
    q: Vec<Chunk>,
    /// `groups × blocks`, f16 bits: the rows' scales (zero for padding rows).
    d: Vec<[u16; LANES]>,
    /// `groups × blocks`, f16 bits: Q4_1's offsets; empty for Q8_0, which has none.
    m: Vec<[u16; LANES]>,
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

/// One row's block as GGML stores it: scale, offset (Q4_1) and values (Q4_1's 16 bytes of
/// nibbles in the first half, Q8_0's 32 signed bytes).
#[derive(Clone, Copy, Debug, Default)]
struct RawBlock {
    d: u16,
    m: u16,
    bytes: [u8; BLOCK],
}

/// Activation rows quantized to 8-bit blocks, the fields split as the weights' are.
#[derive(Debug, Default)]
struct Activations {
    /// `rows × blocks`.
    q: Vec<[i8; BLOCK]>,
    /// `rows × blocks`: the scales, already rounded to f16.
    d: Vec<f32>,
    /// `rows × blocks`: the block sums `d_a · Σ q_a` (Q4_1's activations only).
    s: Vec<f32>,
}

/// The buffers of a product besides its input and output, kept between calls so that a
/// forward pass allocates nothing once they have grown to its largest product.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    acts: Activations,
    /// The output by group, `groups × m × LANES`, before it is scattered into `m × rows`
    /// (unless `m = 1` and the groups fill the rows, when it is already that).
    staged: Vec<f32>,
}

/// Which kernel computes the products.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kernel {
    /// Portable, one value at a time.
    Scalar,
    /// AVX2 and FMA, found on this CPU at run time.
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    /// AVX-512 F, BW, CD, DQ and VL (x86-64-v4), found on this CPU at run time.
    #[cfg(target_arch = "x86_64")]
    Avx512(pulp::x86::V4),
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub(super) fn detect() -> Self {
        Self::available().pop().expect("the scalar kernel runs everywhere")
    }

    /// Every kernel this CPU runs, slowest first.
    pub(super) fn available() -> Vec<Self> {
        let mut kernels = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            kernels.extend(pulp::x86::V3::try_new().map(Kernel::Avx2));
            kernels.extend(pulp::x86::V4::try_new().map(Kernel::Avx512));
        }
        kernels
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(_) => "AVX2+FMA",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(_) => "AVX-512",
        }
    }
}

impl QuantMatrix {
    /// Whether the engine computes products with `dtype` here. The Q5 types are not: on a
    /// tiny gemma3 model in Q5_1 the device's greedy path parted from an earlier kernel of
    /// this module where it followed candle's (not understood), so they stay candle's.
    pub(super) fn supports(dtype: GgmlDType) -> bool {
        matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q8_0)
    }

    /// Reads a `[rows, cols]` matrix from its GGML blocks: per block an f16 scale, for Q4_1
    /// an f16 offset and 16 bytes of nibbles, for Q8_0 32 signed bytes.
    pub(super) fn from_ggml(dtype: GgmlDType, rows: usize, cols: usize, data: &[u8]) -> Result<Self, String> {
        let block_bytes = match dtype {
            GgmlDType::Q4_1 => 4 + BLOCK / 2,
            GgmlDType::Q8_0 => 2 + BLOCK,
            other => return Err(format!("{other:?} is not one of Q4_1, Q8_0")),
        };
        debug_assert_eq!(block_bytes, dtype.type_size());
        if !cols.is_multiple_of(BLOCK) {
            return Err(format!("{cols} columns are not a whole number of {BLOCK}-value blocks"));
        }
        let blocks = cols / BLOCK;
        if data.len() != rows * blocks * block_bytes {
            return Err(format!(
                "{} bytes for {rows}×{cols} {dtype:?}, {} expected",
                data.len(),
                rows * blocks * block_bytes
            ));
        }
        let q8 = dtype == GgmlDType::Q8_0;
        Ok(Self::build(dtype, rows, cols, |n, b| {
            let raw = &data[(n * blocks + b) * block_bytes..][..block_bytes];
            let u16_at = |i: usize| u16::from_le_bytes([raw[i], raw[i + 1]]);
            let mut block = RawBlock { d: u16_at(0), ..RawBlock::default() };
            if q8 {
                block.bytes.copy_from_slice(&raw[2..]);
            } else {
                block.m = u16_at(2);
                block.bytes[..BLOCK / 2].copy_from_slice(&raw[4..]);
            }
            block
        }))
    }

    /// The matrix whose block `b` of row `n` is `block(n, b)`, interleaved.
    fn build(dtype: GgmlDType, rows: usize, cols: usize, block: impl Fn(usize, usize) -> RawBlock) -> Self {
        let blocks = cols / BLOCK;
        let groups = rows.div_ceil(LANES);
        let chunks = chunks_of(dtype);
        let q8 = dtype == GgmlDType::Q8_0;
        let mut w = QuantMatrix {
            dtype,
            rows,
            cols,
            blocks,
            groups,
            q: vec![[0; LANES * WORD]; groups * blocks * chunks],
            d: vec![[0; LANES]; groups * blocks],
            m: if q8 { Vec::new() } else { vec![[0; LANES]; groups * blocks] },
        };
        for n in 0..rows {
            let (g, lane) = (n / LANES, n % LANES);
            for b in 0..blocks {
                let raw = block(n, b);
                let at = g * blocks + b;
                w.d[at][lane] = raw.d;
                if let Some(m) = w.m.get_mut(at) {
                    m[lane] = raw.m;
                }
                for k in 0..chunks {
                    w.q[at * chunks + k][lane * WORD..][..WORD].copy_from_slice(&raw.bytes[k * WORD..][..WORD]);
                }
            }
        }
        w
    }

    /// Block `b` of row `n` as GGML stores it.
    fn raw_block(&self, n: usize, b: usize) -> RawBlock {
        let (g, lane) = (n / LANES, n % LANES);
        let at = g * self.blocks + b;
        let chunks = chunks_of(self.dtype);
        let mut raw = RawBlock { d: self.d[at][lane], m: self.m.get(at).map_or(0, |m| m[lane]), ..RawBlock::default() };
        for k in 0..chunks {
            raw.bytes[k * WORD..][..WORD].copy_from_slice(&self.q[at * chunks + k][lane * WORD..][..WORD]);
        }
        raw
    }

    /// The rows of `parts` one after another, as one matrix: q, k and v (or gate and up) as
    /// one product, which reads the activations and splits the work across threads once
    /// instead of three times. Each output row is computed as in its own matrix (a lane's
    /// arithmetic does not depend on its group), so the products do not change. `None` unless
    /// the parts share their type and width.
    pub(super) fn stack(parts: &[&QuantMatrix]) -> Option<QuantMatrix> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.dtype != first.dtype || p.cols != first.cols) {
            return None;
        }
        let starts: Vec<usize> = parts.iter().scan(0, |at, p| Some(std::mem::replace(at, *at + p.rows))).collect();
        let rows = parts.iter().map(|p| p.rows).sum();
        Some(Self::build(first.dtype, rows, first.cols, |n, b| {
            let i = starts.partition_point(|&s| s <= n) - 1;
            parts[i].raw_block(n - starts[i], b)
        }))
    }

    /// Output features.
    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    fn is_q8(&self) -> bool {
        self.dtype == GgmlDType::Q8_0
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
        if m == 0 {
            return;
        }
        let Scratch { acts, staged } = scratch;
        self.quantize_into(x, m, acts);
        let acts = &*acts;
        let direct = m == 1 && self.rows == self.groups * LANES;
        let target = if direct {
            &mut *out
        } else {
            // Every value is written by the kernels: grown, never cleared.
            let len = self.groups * m * LANES;
            if staged.len() < len {
                staged.resize(len, 0.0);
            }
            &mut staged[..len]
        };
        let work = self.rows * self.blocks * m;
        let threads = rayon::current_num_threads();
        if work < 16 * 1024 || threads == 1 {
            self.groups_with(kernel, acts, m, 0, target);
        } else {
            // Several chunks per thread, so that one slowed by other load does not hold up the
            // rest; each still large enough to amortise rayon's scheduling.
            let chunk = self.groups.div_ceil(4 * threads);
            target
                .par_chunks_mut(chunk * m * LANES)
                .enumerate()
                .for_each(|(c, out)| self.groups_with(kernel, acts, m, c * chunk, out));
        }
        if !direct {
            // Each group's `m × 16` outputs to the `m` rows, 64 bytes at a time.
            let staged = &*staged;
            let scatter = |(r, out): (usize, &mut [f32])| {
                for (g, out) in out.chunks_mut(LANES).enumerate() {
                    out.copy_from_slice(&staged[(g * m + r) * LANES..][..out.len()]);
                }
            };
            if work < 16 * 1024 || threads == 1 {
                out.chunks_exact_mut(self.rows).enumerate().for_each(scatter);
            } else {
                out.par_chunks_exact_mut(self.rows).enumerate().for_each(scatter);
            }
        }
    }

    /// Groups `first..` into `out` (`m × LANES` values per group).
    fn groups_with(&self, kernel: Kernel, acts: &Activations, m: usize, first: usize, out: &mut [f32]) {
        match kernel {
            Kernel::Scalar => {
                for (i, out) in out.chunks_exact_mut(m * LANES).enumerate() {
                    self.group_scalar(first + i, acts, out);
                }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(simd) => simd.vectorize(x86::Groups { simd, w: self, a: acts, m, first, out }),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(simd) => simd.vectorize(x86::Groups { simd, w: self, a: acts, m, first, out }),
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
    /// reciprocal included.
    fn quantize_into(&self, x: &[f32], m: usize, a: &mut Activations) {
        let q8 = self.is_q8();
        a.q.clear();
        a.q.reserve(m * self.blocks);
        a.d.clear();
        a.s.clear();
        for xs in x.chunks_exact(BLOCK) {
            let amax = xs.iter().fold(0f32, |a, x| a.max(x.abs()));
            let d = amax / 127.0;
            let mut q = [0i8; BLOCK];
            let d_rounded = f16::from_f32(d).to_f32();
            a.d.push(d_rounded);
            if q8 {
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                for (q, &x) in q.iter_mut().zip(xs) {
                    // Saturating, as candle's cast.
                    *q = (x * id).round() as i8;
                }
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
            a.s.push(f16::from_f32(f16::from_f32(sum as f32).to_f32() * d_rounded).to_f32());
            a.q.push(q);
        }
    }

    /// Group `g` against every activation row, one value at a time, in the order every lane
    /// of the SIMD kernels computes: per block the exact integer sum, then `acc += dot · (d_w ·
    /// d_a)` and `acc += m_w · s_a`, each one rounding (fused multiply-adds).
    fn group_scalar(&self, g: usize, a: &Activations, out: &mut [f32]) {
        let chunks = chunks_of(self.dtype);
        for (r, out) in out.chunks_exact_mut(LANES).enumerate() {
            for (lane, o) in out.iter_mut().enumerate() {
                let mut acc = 0f32;
                for b in 0..self.blocks {
                    let (at, ai) = (g * self.blocks + b, r * self.blocks + b);
                    let xq = &a.q[ai];
                    let mut dot = 0i32;
                    for k in 0..chunks {
                        let word = &self.q[at * chunks + k][lane * WORD..][..WORD];
                        for (i, &byte) in word.iter().enumerate() {
                            let j = k * WORD + i;
                            dot += if self.is_q8() {
                                byte as i8 as i32 * xq[j] as i32
                            } else {
                                (byte & 0x0F) as i32 * xq[j] as i32 + (byte >> 4) as i32 * xq[BLOCK / 2 + j] as i32
                            };
                        }
                    }
                    let scale = f16::from_bits(self.d[at][lane]).to_f32() * a.d[ai];
                    acc = (dot as f32).mul_add(scale, acc);
                    if let Some(mw) = self.m.get(at) {
                        acc = f16::from_bits(mw[lane]).to_f32().mul_add(a.s[ai], acc);
                    }
                }
                *o = acc;
            }
        }
    }

    /// Row `n`'s block `b`: its 32 values (Q4_1's 0..16, Q8_0's signed).
    #[cfg(test)]
    fn values(&self, n: usize, b: usize) -> [i32; BLOCK] {
        let raw = self.raw_block(n, b);
        if self.is_q8() {
            return raw.bytes.map(|v| v as i8 as i32);
        }
        std::array::from_fn(|j| (if j < 16 { raw.bytes[j] & 0x0F } else { raw.bytes[j - 16] >> 4 }) as i32)
    }

    /// Row `n`'s block `b`'s offset (none for Q8_0).
    #[cfg(test)]
    fn offset(&self, n: usize, b: usize) -> f32 {
        if self.is_q8() { 0.0 } else { f16::from_bits(self.raw_block(n, b).m).to_f32() }
    }

    /// The matrix in f32, `rows × cols`: for tests and the reference products.
    #[cfg(test)]
    fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for n in 0..self.rows {
            for b in 0..self.blocks {
                let d = f16::from_bits(self.raw_block(n, b).d).to_f32();
                let m = self.offset(n, b);
                out.extend(self.values(n, b).iter().map(|&q| q as f32 * d + m));
            }
        }
        out
    }
}

/// Chunks per block of a group.
fn chunks_of(dtype: GgmlDType) -> usize {
    if dtype == GgmlDType::Q8_0 { BLOCK / WORD } else { BLOCK / 2 / WORD }
}

/// The activation rows of the next tile from row `r` of `m`: a power of two up to `max`, so
/// that four sizes of tile cover every batch.
#[cfg(target_arch = "x86_64")]
fn tile_rows(m: usize, r: usize, max: usize) -> usize {
    let left = (m - r).min(max);
    1 << left.ilog2()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX-512 and AVX2 kernels. Every function here is `#[inline(always)]` so that it is
    //! compiled into `vectorize`'s body, which has the target features enabled; the hot loops
    //! use no closures, which might not be inlined at the dev profile's opt-level.
    //!
    //! Per group, block and activation row the integer sum is exact in both: Q4_1's nibbles
    //! (at most 15) times activations (at most 127 in magnitude) in pairs (`maddubs`, at most
    //! 3,810), eight pairs summed in 16 bits (at most 30,480, no saturation) and those pairs
    //! summed to 32 bits (`madd`); Q8_0's signed bytes as magnitude times the activation with
    //! the weight's sign (`maddubs` takes one operand unsigned; pairs of at most 2 · 128 · 127,
    //! no saturation), each pair summed to 32 bits at once.

    use std::arch::x86_64::{__m256, __m256i, __m512, __m512i};

    use pulp::cast;
    use pulp::x86::{V3, V4};

    use super::{Activations, Chunk, LANES, QuantMatrix, TILE, tile_rows};

    /// Lanes of an AVX2 register: half a group.
    const HALF: usize = LANES / 2;

    /// Groups `first..` of `w` against every row of `a`, into `out` (`m × LANES` per group),
    /// as `vectorize` takes it: a type whose `call` is `#[inline(always)]`, so that the kernel
    /// is compiled into the function with the target features. (A closure's body is not always
    /// inlined there, and outside it every intrinsic is a function call: so built, the AVX-512
    /// kernel ran 6× slower than the AVX2 one before it.)
    pub(super) struct Groups<'a, S> {
        pub(super) simd: S,
        pub(super) w: &'a QuantMatrix,
        pub(super) a: &'a Activations,
        pub(super) m: usize,
        pub(super) first: usize,
        pub(super) out: &'a mut [f32],
    }

    impl pulp::NullaryFnOnce for Groups<'_, V4> {
        type Output = ();

        #[inline(always)]
        fn call(self) {
            groups_avx512(self.simd, self.w, self.a, self.m, self.first, self.out)
        }
    }

    impl pulp::NullaryFnOnce for Groups<'_, V3> {
        type Output = ();

        #[inline(always)]
        fn call(self) {
            groups_avx2(self.simd, self.w, self.a, self.m, self.first, self.out)
        }
    }

    /// Groups `first..` against every activation row, into `out` (`m × LANES` per group).
    #[inline(always)]
    fn groups_avx512(simd: V4, w: &QuantMatrix, a: &Activations, m: usize, first: usize, out: &mut [f32]) {
        for (i, out) in out.chunks_exact_mut(m * LANES).enumerate() {
            let g = first + i;
            let mut r = 0;
            while r < m {
                let t = tile_rows(m, r, TILE);
                let out = &mut out[r * LANES..(r + t) * LANES];
                match (t, w.is_q8()) {
                    (8, false) => put(out, avx512_q4_1::<8>(simd, w, a, g, r)),
                    (4, false) => put(out, avx512_q4_1::<4>(simd, w, a, g, r)),
                    (2, false) => put(out, avx512_q4_1::<2>(simd, w, a, g, r)),
                    (_, false) => put(out, avx512_q4_1::<1>(simd, w, a, g, r)),
                    (8, true) => put(out, avx512_q8_0::<8>(simd, w, a, g, r)),
                    (4, true) => put(out, avx512_q8_0::<4>(simd, w, a, g, r)),
                    (2, true) => put(out, avx512_q8_0::<2>(simd, w, a, g, r)),
                    (_, true) => put(out, avx512_q8_0::<1>(simd, w, a, g, r)),
                }
                r += t;
            }
        }
    }

    /// [`groups_avx512`] with AVX2: each half of a group in turn, four activation rows at a
    /// time (eight unpacked vectors and four accumulators fill the 16 registers).
    #[inline(always)]
    fn groups_avx2(simd: V3, w: &QuantMatrix, a: &Activations, m: usize, first: usize, out: &mut [f32]) {
        for (i, out) in out.chunks_exact_mut(m * LANES).enumerate() {
            let g = first + i;
            for h in 0..2 {
                let mut r = 0;
                while r < m {
                    let t = tile_rows(m, r, 4);
                    let out = &mut out[r * LANES..(r + t) * LANES];
                    match (t, w.is_q8()) {
                        (4, false) => put_half(out, h, avx2_q4_1::<4>(simd, w, a, g, h, r)),
                        (2, false) => put_half(out, h, avx2_q4_1::<2>(simd, w, a, g, h, r)),
                        (_, false) => put_half(out, h, avx2_q4_1::<1>(simd, w, a, g, h, r)),
                        (4, true) => put_half(out, h, avx2_q8_0::<4>(simd, w, a, g, h, r)),
                        (2, true) => put_half(out, h, avx2_q8_0::<2>(simd, w, a, g, h, r)),
                        (_, true) => put_half(out, h, avx2_q8_0::<1>(simd, w, a, g, h, r)),
                    }
                    r += t;
                }
            }
        }
    }

    #[inline(always)]
    fn put<const T: usize>(out: &mut [f32], tile: [__m512; T]) {
        for (o, v) in out.chunks_exact_mut(LANES).zip(tile) {
            o.copy_from_slice(&cast::<_, [f32; LANES]>(v));
        }
    }

    #[inline(always)]
    fn put_half<const T: usize>(out: &mut [f32], h: usize, tile: [__m256; T]) {
        for (o, v) in out.chunks_exact_mut(LANES).zip(tile) {
            o[h * HALF..][..HALF].copy_from_slice(&cast::<_, [f32; HALF]>(v));
        }
    }

    /// Q4_1 group `g` against activation rows `r..r + T`.
    #[inline(always)]
    fn avx512_q4_1<const T: usize>(simd: V4, w: &QuantMatrix, a: &Activations, g: usize, r: usize) -> [__m512; T] {
        let (f, bw) = (simd.avx512f, simd.avx512bw);
        let nibble = f._mm512_set1_epi8(0x0F);
        let ones = f._mm512_set1_epi16(1);
        let mut acc = [f._mm512_setzero_ps(); T];
        for b in 0..w.blocks {
            let at = g * w.blocks + b;
            let dw = f._mm512_cvtph_ps(cast(w.d[at]));
            let mw = f._mm512_cvtph_ps(cast(w.m[at]));
            // Values 4k.. of each row in vector k, 16 + 4k.. in vector 4 + k.
            let mut wq = [f._mm512_setzero_si512(); 8];
            for (k, &chunk) in w.q[at * 4..][..4].iter().enumerate() {
                let chunk: __m512i = cast(chunk);
                wq[k] = f._mm512_and_si512(chunk, nibble);
                wq[4 + k] = f._mm512_and_si512(bw._mm512_srli_epi16::<4>(chunk), nibble);
            }
            for (t, acc) in acc.iter_mut().enumerate() {
                let ai = (r + t) * w.blocks + b;
                let xq: [i32; 8] = cast(a.q[ai]);
                let mut pairs = f._mm512_setzero_si512();
                for (&wq, &x) in wq.iter().zip(&xq) {
                    pairs = bw._mm512_add_epi16(pairs, bw._mm512_maddubs_epi16(wq, f._mm512_set1_epi32(x)));
                }
                let dot = f._mm512_cvtepi32_ps(bw._mm512_madd_epi16(pairs, ones));
                let scale = f._mm512_mul_ps(dw, f._mm512_set1_ps(a.d[ai]));
                *acc = f._mm512_fmadd_ps(dot, scale, *acc);
                *acc = f._mm512_fmadd_ps(mw, f._mm512_set1_ps(a.s[ai]), *acc);
            }
        }
        acc
    }

    /// Q8_0 group `g` against activation rows `r..r + T`.
    #[inline(always)]
    fn avx512_q8_0<const T: usize>(simd: V4, w: &QuantMatrix, a: &Activations, g: usize, r: usize) -> [__m512; T] {
        let (f, bw) = (simd.avx512f, simd.avx512bw);
        let ones = f._mm512_set1_epi16(1);
        let zero = f._mm512_setzero_si512();
        let mut acc = [f._mm512_setzero_ps(); T];
        for b in 0..w.blocks {
            let at = g * w.blocks + b;
            let dw = f._mm512_cvtph_ps(cast(w.d[at]));
            let mut magnitude = [zero; 8];
            let mut negative = [0u64; 8];
            for (k, &chunk) in w.q[at * 8..][..8].iter().enumerate() {
                let chunk: __m512i = cast(chunk);
                // |−128| reads as 128 unsigned.
                magnitude[k] = bw._mm512_abs_epi8(chunk);
                negative[k] = bw._mm512_movepi8_mask(chunk);
            }
            for (t, acc) in acc.iter_mut().enumerate() {
                let ai = (r + t) * w.blocks + b;
                let xq: [i32; 8] = cast(a.q[ai]);
                let mut dot = zero;
                for ((&magnitude, &negative), &x) in magnitude.iter().zip(&negative).zip(&xq) {
                    let x = f._mm512_set1_epi32(x);
                    // The activation negated where the weight is negative (never −128: the
                    // quantizer's values lie in −127..=127).
                    let signed = bw._mm512_mask_sub_epi8(x, negative, zero, x);
                    let pairs = bw._mm512_maddubs_epi16(magnitude, signed);
                    dot = f._mm512_add_epi32(dot, bw._mm512_madd_epi16(pairs, ones));
                }
                let scale = f._mm512_mul_ps(dw, f._mm512_set1_ps(a.d[ai]));
                *acc = f._mm512_fmadd_ps(f._mm512_cvtepi32_ps(dot), scale, *acc);
            }
        }
        acc
    }

    /// Half `h` of a chunk: its rows `8h..8h + 8`.
    #[inline(always)]
    fn half(chunk: &Chunk, h: usize) -> __m256i {
        let bytes: [u8; 32] = chunk[h * 32..][..32].try_into().expect("32 bytes");
        cast(bytes)
    }

    /// Half `h` of a group's scales (or offsets).
    #[inline(always)]
    fn half_scales(simd: V3, v: &[u16; LANES], h: usize) -> __m256 {
        f16x8(simd, v[h * HALF..][..HALF].try_into().expect("8 scales"))
    }

    /// Half `h` of Q4_1 group `g` against activation rows `r..r + T`.
    #[inline(always)]
    fn avx2_q4_1<const T: usize>(
        simd: V3,
        w: &QuantMatrix,
        a: &Activations,
        g: usize,
        h: usize,
        r: usize,
    ) -> [__m256; T] {
        let (avx, avx2, fma) = (simd.avx, simd.avx2, simd.fma);
        let nibble = avx._mm256_set1_epi8(0x0F);
        let ones = avx._mm256_set1_epi16(1);
        let mut acc = [avx._mm256_setzero_ps(); T];
        for b in 0..w.blocks {
            let at = g * w.blocks + b;
            let dw = half_scales(simd, &w.d[at], h);
            let mw = half_scales(simd, &w.m[at], h);
            let mut wq = [avx._mm256_setzero_si256(); 8];
            for (k, chunk) in w.q[at * 4..][..4].iter().enumerate() {
                let chunk = half(chunk, h);
                wq[k] = avx2._mm256_and_si256(chunk, nibble);
                wq[4 + k] = avx2._mm256_and_si256(avx2._mm256_srli_epi16::<4>(chunk), nibble);
            }
            for (t, acc) in acc.iter_mut().enumerate() {
                let ai = (r + t) * w.blocks + b;
                let xq: [i32; 8] = cast(a.q[ai]);
                let mut pairs = avx._mm256_setzero_si256();
                for (&wq, &x) in wq.iter().zip(&xq) {
                    pairs = avx2._mm256_add_epi16(pairs, avx2._mm256_maddubs_epi16(wq, avx._mm256_set1_epi32(x)));
                }
                let dot = avx._mm256_cvtepi32_ps(avx2._mm256_madd_epi16(pairs, ones));
                let scale = avx._mm256_mul_ps(dw, avx._mm256_set1_ps(a.d[ai]));
                *acc = fma._mm256_fmadd_ps(dot, scale, *acc);
                *acc = fma._mm256_fmadd_ps(mw, avx._mm256_set1_ps(a.s[ai]), *acc);
            }
        }
        acc
    }

    /// Half `h` of Q8_0 group `g` against activation rows `r..r + T`.
    #[inline(always)]
    fn avx2_q8_0<const T: usize>(
        simd: V3,
        w: &QuantMatrix,
        a: &Activations,
        g: usize,
        h: usize,
        r: usize,
    ) -> [__m256; T] {
        let (avx, avx2, fma) = (simd.avx, simd.avx2, simd.fma);
        let ones = avx._mm256_set1_epi16(1);
        let mut acc = [avx._mm256_setzero_ps(); T];
        for b in 0..w.blocks {
            let at = g * w.blocks + b;
            let dw = half_scales(simd, &w.d[at], h);
            let mut wq = [avx._mm256_setzero_si256(); 8];
            let mut magnitude = wq;
            for (k, chunk) in w.q[at * 8..][..8].iter().enumerate() {
                wq[k] = half(chunk, h);
                magnitude[k] = avx2._mm256_abs_epi8(wq[k]);
            }
            for (t, acc) in acc.iter_mut().enumerate() {
                let ai = (r + t) * w.blocks + b;
                let xq: [i32; 8] = cast(a.q[ai]);
                let mut dot = avx._mm256_setzero_si256();
                for ((&wq, &magnitude), &x) in wq.iter().zip(&magnitude).zip(&xq) {
                    // The activation with the weight's sign (zero where the weight is).
                    let signed = avx2._mm256_sign_epi8(avx._mm256_set1_epi32(x), wq);
                    let pairs = avx2._mm256_maddubs_epi16(magnitude, signed);
                    dot = avx2._mm256_add_epi32(dot, avx2._mm256_madd_epi16(pairs, ones));
                }
                let scale = avx._mm256_mul_ps(dw, avx._mm256_set1_ps(a.d[ai]));
                *acc = fma._mm256_fmadd_ps(avx._mm256_cvtepi32_ps(dot), scale, *acc);
            }
        }
        acc
    }

    /// 8 f16 bit patterns to f32, exactly for finite values (normal and subnormal): the
    /// exponent and mantissa shifted into f32's places read as a number 2^112 too small.
    /// Infinities and NaNs, which no scale is, become large finite values. (pulp's `V3` has no
    /// F16C, whose `vcvtph2ps` would do it in one instruction.)
    #[inline(always)]
    fn f16x8(simd: V3, h: &[u16; HALF]) -> __m256 {
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
    pub(super) fn f16x8_for_test(simd: V3, h: &[u16; HALF]) -> [f32; HALF] {
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

    const TYPES: [GgmlDType; 2] = [GgmlDType::Q4_1, GgmlDType::Q8_0];

    /// The plain reference: the dequantized weights times the dequantized activations, in f64.
    fn reference(w: &QuantMatrix, x: &[f32], m: usize) -> Vec<f32> {
        let wf = w.dequantize();
        let a = quantized(w, x, m);
        let xf: Vec<f64> = (0..m * w.cols)
            .map(|i| {
                let block = i / BLOCK;
                a.q[block][i % BLOCK] as f64 * a.d[block] as f64
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
                        let s = a.s.get(r * w.blocks + b).copied().unwrap_or(0.0);
                        // Σq and its product with d are each rounded to f16 (half an ulp,
                        // 2^-12, each; Σq's f16 ulp is 2 past 2048): within 2^-10 of s.
                        (w.offset(n, b) * s).abs() / 1024.0
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
        let k = Kernel::available();
        if k.len() < 3 {
            eprintln!(
                "this CPU runs only {:?}: the others are not tested",
                k.iter().map(|k| k.name()).collect::<Vec<_>>()
            );
        }
        k
    }

    fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{what}: product {i} is {g}, {w} expected");
        }
    }

    /// Odd shapes: a row of one block, groups part filled, batches that fill no tile or
    /// several, and a matrix large enough to be split across threads.
    #[test]
    fn kernels_match_the_f32_reference_on_random_blocks() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let shapes =
            [(1, 32, 1), (3, 32, 2), (5, 64, 3), (7, 224, 1), (9, 288, 4), (17, 576, 5), (48, 96, 16), (600, 320, 9)];
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

    /// The SIMD kernels do the scalar kernel's arithmetic in its order: the same products, bit
    /// for bit, whichever kernel this CPU picks.
    #[test]
    fn every_kernel_gives_the_scalar_products_bit_for_bit() {
        let mut rng = Rng(7);
        for dtype in TYPES {
            for (rows, cols, m) in [(33, 416, 6), (48, 64, 16), (600, 320, 13)] {
                let (w, _) = random_matrix(dtype, rows, cols, &mut rng);
                let x = random_activations(m, cols, &mut rng);
                let scalar = w.matmul_with(Kernel::Scalar, &x, m);
                for kernel in kernels() {
                    let what = format!("{dtype:?} {rows}×{cols}, {m} rows, {}", kernel.name());
                    assert_bits_eq(&w.matmul_with(kernel, &x, m), &scalar, &what);
                }
            }
        }
    }

    /// A sequence's logits do not depend on the batch it decodes in: each row of a batch
    /// (of every tile size and remainder) gets the products it gets alone, bit for bit.
    #[test]
    fn a_row_in_a_batch_gets_its_products_alone() {
        let mut rng = Rng(9);
        for dtype in TYPES {
            let (w, _) = random_matrix(dtype, 40, 192, &mut rng);
            for m in [2, 7, 15] {
                let x = random_activations(m, 192, &mut rng);
                for kernel in kernels() {
                    let batch = w.matmul_with(kernel, &x, m);
                    for (r, row) in x.chunks_exact(192).enumerate() {
                        let what = format!("{dtype:?}, row {r} of {m}, {}", kernel.name());
                        assert_bits_eq(&batch[r * 40..][..40], &w.matmul_with(kernel, row, 1), &what);
                    }
                }
            }
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

    /// Q8_0 (SmolLM2's output projection) is candle's arithmetic: the same activations and
    /// integer sums, so the products differ from candle's only in the order of the f32 sums
    /// (candle adds 8 partial sums per block across lanes, the kernels here one exact sum per
    /// block): within 1e-5 of the largest, for a single row (decode) and for a batch.
    #[test]
    fn q8_0_products_follow_candles() {
        let mut rng = Rng(3);
        for (rows, cols, m) in [(37, 576, 1), (64, 320, 5), (9, 32, 2)] {
            let (w, q) = random_matrix(GgmlDType::Q8_0, rows, cols, &mut rng);
            let x = random_activations(m, cols, &mut rng);
            let theirs = candles_product(q, &x, m, cols);
            for kernel in kernels() {
                let err = relative_error(&w.matmul_with(kernel, &x, m), &theirs);
                assert!(err < 1e-5, "{rows}×{cols}, {m} rows, {}: relative error {err} against candle", kernel.name());
            }
        }
    }

    /// Stacked matrices give each part's products, in order, bit for bit, though the parts'
    /// rows fall into other groups and lanes there.
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
                    assert_bits_eq(got, want, &format!("{m} rows, part at {at}"));
                }
                at += p.rows();
            }
        }
        let other = random_matrix(GgmlDType::Q8_0, 8, 96, &mut rng).0;
        assert!(QuantMatrix::stack(&[&parts[0], &other]).is_none(), "types differ");
    }

    /// The interleaved layout gives back every row's blocks as GGML stored them.
    #[test]
    fn interleaving_keeps_every_block() {
        let mut rng = Rng(13);
        for dtype in TYPES {
            let (w, q) = random_matrix(dtype, 21, 64, &mut rng);
            let data = q.data().unwrap();
            let size = dtype.type_size();
            for n in 0..21 {
                for b in 0..2 {
                    let raw = &data[(n * 2 + b) * size..][..size];
                    let block = w.raw_block(n, b);
                    let mut back = block.d.to_le_bytes().to_vec();
                    if dtype == GgmlDType::Q4_1 {
                        back.extend(block.m.to_le_bytes());
                        back.extend(&block.bytes[..16]);
                    } else {
                        back.extend(block.bytes);
                    }
                    assert_eq!(back, raw, "{dtype:?} row {n} block {b}");
                }
            }
        }
    }

    /// A scratch that served a larger product serves a smaller one of another type.
    #[test]
    fn scratch_is_reused_across_shapes_and_types() {
        let mut rng = Rng(5);
        let kernel = Kernel::detect();
        let mut scratch = Scratch::default();
        for (dtype, rows, cols, m) in
            [(GgmlDType::Q4_1, 70, 320, 6), (GgmlDType::Q8_0, 20, 64, 2), (GgmlDType::Q4_1, 9, 96, 1)]
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
            for chunk in finite.chunks_exact(8) {
                let got = super::x86::f16x8_for_test(simd, chunk.try_into().unwrap());
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
        assert!(QuantMatrix::from_ggml(GgmlDType::Q5_1, 1, 32, &[0; 24]).is_err());
    }
}
