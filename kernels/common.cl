/*
 * dirmoe OpenCL kernels: shared definitions. The host concatenates the .cl
 * files in a fixed order (common, specfun, linalg, layers, dispatch, router,
 * loss) into one program, so these definitions are visible to every file.
 *
 * Build options set by the host: -cl-fp32-correctly-rounded-divide-sqrt,
 * and -DDM_FP64=1 when the device has cl_khr_fp64.
 *
 * Tensor arguments come as a buffer and an element offset (uint): the core's
 * tensors are views into shared buffers, and sub-buffers would need offsets
 * aligned to CL_DEVICE_MEM_BASE_ADDR_ALIGN.
 */
#pragma OPENCL FP_CONTRACT OFF

#ifdef DM_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
/* Accumulator of long reductions and the type of host scalars computed in double. */
typedef double acc_t;
#else
typedef float acc_t;
#endif

/* Template parameters of common/igamma_impl.h, which the host concatenates after
 * common/temme_coef.h and this file: the incomplete-gamma kernels in acc_t, with
 * the suffix _k. The table of temme_coef.h becomes `static constant dm_table_t`,
 * because OpenCL C 1.2 keeps program-scope data in the constant address space. */
#ifdef DM_FP64
typedef double dm_table_t;
#define R_EPS 1e-16
#define R_LOG_MAX 700.0
#define R_MAX DBL_MAX
#else
typedef float dm_table_t;
#define R_EPS 3e-8f
#define R_LOG_MAX 80.0f
#define R_MAX FLT_MAX
#endif
#define REAL acc_t
#define SFX(name) name##_k
#define R_LOG log
#define R_EXP exp
#define R_LOG1P log1p
#define R_EXPM1 expm1
#define R_SQRT sqrt
#define R_FABS fabs

/* Philox purposes, as in dirmoe/philox.h. */
#define DM_RNG_SELECT 2u
#define DM_RNG_GAMMA 3u

/* Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1). */
inline uint4 dm_philox(uint c0, uint c1, uint c2, uint c3, uint k0, uint k1)
{
    for (int round = 0; round < 10; round++) {
        uint lo0 = 0xD2511F53u * c0;
        uint hi0 = mul_hi(0xD2511F53u, c0);
        uint lo1 = 0xCD9E8D57u * c2;
        uint hi1 = mul_hi(0xCD9E8D57u, c2);
        uint n0 = hi1 ^ c1 ^ k0;
        uint n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return (uint4)(c0, c1, c2, c3);
}

/* The project's counter layout: element index, attempt, (layer << 8) | purpose, step. */
inline uint4 dm_philox_at(uint k0, uint k1, uint index, uint attempt, uint layer, uint purpose,
                          uint step)
{
    return dm_philox(index, attempt, (layer << 8) | purpose, step, k0, k1);
}

/* Uniform strictly inside (0, 1): ((w >> 9) + 0.5) * 2^-23, exact in float. */
inline float dm_uniform(uint w)
{
    return ((float)(w >> 9) + 0.5f) * 0x1p-23f;
}

/* log(1 + exp(x)) without overflow. */
inline float dm_softplusf(float x)
{
    if (x > 0.0f)
        return x + log1p(exp(-x));
    return log1p(exp(x));
}

inline float dm_sigmoidf(float x)
{
    if (x >= 0.0f)
        return 1.0f / (1.0f + exp(-x));
    float z = exp(x);
    return z / (1.0f + z);
}

#ifdef DM_FP64
inline double dm_softplus(double x)
{
    if (x > 0.0)
        return x + log1p(exp(-x));
    return log1p(exp(x));
}

inline double dm_sigmoid(double x)
{
    if (x >= 0.0)
        return 1.0 / (1.0 + exp(-x));
    double z = exp(x);
    return z / (1.0 + z);
}
#else
#define dm_softplus dm_softplusf
#define dm_sigmoid dm_sigmoidf
#endif

/* Fills n 32-bit words with a pattern (the beta = 0 case of gemm uses it on a strided block). */
kernel void dm_fill_rows(global uint *x, uint xo, int rows, int cols, int ld, uint bits)
{
    int j = get_global_id(0);
    int i = get_global_id(1);
    if (i >= rows || j >= cols)
        return;
    x[xo + (size_t)i * ld + j] = bits;
}

/* C (rows, cols) with leading dimension ld: C *= beta (the k = 0 case of gemm). */
kernel void dm_scale_rows(global float *x, uint xo, int rows, int cols, int ld, float beta)
{
    int j = get_global_id(0);
    int i = get_global_id(1);
    if (i >= rows || j >= cols)
        return;
    x[xo + (size_t)i * ld + j] *= beta;
}
