// Y[t, r] (+)= W[r] . X[t] for a chunk of prompt tokens, quantized weights and 8-bit
// activations. A 16x16 workgroup computes a 32-row x 32-token tile, 2x2 outputs per
// invocation, staging one 32-value block of W and X at a time in workgroup memory, so
// each weight block is read once per 32 tokens instead of once per token.
// Row r of token t goes to y[t * y_stride + y_off + r]: products that share an input can
// write side by side into one buffer (q, k and v; gate and up).
struct P { rows: u32, bpr: u32, accumulate: u32, y_stride: u32, y_off: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(4) var<storage, read> xq: array<u32>;
@group(0) @binding(5) var<storage, read> xs: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

var<workgroup> tw: array<vec4<i32>, 256>;
var<workgroup> tx: array<vec4<i32>, 256>;
var<workgroup> tws: array<vec2<f32>, 32>;
var<workgroup> txs: array<vec2<f32>, 32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r0 = wg.x * 32u;
    let t0 = wg.y * 32u;
    let lr = lid % 16u;
    let lt = lid / 16u;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var blk = 0u; blk < p.bpr; blk++) {
        if (lid < 128u) {
            let r = r0 + lid / 4u;
            var q = Q8(vec4<i32>(0), vec4<i32>(0));
            if (r < p.rows) { q = wq(r * p.bpr + blk, lid % 4u); }
            tw[lid * 2u] = q.a;
            tw[lid * 2u + 1u] = q.b;
        } else {
            let i = lid - 128u;
            let t = t0 + i / 4u;
            var a = vec4<i32>(0);
            var b = vec4<i32>(0);
            if (t < st.n_tok) {
                let xb = (t * p.bpr + blk) * 8u + (i % 4u) * 2u;
                a = i8x4(xq[xb]);
                b = i8x4(xq[xb + 1u]);
            }
            tx[i * 2u] = a;
            tx[i * 2u + 1u] = b;
        }
        if (lid < 32u) {
            var s = vec2<f32>(0.0);
            if (r0 + lid < p.rows) { s = w_s[(r0 + lid) * p.bpr + blk]; }
            tws[lid] = s;
        } else if (lid < 64u) {
            var s = vec2<f32>(0.0);
            if (t0 + lid - 32u < st.n_tok) { s = xs[(t0 + lid - 32u) * p.bpr + blk]; }
            txs[lid - 32u] = s;
        }
        workgroupBarrier();
        for (var i = 0u; i < 2u; i++) {
            for (var j = 0u; j < 2u; j++) {
                let r = lr + 16u * i;
                let t = lt + 16u * j;
                // Values 0-15 of the block are vectors 0-3, values 16-31 vectors 4-7.
                var lo = 0;
                var hi = 0;
                for (var v = 0u; v < 4u; v++) {
                    lo += dot(tw[r * 8u + v], tx[t * 8u + v]);
                    hi += dot(tw[r * 8u + v + 4u], tx[t * 8u + v + 4u]);
                }
                acc[i * 2u + j] += bdot(lo, hi, tws[r], txs[t]);
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 2u; i++) {
        for (var j = 0u; j < 2u; j++) {
            let r = r0 + lr + 16u * i;
            let t = t0 + lt + 16u * j;
            if (r < p.rows && t < st.n_tok) {
                let o = t * p.y_stride + p.y_off + r;
                var prev = 0.0;
                if (p.accumulate != 0u) { prev = y[o]; }
                y[o] = prev + acc[i * 2u + j];
            }
        }
    }
}
