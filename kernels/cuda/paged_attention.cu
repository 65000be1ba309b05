// Decode attention over a paged KV cache: one new query token per sequence, many sequences of
// different lengths in one launch.
//
//   q, out        [num_seqs, n_heads, head_dim]
//   k/v_cache     [num_blocks, block_size, n_kv_heads, head_dim]
//   block_tables  [num_seqs, max_blocks]; token t of a sequence sits in block table[t / block_size]
//                 at offset t % block_size
//   context_lens  [num_seqs]; the query attends to tokens 0..context_len (its own K/V is already
//                 written); a length of 0 writes zeros (a padding row)
//
// Grid (n_heads, num_seqs), PA_WARPS warps. Each warp walks every PA_WARPS-th token with its own
// online softmax (lane owns dims lane + 32 j); the warps' partial states are merged in shared
// memory at the end, so no score vector goes to global memory. Query head h reads KV head
// h / (n_heads / n_kv_heads).
// TODO(perf): one block per KV head serving its whole query group; 16-byte loads.

#define PA_WARPS 4
#define PA_MAX_HD 256

template <typename T>
__device__ void paged_attention_decode(T* out, const T* q, const T* k_cache, const T* v_cache,
                                       const int* block_tables, const int* context_lens, int n_heads,
                                       int n_kv_heads, int head_dim, int block_size, int max_blocks,
                                       float scale) {
    constexpr int PER_LANE = PA_MAX_HD / 32;
    __shared__ float s_m[PA_WARPS], s_l[PA_WARPS];
    __shared__ float s_acc[PA_WARPS][PA_MAX_HD];
    const int head = blockIdx.x, seq = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kvh = head / (n_heads / n_kv_heads);
    const int ctx = context_lens[seq];
    const long long q_off = ((long long)seq * n_heads + head) * head_dim;

    float qr[PER_LANE], acc[PER_LANE];
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
        const int d = lane + 32 * j;
        qr[j] = d < head_dim ? to_f32(q[q_off + d]) : 0.0f;
        acc[j] = 0.0f;
    }
    float m = -PDQ_INF, l = 0.0f;
    const int* table = block_tables + (long long)seq * max_blocks;
    const long long row = (long long)n_kv_heads * head_dim;
    for (int t = warp; t < ctx; t += PA_WARPS) {
        const long long blk = table[t / block_size];
        const long long off = (blk * block_size + t % block_size) * row + (long long)kvh * head_dim;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) {
            const int d = lane + 32 * j;
            if (d < head_dim) s += qr[j] * to_f32(k_cache[off + d]);
        }
        s = warp_sum(s) * scale;
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new);  // 0 on the first token (m = -inf)
        const float p = expf(s - m_new);
        l = l * corr + p;
        m = m_new;
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) {
            const int d = lane + 32 * j;
            if (d < head_dim) acc[j] = acc[j] * corr + p * to_f32(v_cache[off + d]);
        }
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
        const int d = lane + 32 * j;
        if (d < head_dim) s_acc[warp][d] = acc[j];
    }
    __syncthreads();

    float mx = -PDQ_INF;
    for (int w = 0; w < PA_WARPS; ++w) mx = fmaxf(mx, s_m[w]);
    float wgt[PA_WARPS];
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < PA_WARPS; ++w) {
        wgt[w] = s_m[w] == -PDQ_INF ? 0.0f : expf(s_m[w] - mx);  // a warp that saw no token
        total += s_l[w] * wgt[w];
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < PA_WARPS; ++w) o += s_acc[w][d] * wgt[w];
        out[q_off + d] = from_f32<T>(ctx > 0 ? o / total : 0.0f);
    }
}

#define PAGED_ATTENTION(T, SUFFIX)                                                                       \
    extern "C" __global__ void __launch_bounds__(PA_WARPS * 32) paged_attention_decode_##SUFFIX(         \
        T* out, const T* q, const T* k_cache, const T* v_cache, const int* block_tables,                 \
        const int* context_lens, int n_heads, int n_kv_heads, int head_dim, int block_size,              \
        int max_blocks, float scale) {                                                                   \
        paged_attention_decode<T>(out, q, k_cache, v_cache, block_tables, context_lens, n_heads,         \
                                  n_kv_heads, head_dim, block_size, max_blocks, scale);                 \
    }
PAGED_ATTENTION(float, f32)
PAGED_ATTENTION(bf16, bf16)
