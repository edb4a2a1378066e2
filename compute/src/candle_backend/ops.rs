//! The work of a forward pass between the matrix products, on plain slices: RMSNorm, RoPE,
//! the gated activations and attention over a sequence's KV cache.
//!
//! These replaced candle tensor ops, one allocation and one pass over memory each, which
//! for a 135M model cost more than the products themselves (a decode step ran ~40 of them
//! per layer, the KV cache was concatenated anew and its heads copied per query head every
//! step). The elementwise ops and the norm compute what candle's do, in the same order, so
//! they give candle's results bit for bit (tested below); attention sums its dot products in
//! another order than candle's `matmul` and so agrees to float rounding (tested against an
//! f64 reference).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::model::Activation;

/// Candle's `SQRT_TWO_OVER_PI_F32` (its GELU's constant), so that GELU stays bit for bit.
#[allow(clippy::excessive_precision)]
const SQRT_TWO_OVER_PI: f32 = 0.79788456080286535587989211986876373;

/// Multiply-adds of attention below which one thread does all of it: splitting costs
/// rayon's wake-up, a few microseconds.
const PARALLEL_ATTENTION: usize = 32 * 1024;

/// RMSNorm of each row of `src` (rows of `w.len()`) into `dst`, as `candle_nn::ops::rms_norm`:
/// `x / sqrt(mean(x²) + eps) · w`, the squares summed in order.
pub(super) fn rms_norm(src: &[f32], w: &[f32], eps: f32, dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    for (s, d) in src.chunks_exact(w.len()).zip(dst.chunks_exact_mut(w.len())) {
        let m = norm_divisor(s, eps);
        for ((d, &s), &a) in d.iter_mut().zip(s).zip(w) {
            *d = s / m * a;
        }
    }
}

/// [`rms_norm`] in place.
pub(super) fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        let m = norm_divisor(row, eps);
        for (x, &a) in row.iter_mut().zip(w) {
            *x = *x / m * a;
        }
    }
}

fn norm_divisor(row: &[f32], eps: f32) -> f32 {
    let sum2 = row.iter().map(|&v| v * v).sum::<f32>();
    (sum2 / row.len() as f32 + eps).sqrt()
}

/// Rotates every head (`dim` values) of `x` by one position's angles (`cos`, `sin`: `dim / 2`
/// each): the pairs `(i, i + dim / 2)` with `neox` (candle's `rope`), else `(2i, 2i + 1)`
/// (`rope_i`), with candle's expressions.
pub(super) fn rope(x: &mut [f32], dim: usize, cos: &[f32], sin: &[f32], neox: bool) {
    let half = dim / 2;
    for head in x.chunks_exact_mut(dim) {
        for (i, (&c, &s)) in cos.iter().zip(sin).enumerate() {
            let (i1, i2) = if neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
            let (x1, x2) = (head[i1], head[i2]);
            head[i1] = x1 * c - x2 * s;
            head[i2] = x1 * s + x2 * c;
        }
    }
}

/// `act(gate) · up` for rows of `gate_up` (gate then up, `width` each), into `out` (rows of
/// `width`): candle's `silu` and (tanh) `gelu`.
pub(super) fn gated(act: Activation, gate_up: &[f32], width: usize, out: &mut [f32]) {
    for (gu, o) in gate_up.chunks_exact(2 * width).zip(out.chunks_exact_mut(width)) {
        let (gate, up) = gu.split_at(width);
        for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
            let a = match act {
                Activation::Silu => g / (1.0 + (-g).exp()),
                Activation::GeluTanh => 0.5 * g * (1.0 + (SQRT_TWO_OVER_PI * g * (1.0 + 0.044715 * g * g)).tanh()),
            };
            *o = a * u;
        }
    }
}

/// `a += b`, elementwise.
pub(super) fn add(a: &mut [f32], b: &[f32]) {
    for (a, &b) in a.iter_mut().zip(b) {
        *a += b;
    }
}

/// The attention heads of a layer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Heads {
    /// Query heads.
    pub(super) n: usize,
    /// Key/value heads: each serves `n / kv` consecutive query heads.
    pub(super) kv: usize,
    /// Values per head.
    pub(super) dim: usize,
    /// Factor on the scores.
    pub(super) scale: f32,
}

/// One sequence's keys and values so far, `positions × (kv heads · dim)` each: a token's
/// heads side by side, tokens one after another, so that a step appends its rows.
#[derive(Debug, Default)]
pub(super) struct KvCache {
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
}

/// Which keys a query row sees: positions `first..=last` of slot `slot`'s cache.
#[derive(Clone, Copy, Debug)]
pub(super) struct Keys {
    pub(super) slot: usize,
    pub(super) first: usize,
    pub(super) last: usize,
}

thread_local! {
    /// Each thread's scores of one head, kept so that attention allocates nothing once warm.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Attention of every query row: row `r`'s heads are `q[r · q_stride..][..heads.n · dim]`,
/// its keys `keys[r]` in `caches`, its output `out[r · heads.n · dim..]`. Softmax over the
/// visible keys only, which is candle's masked softmax (a masked score's exponential is
/// exactly 0). Rows and heads are independent work items, so a row's result does not depend
/// on the rest of the batch or on how the work is split.
pub(super) fn attention(heads: Heads, q: &[f32], q_stride: usize, keys: &[Keys], caches: &[KvCache], out: &mut [f32]) {
    let dim = heads.dim;
    let group = heads.n / heads.kv;
    let kv_width = heads.kv * dim;
    debug_assert_eq!(out.len(), keys.len() * heads.n * dim);
    let one = |(i, out): (usize, &mut [f32])| {
        let (r, h) = (i / heads.n, i % heads.n);
        let Keys { slot, first, last } = keys[r];
        let cache = &caches[slot];
        let q = &q[r * q_stride + h * dim..][..dim];
        let g = (h / group) * dim;
        let visible = first * kv_width..(last + 1) * kv_width;
        SCORES.with_borrow_mut(|scores| {
            scores.clear();
            scores
                .extend(cache.k[visible.clone()].chunks_exact(kv_width).map(|k| dot(q, &k[g..g + dim]) * heads.scale));
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            out.fill(0.0);
            for (v, &p) in cache.v[visible].chunks_exact(kv_width).zip(scores.iter()) {
                let p = p / sum;
                for (o, &v) in out.iter_mut().zip(&v[g..g + dim]) {
                    *o += p * v;
                }
            }
        });
    };
    let work: usize = keys.iter().map(|k| k.last + 1 - k.first).sum::<usize>() * heads.n * dim;
    if work < PARALLEL_ATTENTION || rayon::current_num_threads() == 1 {
        out.chunks_exact_mut(dim).enumerate().for_each(one);
    } else {
        out.par_chunks_exact_mut(dim).enumerate().for_each(one);
    }
}

/// A dot product in 8 lanes (which the compiler keeps in one SIMD register), then the lanes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        let (x, y): (&[f32; 8], &[f32; 8]) = (x.try_into().expect("8"), y.try_into().expect("8"));
        for ((l, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *l += x * y;
        }
    }
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7])) + tail
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn tensor(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn assert_bits(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{what}: value {i} is {g}, candle's {w}");
        }
    }

    #[test]
    fn rms_norm_is_candles() {
        let (rows, width) = (5, 96);
        let x = random(rows * width, 1);
        let w = random(width, 2);
        let want = values(&candle_nn::ops::rms_norm(&tensor(&x, &[rows, width]), &tensor(&w, &[width]), 1e-5).unwrap());
        let mut got = vec![0f32; x.len()];
        rms_norm(&x, &w, 1e-5, &mut got);
        assert_bits(&got, &want, "rms_norm");
        let mut in_place = x.clone();
        rms_norm_in_place(&mut in_place, &w, 1e-5);
        assert_bits(&in_place, &want, "rms_norm_in_place");
    }

    #[test]
    fn rope_is_candles_in_both_layouts() {
        let (heads, dim) = (3, 16);
        let x = random(heads * dim, 3);
        let angles: Vec<f32> = random(dim / 2, 4).iter().map(|a| a * 3.0).collect();
        let (cos, sin): (Vec<f32>, Vec<f32>) = angles.iter().map(|a| (a.cos(), a.sin())).unzip();
        for neox in [true, false] {
            let f = if neox { candle_nn::rotary_emb::rope } else { candle_nn::rotary_emb::rope_i };
            let xt = tensor(&x, &[1, heads, 1, dim]);
            let want = values(&f(&xt, &tensor(&cos, &[1, dim / 2]), &tensor(&sin, &[1, dim / 2])).unwrap());
            let mut got = x.clone();
            rope(&mut got, dim, &cos, &sin, neox);
            assert_bits(&got, &want, if neox { "rope" } else { "rope_i" });
        }
    }

    #[test]
    fn gated_activations_are_candles() {
        let width = 40;
        let gu: Vec<f32> = random(3 * 2 * width, 5).iter().map(|v| v * 6.0).collect();
        let t = tensor(&gu, &[3, 2 * width]);
        let (gate, up) = (t.narrow(1, 0, width).unwrap(), t.narrow(1, width, width).unwrap());
        for act in [Activation::Silu, Activation::GeluTanh] {
            let a = match act {
                Activation::Silu => candle_nn::ops::silu(&gate).unwrap(),
                Activation::GeluTanh => gate.gelu().unwrap(),
            };
            let want = values(&(a * &up).unwrap());
            let mut got = vec![0f32; 3 * width];
            gated(act, &gu, width, &mut got);
            assert_bits(&got, &want, &format!("{act:?}"));
        }
    }

    /// Attention written out in f64 for one row and head: scores, softmax, weighted values.
    fn reference(q: &[f32], cache: &KvCache, kv_width: usize, g: usize, keys: Keys, heads: Heads) -> Vec<f32> {
        let dim = heads.dim;
        let at = |m: &[f32], j: usize| m[j * kv_width + g * dim..][..dim].to_vec();
        let scores: Vec<f64> = (keys.first..=keys.last)
            .map(|j| {
                at(&cache.k, j).iter().zip(q).map(|(&k, &q)| k as f64 * q as f64).sum::<f64>() * heads.scale as f64
            })
            .collect();
        let max = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        let mut out = vec![0f64; dim];
        for (p, j) in e.iter().zip(keys.first..=keys.last) {
            for (o, v) in out.iter_mut().zip(at(&cache.v, j)) {
                *o += p / sum * v as f64;
            }
        }
        out.iter().map(|&o| o as f32).collect()
    }

    /// Grouped-query attention (3 query heads per key/value head) of rows with different
    /// sequences and windows, some long enough to be split across threads, against the f64
    /// reference; and each row the same computed alone as in the batch.
    #[test]
    fn attention_matches_the_f64_reference_and_rows_are_independent() {
        let heads = Heads { n: 6, kv: 2, dim: 20, scale: 0.2 };
        let kv_width = heads.kv * heads.dim;
        let lens = [7, 300, 1];
        let caches: Vec<KvCache> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| KvCache {
                k: random(len * kv_width, 10 + i as u64),
                v: random(len * kv_width, 20 + i as u64),
            })
            .collect();
        let keys = [
            Keys { slot: 0, first: 0, last: 6 },
            Keys { slot: 1, first: 0, last: 299 },
            Keys { slot: 1, first: 250, last: 290 },
            Keys { slot: 2, first: 0, last: 0 },
            Keys { slot: 0, first: 3, last: 3 },
        ];
        let q_stride = heads.n * heads.dim + 7;
        let q: Vec<f32> = random(keys.len() * q_stride, 30).iter().map(|v| v * 4.0).collect();
        let width = heads.n * heads.dim;
        let mut out = vec![0f32; keys.len() * width];
        attention(heads, &q, q_stride, &keys, &caches, &mut out);
        for (r, &k) in keys.iter().enumerate() {
            let mut alone = vec![0f32; width];
            attention(heads, &q[r * q_stride..][..q_stride], q_stride, &[k], &caches, &mut alone);
            assert_bits(&alone, &out[r * width..][..width], &format!("row {r} alone"));
            for h in 0..heads.n {
                let want = reference(
                    &q[r * q_stride + h * heads.dim..][..heads.dim],
                    &caches[k.slot],
                    kv_width,
                    h / 3,
                    k,
                    heads,
                );
                for (d, (&g, &w)) in out[r * width + h * heads.dim..][..heads.dim].iter().zip(&want).enumerate() {
                    assert!((g - w).abs() <= 1e-5, "row {r}, head {h}, value {d}: {g}, {w} expected");
                }
            }
        }
    }

    #[test]
    fn dot_handles_a_tail() {
        let (a, b) = (random(21, 40), random(21, 41));
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - want).abs() < 1e-5);
    }
}
