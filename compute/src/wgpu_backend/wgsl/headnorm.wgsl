// RMSNorm of each query and key head of each token, in place in the fused q|k|v buffer
// (Qwen 3, Gemma 3: before RoPE). One workgroup per head per token: heads 0 .. n_heads-1
// are queries (weight wq), the next n_kv keys (weight wk).
struct P { n_heads: u32, n_kv: u32, hd: u32, eps: f32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(2) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(3) var<storage, read> wq: array<f32>;
@group(0) @binding(4) var<storage, read> wk: array<f32>;

var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.x;
    let t = wg.y;
    let o = t * (p.n_heads + 2u * p.n_kv) * p.hd + h * p.hd;
    var s = 0.0;
    for (var i = lid; i < p.hd; i += 64u) {
        let v = qkv[o + i];
        s += v * v;
    }
    part[lid] = s;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if (lid < k) { part[lid] += part[lid + k]; }
        workgroupBarrier();
    }
    let m = sqrt(part[0] / f32(p.hd) + p.eps);
    for (var i = lid; i < p.hd; i += 64u) {
        var w: f32;
        if (h < p.n_heads) { w = wq[i]; } else { w = wk[i]; }
        qkv[o + i] = qkv[o + i] / m * w;
    }
}
