// Log-probabilities for the sampled sequences that ask for them: the chosen token's (the
// sampler's output) and the k most likely tokens', under the model's own distribution (the
// log-softmax of the logits, at temperature 1, as OpenAI reports them). One workgroup per
// sampled sequence; invocation i owns a contiguous slice of the vocabulary. Each entry of
// `out` is STRIDE floats: the chosen token's log-probability, k, then k pairs of (token id
// as bits, log-probability), most likely first; ties go to the lower id.
struct P { vocab: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> chosen: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
const MAX_TOP: u32 = 20u;
const STRIDE: u32 = 42u;
const NONE: u32 = 0xFFFFFFFFu;
var<workgroup> rf: array<f32, 256>;
var<workgroup> ri: array<u32, 256>;
var<workgroup> picked: array<u32, 20>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let sq = st.seq[wg.x];
    if (sq.logprobs == 0u) { return; }
    let k = min(sq.logprobs - 1u, MAX_TOP);
    let base = wg.x * p.vocab;
    let chunk = (p.vocab + WG - 1u) / WG;
    let lo = min(lid * chunk, p.vocab);
    let hi = min(lo + chunk, p.vocab);

    var m = -3.402823e38;
    for (var i = lo; i < hi; i++) { m = max(m, logits[base + i]); }
    rf[lid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { rf[lid] = max(rf[lid], rf[lid + s]); }
        workgroupBarrier();
    }
    let mx = rf[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var i = lo; i < hi; i++) { sum += exp(logits[base + i] - mx); }
    rf[lid] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { rf[lid] += rf[lid + s]; }
        workgroupBarrier();
    }
    let lse = mx + log(rf[0]);
    workgroupBarrier();
    let o = wg.x * STRIDE;
    if (lid == 0u) {
        out[o] = logits[base + chosen[wg.x]] - lse;
        out[o + 1u] = f32(k);
    }

    for (var r = 0u; r < k; r++) {
        // The most likely token of this slice not picked yet.
        var bm = -3.402823e38;
        var bi = NONE;
        for (var i = lo; i < hi; i++) {
            let l = logits[base + i];
            if (bi == NONE || l > bm) {
                var taken = false;
                for (var q = 0u; q < r; q++) { if (picked[q] == i) { taken = true; } }
                if (!taken) { bm = l; bi = i; }
            }
        }
        rf[lid] = bm;
        ri[lid] = bi;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (lid < s) {
                let om = rf[lid + s];
                let oi = ri[lid + s];
                if (oi != NONE && (ri[lid] == NONE || om > rf[lid] || (om == rf[lid] && oi < ri[lid]))) {
                    rf[lid] = om;
                    ri[lid] = oi;
                }
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            picked[r] = ri[0];
            out[o + 2u + 2u * r] = bitcast<f32>(ri[0]);
            out[o + 3u + 2u * r] = rf[0] - lse;
        }
        workgroupBarrier();
    }
}
