const WPB: u32 = 6u;
// Q6_K laid out per 32 values: Q4's nibbles in words 0-3 and, in words 4 and 5, the two
// high bits of values 0-15 and 16-31 (value e at bits 2 (e % 16)); offset by -32. Each half
// of the block has its own scale, w_s.x and w_s.y, and no minimum.
fn wq(gb: u32, sub: u32) -> Q8 {
    let base = gb * 6u + (sub & 1u) * 2u;
    let shift = (sub >> 1u) * 4u;
    let h = w_q[gb * 6u + 4u + (sub >> 1u)];
    let hs = (sub & 1u) * 16u;
    let o = vec4<i32>(32);
    return Q8(nib4(w_q[base], shift) + bits2x4(h, hs) - o, nib4(w_q[base + 1u], shift) + bits2x4(h, hs + 8u) - o);
}

fn wscale(gb: u32, sub: u32) -> vec2<f32> {
    let s = w_s[gb];
    return vec2<f32>(select(s.y, s.x, sub < 2u), 0.0);
}

fn bdot(lo: i32, hi: i32, ws: vec2<f32>, xv: vec2<f32>) -> f32 {
    return (f32(lo) * ws.x + f32(hi) * ws.y) * xv.x;
}
