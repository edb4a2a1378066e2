// y[row] (+)= W[row] . x for one token, with x quantized to 8 bits. TPR invocations share
// a row (64 / TPR rows per workgroup): on GPUs many lanes per row keep memory accesses
// together; on software rasterizers (lavapipe) one lane per row avoids workgroup barriers,
// which they implement slowly. Each lane takes whole blocks and computes the type's per-block
// formula (`bdot`).
// Row r of token t goes to y[t * y_stride + y_off + r]: products that share an input can
// write side by side into one buffer (q, k and v; gate and up).
struct P { rows: u32, bpr: u32, accumulate: u32, y_stride: u32, y_off: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(4) var<storage, read> xq: array<u32>;
@group(0) @binding(5) var<storage, read> xs: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

const TPR: u32 = __TPR__u;
var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let lane = lid % TPR;
    let row = (wg.x + wg.y * 32768u) * (64u / TPR) + lid / TPR;
    var acc = 0.0;
    if (row < p.rows) {
        for (var blk = lane; blk < p.bpr; blk += TPR) {
            let gb = row * p.bpr + blk;
            var sums = vec2<i32>(0);
            for (var sub = 0u; sub < 4u; sub++) {
                let w = wq(gb, sub);
                let xb = blk * 8u + sub * 2u;
                let s = dot(w.a, i8x4(xq[xb])) + dot(w.b, i8x4(xq[xb + 1u]));
                if (sub < 2u) { sums.x += s; } else { sums.y += s; }
            }
            acc += bdot(sums.x, sums.y, w_s[gb], xs[blk]);
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
