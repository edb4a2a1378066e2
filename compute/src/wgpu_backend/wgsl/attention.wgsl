// Causal attention of one query head of one chunk token over the KV cache, with
// grouped-query heads (query head h reads key/value head h / (n_heads / n_kv)). Scores go
// to a scratch buffer so that the context length is not bounded by workgroup memory. With a
// `window` (sliding-window layers) a query sees only its own and the window - 1 keys before.
// A token attends to its own sequence's keys, found through its page table (see rope.wgsl).
struct P { n_heads: u32, n_kv: u32, hd: u32, ctx: u32, scale: f32, window: u32, _b: u32, _c: u32 }
@group(0) @binding(1) var<uniform> p: P;
// The queries, inside the fused q/k/v buffer (see rope.wgsl).
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> kc: array<f32>;
@group(0) @binding(4) var<storage, read> vc: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read> pages: array<u32>;

// The cache row of position j of the sequence whose page table starts at `table`.
fn cache_row(table: u32, j: u32) -> u32 {
    return pages[table + j / PAGE] * PAGE + j % PAGE;
}

const WG: u32 = 128u;
var<workgroup> qv: array<f32, 256>;
var<workgroup> red: array<f32, 128>;
var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.x;
    let t = wg.y;
    let kvh = h / (p.n_heads / p.n_kv);
    let table = st.tok[t].x * st.pages_per_seq;
    let len = st.tok[t].y + 1u;
    var start = 0u;
    if (p.window != 0u && len > p.window) { start = len - p.window; }
    let kvd = p.n_kv * p.hd;
    let qo = t * (p.n_heads * p.hd + 2u * kvd) + h * p.hd;
    let oo = t * p.n_heads * p.hd + h * p.hd;
    let sb = (t * p.n_heads + h) * p.ctx;
    for (var d = lid; d < p.hd; d += WG) { qv[d] = q[qo + d]; }
    workgroupBarrier();

    var m = -3.402823e38;
    for (var j = start + lid; j < len; j += WG) {
        let kb = cache_row(table, j) * kvd + kvh * p.hd;
        var s = 0.0;
        for (var d = 0u; d < p.hd; d++) { s += qv[d] * kc[kb + d]; }
        s = s * p.scale;
        scores[sb + j] = s;
        m = max(m, s);
    }
    red[lid] = m;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) { red[lid] = max(red[lid], red[lid + k]); }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();

    var sum = 0.0;
    for (var j = start + lid; j < len; j += WG) {
        let e = exp(scores[sb + j] - mx);
        scores[sb + j] = e;
        sum += e;
    }
    red[lid] = sum;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) { red[lid] += red[lid + k]; }
        workgroupBarrier();
    }
    let total = red[0];
    // Other invocations' scores are read below: make the storage writes visible.
    storageBarrier();
    workgroupBarrier();

    // Each output dimension is split over `chunks` interleaved slices of positions.
    let chunks = max(1u, WG / p.hd);
    for (var idx = lid; idx < p.hd * chunks; idx += WG) {
        let d = idx % p.hd;
        let c = idx / p.hd;
        var acc = 0.0;
        for (var j = start + c; j < len; j += chunks) {
            acc += (scores[sb + j] / total) * vc[cache_row(table, j) * kvd + kvh * p.hd + d];
        }
        part[idx] = acc;
    }
    workgroupBarrier();
    for (var d = lid; d < p.hd; d += WG) {
        var acc = 0.0;
        for (var c = 0u; c < chunks; c++) { acc += part[c * p.hd + d]; }
        out[oo + d] = acc;
    }
}
