const WPB: u32 = 8u;
fn wq(gb: u32, sub: u32) -> Q8 {
    let base = gb * 8u + sub * 2u;
    return Q8(i8x4(w_q[base]), i8x4(w_q[base + 1u]));
}
