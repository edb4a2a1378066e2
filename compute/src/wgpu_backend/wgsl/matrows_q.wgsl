// Y[t, r] (+)= W[r] . X[t] for a chunk of tokens, one invocation per row and no workgroup
// memory: the prefill kernel for software rasterizers, which vectorize across invocations
// but run barriers slowly. Each weight block is unpacked once per group of 8 tokens.
// Row r of token t goes to y[t * y_stride + y_off + r]: products that share an input can
// write side by side into one buffer (q, k and v; gate and up).
struct P { rows: u32, bpr: u32, accumulate: u32, y_stride: u32, y_off: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(4) var<storage, read> xq: array<u32>;
@group(0) @binding(5) var<storage, read> xs: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= p.rows) { return; }
    for (var t0 = 0u; t0 < st.n_tok; t0 += 8u) {
        var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let nt = min(8u, st.n_tok - t0);
        for (var blk = 0u; blk < p.bpr; blk++) {
            let gb = row * p.bpr + blk;
            let w0 = wq(gb, 0u);
            let w1 = wq(gb, 1u);
            let w2 = wq(gb, 2u);
            let w3 = wq(gb, 3u);
            let ws = w_s[gb];
            for (var j = 0u; j < nt; j++) {
                let xblk = (t0 + j) * p.bpr + blk;
                let xb = xblk * 8u;
                let lo = dot(w0.a, i8x4(xq[xb])) + dot(w0.b, i8x4(xq[xb + 1u]))
                    + dot(w1.a, i8x4(xq[xb + 2u])) + dot(w1.b, i8x4(xq[xb + 3u]));
                let hi = dot(w2.a, i8x4(xq[xb + 4u])) + dot(w2.b, i8x4(xq[xb + 5u]))
                    + dot(w3.a, i8x4(xq[xb + 6u])) + dot(w3.b, i8x4(xq[xb + 7u]));
                acc[j] += bdot(lo, hi, ws, xs[xblk]);
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
