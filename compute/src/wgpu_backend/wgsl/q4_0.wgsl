const WPB: u32 = 4u;
// Block of 16 bytes: byte j holds value j (low nibble) and value j + 16 (high nibble), so
// quarter `sub` is the low (sub < 2) or high nibbles of words 2 * (sub & 1) and the next.
fn wq(gb: u32, sub: u32) -> Q8 {
    let base = gb * 4u + (sub & 1u) * 2u;
    let shift = (sub >> 1u) * 4u;
    return Q8(nib4(w_q[base], shift) - vec4<i32>(8), nib4(w_q[base + 1u], shift) - vec4<i32>(8));
}
