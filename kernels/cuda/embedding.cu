// Embedding gather: out[t, :] = table[ids[t], :]. One block per token. An id outside the table
// writes NaN instead of reading out of bounds (the host validates ids; this keeps a bad id
// visible instead of silent).

template <typename T>
__device__ void embedding(T* out, const T* table, const unsigned int* ids, int hidden, int vocab) {
    const long long tok = blockIdx.x;
    const unsigned int id = ids[tok];
    T* o = out + tok * hidden;
    if (id >= (unsigned int)vocab) {
        for (int d = threadIdx.x; d < hidden; d += blockDim.x) o[d] = from_f32<T>(PDQ_NAN);
        return;
    }
    const T* src = table + (long long)id * hidden;
    for (int d = threadIdx.x; d < hidden; d += blockDim.x) o[d] = src[d];
}

#define EMBEDDING(T, SUFFIX)                                                                      \
    extern "C" __global__ void embedding_##SUFFIX(T* out, const T* table, const unsigned int* ids, \
                                                  int hidden, int vocab) {                        \
        embedding<T>(out, table, ids, hidden, vocab);                                             \
    }
EMBEDDING(float, f32)
EMBEDDING(bf16, bf16)
