// One (scale, minimum) pair per 32-value block: every quantized layout but Q6K's.
fn wscale(gb: u32, sub: u32) -> vec2<f32> {
    return w_s[gb];
}

// A block's share of a dot product, from the integer sums of its first and second 16
// values with the 8-bit activations (d_x, s_x): candle's per-block formula
// sumi * d_w * d_x + m_w * s_x.
fn bdot(lo: i32, hi: i32, ws: vec2<f32>, xv: vec2<f32>) -> f32 {
    return f32(lo + hi) * ws.x * xv.x + ws.y * xv.y;
}
