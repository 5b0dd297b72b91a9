// Fused softmax cross-entropy: one launch writes every row's loss and the gradient
// dZ = scale * (softmax(Z) * sum(t) - t), with the weighted target of row i (label y)
//     t_c = (1 - eps) w_y [c == y] + (eps / C) w_c
// and the row loss l = sum_c t_c (lse - z_c) = (1 - eps) w_y (lse - z_y) + (eps / C) (W lse - sum_c w_c z_c),
// W = sum_c w_c.  Ignored rows (and rows whose label is not a class) get l = 0 and dZ = 0.
// This is the PyTorch CrossEntropyLoss formula, see xpdnn/losses/cross_entropy.py (the reference).
//
// Kernels (extern "C", one per logits type: f32, f64, f16, bf16; f16/bf16 accumulate in float):
//   xent_prepass_{f32,f64}   one block: validates the labels and sums the mean's normaliser
//                            den = sum over non-ignored rows of w_y (one double), and the first
//                            row whose label is out of range (~0 if none).  Reads N labels only.
//   xent_warp{VPT}_{T}       a warp per row, C <= 32 * VPT (VPT = 1, 2, 4, ..., 32, so C <= 1024):
//                            the row is read once into registers.
//   xent_block_{T}           a block of XENT_BLOCK threads per row, any C: pass 1 reads the row
//                            with an online max / sum (Milakov & Gimelshein 2018), pass 2 reads
//                            it again and writes the gradient once.
// No N x C temporary: the outputs are dZ (N x C, possibly the logits' own buffer) and the
// per-row losses (N), already multiplied by the reduction's scale.
//
// Z and dZ carry no __restrict__: with inplace they are the same buffer.  Every element is read
// (by the thread that writes it, or before a __syncthreads) before it is overwritten.
// Kernels use 64-bit indices throughout (N * C may exceed 2**31).
// The test suite also compiles this file as C++ on the CPU (shims for the CUDA built-ins, one
// std::thread per CUDA thread; half.cuh's host branch) to run the exact kernel code without a GPU.

typedef long long i64;
typedef unsigned long long u64;

#ifndef XENT_BLOCK
#define XENT_BLOCK 512
#endif
#define XENT_WARP_THREADS 128
#define XENT_PREPASS_THREADS 512
#define FULL_MASK 0xffffffffu

#include "half.cuh"

__device__ __forceinline__ float neg_inf(float) { return __int_as_float(0xff800000); }
__device__ __forceinline__ double neg_inf(double) { return __longlong_as_double(0xfff0000000000000LL); }
__device__ __forceinline__ float acc_max(float a, float b) { return a > b ? a : b; }
__device__ __forceinline__ double acc_max(double a, double b) { return a > b ? a : b; }
__device__ __forceinline__ float acc_exp(float x) { return expf(x); }
__device__ __forceinline__ double acc_exp(double x) { return exp(x); }
__device__ __forceinline__ float acc_log(float x) { return logf(x); }
__device__ __forceinline__ double acc_log(double x) { return log(x); }

// Storage type T <-> accumulation type A (16-bit types: half.cuh).
template <typename T> struct Conv;
template <> struct Conv<float> {
    typedef float A;
    static __device__ __forceinline__ float load(float x) { return x; }
    static __device__ __forceinline__ float store(float a) { return a; }
};
template <> struct Conv<double> {
    typedef double A;
    static __device__ __forceinline__ double load(double x) { return x; }
    static __device__ __forceinline__ double store(double a) { return a; }
};
template <> struct Conv<xpdnn_f16> {
    typedef float A;
    static __device__ __forceinline__ float load(xpdnn_f16 h) { return xpdnn_f16_to_float(h); }
    static __device__ __forceinline__ xpdnn_f16 store(float a) { return xpdnn_float_to_f16(a); }
};
template <> struct Conv<xpdnn_bf16> {
    typedef float A;
    static __device__ __forceinline__ float load(xpdnn_bf16 h) { return xpdnn_bf16_to_float(h); }
    static __device__ __forceinline__ xpdnn_bf16 store(float a) { return xpdnn_float_to_bf16(a); }
};

// 16-byte vector of T: V = 16 / sizeof(T) elements.
template <typename T> union Vec16 {
    uint4 raw;
    T v[16 / sizeof(T)];
};

template <typename T, typename A>
__device__ __forceinline__ void load16(const T* p, A* out) {
    Vec16<T> b;
    b.raw = *reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int j = 0; j < (int)(16 / sizeof(T)); ++j) out[j] = Conv<T>::load(b.v[j]);
}

template <typename T, typename A>
__device__ __forceinline__ void store16(T* p, const A* in) {
    Vec16<T> b;
#pragma unroll
    for (int j = 0; j < (int)(16 / sizeof(T)); ++j) b.v[j] = Conv<T>::store(in[j]);
    *reinterpret_cast<uint4*>(p) = b.raw;
}

template <typename A> __device__ __forceinline__ A warp_max(A v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = acc_max(v, __shfl_xor_sync(FULL_MASK, v, off));
    return v;
}

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(FULL_MASK, v, off);
    return v;
}

// What every row kernel needs besides its row of logits.
template <typename A> struct RowSetup {
    i64 label;
    bool live;      // label is a class and not ignore_index
    A w_y;          // weight of the label (1 without weights, 0 for a dead row)
    A one_m;        // 1 - eps
    A eps_c;        // eps / C
    A wsum;         // W = sum_c w_c (C without weights)
    A scale;        // the reduction's factor
};

template <typename A>
__device__ __forceinline__ RowSetup<A> row_setup(i64 row, const i64* __restrict__ y, const A* __restrict__ w,
                                                 int has_w, i64 C, i64 ignore_index, int has_ignore,
                                                 double smoothing, double wsum, int reduction,
                                                 const double* __restrict__ den) {
    RowSetup<A> r;
    r.label = y[row];
    r.live = !(has_ignore && r.label == ignore_index) && r.label >= 0 && r.label < C;
    r.w_y = r.live ? (has_w ? w[r.label] : A(1)) : A(0);
    r.one_m = (A)(1.0 - smoothing);
    r.eps_c = (A)(smoothing / (double)C);
    r.wsum = (A)wsum;
    r.scale = A(1);
    if (reduction == 2) {
        double d = den[0];
        r.scale = d > 0.0 ? (A)(1.0 / d) : A(0);
    }
    return r;
}

// Row loss from the log-sum-exp pieces: m = max, s = sum exp(z - m), u = sum_c w_c (z_c - m).
// lse - z_y = log s + (m - z_y) and W lse - sum_c w_c z_c = W log s - u, both without cancellation.
template <typename A>
__device__ __forceinline__ A row_loss_value(const RowSetup<A>& r, A m, A s, A u, A zy, bool smooth) {
    A log_s = acc_log(s);
    A l = r.one_m * r.w_y * (log_s + (m - zy));
    if (smooth) l += r.eps_c * (r.wsum * log_s - u);
    return l * r.scale;
}

// One gradient element: scale * (p * T - t_c).
template <typename A>
__device__ __forceinline__ A grad_value(const RowSetup<A>& r, A p, A T, i64 col, const A* __restrict__ w,
                                        int has_w, bool smooth) {
    A t = col == r.label ? r.one_m * r.w_y : A(0);
    if (smooth) t += r.eps_c * (has_w ? w[col] : A(1));
    return r.scale * (p * T - t);
}

// ---- a warp per row, the row in registers --------------------------------------------------
// Register slot k of lane L holds column col(k, L):
//   scalar mode: k * 32 + L
//   vector mode: ((k / V) * 32 + L) * V + k % V    (16-byte loads of V consecutive columns)
template <typename T, int VPT>
__device__ __forceinline__ void xent_warp(const T* Z, i64 ldz, T* G, i64 ldg, const i64* __restrict__ y,
                                          const typename Conv<T>::A* __restrict__ w, int has_w, i64 N, i64 C,
                                          i64 ignore_index, int has_ignore, double smoothing, double wsum,
                                          int reduction, const double* __restrict__ den,
                                          typename Conv<T>::A* __restrict__ row_loss, int vec) {
    typedef typename Conv<T>::A A;
    constexpr int V = (int)(16 / sizeof(T));
    constexpr int NG = VPT / V;     // vector groups per lane (0 when VPT < V: scalar mode only)
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (XENT_WARP_THREADS / 32) + (threadIdx.x >> 5);
    if (row >= N) return;           // uniform over the warp
    const bool vmode = NG > 0 && vec != 0;
    const bool smooth = smoothing != 0.0;
    const T* z = Z + row * ldz;
    T* g = G + row * ldg;
    const RowSetup<A> r = row_setup<A>(row, y, w, has_w, C, ignore_index, has_ignore, smoothing, wsum, reduction, den);

    A v[VPT];
    i64 col[VPT];
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
        col[k] = vmode ? ((i64)((k / V) * 32 + lane) * V + k % V) : ((i64)k * 32 + lane);
    }

    if (!r.live) {
#pragma unroll
        for (int k = 0; k < VPT; ++k)
            if (col[k] < C) g[col[k]] = Conv<T>::store(A(0));
        if (lane == 0) row_loss[row] = A(0);
        return;
    }

    const A ninf = neg_inf(A(0));
    bool loaded = false;
    if constexpr (NG > 0) {
        if (vmode) {
#pragma unroll
            for (int q = 0; q < NG; ++q) {
                const i64 base = col[q * V];
                if (base + V <= C) {
                    load16<T, A>(z + base, v + q * V);
                } else {
#pragma unroll
                    for (int j = 0; j < V; ++j) v[q * V + j] = base + j < C ? Conv<T>::load(z[base + j]) : ninf;
                }
            }
            loaded = true;
        }
    }
    if (!loaded) {
#pragma unroll
        for (int k = 0; k < VPT; ++k) v[k] = col[k] < C ? Conv<T>::load(z[col[k]]) : ninf;
    }

    A m = ninf;
    A zy = A(0);
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
        m = acc_max(m, v[k]);
        if (col[k] == r.label) zy = v[k];
    }
    m = warp_max(m);
    zy = warp_sum(zy);              // exactly one lane holds a non-zero
    A u = A(0);
    if (smooth) {
#pragma unroll
        for (int k = 0; k < VPT; ++k)
            if (col[k] < C) u += (has_w ? w[col[k]] : A(1)) * (v[k] - m);
        u = warp_sum(u);
    }
    A s = A(0);
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
        v[k] = acc_exp(v[k] - m);   // padding slots: exp(-inf) = 0
        s += v[k];
    }
    s = warp_sum(s);
    if (lane == 0) row_loss[row] = row_loss_value<A>(r, m, s, u, zy, smooth);

    const A inv_s = A(1) / s;
    const A T_sum = r.one_m * r.w_y + r.eps_c * r.wsum;
#pragma unroll
    for (int k = 0; k < VPT; ++k)
        if (col[k] < C) v[k] = grad_value<A>(r, v[k] * inv_s, T_sum, col[k], w, has_w, smooth);
    if constexpr (NG > 0) {
        if (vmode) {
#pragma unroll
            for (int q = 0; q < NG; ++q) {
                const i64 base = col[q * V];
                if (base + V <= C) {
                    store16<T, A>(g + base, v + q * V);
                } else {
#pragma unroll
                    for (int j = 0; j < V; ++j)
                        if (base + j < C) g[base + j] = Conv<T>::store(v[q * V + j]);
                }
            }
            return;
        }
    }
#pragma unroll
    for (int k = 0; k < VPT; ++k)
        if (col[k] < C) g[col[k]] = Conv<T>::store(v[k]);
}

// ---- a block per row, online max / sum -------------------------------------------------------
// Partial state over a set of columns: m = max, s = sum exp(z - m), u = sum w_c (z_c - m),
// ws = sum w_c.  m = -inf marks an empty set.
template <typename A> struct Online {
    A m, s, u, ws;
};

template <typename A>
__device__ __forceinline__ void online_add(Online<A>& a, A x, A wc, bool smooth) {
    if (x > a.m) {
        if (smooth) a.u = a.m == neg_inf(A(0)) ? A(0) : a.u - (x - a.m) * a.ws;
        a.s = a.s * acc_exp(a.m - x) + A(1);
        a.m = x;
    } else {
        a.s += acc_exp(x - a.m);
    }
    if (smooth) {
        a.u += wc * (x - a.m);
        a.ws += wc;
    }
}

// Symmetric in (a, b) up to the order of commutative additions, so both partners of a
// butterfly shuffle get bit-identical results.
template <typename A>
__device__ __forceinline__ Online<A> online_merge(const Online<A>& a, const Online<A>& b) {
    const A ninf = neg_inf(A(0));
    if (b.m == ninf) return a;
    if (a.m == ninf) return b;
    Online<A> o;
    o.m = acc_max(a.m, b.m);
    o.s = a.s * acc_exp(a.m - o.m) + b.s * acc_exp(b.m - o.m);
    o.u = (a.u - (o.m - a.m) * a.ws) + (b.u - (o.m - b.m) * b.ws);
    o.ws = a.ws + b.ws;
    return o;
}

template <typename A>
__device__ __forceinline__ Online<A> online_shfl(const Online<A>& a, int off) {
    Online<A> b;
    b.m = __shfl_xor_sync(FULL_MASK, a.m, off);
    b.s = __shfl_xor_sync(FULL_MASK, a.s, off);
    b.u = __shfl_xor_sync(FULL_MASK, a.u, off);
    b.ws = __shfl_xor_sync(FULL_MASK, a.ws, off);
    return b;
}

template <typename T>
__device__ __forceinline__ void xent_block(const T* Z, i64 ldz, T* G, i64 ldg, const i64* __restrict__ y,
                                           const typename Conv<T>::A* __restrict__ w, int has_w, i64 N, i64 C,
                                           i64 ignore_index, int has_ignore, double smoothing, double wsum,
                                           int reduction, const double* __restrict__ den,
                                           typename Conv<T>::A* __restrict__ row_loss, int vec) {
    typedef typename Conv<T>::A A;
    constexpr int V = (int)(16 / sizeof(T));
    constexpr int NWARPS = XENT_BLOCK / 32;
    __shared__ Online<A> partial[NWARPS];
    __shared__ A zy_shared;
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const i64 row = blockIdx.x;
    if (row >= N) return;           // uniform over the block
    const bool smooth = smoothing != 0.0;
    const T* z = Z + row * ldz;
    T* g = G + row * ldg;
    const RowSetup<A> r = row_setup<A>(row, y, w, has_w, C, ignore_index, has_ignore, smoothing, wsum, reduction, den);
    const i64 n_vec = vec ? C / V : 0;       // 16-byte groups; columns from n_vec * V on go one by one
    const i64 tail0 = n_vec * V;

    if (!r.live) {
        const T zero = Conv<T>::store(A(0));
        for (i64 col = tid; col < C; col += XENT_BLOCK) g[col] = zero;
        if (tid == 0) row_loss[row] = A(0);
        return;
    }

    if (tid == 0) zy_shared = Conv<T>::load(z[r.label]);   // read before any write to this row

    const A ninf = neg_inf(A(0));
    Online<A> st;
    st.m = ninf;
    st.s = A(0);
    st.u = A(0);
    st.ws = A(0);
    for (i64 q = tid; q < n_vec; q += XENT_BLOCK) {
        A x[V];
        load16<T, A>(z + q * V, x);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const i64 col = q * V + j;
            online_add<A>(st, x[j], smooth && has_w ? w[col] : A(1), smooth);
        }
    }
    for (i64 col = tail0 + tid; col < C; col += XENT_BLOCK)
        online_add<A>(st, Conv<T>::load(z[col]), smooth && has_w ? w[col] : A(1), smooth);

#pragma unroll
    for (int off = 16; off > 0; off >>= 1) st = online_merge<A>(st, online_shfl<A>(st, off));
    if (lane == 0) partial[warp] = st;
    __syncthreads();
    if (warp == 0) {
        Online<A> t;
        if (lane < NWARPS) {
            t = partial[lane];
        } else {
            t.m = ninf;
            t.s = A(0);
            t.u = A(0);
            t.ws = A(0);
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) t = online_merge<A>(t, online_shfl<A>(t, off));
        if (lane == 0) {
            partial[0] = t;
            row_loss[row] = row_loss_value<A>(r, t.m, t.s, t.u, zy_shared, smooth);
        }
    }
    __syncthreads();
    const A m = partial[0].m;
    const A inv_s = A(1) / partial[0].s;
    const A T_sum = r.one_m * r.w_y + r.eps_c * r.wsum;

    for (i64 q = tid; q < n_vec; q += XENT_BLOCK) {
        A x[V];
        load16<T, A>(z + q * V, x);
#pragma unroll
        for (int j = 0; j < V; ++j)
            x[j] = grad_value<A>(r, acc_exp(x[j] - m) * inv_s, T_sum, q * V + j, w, has_w, smooth);
        store16<T, A>(g + q * V, x);
    }
    for (i64 col = tail0 + tid; col < C; col += XENT_BLOCK) {
        const A p = acc_exp(Conv<T>::load(z[col]) - m) * inv_s;
        g[col] = Conv<T>::store(grad_value<A>(r, p, T_sum, col, w, has_w, smooth));
    }
}

// ---- label check and the mean's normaliser ---------------------------------------------------
template <typename A>
__device__ __forceinline__ void xent_prepass(const i64* __restrict__ y, const A* __restrict__ w, int has_w,
                                             i64 N, i64 C, i64 ignore_index, int has_ignore,
                                             double* __restrict__ den_out, u64* __restrict__ bad_out) {
    constexpr int NWARPS = XENT_PREPASS_THREADS / 32;
    __shared__ double den_part[NWARPS];
    __shared__ u64 bad_part[NWARPS];
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    double d = 0.0;
    u64 bad = ~0ull;
    for (i64 i = tid; i < N; i += XENT_PREPASS_THREADS) {
        const i64 label = y[i];
        if (has_ignore && label == ignore_index) continue;
        if (label < 0 || label >= C) {
            if ((u64)i < bad) bad = (u64)i;
        } else {
            d += has_w ? (double)w[label] : 1.0;
        }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        d += __shfl_xor_sync(FULL_MASK, d, off);
        const u64 o = __shfl_xor_sync(FULL_MASK, bad, off);
        bad = o < bad ? o : bad;
    }
    if (lane == 0) {
        den_part[warp] = d;
        bad_part[warp] = bad;
    }
    __syncthreads();
    if (warp == 0) {
        d = lane < NWARPS ? den_part[lane] : 0.0;
        bad = lane < NWARPS ? bad_part[lane] : ~0ull;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            d += __shfl_xor_sync(FULL_MASK, d, off);
            const u64 o = __shfl_xor_sync(FULL_MASK, bad, off);
            bad = o < bad ? o : bad;
        }
        if (lane == 0) {
            den_out[0] = d;
            bad_out[0] = bad;
        }
    }
}

#define XENT_ARGS(T)                                                                             \
    const T *Z, i64 ldz, T *G, i64 ldg, const i64 *__restrict__ y,                               \
        const Conv<T>::A *__restrict__ w, int has_w, i64 N, i64 C, i64 ignore_index,             \
        int has_ignore, double smoothing, double wsum, int reduction,                            \
        const double *__restrict__ den, Conv<T>::A *__restrict__ row_loss, int vec
#define XENT_PASS Z, ldz, G, ldg, y, w, has_w, N, C, ignore_index, has_ignore, smoothing, wsum, reduction, den, row_loss, vec

#define XENT_WARP_KERNEL(T, SUFFIX, VPT)                                                         \
    extern "C" __global__ void __launch_bounds__(XENT_WARP_THREADS)                              \
        xent_warp##VPT##_##SUFFIX(XENT_ARGS(T)) {                                                \
        xent_warp<T, VPT>(XENT_PASS);                                                            \
    }

#define XENT_KERNELS(T, SUFFIX)                                                                  \
    XENT_WARP_KERNEL(T, SUFFIX, 1)                                                               \
    XENT_WARP_KERNEL(T, SUFFIX, 2)                                                               \
    XENT_WARP_KERNEL(T, SUFFIX, 4)                                                               \
    XENT_WARP_KERNEL(T, SUFFIX, 8)                                                               \
    XENT_WARP_KERNEL(T, SUFFIX, 16)                                                              \
    XENT_WARP_KERNEL(T, SUFFIX, 32)                                                              \
    extern "C" __global__ void __launch_bounds__(XENT_BLOCK) xent_block_##SUFFIX(XENT_ARGS(T)) { \
        xent_block<T>(XENT_PASS);                                                                \
    }

XENT_KERNELS(float, f32)
XENT_KERNELS(double, f64)
XENT_KERNELS(xpdnn_f16, f16)
XENT_KERNELS(xpdnn_bf16, bf16)

#define XENT_PREPASS_KERNEL(A, SUFFIX)                                                           \
    extern "C" __global__ void __launch_bounds__(XENT_PREPASS_THREADS) xent_prepass_##SUFFIX(    \
        const i64 *__restrict__ y, const A *__restrict__ w, int has_w, i64 N, i64 C,             \
        i64 ignore_index, int has_ignore, double *__restrict__ den_out, u64 *__restrict__ bad_out) { \
        xent_prepass<A>(y, w, has_w, N, C, ignore_index, has_ignore, den_out, bad_out);          \
    }

XENT_PREPASS_KERNEL(float, f32)
XENT_PREPASS_KERNEL(double, f64)
