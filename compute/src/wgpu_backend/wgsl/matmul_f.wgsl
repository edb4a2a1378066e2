// Y[t, r] (+)= W[r] . X[t] for a chunk of prompt tokens, float weights; tiled as matmul_q.
// Row r of token t goes to y[t * y_stride + y_off + r]: products that share an input can
// write side by side into one buffer (q, k and v; gate and up).
struct P { rows: u32, bpr: u32, accumulate: u32, y_stride: u32, y_off: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

var<workgroup> tw: array<vec4<f32>, 256>;
var<workgroup> tx: array<vec4<f32>, 256>;

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
            var w = F8(vec4<f32>(0.0), vec4<f32>(0.0));
            if (r < p.rows) { w = wdeq(r * p.bpr + blk, lid % 4u); }
            tw[lid * 2u] = w.a;
            tw[lid * 2u + 1u] = w.b;
        } else {
            let i = lid - 128u;
            let t = t0 + i / 4u;
            var a = vec4<f32>(0.0);
            var b = vec4<f32>(0.0);
            if (t < st.n_tok) {
                let xb = (t * p.bpr + blk) * 8u + (i % 4u) * 2u;
                a = x[xb];
                b = x[xb + 1u];
            }
            tx[i * 2u] = a;
            tx[i * 2u + 1u] = b;
        }
        workgroupBarrier();
        for (var i = 0u; i < 2u; i++) {
            for (var j = 0u; j < 2u; j++) {
                let r = lr + 16u * i;
                let t = lt + 16u * j;
                var s = 0.0;
                for (var v = 0u; v < 8u; v++) { s += dot(tw[r * 8u + v], tx[t * 8u + v]); }
                acc[i * 2u + j] += s;
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
