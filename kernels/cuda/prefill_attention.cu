// Causal prefill attention, flash style, reading K/V from the paged cache (so a chunk that
// continues a cached prefix works the same as a fresh prompt). The chunk's K/V must already be
// written to the cache (kv_write).
//
//   q, out        [total_q, n_heads, head_dim]; sequence s owns rows cu_q_lens[s]..cu_q_lens[s+1]
//   context_lens  [num_seqs]: tokens in the cache including this chunk; query row i of sequence s
//                 sits at position context_len - q_len + i and attends to keys 0..=that position
//   k/v_cache, block_tables, block_size, max_blocks: as in paged_attention.cu
//
// Grid (ceil(max_q_len / FA_BQ), n_heads, num_seqs), FA_WARPS warps; warp w owns FA_ROWS query
// rows of the tile. Key tiles of FA_BK = 32 go through shared memory, one key per lane for the
// scores, then an online-softmax update; scores never reach global memory.
// TODO(perf): tensor-core MMA (wgmma) for QK^T and PV; bulk-copy K/V tiles; split-K for long
// contexts with few query tiles.

#define FA_BQ 16
#define FA_BK 32
#define FA_WARPS 4
#define FA_ROWS (FA_BQ / FA_WARPS)

template <typename T, int MAX_HD>
__device__ void prefill_attention(T* out, const T* q, const T* k_cache, const T* v_cache, const int* cu_q_lens,
                                  const int* context_lens, const int* block_tables, int n_heads,
                                  int n_kv_heads, int head_dim, int block_size, int max_blocks, float scale) {
    constexpr int PER_LANE = MAX_HD / 32;
    constexpr int PAD = 4 / sizeof(T);  // one bank of padding per K row: lanes read different rows
    __shared__ T s_q[FA_BQ][MAX_HD];
    __shared__ T s_k[FA_BK][MAX_HD + PAD];
    __shared__ T s_v[FA_BK][MAX_HD];

    const int tile = blockIdx.x, head = blockIdx.y, seq = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int q_start = cu_q_lens[seq], q_len = cu_q_lens[seq + 1] - q_start;
    const int row0 = tile * FA_BQ;
    if (row0 >= q_len) return;  // uniform over the block, before any barrier
    const int pos0 = context_lens[seq] - q_len;
    const int kvh = head / (n_heads / n_kv_heads);
    const long long q_stride = (long long)n_heads * head_dim;
    const long long kv_row = (long long)n_kv_heads * head_dim;
    const int* table = block_tables + (long long)seq * max_blocks;

    for (int i = threadIdx.x; i < FA_BQ * head_dim; i += blockDim.x) {
        const int r = i / head_dim, d = i - r * head_dim;
        s_q[r][d] = row0 + r < q_len ? q[(q_start + row0 + r) * q_stride + (long long)head * head_dim + d]
                                     : from_f32<T>(0.0f);
    }

    float m[FA_ROWS], l[FA_ROWS], acc[FA_ROWS][PER_LANE];
#pragma unroll
    for (int r = 0; r < FA_ROWS; ++r) {
        m[r] = -PDQ_INF;
        l[r] = 0.0f;
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) acc[r][j] = 0.0f;
    }
    const int last_row = min(row0 + FA_BQ, q_len) - 1;
    const int kv_end = pos0 + last_row + 1;  // keys 0..kv_end cover every row of the tile

    for (int k0 = 0; k0 < kv_end; k0 += FA_BK) {
        __syncthreads();  // the previous tile is consumed (and s_q is written on the first pass)
        for (int i = threadIdx.x; i < FA_BK * head_dim; i += blockDim.x) {
            const int j = i / head_dim, d = i - j * head_dim;
            const int t = k0 + j;
            if (t < kv_end) {
                const long long blk = table[t / block_size];
                const long long off = (blk * block_size + t % block_size) * kv_row + (long long)kvh * head_dim + d;
                s_k[j][d] = k_cache[off];
                s_v[j][d] = v_cache[off];
            } else {
                s_k[j][d] = from_f32<T>(0.0f);
                s_v[j][d] = from_f32<T>(0.0f);
            }
        }
        __syncthreads();

        // Scores: lane = key, FA_ROWS rows at once so each K element is read once per warp.
        float dot[FA_ROWS];
#pragma unroll
        for (int r = 0; r < FA_ROWS; ++r) dot[r] = 0.0f;
        for (int d = 0; d < head_dim; ++d) {
            const float kd = to_f32(s_k[lane][d]);
#pragma unroll
            for (int r = 0; r < FA_ROWS; ++r) dot[r] += to_f32(s_q[warp * FA_ROWS + r][d]) * kd;
        }
        const int t = k0 + lane;
#pragma unroll
        for (int r = 0; r < FA_ROWS; ++r) {
            const int row = row0 + warp * FA_ROWS + r;
            const int qpos = pos0 + row;
            if (row >= q_len || k0 > qpos) continue;  // uniform over the warp
            const float s = t <= qpos ? dot[r] * scale : -PDQ_INF;
            const float m_new = fmaxf(m[r], warp_max(s));  // finite: key k0 <= qpos is visible
            const float corr = expf(m[r] - m_new);
            const float p = expf(s - m_new);
            l[r] = l[r] * corr + warp_sum(p);
            m[r] = m_new;
#pragma unroll
            for (int j = 0; j < PER_LANE; ++j) acc[r][j] *= corr;
            const int nk = min(FA_BK, qpos - k0 + 1);
            for (int jj = 0; jj < nk; ++jj) {
                const float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
                for (int j = 0; j < PER_LANE; ++j) {
                    const int d = lane + 32 * j;
                    if (d < head_dim) acc[r][j] += pj * to_f32(s_v[jj][d]);
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < FA_ROWS; ++r) {
        const int row = row0 + warp * FA_ROWS + r;
        if (row >= q_len) continue;
        const float inv = 1.0f / l[r];
        T* o = out + (q_start + row) * q_stride + (long long)head * head_dim;
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) {
            const int d = lane + 32 * j;
            if (d < head_dim) o[d] = from_f32<T>(acc[r][j] * inv);
        }
    }
}

// f32 tiles of head_dim 256 would not fit the 48 KB of static shared memory: f32 stops at 128.
#define PREFILL_ATTENTION(T, SUFFIX, MAX_HD)                                                               \
    extern "C" __global__ void __launch_bounds__(FA_WARPS * 32) prefill_attention_##SUFFIX(                \
        T* out, const T* q, const T* k_cache, const T* v_cache, const int* cu_q_lens,                      \
        const int* context_lens, const int* block_tables, int n_heads, int n_kv_heads, int head_dim,       \
        int block_size, int max_blocks, float scale) {                                                     \
        prefill_attention<T, MAX_HD>(out, q, k_cache, v_cache, cu_q_lens, context_lens, block_tables,      \
                                     n_heads, n_kv_heads, head_dim, block_size, max_blocks, scale);        \
    }
PREFILL_ATTENTION(float, f32, 128)
PREFILL_ATTENTION(bf16, bf16, 256)
