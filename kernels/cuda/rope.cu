// Rotary embedding in place on x[tokens, n_heads, 2 * half], HF rotate_half convention: element i
// rotates with element i + half by angle positions[t] * inv_freq[i]. The inv_freq table (with any
// Llama 3 / linear scaling already applied) comes from the host, as on the CPU. One block per
// token; precise sincosf, since angles reach thousands of radians at long positions.

template <typename T>
__device__ void rope(T* x, const int* positions, const float* inv_freq, int n_heads, int half) {
    const long long tok = blockIdx.x;
    const float pos = (float)positions[tok];
    T* xt = x + tok * n_heads * 2 * half;
    for (int idx = threadIdx.x; idx < n_heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx - h * half;
        float s, c;
        sincosf(pos * inv_freq[i], &s, &c);
        T* hp = xt + (long long)h * 2 * half;
        const float x0 = to_f32(hp[i]), x1 = to_f32(hp[i + half]);
        hp[i] = from_f32<T>(x0 * c - x1 * s);
        hp[i + half] = from_f32<T>(x1 * c + x0 * s);
    }
}

#define ROPE(T, SUFFIX)                                                                          \
    extern "C" __global__ void rope_##SUFFIX(T* x, const int* positions, const float* inv_freq,   \
                                             int n_heads, int half) {                            \
        rope<T>(x, positions, inv_freq, n_heads, half);                                          \
    }
ROPE(float, f32)
ROPE(bf16, bf16)
