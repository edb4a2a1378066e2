// Dequantization for the quantized types, in candle's order: q * d + m.
fn wdeq(gb: u32, sub: u32) -> F8 {
    let q = wq(gb, sub);
    let s = wscale(gb, sub);
    return F8(vec4<f32>(q.a) * s.x + s.y, vec4<f32>(q.b) * s.x + s.y);
}
