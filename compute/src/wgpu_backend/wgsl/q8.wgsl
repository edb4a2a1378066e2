// Activations to 8-bit blocks, exactly as candle quantizes the input of a quantized matmul
// (GGML's quantize_row_q8_1): d = amax / 127 stored as f16, q = round(x / d) with the f32
// reciprocal of the unrounded d, s = f16(f16(sum q) * d). Computing with the same integers
// as the CPU reference keeps the two backends within rounding of each other.
// The including kernel declares `xq` (8 words per block) and `xs` ((d, s) per block).

fn to_f16(v: f32) -> f32 {
    return unpack2x16float(pack2x16float(vec2<f32>(v, 0.0))).x;
}

// f32::round: halves away from zero (WGSL's round() goes to even).
fn round_away(v: f32) -> f32 {
    return sign(v) * floor(abs(v) + 0.5);
}

// Quantizes 32 values into block `b` of xq/xs.
fn store_q8(b: u32, v: array<f32, 32>) {
    var amax = 0.0;
    for (var i = 0u; i < 32u; i++) { amax = max(amax, abs(v[i])); }
    let d = amax / 127.0;
    var id = 0.0;
    if (d != 0.0) { id = 1.0 / d; }
    var sum = 0;
    for (var w = 0u; w < 8u; w++) {
        var word = 0u;
        for (var j = 0u; j < 4u; j++) {
            let q = i32(round_away(v[w * 4u + j] * id));
            sum += q;
            word |= (bitcast<u32>(q) & 0xFFu) << (8u * j);
        }
        xq[b * 8u + w] = word;
    }
    let d16 = to_f16(d);
    xs[b] = vec2<f32>(d16, to_f16(to_f16(f32(sum)) * d16));
}
