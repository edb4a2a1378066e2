// Y[t, r] (+)= W[r] . X[t] for a chunk of tokens, float weights; one invocation per row,
// as matrows_q.
// Row r of token t goes to y[t * y_stride + y_off + r]: products that share an input can
// write side by side into one buffer (q, k and v; gate and up).
struct P { rows: u32, bpr: u32, accumulate: u32, y_stride: u32, y_off: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= p.rows) { return; }
    for (var t0 = 0u; t0 < st.n_tok; t0 += 8u) {
        var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let nt = min(8u, st.n_tok - t0);
        for (var u = 0u; u < p.bpr * 4u; u++) {
            let w = wdeq(row * p.bpr + u / 4u, u % 4u);
            for (var j = 0u; j < nt; j++) {
                let xb = (t0 + j) * p.bpr * 8u + u * 2u;
                acc[j] += dot(w.a, x[xb]) + dot(w.b, x[xb + 1u]);
            }
        }
        for (var j = 0u; j < nt; j++) {
            let o = (t0 + j) * p.y_stride + p.y_off + row;
            var prev = 0.0;
            if (p.accumulate != 0u) { prev = y[o]; }
            y[o] = prev + acc[j];
        }
    }
}
