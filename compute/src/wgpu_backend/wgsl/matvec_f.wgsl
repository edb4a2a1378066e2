// y[row] (+)= W[row] . x for one token, float weights (F32, F16) and float activations.
// TPR lanes per row, as in matvec_q.
// Row r of token t goes to y[t * y_stride + y_off + r]: products that share an input can
// write side by side into one buffer (q, k and v; gate and up).
struct P { rows: u32, bpr: u32, accumulate: u32, y_stride: u32, y_off: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const TPR: u32 = __TPR__u;
var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let lane = lid % TPR;
    let row = (wg.x + wg.y * 32768u) * (64u / TPR) + lid / TPR;
    var acc = 0.0;
    if (row < p.rows) {
        for (var u = lane; u < p.bpr * 4u; u += TPR) {
            let w = wdeq(row * p.bpr + u / 4u, u % 4u);
            acc += dot(w.a, x[u * 2u]) + dot(w.b, x[u * 2u + 1u]);
        }
    }
    if (TPR > 1u) {
        part[lid] = acc;
        workgroupBarrier();
        for (var s = TPR / 2u; s > 0u; s >>= 1u) {
            if (lane < s) { part[lid] += part[lid + s]; }
            workgroupBarrier();
        }
        acc = part[lid - lane];
    }
    if (lane == 0u && row < p.rows) {
        var prev = 0.0;
        if (p.accumulate != 0u) { prev = y[p.y_off + row]; }
        y[p.y_off + row] = prev + acc;
    }
}
