/*
 * Reference gemm, axpy, scale and sum_squares: gemm against a naive triple
 * loop for every transpose combination and odd sizes, the beta rules, and
 * the gradients of a scalar loss through gemm by central differences.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>

#define REF_REAL double
#define REF_DOUBLE
#include "ref_ops.h"

#include "layers_util.h"

/* float kernels, from libref_float */
void dm_ref_f_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc);
void dm_ref_f_sum_squares(size_t n, const float *x, float *out);

/* One gemm problem: op(A) (M,K), op(B) (K,N), C (M,N), with padded leading
 * dimensions so that a kernel reading the wrong stride fails. */
typedef struct gemm_case {
    int trans_a, trans_b, m, n, k;
    int lda, ldb, ldc;
    double *a, *b, *c;
    size_t a_len, b_len, c_len;
} gemm_case;

static gemm_case gemm_case_make(tl_rng *rng, int trans_a, int trans_b, int m, int n, int k, int pad)
{
    gemm_case g = {.trans_a = trans_a, .trans_b = trans_b, .m = m, .n = n, .k = k};
    int a_rows = trans_a ? k : m, a_cols = trans_a ? m : k;
    int b_rows = trans_b ? n : k, b_cols = trans_b ? k : n;

    g.lda = a_cols + pad;
    g.ldb = b_cols + pad;
    g.ldc = n + pad;
    g.a_len = (size_t)a_rows * g.lda;
    g.b_len = (size_t)b_rows * g.ldb;
    g.c_len = (size_t)m * g.ldc;
    g.a = tl_alloc(g.a_len);
    g.b = tl_alloc(g.b_len);
    g.c = tl_alloc(g.c_len);
    tl_fill(rng, g.a, g.a_len, -1.0, 1.0);
    tl_fill(rng, g.b, g.b_len, -1.0, 1.0);
    tl_fill(rng, g.c, g.c_len, -1.0, 1.0);
    return g;
}

static void gemm_case_free(gemm_case *g)
{
    free(g->a);
    free(g->b);
    free(g->c);
}

/* C = alpha op(A) op(B) + beta C by the textbook loop, in long double. */
static void naive_gemm(const gemm_case *g, double alpha, double beta, double *c)
{
    for (int i = 0; i < g->m; i++) {
        for (int j = 0; j < g->n; j++) {
            long double dot = 0.0L;
            for (int p = 0; p < g->k; p++) {
                double a = g->trans_a ? g->a[(size_t)p * g->lda + i] : g->a[(size_t)i * g->lda + p];
                double b = g->trans_b ? g->b[(size_t)j * g->ldb + p] : g->b[(size_t)p * g->ldb + j];
                dot += (long double)a * b;
            }
            size_t idx = (size_t)i * g->ldc + j;
            c[idx] = (double)(alpha * dot + (beta != 0.0 ? beta * (long double)c[idx] : 0.0L));
        }
    }
}

static const int gemm_sizes[] = {1, 3, 17};
#define N_SIZES ((int)(sizeof gemm_sizes / sizeof gemm_sizes[0]))

/* _i encodes the transpose combination: bit 0 = trans_a, bit 1 = trans_b. */
START_TEST(gemm_matches_naive_loop)
{
    int trans_a = _i & 1, trans_b = (_i >> 1) & 1;
    tl_rng rng = {1000u + (uint64_t)_i};

    for (int im = 0; im < N_SIZES; im++)
        for (int in = 0; in < N_SIZES; in++)
            for (int ik = 0; ik < N_SIZES; ik++) {
                int m = gemm_sizes[im], n = gemm_sizes[in], k = gemm_sizes[ik];
                gemm_case g = gemm_case_make(&rng, trans_a, trans_b, m, n, k, (m + n + k) % 3);
                double *want = tl_alloc(g.c_len);
                for (size_t i = 0; i < g.c_len; i++)
                    want[i] = g.c[i];

                naive_gemm(&g, 0.75, -0.5, want);
                dm_ref_d_gemm(trans_a, trans_b, m, n, k, 0.75, g.a, g.lda, g.b, g.ldb, -0.5, g.c,
                              g.ldc);

                double err = tl_rel_err(g.c, want, g.c_len);
                ck_assert_msg(err <= 1e-14, "gemm ta=%d tb=%d m=%d n=%d k=%d: relative error %g",
                              trans_a, trans_b, m, n, k, err);
                free(want);
                gemm_case_free(&g);
            }
}
END_TEST

/* The float build rounds double-accumulated dot products, so it matches the
 * naive loop to a few float ulps. */
START_TEST(gemm_float_matches_naive_loop)
{
    int trans_a = _i & 1, trans_b = (_i >> 1) & 1;
    tl_rng rng = {2000u + (uint64_t)_i};
    gemm_case g = gemm_case_make(&rng, trans_a, trans_b, 17, 3, 17, 1);
    double *want = tl_alloc(g.c_len);
    float *af = tl_to_float(g.a, g.a_len), *bf = tl_to_float(g.b, g.b_len);
    float *cf = tl_to_float(g.c, g.c_len);

    for (size_t i = 0; i < g.c_len; i++)
        want[i] = g.c[i];
    naive_gemm(&g, 1.25, 0.5, want);
    dm_ref_f_gemm(trans_a, trans_b, 17, 3, 17, 1.25f, af, g.lda, bf, g.ldb, 0.5f, cf, g.ldc);

    double err = tl_rel_err_f(cf, want, g.c_len);
    ck_assert_msg(err <= 1e-7, "float gemm ta=%d tb=%d: relative error %g", trans_a, trans_b, err);
    free(want);
    free(af);
    free(bf);
    free(cf);
    gemm_case_free(&g);
}
END_TEST

START_TEST(gemm_beta_zero_ignores_nan)
{
    tl_rng rng = {3000u + (uint64_t)_i};
    int trans_a = _i & 1, trans_b = (_i >> 1) & 1;
    gemm_case g = gemm_case_make(&rng, trans_a, trans_b, 3, 17, 3, 0);
    double *want = tl_alloc(g.c_len);
    float *af = tl_to_float(g.a, g.a_len), *bf = tl_to_float(g.b, g.b_len);
    float *cf = calloc(g.c_len, sizeof(float));

    for (size_t i = 0; i < g.c_len; i++) {
        g.c[i] = NAN;
        cf[i] = NAN;
    }
    naive_gemm(&g, 1.0, 0.0, want);
    dm_ref_d_gemm(trans_a, trans_b, 3, 17, 3, 1.0, g.a, g.lda, g.b, g.ldb, 0.0, g.c, g.ldc);
    dm_ref_f_gemm(trans_a, trans_b, 3, 17, 3, 1.0f, af, g.lda, bf, g.ldb, 0.0f, cf, g.ldc);

    for (size_t i = 0; i < g.c_len; i++) {
        ck_assert_msg(isfinite(g.c[i]), "double gemm: C[%zu] = %g after beta = 0", i, g.c[i]);
        ck_assert_msg(isfinite(cf[i]), "float gemm: C[%zu] = %g after beta = 0", i, (double)cf[i]);
    }
    ck_assert_double_le(tl_rel_err(g.c, want, g.c_len), 1e-14);
    free(want);
    free(af);
    free(bf);
    free(cf);
    gemm_case_free(&g);
}
END_TEST

/* beta = 1 adds the product to C: two calls equal twice the product plus C. */
START_TEST(gemm_beta_one_accumulates)
{
    tl_rng rng = {4000};
    gemm_case g = gemm_case_make(&rng, 0, 1, 17, 3, 3, 2);
    double *want = tl_alloc(g.c_len);

    for (size_t i = 0; i < g.c_len; i++)
        want[i] = g.c[i];
    naive_gemm(&g, 1.0, 1.0, want);
    naive_gemm(&g, 1.0, 1.0, want);
    dm_ref_d_gemm(0, 1, 17, 3, 3, 1.0, g.a, g.lda, g.b, g.ldb, 1.0, g.c, g.ldc);
    dm_ref_d_gemm(0, 1, 17, 3, 3, 1.0, g.a, g.lda, g.b, g.ldb, 1.0, g.c, g.ldc);

    ck_assert_double_le(tl_rel_err(g.c, want, g.c_len), 1e-14);
    free(want);
    gemm_case_free(&g);
}
END_TEST

/* k = 0: the product is empty, so C becomes beta * C. */
START_TEST(gemm_empty_inner_dimension)
{
    double a[1] = {7.0}, b[1] = {9.0}, c[2] = {1.0, -2.0};

    dm_ref_d_gemm(0, 0, 1, 2, 0, 1.0, a, 1, b, 2, 3.0, c, 2);
    ck_assert_double_eq(c[0], 3.0);
    ck_assert_double_eq(c[1], -6.0);

    c[0] = NAN;
    c[1] = NAN;
    dm_ref_d_gemm(0, 0, 1, 2, 0, 1.0, a, 1, b, 2, 0.0, c, 2);
    ck_assert_double_eq(c[0], 0.0);
    ck_assert_double_eq(c[1], 0.0);
}
END_TEST

/* Gradient of L = sum R * C with C = alpha op(A) op(B), computed by the two
 * gemm calls of a linear layer's backward pass, against central differences. */
typedef struct gemm_grad_ctx {
    gemm_case *g;
    double alpha;
    const double *r;
    double *c;
} gemm_grad_ctx;

static double gemm_loss(void *ctx_)
{
    gemm_grad_ctx *ctx = ctx_;
    gemm_case *g = ctx->g;

    dm_ref_d_gemm(g->trans_a, g->trans_b, g->m, g->n, g->k, ctx->alpha, g->a, g->lda, g->b, g->ldb,
                  0.0, ctx->c, g->n);
    return tl_dot(ctx->r, ctx->c, (size_t)g->m * g->n);
}

START_TEST(gemm_gradient_finite_difference)
{
    int trans_a = _i & 1, trans_b = (_i >> 1) & 1;
    int m = 3, n = 5, k = 4;
    tl_rng rng = {5000u + (uint64_t)_i};
    gemm_case g = gemm_case_make(&rng, trans_a, trans_b, m, n, k, 0);
    double alpha = 0.7;
    double *r = tl_alloc((size_t)m * n), *c = tl_alloc((size_t)m * n);
    double *da = tl_alloc(g.a_len), *db = tl_alloc(g.b_len);
    double *num_da = tl_alloc(g.a_len), *num_db = tl_alloc(g.b_len);
    tl_fill(&rng, r, (size_t)m * n, -1.0, 1.0);

    /* dop(A) = alpha R op(B)^T and dop(B) = alpha op(A)^T R, stored in A's and B's layouts. */
    if (!trans_a)
        dm_ref_d_gemm(0, !trans_b, m, k, n, alpha, r, n, g.b, g.ldb, 0.0, da, g.lda);
    else
        dm_ref_d_gemm(trans_b, 1, k, m, n, alpha, g.b, g.ldb, r, n, 0.0, da, g.lda);
    if (!trans_b)
        dm_ref_d_gemm(!trans_a, 0, k, n, m, alpha, g.a, g.lda, r, n, 0.0, db, g.ldb);
    else
        dm_ref_d_gemm(1, trans_a, n, k, m, alpha, r, n, g.a, g.lda, 0.0, db, g.ldb);

    gemm_grad_ctx ctx = {&g, alpha, r, c};
    tl_numeric_grad(g.a, g.a_len, gemm_loss, &ctx, num_da);
    tl_numeric_grad(g.b, g.b_len, gemm_loss, &ctx, num_db);

    double err_a = tl_rel_err(da, num_da, g.a_len);
    double err_b = tl_rel_err(db, num_db, g.b_len);
    ck_assert_msg(err_a <= 1e-6, "gemm ta=%d tb=%d: dA relative error %g", trans_a, trans_b, err_a);
    ck_assert_msg(err_b <= 1e-6, "gemm ta=%d tb=%d: dB relative error %g", trans_a, trans_b, err_b);
    free(r);
    free(c);
    free(da);
    free(db);
    free(num_da);
    free(num_db);
    gemm_case_free(&g);
}
END_TEST

START_TEST(axpy_and_scale)
{
    double x[3] = {1.0, -2.0, 0.5}, y[3] = {10.0, 20.0, 30.0};

    dm_ref_d_axpy(3, 2.0, x, y);
    ck_assert_double_eq(y[0], 12.0);
    ck_assert_double_eq(y[1], 16.0);
    ck_assert_double_eq(y[2], 31.0);

    dm_ref_d_scale(3, -0.5, y);
    ck_assert_double_eq(y[0], -6.0);
    ck_assert_double_eq(y[1], -8.0);
    ck_assert_double_eq(y[2], -15.5);
}
END_TEST

/* 2^20 squares of 2^-24 after a 1: each is half an ulp of 1 in float, so a
 * float accumulator would stay at 1, while the double one reaches 1 + 2^-4. */
START_TEST(sum_squares_double_accumulator)
{
    size_t n = ((size_t)1 << 20) + 1;
    float *x = malloc(n * sizeof(float));
    float out = 0.0f;
    double dx[3] = {3.0, -4.0, 12.0}, dout = 0.0;

    x[0] = 1.0f;
    for (size_t i = 1; i < n; i++)
        x[i] = 0x1.0p-12f;
    dm_ref_f_sum_squares(n, x, &out);
    ck_assert_float_eq(out, 1.0625f);

    dm_ref_d_sum_squares(3, dx, &dout);
    ck_assert_double_eq(dout, 169.0);
    free(x);
}
END_TEST

static Suite *linalg_suite(void)
{
    Suite *s = suite_create("reference linalg");
    TCase *tc = tcase_create("gemm");

    tcase_add_loop_test(tc, gemm_matches_naive_loop, 0, 4);
    tcase_add_loop_test(tc, gemm_float_matches_naive_loop, 0, 4);
    tcase_add_loop_test(tc, gemm_beta_zero_ignores_nan, 0, 4);
    tcase_add_test(tc, gemm_beta_one_accumulates);
    tcase_add_test(tc, gemm_empty_inner_dimension);
    tcase_add_loop_test(tc, gemm_gradient_finite_difference, 0, 4);
    suite_add_tcase(s, tc);

    tc = tcase_create("vector");
    tcase_add_test(tc, axpy_and_scale);
    tcase_add_test(tc, sum_squares_double_accumulator);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(linalg_suite());

    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
