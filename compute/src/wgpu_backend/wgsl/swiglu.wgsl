// h = silu(gate) * up (or with `gelu`, GELU's tanh approximation of gate, written as
// candle and GGML write it), where each token's gate and up projections lie side by side in gu;
// with `quantize`, h also as 8-bit blocks for the quantized down projection (saving a
// dispatch). One invocation per 32-value block of h.
struct P { n: u32, quantize: u32, gelu: u32, _c: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(2) var<storage, read> gu: array<f32>;
@group(0) @binding(3) var<storage, read_write> h: array<f32>;
@group(0) @binding(4) var<storage, read_write> xq: array<u32>;
@group(0) @binding(5) var<storage, read_write> xs: array<vec2<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    let per_tok = p.n / 32u;
    if (b >= per_tok * st.n_tok) { return; }
    let t = b / per_tok;
    let j0 = (b % per_tok) * 32u;
    var v: array<f32, 32>;
    for (var i = 0u; i < 32u; i++) {
        let a = gu[t * 2u * p.n + j0 + i];
        var act: f32;
        if (p.gelu != 0u) {
            // tanh is ±1 to f32 precision beyond ±10; the clamp keeps drivers that compute
            // it from exp() away from inf / inf.
            let z = clamp(0.7978846 * a * (1.0 + 0.044715 * a * a), -10.0, 10.0);
            act = 0.5 * a * (1.0 + tanh(z));
        } else {
            act = a / (1.0 + exp(-a));
        }
        v[i] = act * gu[t * 2u * p.n + p.n + j0 + i];
        h[b * 32u + i] = v[i];
    }
    if (p.quantize != 0u) { store_q8(b, v); }
}
