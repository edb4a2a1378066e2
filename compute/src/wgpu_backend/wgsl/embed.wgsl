// x[t] = row tokens[t] of the embedding, dequantized, times `scale` (Gemma's square root of
// the width; 1 elsewhere). One workgroup per token; the embedding may come in blocks of
// rows (`first`, `rows`), each dispatch writing the tokens that fall in its block.
struct P { bpr: u32, dim: u32, scale: f32, first: u32, rows: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(4) var<storage, read> tokens: array<u32>;
@group(0) @binding(5) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wg.x;
    if (tokens[t] < p.first || tokens[t] >= p.first + p.rows) { return; }
    let tok = tokens[t] - p.first;
    for (var u = lid; u < p.bpr * 4u; u += 64u) {
        let w = wdeq(tok * p.bpr + u / 4u, u % 4u);
        let v = F8(w.a * p.scale, w.b * p.scale);
        let o = t * p.dim + u * 8u;
        x[o] = v.a.x; x[o + 1u] = v.a.y; x[o + 2u] = v.a.z; x[o + 3u] = v.a.w;
        x[o + 4u] = v.b.x; x[o + 5u] = v.b.y; x[o + 6u] = v.b.z; x[o + 7u] = v.b.w;
    }
}
