/*
 * OpenCL backend: GEMM through CLBlast, and the vector ops.
 *
 * CLBlast 1.5 compiles its kernels for a device on the first call of each
 * routine and precision, and keeps them in memory for the process; that first
 * call costs seconds on PoCL (docs/OPENCL.md has the measurements).
 */
#include "config.h"

#include <clblast_c.h>
#include <math.h>
#include <string.h>

#include "ocl.h"

/* Work-groups and work-group size of the sum of squares: fixed, so the order of the
 * additions, and with it the rounding, is the same on every run. */
#define SUMSQ_GROUPS 64
#define SUMSQ_LOCAL 256

/* Sets C (m,n) with leading dimension ldc to beta * C, where beta = 0 writes zeros
 * without reading C (so NaN there does not propagate). */
static dm_status scale_block(ocl_ctx *c, int m, int n, float beta, dm_tensor ct, int ldc)
{
    ocl_args a;

    if (beta == 0.0f) {
        a = ocl_args_begin(c, OCL_K_fill_rows);
        ocl_arg_t(&a, ct);
        ocl_arg_i(&a, m);
        ocl_arg_i(&a, n);
        ocl_arg_i(&a, ldc);
        ocl_arg_u(&a, 0u);
    } else {
        a = ocl_args_begin(c, OCL_K_scale_rows);
        ocl_arg_t(&a, ct);
        ocl_arg_i(&a, m);
        ocl_arg_i(&a, n);
        ocl_arg_i(&a, ldc);
        ocl_arg_f(&a, beta);
    }
    return ocl_run2(&a, "gemm", (size_t)n, (size_t)m);
}

dm_status ocl_gemm(void *ctx, int ta, int tb, int m, int n, int k, float alpha, dm_tensor a,
                   int lda, dm_tensor b, int ldb, float beta, dm_tensor ct, int ldc)
{
    ocl_ctx *c = ctx;
    dm_status st;

    if (m < 0 || n < 0 || k < 0)
        return ocl_fail(c, DM_ERR_INVALID, "opencl gemm: negative size m=%d n=%d k=%d", m, n, k);
    if (m == 0 || n == 0)
        return DM_OK;
    if (!a.buf || !b.buf || !ct.buf)
        return ocl_fail(c, DM_ERR_INVALID, "opencl gemm: a tensor has no buffer");
    if (ldc < n)
        return ocl_fail(c, DM_ERR_INVALID, "opencl gemm: ldc=%d is below n=%d", ldc, n);

    /* CLBlast rejects k = 0; C = beta C is the whole product then. */
    if (k == 0 || alpha == 0.0f)
        return beta == 1.0f ? DM_OK : scale_block(c, m, n, beta, ct, ldc);

    /* CLBlast computes beta * C even for beta = 0, which turns NaN in C into NaN. */
    if (beta == 0.0f && (st = scale_block(c, m, n, 0.0f, ct, ldc)) != DM_OK)
        return st;

    double t0 = c->clblast_warm ? 0.0 : ocl_now();
    CLBlastStatusCode rc = CLBlastSgemm(CLBlastLayoutRowMajor, ta ? CLBlastTransposeYes : CLBlastTransposeNo,
                                        tb ? CLBlastTransposeYes : CLBlastTransposeNo, (size_t)m, (size_t)n,
                                        (size_t)k, alpha, a.buf->mem, a.off, (size_t)lda, b.buf->mem, b.off,
                                        (size_t)ldb, beta, ct.buf->mem, ct.off, (size_t)ldc, &c->queue, NULL);
    if (rc != CLBlastSuccess)
        return ocl_fail(c, rc == CLBlastTempBufferAllocFailure || rc == CLBlastOpenCLOutOfResources
                               ? DM_ERR_NOMEM : DM_ERR_BACKEND,
                        "opencl gemm: CLBlastSgemm failed: %s (%d) for m=%d n=%d k=%d lda=%d ldb=%d ldc=%d "
                        "trans_a=%d trans_b=%d", ocl_clblast_status_name(rc), (int)rc, m, n, k, lda, ldb,
                        ldc, ta, tb);
    if (!c->clblast_warm) {
        c->clblast_warm = 1;
        ocl_log(DM_LOG_INFO, "first CLBlastSgemm call took %.3f s (CLBlast compiles its kernels on first use)",
                ocl_now() - t0);
    }
    return DM_OK;
}

dm_status ocl_axpy(void *ctx, size_t n, float av, dm_tensor x, dm_tensor y)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_axpy);

    ocl_arg_n(&a, n);
    ocl_arg_f(&a, av);
    ocl_arg_t(&a, x);
    ocl_arg_t(&a, y);
    return ocl_run(&a, "axpy", n, 0);
}

dm_status ocl_scale(void *ctx, size_t n, float av, dm_tensor x)
{
    ocl_args a = ocl_args_begin(ctx, OCL_K_scale);

    ocl_arg_n(&a, n);
    ocl_arg_f(&a, av);
    ocl_arg_t(&a, x);
    return ocl_run(&a, "scale", n, 0);
}

dm_status ocl_sum_squares(void *ctx, size_t n, dm_tensor x, dm_tensor out)
{
    ocl_ctx *c = ctx;
    size_t acc = c->has_fp64 ? sizeof(cl_double) : sizeof(cl_float);
    size_t local = SUMSQ_LOCAL;
    cl_mem partial;
    dm_status st;

    while (local > c->max_wg)
        local /= 2;
    if ((st = ocl_scratch(c, "sum_squares", SUMSQ_GROUPS * acc, &partial)) != DM_OK)
        return st;

    ocl_args a = ocl_args_begin(c, OCL_K_sumsq_partial);
    ocl_arg_n(&a, n);
    ocl_arg_t(&a, x);
    ocl_arg_mem(&a, partial);
    ocl_arg_local(&a, local * acc);
    if ((st = ocl_run(&a, "sum_squares", SUMSQ_GROUPS * local, local)) != DM_OK)
        return st;

    a = ocl_args_begin(c, OCL_K_sumsq_final);
    ocl_arg_i(&a, SUMSQ_GROUPS);
    ocl_arg_mem(&a, partial);
    ocl_arg_t(&a, out);
    return ocl_run(&a, "sum_squares", 1, 0);
}
