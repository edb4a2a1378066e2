// Chooses the next token on the device, so one u32 per sequence comes back per step. One
// workgroup per sampled sequence, over its row of logits, with its own parameters;
// invocation i owns a contiguous slice of the vocabulary. Greedy: the first maximum.
// Otherwise the host sampler's algorithm (see sampling.rs): probabilities at temperature T,
// a top-p threshold found by bisection, then the token where the cumulative kept mass in
// vocabulary order passes u * kept, u being the counter-based random number of this step.
struct P { vocab: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> probs: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
const TOP_P_ITERS: u32 = 24u;
var<workgroup> rf: array<f32, 256>;
var<workgroup> ri: array<u32, 256>;
var<workgroup> pick: vec2<u32>;
var<workgroup> rest: f32;

fn pcg_hash(x: u32) -> u32 {
    let state = x * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    workgroupBarrier();
    rf[lid] = v;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) { rf[lid] += rf[lid + k]; }
        workgroupBarrier();
    }
    return rf[0];
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let sq = st.seq[wg.x];
    let base = wg.x * p.vocab;
    let chunk = (p.vocab + WG - 1u) / WG;
    let lo = min(lid * chunk, p.vocab);
    let hi = min(lo + chunk, p.vocab);

    var bm = -3.402823e38;
    var bi = 0xFFFFFFFFu;
    for (var i = lo; i < hi; i++) {
        let l = logits[base + i];
        if (l > bm || bi == 0xFFFFFFFFu) { bm = l; bi = i; }
    }
    rf[lid] = bm;
    ri[lid] = bi;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            let om = rf[lid + k];
            let oi = ri[lid + k];
            if (oi != 0xFFFFFFFFu && (ri[lid] == 0xFFFFFFFFu || om > rf[lid] || (om == rf[lid] && oi < ri[lid]))) {
                rf[lid] = om;
                ri[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let mx = rf[0];
    let best = ri[0];
    if (sq.greedy != 0u) {
        if (lid == 0u) { out[wg.x] = best; }
        return;
    }

    let inv_t = 1.0 / sq.temperature;
    var s = 0.0;
    for (var i = lo; i < hi; i++) {
        let e = exp((logits[base + i] - mx) * inv_t);
        probs[base + i] = e;
        s += e;
    }
    let total = reduce_sum(lid, s);

    var threshold = 0.0;
    if (sq.top_p < 1.0) {
        let target_mass = sq.top_p * total;
        var tlo = 0.0;
        var thi = 1.0;
        for (var it = 0u; it < TOP_P_ITERS; it++) {
            let mid = 0.5 * (tlo + thi);
            var kept = 0.0;
            for (var i = lo; i < hi; i++) {
                let e = probs[base + i];
                if (e >= mid) { kept += e; }
            }
            if (reduce_sum(lid, kept) >= target_mass) { tlo = mid; } else { thi = mid; }
        }
        threshold = tlo;
    }

    var kept = 0.0;
    for (var i = lo; i < hi; i++) {
        let e = probs[base + i];
        if (e >= threshold) { kept += e; }
    }
    workgroupBarrier();
    rf[lid] = kept;
    workgroupBarrier();
    if (lid == 0u) {
        var all = 0.0;
        for (var k = 0u; k < WG; k++) { all += rf[k]; }
        let h = pcg_hash(sq.step ^ pcg_hash(sq.seed_hi ^ pcg_hash(sq.seed_lo)));
        let r = f32(h >> 8u) / 16777216.0 * all;
        // The slice where the cumulative mass passes r, and what remains of r inside it.
        var acc = 0.0;
        var owner = WG;
        for (var k = 0u; k < WG; k++) {
            if (acc + rf[k] > r) { owner = k; break; }
            acc += rf[k];
        }
        pick = vec2<u32>(owner, 0u);
        rest = r - acc;
        // Rounding can leave r past the last slice: fall back to the most likely token.
        out[wg.x] = best;
    }
    workgroupBarrier();
    if (lid == pick.x) {
        var acc = 0.0;
        for (var i = lo; i < hi; i++) {
            let e = probs[base + i];
            if (e >= threshold) {
                acc += e;
                if (acc > rest) {
                    out[wg.x] = i;
                    break;
                }
            }
        }
    }
}
