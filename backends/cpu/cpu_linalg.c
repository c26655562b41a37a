/* cpu backend: GEMM split across the OpenMP team, and the BLAS-1 style ops. */
#include "config.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "cpu_ops.h"

/* Below this many multiply-adds a GEMM runs on the calling thread: the split costs more. */
#define GEMM_SERIAL_FMAS (64.0 * 64.0 * 64.0)
/* Row or column blocks of a split GEMM are multiples of this (the SGEMM micro-tile). */
#define GEMM_SPLIT_ALIGN 16
/* Blocks per thread of a split GEMM, handed out dynamically: a thread that loses its
 * core for a while (a shared machine) then delays the call by one block, not by half of it. */
#define GEMM_BLOCKS_PER_THREAD 4
/* Smallest block of a split GEMM, in rows or columns of C. */
#define GEMM_MIN_BLOCK 64
/* Elements per partial sum of sum_squares: a fixed size so the result ignores the thread count. */
#define SUMSQ_CHUNK 8192

void cpu_sgemm_parallel(cpu_ctx *cx, int ta, int tb, int m, int n, int k, float alpha,
                        const float *a, int lda, const float *b, int ldb, float beta, float *c,
                        int ldc)
{
    const CBLAS_TRANSPOSE opa = ta ? CblasTrans : CblasNoTrans;
    const CBLAS_TRANSPOSE opb = tb ? CblasTrans : CblasNoTrans;
    int nt = cx->nthreads;

    if (nt <= 1 || (double)m * n * k < GEMM_SERIAL_FMAS || omp_in_parallel()) {
        cblas_sgemm(CblasRowMajor, opa, opb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }

    /* Split the longer side of C into aligned blocks. Each element of C is computed by one
     * SGEMM call whatever thread runs it, so the dynamic schedule keeps results fixed for a
     * given thread count (the block size depends on it). */
    int split_rows = m >= n;
    int extent = split_rows ? m : n;
    int block = (extent + nt * GEMM_BLOCKS_PER_THREAD - 1) / (nt * GEMM_BLOCKS_PER_THREAD);
    block = block < GEMM_MIN_BLOCK ? GEMM_MIN_BLOCK : block;
    block = (block + GEMM_SPLIT_ALIGN - 1) / GEMM_SPLIT_ALIGN * GEMM_SPLIT_ALIGN;
    int nblocks = (extent + block - 1) / block;

#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int ib = 0; ib < nblocks; ib++) {
        int lo = ib * block;
        int len = extent - lo < block ? extent - lo : block;

        if (split_rows) {
            /* Rows lo.. of C need rows lo.. of op(A): A is (M,K), or (K,M) when transposed. */
            const float *ap = ta ? a + lo : a + (size_t)lo * lda;
            cblas_sgemm(CblasRowMajor, opa, opb, len, n, k, alpha, ap, lda, b, ldb, beta,
                        c + (size_t)lo * ldc, ldc);
        } else {
            /* Columns lo.. of C need columns lo.. of op(B): B is (K,N), or (N,K) when transposed. */
            const float *bp = tb ? b + (size_t)lo * ldb : b + lo;
            cblas_sgemm(CblasRowMajor, opa, opb, m, len, k, alpha, a, lda, bp, ldb, beta,
                        c + lo, ldc);
        }
    }
}

dm_status cpu_gemm(void *ctx, int ta, int tb, int m, int n, int k, float alpha, dm_tensor a,
                   int lda, dm_tensor b, int ldb, float beta, dm_tensor c, int ldc)
{
    cpu_ctx *cx = ctx;

    if (m < 0 || n < 0 || k < 0)
        return cpu_fail(cx, DM_ERR_INVALID, "gemm: negative size m=%d n=%d k=%d", m, n, k);
    if (m == 0 || n == 0)
        return DM_OK;
    if (ldc < n || lda < (ta ? m : k) || ldb < (tb ? k : n))
        return cpu_fail(cx, DM_ERR_INVALID, "gemm: leading dimension too small (lda=%d ldb=%d ldc=%d for m=%d n=%d k=%d)",
                        lda, ldb, ldc, m, n, k);

    float *cp = f32(c);
    if (k == 0) {
        /* C = beta C, with beta = 0 clearing NaN as the contract requires. */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                cp[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * cp[(size_t)i * ldc + j];
        return DM_OK;
    }
    cpu_sgemm_parallel(cx, ta, tb, m, n, k, alpha, f32(a), lda, f32(b), ldb, beta, cp, ldc);
    return DM_OK;
}

dm_status cpu_axpy(void *ctx, size_t n, float a, dm_tensor x, dm_tensor y)
{
    cpu_ctx *cx = ctx;
    const float *xp = f32(x);
    float *yp = f32(y);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 16384)
    for (size_t i = 0; i < n; i++)
        yp[i] += a * xp[i];
    return DM_OK;
}

dm_status cpu_scale(void *ctx, size_t n, float a, dm_tensor x)
{
    cpu_ctx *cx = ctx;
    float *xp = f32(x);

#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= 16384)
    for (size_t i = 0; i < n; i++)
        xp[i] *= a;
    return DM_OK;
}

dm_status cpu_sum_squares(void *ctx, size_t n, dm_tensor x, dm_tensor out)
{
    cpu_ctx *cx = ctx;
    const float *xp = f32(x);
    size_t nchunks = cpu_nchunks(n, SUMSQ_CHUNK);
    double *partial = cpu_reduce_scratch(cx, nchunks ? nchunks : 1);

    if (!partial)
        return cpu_fail(cx, DM_ERR_NOMEM, "sum_squares: cannot allocate %zu partial sums", nchunks);

    /* Each chunk sums in float lanes of 8 (vectorisable), then adds up in double. */
#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (nchunks > 1)
    for (size_t ch = 0; ch < nchunks; ch++) {
        size_t lo = ch * SUMSQ_CHUNK;
        size_t hi = lo + SUMSQ_CHUNK < n ? lo + SUMSQ_CHUNK : n;
        double lanes_total = 0.0;
        size_t i = lo;

        for (; i + 64 <= hi; i += 64) {
            float lane[8] = {0};
            for (size_t j = 0; j < 64; j += 8)
                for (int l = 0; l < 8; l++)
                    lane[l] += xp[i + j + l] * xp[i + j + l];
            for (int l = 0; l < 8; l++)
                lanes_total += lane[l];
        }
        for (; i < hi; i++)
            lanes_total += (double)xp[i] * xp[i];
        partial[ch] = lanes_total;
    }

    double total = 0.0;
    for (size_t ch = 0; ch < nchunks; ch++)
        total += partial[ch];
    f32(out)[0] = (float)total;
    return DM_OK;
}
