// Fused inverted dropout: y[i] = x[i] * (keep(i) ? scale : 0), scale = 1 / (1 - rate) rounded to
// the element type.  The same kernel is the forward (x = X) and the backward (x = dY): the keep
// mask is regenerated from (seed, counter) instead of being stored, so it costs 0 bytes.
//
// The mask is the one xpdnn/random.py defines, bit for bit on every backend:
//   bits(i) = 32-bit word (i % 8) of Philox4x64-10 block ctr = (i / 8, counter, 0, 0),
//             key = (seed, 0); word j is the low (j even) or high (j odd) half of w[j / 2];
//   keep(i) = bits(offset + i) >= threshold, threshold = round(rate * 2**32) in [0, 2**32].
// i is the element's flat C-order index in a contiguous x and y; offset places x inside a larger
// array (rows r0.. of an (N, F) batch: offset = r0 * F), so a shard draws the whole batch's words.
//
// Thread t handles Philox block b = offset / 8 + t (grid-stride), i.e. words 8b .. 8b+7, the
// elements 8b - offset .. 8b+7 - offset: one Philox call, then 128-bit loads and stores
// (float4 / double2 / 8 halves as a uint4) when the whole block is inside the array and both
// block starts in x and y are 16-byte aligned, element by element otherwise (the ends, views that
// start at an odd address, offsets that are not a multiple of 8).  x and y may be the same array.
//
// Entry points (one per element type, all instantiated here so compiling the file compiles them):
//   xpdnn_dropout_{f32,f64,f16,bf16}(const T* x, T* y, n, seed, counter, threshold, scale, offset)
//     scale is a float for f32/f16/bf16 (already rounded to the element type), a double for f64;
//     16-bit products are formed exactly in float and rounded once to nearest even.
//   xpdnn_philox_bits32(unsigned int* out, n, seed, counter): out[i] = bits(i) (tests, RReLU).
#include "philox.cuh"
#include "half.cuh"

#if defined(XPDNN_HOST)
#define __global__
#define XPDNN_THREAD_FIRST 0ULL
#define XPDNN_THREAD_STRIDE 1ULL
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
#else
#define XPDNN_THREAD_FIRST ((xpdnn_u64)blockIdx.x * blockDim.x + threadIdx.x)
#define XPDNN_THREAD_STRIDE ((xpdnn_u64)gridDim.x * blockDim.x)
#endif

// x * m, rounded to nearest, with subnormals kept: CuPy compiles every kernel with -ftz=true (it
// appends the flag after the caller's options), under which a plain float `*` becomes mul.ftz.f32
// and flushes subnormal inputs and results to zero, unlike NumPy.  Inline PTX mul.rn.f32 is not
// affected by -ftz, so the product is bit-identical to the host's.  (double has no ftz mode.)
XPDNN_FN float xpdnn_mul(float x, float m)
{
#if defined(XPDNN_HOST)
    return x * m;
#else
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(x), "f"(m));
    return r;
#endif
}

XPDNN_FN double xpdnn_mul(double x, double m) { return x * m; }

// Per element type: compute type S, 128-bit vector type V holding NV of them per 8 elements.
template <typename T> struct xpdnn_dtype;

template <> struct xpdnn_dtype<float> {
    typedef float S;
    typedef float4 V;
    enum { NV = 2 };
    XPDNN_FN static S load(float v) { return v; }
    XPDNN_FN static float store(S s) { return s; }
};

template <> struct xpdnn_dtype<double> {
    typedef double S;
    typedef double2 V;
    enum { NV = 4 };
    XPDNN_FN static S load(double v) { return v; }
    XPDNN_FN static double store(S s) { return s; }
};

template <> struct xpdnn_dtype<xpdnn_f16> {
    typedef float S;
    typedef uint4 V;
    enum { NV = 1 };
    XPDNN_FN static S load(xpdnn_f16 v) { return xpdnn_f16_to_float(v); }
    XPDNN_FN static xpdnn_f16 store(S s) { return xpdnn_float_to_f16(s); }
};

template <> struct xpdnn_dtype<xpdnn_bf16> {
    typedef float S;
    typedef uint4 V;
    enum { NV = 1 };
    XPDNN_FN static S load(xpdnn_bf16 v) { return xpdnn_bf16_to_float(v); }
    XPDNN_FN static xpdnn_bf16 store(S s) { return xpdnn_float_to_bf16(s); }
};

template <typename T>
XPDNN_FN void xpdnn_dropout_block(const T* x, T* y, xpdnn_u64 n, xpdnn_u64 b, xpdnn_u64 seed, xpdnn_u64 counter,
                                  xpdnn_u64 threshold, typename xpdnn_dtype<T>::S scale, xpdnn_u64 offset)
{
    typedef xpdnn_dtype<T> D;
    typedef typename D::S S;
    typedef typename D::V V;
    unsigned int bits[8];
    xpdnn_philox_bits8(seed, counter, b, bits);
    const S zero = 0;
    const xpdnn_u64 w0 = 8ULL * b;               // first word of the block; element w0 - offset
    const bool whole = w0 >= offset && w0 - offset + 8 <= n;
    const xpdnn_u64 i0 = whole ? w0 - offset : 0;
    const bool aligned = ((((xpdnn_u64)(x + i0)) | ((xpdnn_u64)(y + i0))) & 15ULL) == 0;
    if (whole && aligned) {
        union {
            V v[D::NV];
            T e[8];
        } buf;
        const V* src = reinterpret_cast<const V*>(x + i0);
        V* dst = reinterpret_cast<V*>(y + i0);
#if !defined(XPDNN_HOST)
#pragma unroll
#endif
        for (int k = 0; k < D::NV; ++k) buf.v[k] = src[k];
#if !defined(XPDNN_HOST)
#pragma unroll
#endif
        for (int j = 0; j < 8; ++j)
            buf.e[j] = D::store(xpdnn_mul(D::load(buf.e[j]), (xpdnn_u64)bits[j] >= threshold ? scale : zero));
#if !defined(XPDNN_HOST)
#pragma unroll
#endif
        for (int k = 0; k < D::NV; ++k) dst[k] = buf.v[k];
    } else {
        for (int j = 0; j < 8; ++j) {
            const xpdnn_u64 w = w0 + j;
            if (w < offset || w - offset >= n) continue;
            const xpdnn_u64 i = w - offset;
            y[i] = D::store(xpdnn_mul(D::load(x[i]), (xpdnn_u64)bits[j] >= threshold ? scale : zero));
        }
    }
}

template <typename T>
XPDNN_FN void xpdnn_dropout(const T* x, T* y, xpdnn_u64 n, xpdnn_u64 seed, xpdnn_u64 counter, xpdnn_u64 threshold,
                            typename xpdnn_dtype<T>::S scale, xpdnn_u64 offset, xpdnn_u64 first, xpdnn_u64 stride)
{
    const xpdnn_u64 b0 = offset / 8, n_blocks = (offset % 8 + n + 7) / 8;
    for (xpdnn_u64 t = first; t < n_blocks; t += stride)
        xpdnn_dropout_block<T>(x, y, n, b0 + t, seed, counter, threshold, scale, offset);
}

extern "C" __global__ void xpdnn_dropout_f32(const float* x, float* y, xpdnn_u64 n, xpdnn_u64 seed,
                                             xpdnn_u64 counter, xpdnn_u64 threshold, float scale,
                                             xpdnn_u64 offset)
{
    xpdnn_dropout<float>(x, y, n, seed, counter, threshold, scale, offset, XPDNN_THREAD_FIRST, XPDNN_THREAD_STRIDE);
}

extern "C" __global__ void xpdnn_dropout_f64(const double* x, double* y, xpdnn_u64 n, xpdnn_u64 seed,
                                             xpdnn_u64 counter, xpdnn_u64 threshold, double scale,
                                             xpdnn_u64 offset)
{
    xpdnn_dropout<double>(x, y, n, seed, counter, threshold, scale, offset, XPDNN_THREAD_FIRST, XPDNN_THREAD_STRIDE);
}

extern "C" __global__ void xpdnn_dropout_f16(const xpdnn_f16* x, xpdnn_f16* y, xpdnn_u64 n, xpdnn_u64 seed,
                                             xpdnn_u64 counter, xpdnn_u64 threshold, float scale,
                                             xpdnn_u64 offset)
{
    xpdnn_dropout<xpdnn_f16>(x, y, n, seed, counter, threshold, scale, offset, XPDNN_THREAD_FIRST, XPDNN_THREAD_STRIDE);
}

extern "C" __global__ void xpdnn_dropout_bf16(const xpdnn_bf16* x, xpdnn_bf16* y, xpdnn_u64 n, xpdnn_u64 seed,
                                              xpdnn_u64 counter, xpdnn_u64 threshold, float scale,
                                             xpdnn_u64 offset)
{
    xpdnn_dropout<xpdnn_bf16>(x, y, n, seed, counter, threshold, scale, offset, XPDNN_THREAD_FIRST, XPDNN_THREAD_STRIDE);
}

extern "C" __global__ void xpdnn_philox_bits32(unsigned int* out, xpdnn_u64 n, xpdnn_u64 seed, xpdnn_u64 counter)
{
    const xpdnn_u64 n_blocks = (n + 7) / 8;
    for (xpdnn_u64 b = XPDNN_THREAD_FIRST; b < n_blocks; b += XPDNN_THREAD_STRIDE) {
        unsigned int bits[8];
        xpdnn_philox_bits8(seed, counter, b, bits);
        for (int j = 0; j < 8; ++j)
            if (8ULL * b + j < n) out[8ULL * b + j] = bits[j];
    }
}
