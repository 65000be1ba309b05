// Token choice on the device, one block per row of logits, the same rules as the CPU reference
// (`cpu::sample`): NaN counts as -inf; ties go to the lower token id; filters top_k, top_p, min_p
// on the temperature-scaled softmax over the whole vocabulary; then the kept tokens, in
// descending order, are walked with target = uniform[row] * (their mass). The uniform numbers
// come from the host, so a run is reproducible and checkable on the CPU.
//
// No sort: kept sets and the walk are prefixes of the descending order, found by binary search
// over the float order (ord_key) with one reduction pass over the row per step (about 64 passes);
// ties at a boundary value are resolved by counting ids in order.
// TODO(perf): radix select or pivot-based rejection sampling once decode batches are large.

#define SAMPLE_THREADS 1024

// Monotone map float -> int (a < b iff ord_key(a) < ord_key(b)); NaN maps like -inf, -0 like +0.
__device__ __forceinline__ int ord_key(float x) {
    if (x != x) x = -PDQ_INF;
    if (x == 0.0f) x = 0.0f;
    const int b = __float_as_int(x);
    return b >= 0 ? b : b ^ 0x7fffffff;
}
__device__ __forceinline__ float ord_val(int k) { return __int_as_float(k >= 0 ? k : k ^ 0x7fffffff); }

// Unnormalised probability: the max logit has 1.
__device__ __forceinline__ float prob_of(float x, float mx, float inv_t) {
    return x != x ? 0.0f : expf((x - mx) * inv_t);
}

template <typename T>
__device__ int argmax_row(const T* r, int vocab, float* fscratch, int* iscratch) {
    float best = -PDQ_INF;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = to_f32(r[i]);
        if (v != v) v = -PDQ_INF;
        if (v > best || (v == best && i < idx)) {
            best = v;
            idx = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ob > best || (ob == best && oi < idx)) {
            best = ob;
            idx = oi;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) {
        fscratch[warp] = best;
        iscratch[warp] = idx;
    }
    __syncthreads();
    best = lane < nwarps ? fscratch[lane] : -PDQ_INF;
    idx = lane < nwarps ? iscratch[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ob > best || (ob == best && oi < idx)) {
            best = ob;
            idx = oi;
        }
    }
    return idx;
}

struct Pass {
    float cnt_gt;   // tokens with key > e (exact in f32 below 2^24 tokens)
    float mass_gt;  // their unnormalised mass
    float cnt_eq;   // tokens with key == e
    float min_gt;   // smallest logit among key > e (+inf when none)
};

template <typename T>
__device__ Pass scan_row(const T* r, int vocab, int e, float mx, float inv_t, float* scratch) {
    float cg = 0.0f, mg = 0.0f, ce = 0.0f, mn = PDQ_INF;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = to_f32(r[i]);
        const int k = ord_key(v);
        if (k > e) {
            cg += 1.0f;
            mg += prob_of(v, mx, inv_t);
            mn = fminf(mn, v);
        } else if (k == e) {
            ce += 1.0f;
        }
    }
    Pass p;
    p.cnt_gt = block_sum(cg, scratch);
    p.mass_gt = block_sum(mg, scratch);
    p.cnt_eq = block_sum(ce, scratch);
    p.min_gt = -block_max(-mn, scratch);
    return p;
}

// Exclusive prefix sum over the block; `*total` gets the sum. `scratch` holds 32 ints.
__device__ int block_exclusive_scan(int v, int* scratch, int* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    int x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == 31) scratch[warp] = x;
    __syncthreads();
    if (warp == 0) {
        int s = lane < nwarps ? scratch[lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int y = __shfl_up_sync(0xffffffffu, s, o);
            if (lane >= o) s += y;
        }
        scratch[lane] = s;
    }
    __syncthreads();
    *total = scratch[nwarps - 1];
    return (warp > 0 ? scratch[warp - 1] : 0) + x - v;
}

// The id of the j-th lowest token (0-based) whose key is e. Threads own contiguous chunks so the
// scan over chunk counts is in id order.
template <typename T>
__device__ int nth_with_key(const T* r, int vocab, int e, int j, int* scratch, int* found) {
    const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
    const int lo = min(vocab, (int)threadIdx.x * chunk), hi = min(vocab, lo + chunk);
    int c = 0;
    for (int i = lo; i < hi; ++i) c += ord_key(to_f32(r[i])) == e;
    int total;
    const int before = block_exclusive_scan(c, scratch, &total);
    if (threadIdx.x == 0) *found = -1;
    __syncthreads();
    if (j >= before && j < before + c) {
        int seen = before;
        for (int i = lo; i < hi; ++i) {
            if (ord_key(to_f32(r[i])) == e) {
                if (seen == j) {
                    *found = i;
                    break;
                }
                ++seen;
            }
        }
    }
    __syncthreads();
    return *found;
}

template <typename T>
__device__ void sample_row(int* out, const T* logits, const float* temperature, const int* top_k,
                           const float* top_p, const float* min_p, const float* uniform, int vocab) {
    __shared__ float fscratch[32];
    __shared__ int iscratch[32];
    __shared__ int found;
    const long long row = blockIdx.x;
    const T* r = logits + row * vocab;
    const float temp = temperature[row];
    const int k = top_k[row];
    if (temp <= 0.0f || k == 1) {
        const int i = argmax_row(r, vocab, fscratch, iscratch);
        if (threadIdx.x == 0) out[row] = i;
        return;
    }
    const float inv_t = 1.0f / temp;
    float mx = -PDQ_INF;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = to_f32(r[i]);
        if (v == v) mx = fmaxf(mx, v);
    }
    mx = block_max(mx, fscratch);
    if (mx == -PDQ_INF) {  // no finite logit: nothing to weigh, take the first id like argmax
        const int i = argmax_row(r, vocab, fscratch, iscratch);  // every thread: it has barriers
        if (threadIdx.x == 0) out[row] = i;
        return;
    }
    float z = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) z += prob_of(to_f32(r[i]), mx, inv_t);
    z = block_sum(z, fscratch);

    const float keep_k = k > 0 ? (float)min(k, vocab) : (float)vocab;
    const bool use_p = top_p[row] < 1.0f;
    const float thr_p = top_p[row] * z;
    const float thr_min = min_p[row];  // relative to the max, whose unnormalised p is 1
    const bool use_min = thr_min > 0.0f;

    // Smallest key e such that every token with key > e is kept.
    long long lo = ord_key(-PDQ_INF), hi = ord_key(mx);
    while (lo < hi) {
        const int mid = (int)(lo + ((hi - lo) >> 1));
        const Pass p = scan_row(r, vocab, mid, mx, inv_t, fscratch);
        bool ok = true;
        if (p.cnt_gt > 0.0f) {
            const float p_last = prob_of(p.min_gt, mx, inv_t);
            ok = p.cnt_gt <= keep_k && (!use_p || p.mass_gt - p_last <= thr_p) && (!use_min || p_last >= thr_min);
        }
        if (ok) hi = mid;
        else lo = mid + 1;
    }
    const int vb = (int)hi;
    const Pass b = scan_row(r, vocab, vb, mx, inv_t, fscratch);
    const float p_b = prob_of(ord_val(vb), mx, inv_t);
    float n_keep = fminf(b.cnt_eq, keep_k - b.cnt_gt);
    if (use_p) n_keep = fminf(n_keep, b.mass_gt > thr_p ? 0.0f : (p_b > 0.0f ? floorf((thr_p - b.mass_gt) / p_b) + 1.0f : b.cnt_eq));
    if (use_min && p_b < thr_min) n_keep = 0.0f;
    if (b.cnt_gt == 0.0f) n_keep = fmaxf(n_keep, 1.0f);
    const float total = b.mass_gt + n_keep * p_b;
    const float target = uniform[row] * total;

    int choice;
    if (target >= b.mass_gt && n_keep > 0.0f) {
        const int j = (int)fminf(floorf((target - b.mass_gt) / p_b), n_keep - 1.0f);
        choice = nth_with_key(r, vocab, vb, j, iscratch, &found);
    } else {
        // Largest key w whose tokens-at-or-above carry more than target.
        long long wlo = (long long)vb + 1, whi = ord_key(mx);
        while (wlo < whi) {
            const int mid = (int)(wlo + ((whi - wlo + 1) >> 1));
            const Pass p = scan_row(r, vocab, mid - 1, mx, inv_t, fscratch);
            if (p.mass_gt > target) wlo = mid;
            else whi = mid - 1;
        }
        const int w = (int)wlo;
        const Pass p = scan_row(r, vocab, w, mx, inv_t, fscratch);
        const float p_w = prob_of(ord_val(w), mx, inv_t);
        const float jf = floorf((target - p.mass_gt) / p_w);
        const int j = (int)fmaxf(0.0f, fminf(jf, p.cnt_eq - 1.0f));
        choice = nth_with_key(r, vocab, w, j, iscratch, &found);
    }
    if (threadIdx.x == 0) out[row] = choice < 0 ? 0 : choice;
}

#define SAMPLING(T, SUFFIX)                                                                               \
    extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) argmax_##SUFFIX(int* out, const T* logits, \
                                                                                int vocab) {               \
        __shared__ float fscratch[32];                                                                    \
        __shared__ int iscratch[32];                                                                      \
        const int i = argmax_row(logits + (long long)blockIdx.x * vocab, vocab, fscratch, iscratch);      \
        if (threadIdx.x == 0) out[blockIdx.x] = i;                                                        \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_##SUFFIX(                         \
        int* out, const T* logits, const float* temperature, const int* top_k, const float* top_p,       \
        const float* min_p, const float* uniform, int vocab) {                                            \
        sample_row<T>(out, logits, temperature, top_k, top_p, min_p, uniform, vocab);                     \
    }
SAMPLING(float, f32)
SAMPLING(bf16, bf16)
