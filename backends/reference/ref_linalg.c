/*
 * Reference dense linear algebra: gemm, axpy, scale, sum_squares.
 * Plain loops over row-major arrays. Dot products and sums of squares
 * accumulate in double, so the float build is the rounding of a nearly exact
 * result and serves as ground truth for the BLAS-based backends.
 */
#include "ref_ops.h"

/* Element (row, col) of op(X), where op(X) is X or its transpose and X is
 * stored row-major with leading dimension ld. */
static ref_real op_at(const ref_real *x, int trans, int ld, int row, int col)
{
    return trans ? x[(size_t)col * ld + row] : x[(size_t)row * ld + col];
}

/* C (M,N) = alpha * op(A) (M,K) * op(B) (K,N) + beta * C.
 * With beta == 0 the old contents of C are never read, so NaN or garbage
 * there does not reach the result (the BLAS convention). */
void REF(gemm)(int trans_a, int trans_b, int m, int n, int k, ref_real alpha, const ref_real *a,
               int lda, const ref_real *b, int ldb, ref_real beta, ref_real *c, int ldc)
{
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            double dot = 0.0;
            for (int p = 0; p < k; p++)
                dot += (double)op_at(a, trans_a, lda, i, p) * (double)op_at(b, trans_b, ldb, p, j);

            ref_real *cij = &c[(size_t)i * ldc + j];
            double result = (double)alpha * dot;
            if (beta != 0)
                result += (double)beta * (double)*cij;
            *cij = (ref_real)result;
        }
    }
}

/* y (n) += a * x (n). */
void REF(axpy)(size_t n, ref_real a, const ref_real *x, ref_real *y)
{
    for (size_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

/* x (n) *= a. */
void REF(scale)(size_t n, ref_real a, ref_real *x)
{
    for (size_t i = 0; i < n; i++)
        x[i] *= a;
}

/* out[0] = sum_i x[i]^2, accumulated in double (used for gradient-norm clipping). */
void REF(sum_squares)(size_t n, const ref_real *x, ref_real *out)
{
    double sum = 0.0;

    for (size_t i = 0; i < n; i++)
        sum += (double)x[i] * (double)x[i];
    out[0] = (ref_real)sum;
}
