// Rotary position embedding on the chunk's queries (in place) and keys, and the keys and
// values written into this layer's KV cache at their positions. Each token's q, k and v
// lie side by side in `qkv` (stride n_heads * hd + 2 * n_kv * hd). Each token belongs to
// its own sequence (`st.tok`); its cache row is found through that sequence's page table,
// so sequences of a batch share one pool of pages. Pairs are interleaved
// (2i, 2i+1), the llama convention of GGUF files, or with `neox` (i, i + hd/2) as Qwen,
// Gemma and Phi-3 rotate them; cos/sin come from the layer's table, computed on the host.
struct P { n_heads: u32, n_kv: u32, hd: u32, neox: u32 }
@group(0) @binding(1) var<uniform> p: P;
@group(0) @binding(2) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<f32>;
@group(0) @binding(4) var<storage, read_write> vc: array<f32>;
@group(0) @binding(5) var<storage, read> cs: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read> pages: array<u32>;

// Offset of pair j's first element in its head, and of its second from its first.
fn first(j: u32) -> u32 {
    if (p.neox != 0u) { return j; }
    return 2u * j;
}
fn second(j: u32) -> u32 {
    if (p.neox != 0u) { return p.hd / 2u; }
    return 1u;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.y;
    let slot = st.tok[t].x;
    let pos = st.tok[t].y;
    let row = pages[slot * st.pages_per_seq + pos / PAGE] * PAGE + pos % PAGE;
    let half = p.hd / 2u;
    let qd = p.n_heads * p.hd;
    let kvd = p.n_kv * p.hd;
    let base = t * (qd + 2u * kvd);
    let i = gid.x;
    let nq = p.n_heads * half;
    let nk = p.n_kv * half;
    if (i < nq) {
        let j = i % half;
        let o = base + (i / half) * p.hd + first(j);
        let c = cs[pos * half + j];
        let a = qkv[o];
        let b = qkv[o + second(j)];
        qkv[o] = a * c.x - b * c.y;
        qkv[o + second(j)] = a * c.y + b * c.x;
    } else if (i < nq + nk) {
        let i2 = i - nq;
        let j = i2 % half;
        let off = (i2 / half) * p.hd + first(j);
        let c = cs[pos * half + j];
        let a = qkv[base + qd + off];
        let b = qkv[base + qd + off + second(j)];
        kc[row * kvd + off] = a * c.x - b * c.y;
        kc[row * kvd + off + second(j)] = a * c.y + b * c.x;
    } else if (i < nq + nk + kvd) {
        let i3 = i - nq - nk;
        vc[row * kvd + i3] = qkv[base + qd + kvd + i3];
    }
}
