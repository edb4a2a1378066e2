// Shared by every kernel: the per-submission step uniform and packing helpers.
// A submission is a chunk of tokens from any number of sequences (a batch).

// One sequence whose next token this submission chooses: the chunk row holding its last
// token, and how to sample (the seed and generation step select the random number).
struct Seq {
    row: u32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    greedy: u32,
    temperature: f32,
    top_p: f32,
    // 0: no log-probabilities; k + 1: the chosen token's and the k most likely tokens'.
    logprobs: u32,
}

struct Step {
    // Tokens processed by this submission (for the tail after the final norm: sequences).
    n_tok: u32,
    // Sequences sampled by this submission.
    n_seq: u32,
    // Entries of each sequence's row of the page table.
    pages_per_seq: u32,
    _a: u32,
    // Per chunk token: (sequence slot, position within its sequence, 0, 0).
    tok: array<vec4<u32>, 64>,
    seq: array<Seq, 64>,
}

@group(0) @binding(0) var<uniform> st: Step;

// Tokens per KV-cache page: a sequence's positions map to pages through the page table.
const PAGE: u32 = 32u;

// Eight values: one quarter of a 32-value GGML block.
struct Q8 { a: vec4<i32>, b: vec4<i32> }
struct F8 { a: vec4<f32>, b: vec4<f32> }

// Four signed bytes packed little-endian in a u32.
fn i8x4(w: u32) -> vec4<i32> {
    return vec4<i32>(
        bitcast<i32>(w << 24u) >> 24u,
        bitcast<i32>(w << 16u) >> 24u,
        bitcast<i32>(w << 8u) >> 24u,
        bitcast<i32>(w) >> 24u,
    );
}

// Four 4-bit values: the nibble at `shift` in each byte of a u32.
fn nib4(w: u32, shift: u32) -> vec4<i32> {
    let s = vec4<u32>(shift, shift + 8u, shift + 16u, shift + 24u);
    return vec4<i32>((vec4<u32>(w) >> s) & vec4<u32>(15u));
}

// Four single bits at `shift` .. `shift` + 3 of a u32, each as 16 (a fifth bit).
fn bit4(w: u32, shift: u32) -> vec4<i32> {
    let s = vec4<u32>(shift, shift + 1u, shift + 2u, shift + 3u);
    return vec4<i32>(((vec4<u32>(w) >> s) & vec4<u32>(1u)) << vec4<u32>(4u));
}

// Four 2-bit fields at `shift`, `shift` + 2, + 4, + 6 of a u32, each shifted to bits 4-5.
fn bits2x4(w: u32, shift: u32) -> vec4<i32> {
    let s = vec4<u32>(shift, shift + 2u, shift + 4u, shift + 6u);
    return vec4<i32>(((vec4<u32>(w) >> s) & vec4<u32>(3u)) << vec4<u32>(4u));
}
