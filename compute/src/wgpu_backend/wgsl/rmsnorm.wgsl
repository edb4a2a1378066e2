// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, and with `quantize` the result also as
// 8-bit blocks for the quantized products that read it (saving a dispatch). One workgroup
// per token; with `last_only` workgroup i normalises the last token of the submission's
// i-th sampled sequence into row i (the final norm, whose only consumer is the output
// projection of those positions). With `add` the result is added to `out` instead (a norm after attention or
// the MLP, before the residual add).
struct P { dim: u32, eps: f32, last_only: u32, quantize: u32, add: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> xq: array<u32>;
@group(0) @binding(6) var<storage, read_write> xs: array<vec2<f32>>;

var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var t = wg.x;
    var o = wg.x;
    if (p.last_only != 0u) {
        t = st.seq[wg.x].row;
    }
    var s = 0.0;
    for (var i = lid; i < p.dim; i += 256u) {
        let v = x[t * p.dim + i];
        s += v * v;
    }
    part[lid] = s;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (lid < k) { part[lid] += part[lid + k]; }
        workgroupBarrier();
    }
    let m = sqrt(part[0] / f32(p.dim) + p.eps);
    // Whole 32-value blocks per invocation, so each can quantize what it wrote.
    let blocks = p.dim / 32u;
    for (var b = lid; b < blocks; b += 256u) {
        var v: array<f32, 32>;
        for (var i = 0u; i < 32u; i++) {
            let j = b * 32u + i;
            v[i] = x[t * p.dim + j] / m * w[j];
            if (p.add != 0u) {
                out[o * p.dim + j] += v[i];
            } else {
                out[o * p.dim + j] = v[i];
            }
        }
        if (p.quantize != 0u) { store_q8(o * blocks + b, v); }
    }
}
