// x[t] = row tokens[t] of the embedding, dequantized. One workgroup per token.
struct P { bpr: u32, dim: u32, _a: u32, _b: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(4) var<storage, read> tokens: array<u32>;
@group(0) @binding(5) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wg.x;
    let tok = tokens[t];
    for (var u = lid; u < p.bpr * 4u; u += 64u) {
        let v = wdeq(tok * p.bpr + u / 4u, u % 4u);
        let o = t * p.dim + u * 8u;
        x[o] = v.a.x; x[o + 1u] = v.a.y; x[o + 2u] = v.a.z; x[o + 3u] = v.a.w;
        x[o + 4u] = v.b.x; x[o + 5u] = v.b.y; x[o + 6u] = v.b.z; x[o + 7u] = v.b.w;
    }
}
