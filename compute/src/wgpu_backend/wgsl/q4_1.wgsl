const WPB: u32 = 4u;
// As Q4_0, without the -8 offset: the block's minimum m is added through w_s.y.
fn wq(gb: u32, sub: u32) -> Q8 {
    let base = gb * 4u + (sub & 1u) * 2u;
    let shift = (sub >> 1u) * 4u;
    return Q8(nib4(w_q[base], shift), nib4(w_q[base + 1u], shift));
}
