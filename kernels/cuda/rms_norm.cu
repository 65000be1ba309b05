// RMS norm, HF LlamaRMSNorm: y = x / sqrt(mean(x^2) + eps) * w, one block per row, f32 sums.
//
// fused_add_rms_norm: the residual stream update and the next norm in one pass:
//   residual += delta (stored in T), out = rms_norm(residual) * w.
// The norm reads the stored (rounded) residual, so bf16 matches a CPU oracle fed the same
// rounded values. Each thread reads back only the elements it wrote itself.

template <typename T>
__device__ void rms_norm(T* out, const T* x, const T* w, int dim, float eps) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    const T* xr = x + row * dim;
    T* o = out + row * dim;
    float ss = 0.0f;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
        const float v = to_f32(xr[d]);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int d = threadIdx.x; d < dim; d += blockDim.x) o[d] = from_f32<T>(to_f32(xr[d]) * inv * to_f32(w[d]));
}

template <typename T>
__device__ void fused_add_rms_norm(T* residual, const T* delta, const T* w, T* out, int dim, float eps) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    T* r = residual + row * dim;
    const T* dr = delta + row * dim;
    T* o = out + row * dim;
    float ss = 0.0f;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
        const T h = from_f32<T>(to_f32(r[d]) + to_f32(dr[d]));
        r[d] = h;
        const float v = to_f32(h);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int d = threadIdx.x; d < dim; d += blockDim.x) o[d] = from_f32<T>(to_f32(r[d]) * inv * to_f32(w[d]));
}

#define RMS_NORM(T, SUFFIX)                                                                         \
    extern "C" __global__ void rms_norm_##SUFFIX(T* out, const T* x, const T* w, int dim, float eps) { \
        rms_norm<T>(out, x, w, dim, eps);                                                           \
    }                                                                                               \
    extern "C" __global__ void fused_add_rms_norm_##SUFFIX(T* residual, const T* delta, const T* w,   \
                                                           T* out, int dim, float eps) {             \
        fused_add_rms_norm<T>(residual, delta, w, out, dim, eps);                                   \
    }
RMS_NORM(float, f32)
RMS_NORM(bf16, bf16)
