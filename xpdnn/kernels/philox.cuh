// Philox4x64-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), bit for
// bit as Random123 and numpy.random.Philox define it, and the xpdnn mapping from
// (seed, counter, element index i) to 32 random bits (xpdnn/random.py is the reference):
//
//   key   = (seed, 0)
//   block = philox4x64_10(ctr = (i / 8, counter, 0, 0), key) = four 64-bit words w0..w3
//   bits  = 32-bit word j = i % 8 of the block: the low half of w[j / 2] for even j, the high
//           half for odd j (the little-endian uint32 view of the raw 64-bit stream).
//
// One thread computes one block, i.e. the bits of 8 consecutive elements.  No cuRAND and no
// state in memory: the same (seed, counter) regenerates the same bits anywhere, any time.
//
// The file also compiles as plain C++ (XPDNN_HOST), which is how the test suite checks the
// kernel's index math on a machine without a GPU.
#ifndef XPDNN_PHILOX_CUH
#define XPDNN_PHILOX_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define XPDNN_FN __device__ __forceinline__
#define XPDNN_MULHI64(a, b) __umul64hi((a), (b))
#else
#define XPDNN_HOST 1
#define XPDNN_FN inline
#define XPDNN_MULHI64(a, b) ((unsigned long long)(((unsigned __int128)(a) * (unsigned __int128)(b)) >> 64))
#endif

typedef unsigned long long xpdnn_u64;

struct xpdnn_philox_block {
    xpdnn_u64 w0, w1, w2, w3;
};

XPDNN_FN xpdnn_philox_block xpdnn_philox4x64_10(xpdnn_u64 c0, xpdnn_u64 c1, xpdnn_u64 c2, xpdnn_u64 c3,
                                                xpdnn_u64 k0, xpdnn_u64 k1)
{
    const xpdnn_u64 M0 = 0xD2E7470EE14C6C93ULL, M1 = 0xCA5A826395121157ULL;
    const xpdnn_u64 W0 = 0x9E3779B97F4A7C15ULL, W1 = 0xBB67AE8584CAA73BULL;
#if !defined(XPDNN_HOST)
#pragma unroll
#endif
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {  // the key is bumped between rounds
            k0 += W0;
            k1 += W1;
        }
        const xpdnn_u64 hi0 = XPDNN_MULHI64(M0, c0), lo0 = M0 * c0;
        const xpdnn_u64 hi1 = XPDNN_MULHI64(M1, c2), lo1 = M1 * c2;
        const xpdnn_u64 n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    xpdnn_philox_block out = {c0, c1, c2, c3};
    return out;
}

// The 32-bit words of elements 8 * block .. 8 * block + 7 of call `counter` under `seed`.
XPDNN_FN void xpdnn_philox_bits8(xpdnn_u64 seed, xpdnn_u64 counter, xpdnn_u64 block, unsigned int bits[8])
{
    const xpdnn_philox_block r = xpdnn_philox4x64_10(block, counter, 0ULL, 0ULL, seed, 0ULL);
    bits[0] = (unsigned int)r.w0;
    bits[1] = (unsigned int)(r.w0 >> 32);
    bits[2] = (unsigned int)r.w1;
    bits[3] = (unsigned int)(r.w1 >> 32);
    bits[4] = (unsigned int)r.w2;
    bits[5] = (unsigned int)(r.w2 >> 32);
    bits[6] = (unsigned int)r.w3;
    bits[7] = (unsigned int)(r.w3 >> 32);
}

#endif  // XPDNN_PHILOX_CUH
