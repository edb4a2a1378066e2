const WPB: u32 = 32u;
fn wdeq(gb: u32, sub: u32) -> F8 {
    let b = gb * 32u + sub * 8u;
    return F8(
        bitcast<vec4<f32>>(vec4<u32>(w_q[b], w_q[b + 1u], w_q[b + 2u], w_q[b + 3u])),
        bitcast<vec4<f32>>(vec4<u32>(w_q[b + 4u], w_q[b + 5u], w_q[b + 6u], w_q[b + 7u])),
    );
}
