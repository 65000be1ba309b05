// Paged KV cache moves. Cache layout per layer: [num_blocks, block_size, n_kv_heads, head_dim];
// a token's slot is block * block_size + offset, and `row` = n_kv_heads * head_dim.
//   kv_write:          scatter new K/V rows into their slots (slot < 0 = padding, skipped).
//   kv_gather_blocks:  cache blocks listed in block_ids -> contiguous pages (data plane send).
//   kv_scatter_blocks: contiguous pages -> cache blocks listed in block_ids (data plane receive).

template <typename T>
__device__ void kv_write(T* k_cache, T* v_cache, const T* k, const T* v, const long long* slots, int row) {
    const long long tok = blockIdx.x;
    const long long slot = slots[tok];
    if (slot < 0) return;
    for (int d = threadIdx.x; d < row; d += blockDim.x) {
        k_cache[slot * row + d] = k[tok * row + d];
        v_cache[slot * row + d] = v[tok * row + d];
    }
}

template <typename T>
__device__ void kv_gather_blocks(T* pages, const T* cache, const int* block_ids, long long block_elems) {
    const long long i = blockIdx.y;
    const T* src = cache + (long long)block_ids[i] * block_elems;
    T* dst = pages + i * block_elems;
    GRID_STRIDE(e, block_elems) { dst[e] = src[e]; }
}

template <typename T>
__device__ void kv_scatter_blocks(T* cache, const T* pages, const int* block_ids, long long block_elems) {
    const long long i = blockIdx.y;
    const T* src = pages + i * block_elems;
    T* dst = cache + (long long)block_ids[i] * block_elems;
    GRID_STRIDE(e, block_elems) { dst[e] = src[e]; }
}

#define KV_CACHE(T, SUFFIX)                                                                             \
    extern "C" __global__ void kv_write_##SUFFIX(T* k_cache, T* v_cache, const T* k, const T* v,       \
                                                 const long long* slots, int row) {                    \
        kv_write<T>(k_cache, v_cache, k, v, slots, row);                                                \
    }                                                                                                   \
    extern "C" __global__ void kv_gather_blocks_##SUFFIX(T* pages, const T* cache, const int* block_ids, \
                                                         long long block_elems) {                       \
        kv_gather_blocks<T>(pages, cache, block_ids, block_elems);                                      \
    }                                                                                                   \
    extern "C" __global__ void kv_scatter_blocks_##SUFFIX(T* cache, const T* pages,                     \
                                                          const int* block_ids, long long block_elems) { \
        kv_scatter_blocks<T>(cache, pages, block_ids, block_elems);                                     \
    }
KV_CACHE(float, f32)
KV_CACHE(bf16, bf16)
