const WPB: u32 = 16u;
fn wdeq(gb: u32, sub: u32) -> F8 {
    let b = gb * 16u + sub * 4u;
    return F8(
        vec4<f32>(unpack2x16float(w_q[b]), unpack2x16float(w_q[b + 1u])),
        vec4<f32>(unpack2x16float(w_q[b + 2u]), unpack2x16float(w_q[b + 3u])),
    );
}
