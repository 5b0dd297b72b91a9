// 16-bit floating-point storage types and their conversions to and from float, shared by the
// kernels (which accumulate 16-bit data in float):
//   xpdnn_f16   IEEE 754 binary16; conversions round to nearest even (PTX cvt.rn / _Float16);
//   xpdnn_bf16  bfloat16 (the high half of a float); float -> bf16 rounds to nearest even and
//               keeps a NaN a (quiet) NaN.
// No cuda_fp16.h / cuda_bf16.h: NVRTC needs no include path.  Built as plain C++ (no CUDA
// compiler) the same functions use _Float16 and memcpy, which is how the test suite runs the
// kernels on a CPU.
#ifndef XPDNN_HALF_CUH
#define XPDNN_HALF_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define XPDNN_CONV __device__ __forceinline__
#else
#define XPDNN_CONV_HOST 1
#define XPDNN_CONV inline
#endif

struct xpdnn_f16 { unsigned short bits; };
struct xpdnn_bf16 { unsigned short bits; };

XPDNN_CONV float xpdnn_f16_to_float(xpdnn_f16 v)
{
#if defined(XPDNN_CONV_HOST)
    _Float16 h;
    __builtin_memcpy(&h, &v.bits, 2);
    return (float)h;
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
#endif
}

XPDNN_CONV xpdnn_f16 xpdnn_float_to_f16(float s)
{
    xpdnn_f16 out;
#if defined(XPDNN_CONV_HOST)
    _Float16 h = (_Float16)s;
    __builtin_memcpy(&out.bits, &h, 2);
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(out.bits) : "f"(s));
#endif
    return out;
}

XPDNN_CONV float xpdnn_bf16_to_float(xpdnn_bf16 v)
{
    const unsigned int u = (unsigned int)v.bits << 16;
#if defined(XPDNN_CONV_HOST)
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
#else
    return __uint_as_float(u);
#endif
}

XPDNN_CONV xpdnn_bf16 xpdnn_float_to_bf16(float s)
{
#if defined(XPDNN_CONV_HOST)
    unsigned int u;
    __builtin_memcpy(&u, &s, 4);
#else
    const unsigned int u = __float_as_uint(s);
#endif
    xpdnn_bf16 out;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        out.bits = (unsigned short)((u >> 16) | 0x40u);                      // NaN stays a (quiet) NaN
    } else {
        out.bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // round to nearest even
    }
    return out;
}

#endif  // XPDNN_HALF_CUH
