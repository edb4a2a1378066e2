// Activations to 8-bit blocks (see q8.wgsl), one invocation per 32-value block.
struct P { blocks_per_tok: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> xq: array<u32>;
@group(0) @binding(4) var<storage, read_write> xs: array<vec2<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= p.blocks_per_tok * st.n_tok) { return; }
    var v: array<f32, 32>;
    for (var i = 0u; i < 32u; i++) { v[i] = src[b * 32u + i]; }
    store_q8(b, v);
}
