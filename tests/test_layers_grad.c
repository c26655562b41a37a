/*
 * Reference transformer layers in double: forward values against direct
 * formulas, and every backward against central differences of
 * L = sum(r * output) with fixed random r. Gradient buffers start from
 * random values, so a backward that overwrites instead of accumulating fails.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define REF_REAL double
#define REF_DOUBLE
#include "ref_ops.h"

#include "layers_util.h"

/* Required norm-wise relative error of analytic against numeric gradients. */
#define GRAD_TOL 1e-6

/* Checks that grad - prior (what the backward added) matches numeric. */
static void check_accumulated(const char *what, const double *grad, const double *prior,
                              const double *numeric, size_t n)
{
    double *added = tl_alloc(n);

    for (size_t i = 0; i < n; i++)
        added[i] = grad[i] - prior[i];
    double err = tl_rel_err(added, numeric, n);
    ck_assert_msg(err <= GRAD_TOL, "%s: gradient relative error %g > %g", what, err, GRAD_TOL);
    free(added);
}

/* A gradient buffer pre-filled with random values, and a copy of them. */
typedef struct grad_buf {
    double *grad, *prior;
} grad_buf;

static grad_buf grad_buf_make(tl_rng *rng, size_t n)
{
    grad_buf g = {tl_alloc(n), tl_alloc(n)};

    tl_fill(rng, g.prior, n, -1.0, 1.0);
    memcpy(g.grad, g.prior, n * sizeof(double));
    return g;
}

static void grad_buf_free(grad_buf *g)
{
    free(g->grad);
    free(g->prior);
}

/* ------------------------------------------------------------------------ */
/* encoder                                                                   */

typedef struct encoder_ctx {
    int b, t, c;
    int32_t *tokens;
    double *wte, *wpe, *out, *r;
} encoder_ctx;

static double encoder_loss(void *ctx_)
{
    encoder_ctx *e = ctx_;

    dm_ref_d_encoder_forward(e->b, e->t, e->c, e->out, e->tokens, e->wte, e->wpe);
    return tl_dot(e->r, e->out, (size_t)e->b * e->t * e->c);
}

START_TEST(encoder_forward_values)
{
    int b = 2, t = 3, c = 5, v = 4;
    int32_t tokens[6] = {3, 0, 3, 1, 1, 2};
    tl_rng rng = {11};
    double *wte = tl_alloc((size_t)v * c), *wpe = tl_alloc((size_t)t * c);
    double *out = tl_alloc((size_t)b * t * c);
    tl_fill(&rng, wte, (size_t)v * c, -1.0, 1.0);
    tl_fill(&rng, wpe, (size_t)t * c, -1.0, 1.0);

    dm_ref_d_encoder_forward(b, t, c, out, tokens, wte, wpe);
    for (int bi = 0; bi < b; bi++)
        for (int ti = 0; ti < t; ti++)
            for (int i = 0; i < c; i++) {
                double want = wte[tokens[bi * t + ti] * c + i] + wpe[ti * c + i];
                ck_assert_double_eq(out[(bi * t + ti) * c + i], want);
            }
    free(wte);
    free(wpe);
    free(out);
}
END_TEST

/* Tokens repeat within and across sequences, so the scatter-add must sum. */
START_TEST(encoder_gradient)
{
    int b = 2, t = 3, c = 5, v = 4;
    int32_t tokens[6] = {3, 0, 3, 1, 3, 2};
    size_t n_out = (size_t)b * t * c, n_wte = (size_t)v * c, n_wpe = (size_t)t * c;
    tl_rng rng = {12};
    encoder_ctx e = {b, t, c, tokens, tl_alloc(n_wte), tl_alloc(n_wpe), tl_alloc(n_out),
                     tl_alloc(n_out)};
    tl_fill(&rng, e.wte, n_wte, -1.0, 1.0);
    tl_fill(&rng, e.wpe, n_wpe, -1.0, 1.0);
    tl_fill(&rng, e.r, n_out, -1.0, 1.0);
    grad_buf dwte = grad_buf_make(&rng, n_wte), dwpe = grad_buf_make(&rng, n_wpe);
    double *num_wte = tl_alloc(n_wte), *num_wpe = tl_alloc(n_wpe);

    dm_ref_d_encoder_backward(b, t, c, dwte.grad, dwpe.grad, e.r, tokens);
    tl_numeric_grad(e.wte, n_wte, encoder_loss, &e, num_wte);
    tl_numeric_grad(e.wpe, n_wpe, encoder_loss, &e, num_wpe);

    check_accumulated("encoder dwte", dwte.grad, dwte.prior, num_wte, n_wte);
    check_accumulated("encoder dwpe", dwpe.grad, dwpe.prior, num_wpe, n_wpe);
    grad_buf_free(&dwte);
    grad_buf_free(&dwpe);
    free(num_wte);
    free(num_wpe);
    free(e.wte);
    free(e.wpe);
    free(e.out);
    free(e.r);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* layer norm                                                                */

typedef struct layernorm_ctx {
    int n, c;
    double *inp, *weight, *bias, *out, *mean, *rstd, *r;
} layernorm_ctx;

static double layernorm_loss(void *ctx_)
{
    layernorm_ctx *l = ctx_;

    dm_ref_d_layernorm_forward(l->n, l->c, l->out, l->mean, l->rstd, l->inp, l->weight, l->bias);
    return tl_dot(l->r, l->out, (size_t)l->n * l->c);
}

START_TEST(layernorm_forward_values)
{
    int n = 3, c = 7;
    tl_rng rng = {21};
    double *inp = tl_alloc((size_t)n * c), *weight = tl_alloc(c), *bias = tl_alloc(c);
    double *out = tl_alloc((size_t)n * c), mean[3], rstd[3];
    tl_fill(&rng, inp, (size_t)n * c, -2.0, 3.0);
    tl_fill(&rng, weight, c, 0.5, 1.5);
    tl_fill(&rng, bias, c, -0.5, 0.5);

    dm_ref_d_layernorm_forward(n, c, out, mean, rstd, inp, weight, bias);
    for (int row = 0; row < n; row++) {
        double mu = 0.0, var = 0.0;
        for (int i = 0; i < c; i++)
            mu += inp[row * c + i] / c;
        for (int i = 0; i < c; i++)
            var += (inp[row * c + i] - mu) * (inp[row * c + i] - mu) / c;
        double rs = 1.0 / sqrt(var + 1e-5);

        ck_assert_double_eq_tol(mean[row], mu, 1e-14);
        ck_assert_double_eq_tol(rstd[row], rs, 1e-13 * rs);
        for (int i = 0; i < c; i++) {
            double want = (inp[row * c + i] - mu) * rs * weight[i] + bias[i];
            ck_assert_double_eq_tol(out[row * c + i], want, 1e-13);
        }
    }
    free(inp);
    free(weight);
    free(bias);
    free(out);
}
END_TEST

START_TEST(layernorm_gradient)
{
    int n = 4, c = 7;
    size_t nc = (size_t)n * c;
    tl_rng rng = {22};
    layernorm_ctx l = {n, c, tl_alloc(nc), tl_alloc(c), tl_alloc(c), tl_alloc(nc), tl_alloc(n),
                       tl_alloc(n), tl_alloc(nc)};
    tl_fill(&rng, l.inp, nc, -2.0, 3.0);
    tl_fill(&rng, l.weight, c, 0.5, 1.5);
    tl_fill(&rng, l.bias, c, -0.5, 0.5);
    tl_fill(&rng, l.r, nc, -1.0, 1.0);
    grad_buf dinp = grad_buf_make(&rng, nc), dweight = grad_buf_make(&rng, c);
    grad_buf dbias = grad_buf_make(&rng, c);
    double *num_inp = tl_alloc(nc), *num_weight = tl_alloc(c), *num_bias = tl_alloc(c);

    layernorm_loss(&l);
    dm_ref_d_layernorm_backward(n, c, dinp.grad, dweight.grad, dbias.grad, l.r, l.inp, l.weight,
                                l.mean, l.rstd);
    tl_numeric_grad(l.inp, nc, layernorm_loss, &l, num_inp);
    tl_numeric_grad(l.weight, c, layernorm_loss, &l, num_weight);
    tl_numeric_grad(l.bias, c, layernorm_loss, &l, num_bias);

    check_accumulated("layernorm dinp", dinp.grad, dinp.prior, num_inp, nc);
    check_accumulated("layernorm dweight", dweight.grad, dweight.prior, num_weight, c);
    check_accumulated("layernorm dbias", dbias.grad, dbias.prior, num_bias, c);
    grad_buf_free(&dinp);
    grad_buf_free(&dweight);
    grad_buf_free(&dbias);
    free(num_inp);
    free(num_weight);
    free(num_bias);
    free(l.inp);
    free(l.weight);
    free(l.bias);
    free(l.out);
    free(l.mean);
    free(l.rstd);
    free(l.r);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* attention                                                                 */

/* (B, T, C, NH) shapes: a single position, a single head, two heads with
 * batches, and head sizes 3 and 2, which are no multiple of 4. */
static const int attn_shapes[][4] = {
    {1, 1, 4, 1}, {2, 1, 6, 2}, {1, 4, 6, 1}, {2, 5, 8, 2}, {1, 3, 9, 3}, {2, 4, 6, 3}, {1, 7, 5, 1},
};
#define N_ATTN_SHAPES ((int)(sizeof attn_shapes / sizeof attn_shapes[0]))

typedef struct attention_ctx {
    int b, t, c, nh;
    double *qkv, *out, *lse, *r;
} attention_ctx;

static double attention_loss(void *ctx_)
{
    attention_ctx *a = ctx_;

    dm_ref_d_attention_forward(a->b, a->t, a->c, a->nh, a->out, a->lse, a->qkv);
    return tl_dot(a->r, a->out, (size_t)a->b * a->t * a->c);
}

/* Forward against an explicit (T,T) softmax with the causal mask as -inf. */
START_TEST(attention_forward_values)
{
    int b = attn_shapes[_i][0], t = attn_shapes[_i][1], c = attn_shapes[_i][2];
    int nh = attn_shapes[_i][3], hs = c / nh;
    tl_rng rng = {31u + (uint64_t)_i};
    double *qkv = tl_alloc((size_t)b * t * 3 * c), *out = tl_alloc((size_t)b * t * c);
    double *lse = tl_alloc((size_t)b * nh * t), *score = tl_alloc((size_t)t);
    tl_fill(&rng, qkv, (size_t)b * t * 3 * c, -2.0, 2.0);

    dm_ref_d_attention_forward(b, t, c, nh, out, lse, qkv);
    for (int bi = 0; bi < b; bi++)
        for (int h = 0; h < nh; h++)
            for (int ti = 0; ti < t; ti++) {
                const double *q = qkv + (size_t)(bi * t + ti) * 3 * c + h * hs;
                double max_s = -INFINITY, sum = 0.0;
                for (int tj = 0; tj < t; tj++) {
                    const double *k = qkv + (size_t)(bi * t + tj) * 3 * c + c + h * hs;
                    double dot = 0.0;
                    for (int i = 0; i < hs; i++)
                        dot += q[i] * k[i];
                    score[tj] = tj <= ti ? dot / sqrt((double)hs) : -INFINITY;
                    max_s = fmax(max_s, score[tj]);
                }
                for (int tj = 0; tj < t; tj++)
                    sum += exp(score[tj] - max_s);
                ck_assert_double_eq_tol(lse[(bi * nh + h) * t + ti], max_s + log(sum), 1e-13);

                for (int i = 0; i < hs; i++) {
                    double want = 0.0;
                    for (int tj = 0; tj < t; tj++) {
                        const double *v = qkv + (size_t)(bi * t + tj) * 3 * c + 2 * c + h * hs;
                        want += exp(score[tj] - max_s) / sum * v[i];
                    }
                    ck_assert_double_eq_tol(out[(size_t)(bi * t + ti) * c + h * hs + i], want,
                                            1e-13);
                }
            }
    free(qkv);
    free(out);
    free(lse);
    free(score);
}
END_TEST

START_TEST(attention_gradient)
{
    int b = attn_shapes[_i][0], t = attn_shapes[_i][1], c = attn_shapes[_i][2];
    int nh = attn_shapes[_i][3];
    size_t n_qkv = (size_t)b * t * 3 * c, n_out = (size_t)b * t * c;
    tl_rng rng = {41u + (uint64_t)_i};
    attention_ctx a = {b, t, c, nh, tl_alloc(n_qkv), tl_alloc(n_out), tl_alloc((size_t)b * nh * t),
                       tl_alloc(n_out)};
    tl_fill(&rng, a.qkv, n_qkv, -2.0, 2.0);
    tl_fill(&rng, a.r, n_out, -1.0, 1.0);
    grad_buf dqkv = grad_buf_make(&rng, n_qkv);
    double *num_qkv = tl_alloc(n_qkv);

    attention_loss(&a);
    dm_ref_d_attention_backward(b, t, c, nh, dqkv.grad, a.r, a.qkv, a.out, a.lse);
    tl_numeric_grad(a.qkv, n_qkv, attention_loss, &a, num_qkv);

    double *added = tl_alloc(n_qkv);
    for (size_t i = 0; i < n_qkv; i++)
        added[i] = dqkv.grad[i] - dqkv.prior[i];
    double err = tl_rel_err(added, num_qkv, n_qkv);
    ck_assert_msg(err <= GRAD_TOL, "attention B=%d T=%d C=%d NH=%d: dqkv relative error %g", b, t,
                  c, nh, err);
    free(added);
    grad_buf_free(&dqkv);
    free(num_qkv);
    free(a.qkv);
    free(a.out);
    free(a.lse);
    free(a.r);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* GELU                                                                      */

/* Values of 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) from mpmath at
 * 30 digits, rounded to 17. */
START_TEST(gelu_forward_values)
{
    const double x[6] = {-3.0, -0.5, 0.0, 0.5, 1.0, 3.0};
    const double want[6] = {-0.0036373920817730188, -0.15428599017485608, 0.0,
                            0.34571400982514392,    0.84119199060827670, 2.9963626079182270};
    double out[6];

    dm_ref_d_gelu_forward(6, out, x);
    for (int i = 0; i < 6; i++)
        ck_assert_msg(fabs(out[i] - want[i]) <= 1e-13 * fabs(want[i]),
                      "gelu(%g) = %.17g, expected %.17g", x[i], out[i], want[i]);
}
END_TEST

typedef struct gelu_ctx {
    size_t n;
    double *inp, *out, *r;
} gelu_ctx;

static double gelu_loss(void *ctx_)
{
    gelu_ctx *g = ctx_;

    dm_ref_d_gelu_forward(g->n, g->out, g->inp);
    return tl_dot(g->r, g->out, g->n);
}

START_TEST(gelu_gradient)
{
    size_t n = 23;
    tl_rng rng = {51};
    gelu_ctx g = {n, tl_alloc(n), tl_alloc(n), tl_alloc(n)};
    tl_fill(&rng, g.inp, n, -4.0, 4.0);
    g.inp[0] = 0.0;
    tl_fill(&rng, g.r, n, -1.0, 1.0);
    grad_buf dinp = grad_buf_make(&rng, n);
    double *num = tl_alloc(n);

    dm_ref_d_gelu_backward(n, dinp.grad, g.inp, g.r);
    tl_numeric_grad(g.inp, n, gelu_loss, &g, num);

    check_accumulated("gelu dinp", dinp.grad, dinp.prior, num, n);
    grad_buf_free(&dinp);
    free(num);
    free(g.inp);
    free(g.out);
    free(g.r);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* bias                                                                      */

typedef struct bias_ctx {
    int m, n;
    double *base, *bias, *out, *r;
} bias_ctx;

static double bias_loss(void *ctx_)
{
    bias_ctx *b = ctx_;
    size_t mn = (size_t)b->m * b->n;

    memcpy(b->out, b->base, mn * sizeof(double));
    dm_ref_d_bias_forward(b->m, b->n, b->out, b->bias);
    return tl_dot(b->r, b->out, mn);
}

START_TEST(bias_forward_adds)
{
    double out[6] = {1, 2, 3, 4, 5, 6}, bias[3] = {10, 20, 30};

    dm_ref_d_bias_forward(2, 3, out, bias);
    ck_assert_double_eq(out[0], 11);
    ck_assert_double_eq(out[1], 22);
    ck_assert_double_eq(out[2], 33);
    ck_assert_double_eq(out[3], 14);
    ck_assert_double_eq(out[4], 25);
    ck_assert_double_eq(out[5], 36);
}
END_TEST

START_TEST(bias_gradient)
{
    int m = 3, n = 5;
    size_t mn = (size_t)m * n;
    tl_rng rng = {61};
    bias_ctx b = {m, n, tl_alloc(mn), tl_alloc(n), tl_alloc(mn), tl_alloc(mn)};
    tl_fill(&rng, b.base, mn, -1.0, 1.0);
    tl_fill(&rng, b.bias, n, -1.0, 1.0);
    tl_fill(&rng, b.r, mn, -1.0, 1.0);
    grad_buf dbias = grad_buf_make(&rng, n);
    double *num = tl_alloc(n);

    dm_ref_d_bias_backward(m, n, dbias.grad, b.r);
    tl_numeric_grad(b.bias, n, bias_loss, &b, num);

    check_accumulated("bias dbias", dbias.grad, dbias.prior, num, n);
    grad_buf_free(&dbias);
    free(num);
    free(b.base);
    free(b.bias);
    free(b.out);
    free(b.r);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* softmax cross-entropy                                                     */

START_TEST(xent_forward_values)
{
    /* Row 1 has logits near 1000, where exp() without the max shift overflows. */
    double logits[6] = {1.0, 2.0, 3.0, 1000.0, 1001.0, 999.0};
    int32_t targets[2] = {0, 2};
    double losses[2], probs[6];

    dm_ref_d_xent_forward(2, 3, losses, probs, logits, targets);

    double lse0 = 3.0 + log(exp(-2.0) + exp(-1.0) + 1.0);
    double lse1 = 1001.0 + log(exp(-1.0) + 1.0 + exp(-2.0));
    ck_assert_double_eq_tol(losses[0], lse0 - 1.0, 1e-14);
    ck_assert_double_eq_tol(losses[1], lse1 - 999.0, 1e-12);
    for (int j = 0; j < 3; j++) {
        ck_assert_double_eq_tol(probs[j], exp(logits[j] - lse0), 1e-15);
        ck_assert_double_eq_tol(probs[3 + j], exp(logits[3 + j] - lse1), 1e-15);
    }
}
END_TEST

typedef struct xent_ctx {
    int n, v;
    double scale;
    double *logits, *losses, *probs;
    int32_t *targets;
} xent_ctx;

static double xent_loss(void *ctx_)
{
    xent_ctx *x = ctx_;
    double sum = 0.0;

    dm_ref_d_xent_forward(x->n, x->v, x->losses, x->probs, x->logits, x->targets);
    for (int i = 0; i < x->n; i++)
        sum += x->losses[i];
    return x->scale * sum;
}

/* xent_backward is the gradient of scale * sum(losses). It writes, so the
 * output starts as NaN; a second run writes into probs itself. */
START_TEST(xent_gradient)
{
    int n = 3, v = 7;
    size_t nv = (size_t)n * v;
    int32_t targets[3] = {6, 0, 3};
    tl_rng rng = {71};
    xent_ctx x = {n, v, 1.0 / 3.0, tl_alloc(nv), tl_alloc(n), tl_alloc(nv), targets};
    tl_fill(&rng, x.logits, nv, -3.0, 3.0);
    double *dlogits = tl_alloc(nv), *num = tl_alloc(nv);

    xent_loss(&x);
    for (size_t i = 0; i < nv; i++)
        dlogits[i] = NAN;
    dm_ref_d_xent_backward(n, v, x.scale, dlogits, x.probs, targets);
    tl_numeric_grad(x.logits, nv, xent_loss, &x, num);

    double err = tl_rel_err(dlogits, num, nv);
    ck_assert_msg(err <= GRAD_TOL, "xent dlogits: relative error %g", err);

    xent_loss(&x);
    dm_ref_d_xent_backward(n, v, x.scale, x.probs, x.probs, targets);
    for (size_t i = 0; i < nv; i++)
        ck_assert_double_eq(x.probs[i], dlogits[i]);

    free(dlogits);
    free(num);
    free(x.logits);
    free(x.losses);
    free(x.probs);
}
END_TEST

static Suite *layers_grad_suite(void)
{
    Suite *s = suite_create("reference layers (double)");
    TCase *tc = tcase_create("forward");

    tcase_add_test(tc, encoder_forward_values);
    tcase_add_test(tc, layernorm_forward_values);
    tcase_add_loop_test(tc, attention_forward_values, 0, N_ATTN_SHAPES);
    tcase_add_test(tc, gelu_forward_values);
    tcase_add_test(tc, bias_forward_adds);
    tcase_add_test(tc, xent_forward_values);
    suite_add_tcase(s, tc);

    tc = tcase_create("gradient");
    tcase_add_test(tc, encoder_gradient);
    tcase_add_test(tc, layernorm_gradient);
    tcase_add_loop_test(tc, attention_gradient, 0, N_ATTN_SHAPES);
    tcase_add_test(tc, gelu_gradient);
    tcase_add_test(tc, bias_gradient);
    tcase_add_test(tc, xent_gradient);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(layers_grad_suite());

    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
