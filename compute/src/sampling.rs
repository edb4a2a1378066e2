//! Sampling parameters and the host-side sampler.
//!
//! The random numbers are counter-based (a hash of the seed and the step index) rather than
//! drawn from a stateful generator, so the GPU kernel computes exactly the same uniform
//! number for step `n` as the host does, without any state crossing the bus. The algorithm
//! (temperature, then a top-p threshold found by bisection, then an inverse-CDF walk in
//! vocabulary order) is also the one the WGSL kernel runs; the two backends differ only
//! in floating-point summation order.

use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the most probable tokens whose mass reaches `top_p` (1 keeps all).
    pub top_p: f32,
    /// Seed of the random numbers; with the same seed the same tokens come out.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_p: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::default()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::InvalidSampling(format!(
                "temperature {} must be a finite number >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidSampling(format!("top_p {} must be in (0, 1]", self.top_p)));
        }
        Ok(())
    }

    pub(crate) fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// PCG-style 32-bit hash (the same function is in the WGSL sampler).
pub(crate) fn pcg_hash(x: u32) -> u32 {
    let state = x.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// The uniform number in [0, 1) used at generation step `step`.
pub(crate) fn uniform(seed: u64, step: u32) -> f32 {
    let h = pcg_hash(step ^ pcg_hash((seed >> 32) as u32 ^ pcg_hash(seed as u32)));
    (h >> 8) as f32 / 16_777_216.0
}

/// Bisection steps for the top-p threshold: the threshold is a probability relative to the
/// most likely token, in [0, 1], so 24 halvings reach f32 resolution.
pub(crate) const TOP_P_ITERS: u32 = 24;

/// Chooses a token from logits on the host.
pub(crate) fn sample(logits: &[f32], params: &SamplingParams, step: u32) -> u32 {
    let argmax = || {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    if params.is_greedy() {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / params.temperature;
    let probs: Vec<f32> = logits.iter().map(|&l| ((l - max) * inv_t).exp()).collect();
    let total: f32 = probs.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return argmax();
    }
    let mut threshold = 0.0f32;
    if params.top_p < 1.0 {
        let target = params.top_p * total;
        let (mut lo, mut hi) = (0.0f32, 1.0f32);
        for _ in 0..TOP_P_ITERS {
            let mid = 0.5 * (lo + hi);
            let kept: f32 = probs.iter().filter(|&&p| p >= mid).sum();
            if kept >= target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        threshold = lo;
    }
    let kept: f32 = probs.iter().filter(|&&p| p >= threshold).sum();
    let r = uniform(params.seed, step) * kept;
    let mut acc = 0.0f32;
    let mut last = argmax();
    for (i, &p) in probs.iter().enumerate() {
        if p >= threshold {
            acc += p;
            last = i as u32;
            if acc > r {
                return i as u32;
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_first_maximum() {
        assert_eq!(sample(&[0.0, 3.0, 3.0, -1.0], &SamplingParams::greedy(), 0), 1);
    }

    #[test]
    fn top_p_excludes_unlikely_tokens() {
        // Token 2 holds ~0.0003 of the mass; top_p 0.9 must never pick it.
        let logits = [5.0, 5.0, -3.0];
        for seed in 0..200 {
            let p = SamplingParams { temperature: 1.0, top_p: 0.9, seed };
            assert_ne!(sample(&logits, &p, 0), 2, "seed {seed}");
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let logits = [0.0, (3.0f32).ln()]; // p = 0.25, 0.75
        let ones = (0..4000)
            .filter(|&s| sample(&logits, &SamplingParams { temperature: 1.0, top_p: 1.0, seed: 7 }, s) == 1)
            .count();
        assert!((2800..3200).contains(&ones), "{ones} of 4000");
    }
}
