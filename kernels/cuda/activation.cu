// Element-wise and row-wise helpers around the GEMMs.
//   silu_mul:  out = silu(gate) * up (the Llama MLP gate, "SwiGLU"), grid-stride.
//   add_bias:  y[m, n] += bias[n] (cuBLAS GEMMs have no bias epilogue here).
//   softmax:   one block per row, in place, max subtracted first.

template <typename T>
__device__ void silu_mul(T* out, const T* gate, const T* up, long long n) {
    GRID_STRIDE(i, n) {
        const float g = to_f32(gate[i]);
        out[i] = from_f32<T>(g / (1.0f + expf(-g)) * to_f32(up[i]));
    }
}

template <typename T>
__device__ void add_bias(T* y, const T* bias, long long m, int n) {
    GRID_STRIDE(i, m * n) { y[i] = from_f32<T>(to_f32(y[i]) + to_f32(bias[i % n])); }
}

template <typename T>
__device__ void softmax(T* x, int n) {
    __shared__ float scratch[32];
    T* r = x + (long long)blockIdx.x * n;
    float mx = -PDQ_INF;
    for (int i = threadIdx.x; i < n; i += blockDim.x) mx = fmaxf(mx, to_f32(r[i]));
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += expf(to_f32(r[i]) - mx);
    sum = block_sum(sum, scratch);
    const float inv = 1.0f / sum;
    for (int i = threadIdx.x; i < n; i += blockDim.x) r[i] = from_f32<T>(expf(to_f32(r[i]) - mx) * inv);
}

#define ACTIVATION(T, SUFFIX)                                                                        \
    extern "C" __global__ void silu_mul_##SUFFIX(T* out, const T* gate, const T* up, long long n) {   \
        silu_mul<T>(out, gate, up, n);                                                               \
    }                                                                                                \
    extern "C" __global__ void add_bias_##SUFFIX(T* y, const T* bias, long long m, int n) {           \
        add_bias<T>(y, bias, m, n);                                                                  \
    }                                                                                                \
    extern "C" __global__ void softmax_##SUFFIX(T* x, int n) { softmax<T>(x, n); }
ACTIVATION(float, f32)
ACTIVATION(bf16, bf16)
