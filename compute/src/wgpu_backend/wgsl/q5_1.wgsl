const WPB: u32 = 5u;
// As Q5_0, without the -16 offset: the block's minimum m is added through w_s.y. Q5_K is
// laid out as this on upload (a scale and a minimum per 32 values).
fn wq(gb: u32, sub: u32) -> Q8 {
    let base = gb * 5u + (sub & 1u) * 2u;
    let shift = (sub >> 1u) * 4u;
    let h = w_q[gb * 5u + 4u];
    return Q8(nib4(w_q[base], shift) + bit4(h, sub * 8u), nib4(w_q[base + 1u], shift) + bit4(h, sub * 8u + 4u));
}
