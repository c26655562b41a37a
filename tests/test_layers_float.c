/*
 * The float build of the reference kernels (the plugin's) against the
 * double build on the same random inputs. Inputs are exact in float, and
 * the kernels accumulate in double, so the results differ by rounding only:
 * the norm-wise relative error must stay within FLOAT_TOL.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define REF_REAL double
#define REF_DOUBLE
#include "ref_ops.h"

#include "layers_util.h"

/* Eight float epsilons (about 9.5e-7), norm-wise. */
#define FLOAT_TOL (8.0 * FLT_EPSILON)

/* float kernels, from libref_float */
void dm_ref_f_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc);
void dm_ref_f_axpy(size_t n, float a, const float *x, float *y);
void dm_ref_f_scale(size_t n, float a, float *x);
void dm_ref_f_sum_squares(size_t n, const float *x, float *out);
void dm_ref_f_encoder_forward(int b, int t, int c, float *out, const int32_t *tokens,
                              const float *wte, const float *wpe);
void dm_ref_f_encoder_backward(int b, int t, int c, float *dwte, float *dwpe, const float *dout,
                               const int32_t *tokens);
void dm_ref_f_layernorm_forward(int n, int c, float *out, float *mean, float *rstd,
                                const float *inp, const float *weight, const float *bias);
void dm_ref_f_layernorm_backward(int n, int c, float *dinp, float *dweight, float *dbias,
                                 const float *dout, const float *inp, const float *weight,
                                 const float *mean, const float *rstd);
void dm_ref_f_attention_forward(int b, int t, int c, int nh, float *out, float *lse,
                                const float *qkv);
void dm_ref_f_attention_backward(int b, int t, int c, int nh, float *dqkv, const float *dout,
                                 const float *qkv, const float *out, const float *lse);
void dm_ref_f_gelu_forward(size_t n, float *out, const float *inp);
void dm_ref_f_gelu_backward(size_t n, float *dinp, const float *inp, const float *dout);
void dm_ref_f_bias_forward(int m, int n, float *out, const float *bias);
void dm_ref_f_bias_backward(int m, int n, float *dbias, const float *dout);
void dm_ref_f_xent_forward(int n, int v, float *losses, float *probs, const float *logits,
                           const int32_t *targets);
void dm_ref_f_xent_backward(int n, int v, float scale, float *dlogits, const float *probs,
                            const int32_t *targets);
void dm_ref_f_adamw(size_t n, const dm_adamw_params *p, float *params, const float *grads,
                    float *m, float *v);

/* A tensor held in both precisions, with equal float-exact contents. */
typedef struct pair {
    size_t n;
    double *d;
    float *f;
} pair;

static pair pair_random(tl_rng *rng, size_t n, double lo, double hi)
{
    pair p = {n, tl_alloc(n), NULL};

    tl_fill(rng, p.d, n, lo, hi);
    p.f = tl_to_float(p.d, n);
    return p;
}

static pair pair_zero(size_t n)
{
    pair p = {n, tl_alloc(n), calloc(n ? n : 1, sizeof(float))};
    return p;
}

static void pair_free(pair *p)
{
    free(p->d);
    free(p->f);
}

static void check_agree(const char *what, const pair *p)
{
    double err = tl_rel_err_f(p->f, p->d, p->n);
    ck_assert_msg(err <= FLOAT_TOL, "%s: float against double relative error %g > %g", what, err,
                  FLOAT_TOL);
}

START_TEST(gemm_float_agrees)
{
    int trans_a = _i & 1, trans_b = (_i >> 1) & 1;
    int m = 13, n = 17, k = 29;
    tl_rng rng = {100u + (uint64_t)_i};
    pair a = pair_random(&rng, (size_t)m * k, -1.0, 1.0);
    pair b = pair_random(&rng, (size_t)k * n, -1.0, 1.0);
    pair c = pair_random(&rng, (size_t)m * n, -1.0, 1.0);
    int lda = trans_a ? m : k, ldb = trans_b ? k : n;

    dm_ref_d_gemm(trans_a, trans_b, m, n, k, 0.5, a.d, lda, b.d, ldb, 0.25, c.d, n);
    dm_ref_f_gemm(trans_a, trans_b, m, n, k, 0.5f, a.f, lda, b.f, ldb, 0.25f, c.f, n);

    check_agree("gemm", &c);
    pair_free(&a);
    pair_free(&b);
    pair_free(&c);
}
END_TEST

START_TEST(vector_ops_float_agree)
{
    size_t n = 1001;
    tl_rng rng = {110};
    pair x = pair_random(&rng, n, -1.0, 1.0), y = pair_random(&rng, n, -1.0, 1.0);
    pair sum = pair_zero(1);

    dm_ref_d_axpy(n, 0.375, x.d, y.d);
    dm_ref_f_axpy(n, 0.375f, x.f, y.f);
    check_agree("axpy", &y);

    dm_ref_d_scale(n, -1.5, y.d);
    dm_ref_f_scale(n, -1.5f, y.f);
    check_agree("scale", &y);

    dm_ref_d_sum_squares(n, x.d, sum.d);
    dm_ref_f_sum_squares(n, x.f, sum.f);
    check_agree("sum_squares", &sum);
    pair_free(&x);
    pair_free(&y);
    pair_free(&sum);
}
END_TEST

START_TEST(encoder_float_agrees)
{
    int b = 2, t = 6, c = 10, v = 7;
    int32_t tokens[12];
    tl_rng rng = {120};
    for (int i = 0; i < b * t; i++)
        tokens[i] = tl_int(&rng, v);
    pair wte = pair_random(&rng, (size_t)v * c, -1.0, 1.0);
    pair wpe = pair_random(&rng, (size_t)t * c, -1.0, 1.0);
    pair out = pair_zero((size_t)b * t * c);
    pair dout = pair_random(&rng, (size_t)b * t * c, -1.0, 1.0);
    pair dwte = pair_random(&rng, (size_t)v * c, -1.0, 1.0);
    pair dwpe = pair_random(&rng, (size_t)t * c, -1.0, 1.0);

    dm_ref_d_encoder_forward(b, t, c, out.d, tokens, wte.d, wpe.d);
    dm_ref_f_encoder_forward(b, t, c, out.f, tokens, wte.f, wpe.f);
    check_agree("encoder out", &out);

    dm_ref_d_encoder_backward(b, t, c, dwte.d, dwpe.d, dout.d, tokens);
    dm_ref_f_encoder_backward(b, t, c, dwte.f, dwpe.f, dout.f, tokens);
    check_agree("encoder dwte", &dwte);
    check_agree("encoder dwpe", &dwpe);
    pair_free(&wte);
    pair_free(&wpe);
    pair_free(&out);
    pair_free(&dout);
    pair_free(&dwte);
    pair_free(&dwpe);
}
END_TEST

START_TEST(layernorm_float_agrees)
{
    int n = 8, c = 33;
    size_t nc = (size_t)n * c;
    tl_rng rng = {130};
    pair inp = pair_random(&rng, nc, -3.0, 5.0), weight = pair_random(&rng, c, 0.5, 1.5);
    pair bias = pair_random(&rng, c, -0.5, 0.5), dout = pair_random(&rng, nc, -1.0, 1.0);
    pair out = pair_zero(nc), mean = pair_zero(n), rstd = pair_zero(n);
    pair dinp = pair_zero(nc), dweight = pair_zero(c), dbias = pair_zero(c);

    dm_ref_d_layernorm_forward(n, c, out.d, mean.d, rstd.d, inp.d, weight.d, bias.d);
    dm_ref_f_layernorm_forward(n, c, out.f, mean.f, rstd.f, inp.f, weight.f, bias.f);
    check_agree("layernorm out", &out);
    check_agree("layernorm mean", &mean);
    check_agree("layernorm rstd", &rstd);

    dm_ref_d_layernorm_backward(n, c, dinp.d, dweight.d, dbias.d, dout.d, inp.d, weight.d, mean.d,
                                rstd.d);
    dm_ref_f_layernorm_backward(n, c, dinp.f, dweight.f, dbias.f, dout.f, inp.f, weight.f, mean.f,
                                rstd.f);
    check_agree("layernorm dinp", &dinp);
    check_agree("layernorm dweight", &dweight);
    check_agree("layernorm dbias", &dbias);
    pair_free(&inp);
    pair_free(&weight);
    pair_free(&bias);
    pair_free(&dout);
    pair_free(&out);
    pair_free(&mean);
    pair_free(&rstd);
    pair_free(&dinp);
    pair_free(&dweight);
    pair_free(&dbias);
}
END_TEST

START_TEST(attention_float_agrees)
{
    int b = 2, t = 16, c = 24, nh = 3;
    size_t n_qkv = (size_t)b * t * 3 * c, n_out = (size_t)b * t * c;
    tl_rng rng = {140};
    pair qkv = pair_random(&rng, n_qkv, -2.0, 2.0), dout = pair_random(&rng, n_out, -1.0, 1.0);
    pair out = pair_zero(n_out), lse = pair_zero((size_t)b * nh * t), dqkv = pair_zero(n_qkv);

    dm_ref_d_attention_forward(b, t, c, nh, out.d, lse.d, qkv.d);
    dm_ref_f_attention_forward(b, t, c, nh, out.f, lse.f, qkv.f);
    check_agree("attention out", &out);
    check_agree("attention lse", &lse);

    dm_ref_d_attention_backward(b, t, c, nh, dqkv.d, dout.d, qkv.d, out.d, lse.d);
    dm_ref_f_attention_backward(b, t, c, nh, dqkv.f, dout.f, qkv.f, out.f, lse.f);
    check_agree("attention dqkv", &dqkv);
    pair_free(&qkv);
    pair_free(&dout);
    pair_free(&out);
    pair_free(&lse);
    pair_free(&dqkv);
}
END_TEST

START_TEST(gelu_bias_float_agree)
{
    int m = 5, n = 21;
    size_t mn = (size_t)m * n;
    tl_rng rng = {150};
    pair inp = pair_random(&rng, mn, -5.0, 5.0), dout = pair_random(&rng, mn, -1.0, 1.0);
    pair bias = pair_random(&rng, n, -1.0, 1.0);
    pair out = pair_zero(mn), dinp = pair_zero(mn), dbias = pair_zero(n);

    dm_ref_d_gelu_forward(mn, out.d, inp.d);
    dm_ref_f_gelu_forward(mn, out.f, inp.f);
    check_agree("gelu out", &out);

    dm_ref_d_gelu_backward(mn, dinp.d, inp.d, dout.d);
    dm_ref_f_gelu_backward(mn, dinp.f, inp.f, dout.f);
    check_agree("gelu dinp", &dinp);

    dm_ref_d_bias_forward(m, n, out.d, bias.d);
    dm_ref_f_bias_forward(m, n, out.f, bias.f);
    check_agree("bias out", &out);

    dm_ref_d_bias_backward(m, n, dbias.d, dout.d);
    dm_ref_f_bias_backward(m, n, dbias.f, dout.f);
    check_agree("bias dbias", &dbias);
    pair_free(&inp);
    pair_free(&dout);
    pair_free(&bias);
    pair_free(&out);
    pair_free(&dinp);
    pair_free(&dbias);
}
END_TEST

START_TEST(xent_float_agrees)
{
    int n = 6, v = 50;
    size_t nv = (size_t)n * v;
    int32_t targets[6];
    tl_rng rng = {160};
    for (int i = 0; i < n; i++)
        targets[i] = tl_int(&rng, v);
    pair logits = pair_random(&rng, nv, -6.0, 6.0);
    pair losses = pair_zero(n), probs = pair_zero(nv);

    dm_ref_d_xent_forward(n, v, losses.d, probs.d, logits.d, targets);
    dm_ref_f_xent_forward(n, v, losses.f, probs.f, logits.f, targets);
    check_agree("xent losses", &losses);
    check_agree("xent probs", &probs);

    /* In place, as the core runs it. */
    dm_ref_d_xent_backward(n, v, 1.0 / 6.0, probs.d, probs.d, targets);
    dm_ref_f_xent_backward(n, v, 1.0f / 6.0f, probs.f, probs.f, targets);
    check_agree("xent dlogits", &probs);
    pair_free(&logits);
    pair_free(&losses);
    pair_free(&probs);
}
END_TEST

START_TEST(adamw_float_agrees)
{
    size_t n = 257;
    tl_rng rng = {170};
    pair params = pair_random(&rng, n, -1.0, 1.0), m = pair_zero(n), v = pair_zero(n);
    dm_adamw_params p = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                         .weight_decay = 0.1f};

    for (int step = 1; step <= 3; step++) {
        pair grads = pair_random(&rng, n, -1.0, 1.0);
        p.t = step;
        dm_ref_d_adamw(n, &p, params.d, grads.d, m.d, v.d);
        dm_ref_f_adamw(n, &p, params.f, grads.f, m.f, v.f);
        pair_free(&grads);
    }
    check_agree("adamw params", &params);
    check_agree("adamw m", &m);
    check_agree("adamw v", &v);
    pair_free(&params);
    pair_free(&m);
    pair_free(&v);
}
END_TEST

static Suite *float_suite(void)
{
    Suite *s = suite_create("reference float against double");
    TCase *tc = tcase_create("agreement");

    tcase_add_loop_test(tc, gemm_float_agrees, 0, 4);
    tcase_add_test(tc, vector_ops_float_agree);
    tcase_add_test(tc, encoder_float_agrees);
    tcase_add_test(tc, layernorm_float_agrees);
    tcase_add_test(tc, attention_float_agrees);
    tcase_add_test(tc, gelu_bias_float_agree);
    tcase_add_test(tc, xent_float_agrees);
    tcase_add_test(tc, adamw_float_agrees);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(float_suite());

    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
