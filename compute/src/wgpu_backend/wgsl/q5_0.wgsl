const WPB: u32 = 5u;
// Q4_0's nibbles in words 0-3, and a fifth word whose bit e is value e's fifth bit; the
// values are offset by -16.
fn wq(gb: u32, sub: u32) -> Q8 {
    let base = gb * 5u + (sub & 1u) * 2u;
    let shift = (sub >> 1u) * 4u;
    let h = w_q[gb * 5u + 4u];
    let o = vec4<i32>(16);
    return Q8(nib4(w_q[base], shift) + bit4(h, sub * 8u) - o, nib4(w_q[base + 1u], shift) + bit4(h, sub * 8u + 4u) - o);
}
