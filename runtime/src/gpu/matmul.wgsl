// Matrix products of q8 or q4 weight rows with q8 activation rows: the GPU twin of
// kernels/scalar.rs's matmul_q8 and matmul_q4_q8. One invocation computes one output
// (weight row r, token t) exactly as the scalar kernel does: an exact i32 dot per block
// of 32, its float product with the two scales added to lane j % 8, and the fixed
// reduction of the 8 lanes, every product rounded (see rounded): the integers are the
// CPU's bit for bit, and so are the floats where the driver rounds as IEEE f32 does.
//
// The weights are interleaved across rows (word w of row r at w * rows + r), so the
// invocations of a workgroup, neighbouring rows, read neighbouring words: one vector load
// on a CPU driver such as lavapipe, one coalesced transaction on a GPU.
//
// DOT4 is replaced before compilation by dot4I8Packed (the WGSL packed 4x8-bit integer
// dot product) or by dot4_i32 (plain i32 arithmetic) where the former is unavailable.

struct Part {
    rows: u32,       // weight rows in this part of the matrix
    kb: u32,         // blocks of 32 per row
    row_start: u32,  // the part's first row in the whole matrix
    total_rows: u32, // rows of the whole matrix: the output's row stride
    zero: u32,       // always 0, unknown to the compiler (see rounded)
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> part: Part;
// q8: (kb, rows) scales d; q4: (2, kb, rows) scales d, then minimums m.
@group(0) @binding(1) var<storage, read> w_scale: array<f32>;
// q8: (kb, 8, rows) words of 4 packed i8; q4: (kb, 4, rows) words of 8 nibbles.
@group(0) @binding(2) var<storage, read> w_qs: array<u32>;
@group(0) @binding(3) var<storage, read> x_scale: array<f32>; // (n, kb)
@group(0) @binding(4) var<storage, read> x_qs: array<u32>;    // (n, kb, 8) words of 4 packed i8
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // (n, total_rows)

override WG: u32 = 64u;
override Q4: bool = false;

// The i32 fallback of dot4I8Packed: sign-extend each byte, multiply, add.
fn dot4_i32(a: u32, b: u32) -> i32 {
    let x = bitcast<i32>(a);
    let y = bitcast<i32>(b);
    return extractBits(x, 0u, 8u) * extractBits(y, 0u, 8u)
        + extractBits(x, 8u, 8u) * extractBits(y, 8u, 8u)
        + extractBits(x, 16u, 8u) * extractBits(y, 16u, 8u)
        + extractBits(x, 24u, 8u) * extractBits(y, 24u, 8u);
}

// The CPU rounds every product before adding it; a driver may fuse a multiply into the
// next add (one rounding fewer), which changes the last bit, and a last bit is enough to
// flip the rounding of a later activation quantization. Passing each product through
// an integer operation the compiler cannot fold keeps it a rounded f32.
fn rounded(p: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(p) ^ part.zero);
}

// Block j's term of row r against the activation row starting at block xb.
fn term(r: u32, xb: u32, j: u32) -> f32 {
    let rows = part.rows;
    let x = (xb + j) * 8u;
    let dx = x_scale[xb + j];
    if (Q4) {
        // Byte k of a q4 block holds weight k (low nibble) and weight 16 + k (high), so
        // word i's low nibbles pair with activation word i and its high nibbles with word
        // 4 + i. Nibbles are in [0, 15], valid as signed bytes.
        var isum = 0i;
        var xsum = 0i;
        for (var i = 0u; i < 4u; i++) {
            let w = w_qs[(j * 4u + i) * rows + r];
            let xl = x_qs[x + i];
            let xh = x_qs[x + 4u + i];
            isum += DOT4(w & 0x0f0f0f0fu, xl) + DOT4((w >> 4u) & 0x0f0f0f0fu, xh);
            xsum += DOT4(0x01010101u, xl) + DOT4(0x01010101u, xh);
        }
        let d = w_scale[j * rows + r];
        let m = w_scale[(part.kb + j) * rows + r];
        return rounded(f32(isum) * (d * dx)) + rounded(f32(xsum) * (m * dx));
    }
    var isum = 0i;
    for (var i = 0u; i < 8u; i++) {
        isum += DOT4(w_qs[(j * 8u + i) * rows + r], x_qs[x + i]);
    }
    return rounded(f32(isum) * (w_scale[j * rows + r] * dx));
}

@compute @workgroup_size(WG)
fn matmul(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = id.x;
    let t = id.y;
    if (r >= part.rows) {
        return;
    }
    let kb = part.kb;
    let xb = t * kb;
    // The 8 lanes as 8 variables: block j goes to lane j % 8.
    var l0 = 0.0;
    var l1 = 0.0;
    var l2 = 0.0;
    var l3 = 0.0;
    var l4 = 0.0;
    var l5 = 0.0;
    var l6 = 0.0;
    var l7 = 0.0;
    var j = 0u;
    for (; j + 8u <= kb; j += 8u) {
        l0 += term(r, xb, j);
        l1 += term(r, xb, j + 1u);
        l2 += term(r, xb, j + 2u);
        l3 += term(r, xb, j + 3u);
        l4 += term(r, xb, j + 4u);
        l5 += term(r, xb, j + 5u);
        l6 += term(r, xb, j + 6u);
        l7 += term(r, xb, j + 7u);
    }
    if (j < kb) { l0 += term(r, xb, j); }
    if (j + 1u < kb) { l1 += term(r, xb, j + 1u); }
    if (j + 2u < kb) { l2 += term(r, xb, j + 2u); }
    if (j + 3u < kb) { l3 += term(r, xb, j + 3u); }
    if (j + 4u < kb) { l4 += term(r, xb, j + 4u); }
    if (j + 5u < kb) { l5 += term(r, xb, j + 5u); }
    if (j + 6u < kb) { l6 += term(r, xb, j + 6u); }
    // kernels/scalar.rs's reduce8.
    out[t * part.total_rows + part.row_start + r] = ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7));
}
