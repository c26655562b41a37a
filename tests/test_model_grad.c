/*
 * Whole-model gradient check on the reference backend (float): for a set of
 * parameter tensors, the directional derivative along the tensor's own
 * gradient g (unit vector v = g / |g|) is compared with the central finite
 * difference (L(p + eps v) - L(p - eps v)) / (2 eps), whose exact value is |g|.
 *
 * DirMoE runs in soft selection with fixed noise (u and log g drawn once), so
 * the loss is smooth in every parameter. The concentration part of the router
 * is left out: at fixed log g the loss depends on c only through KL_D, while
 * the analytic gradient also carries the implicit reparameterisation term
 * that a fixed-noise difference cannot see. Top-k and dense models check the
 * same way in their normal (hard) forward, with the step shrunk until it
 * changes no expert selection.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_util.h"

typedef struct fd_ctx {
    dm_model *m;
    dm_train_state state;
    dm_batch batch;
    float *base, *grad, *work;
    size_t n;
} fd_ctx;

/* Returns the loss at `params`; *selection receives a hash of every MoE layer's mask. */
static double loss_at(fd_ctx *c, const float *params, uint64_t *selection)
{
    dm_step_stats stats;
    dm_run_opts opts = {.want_routing = 1};
    ck_assert_int_eq(dm_model_upload_params(c->m, params), DM_OK);
    dm_status st = dm_model_forward_backward(c->m, &c->state, &c->batch, &opts, &stats);
    ck_assert_msg(st == DM_OK, "%s", dm_last_error());

    uint64_t h = 1469598103934665603ull; /* FNV-1a over the masks */
    for (int i = 0; i < stats.n_moe; i++) {
        const dm_layer_stats *ls = &stats.layers[i];
        for (size_t j = 0; j < (size_t)ls->n_tokens * ls->n_expert; j++)
            h = (h ^ (uint64_t)ls->mask[j]) * 1099511628211ull;
    }
    if (selection)
        *selection = h;
    return stats.loss;
}

/* Checks the directional derivative along the gradient of `name`; `stride`/`keep` select
 * the columns of a row-major tensor to include (column j kept when j % stride < keep). */
static void check_tensor(fd_ctx *c, const char *name, int stride, int keep, double eps)
{
    const dm_param_info *p = dm_model_param_find(c->m, name);
    ck_assert_msg(p != NULL, "no parameter %s", name);

    double norm2 = 0.0;
    for (size_t j = 0; j < p->numel; j++)
        if ((int)(j % (size_t)stride) < keep)
            norm2 += (double)c->grad[p->offset + j] * c->grad[p->offset + j];
    double norm = sqrt(norm2);
    ck_assert_msg(norm > 1e-6, "%s: gradient is zero", name);

    /* The loss is piecewise smooth in hard routing: shrink the step until neither end of the
     * difference changes any expert selection, so it measures the derivative of one piece. */
    double lp = 0.0, lm = 0.0;
    uint64_t base_sel, sel_p, sel_m;
    loss_at(c, c->base, &base_sel);
    for (int attempt = 0; attempt < 8; attempt++, eps /= 4) {
        memcpy(c->work, c->base, c->n * sizeof *c->work);
        for (size_t j = 0; j < p->numel; j++)
            if ((int)(j % (size_t)stride) < keep)
                c->work[p->offset + j] = c->base[p->offset + j] + (float)(eps * c->grad[p->offset + j] / norm);
        lp = loss_at(c, c->work, &sel_p);
        for (size_t j = 0; j < p->numel; j++)
            if ((int)(j % (size_t)stride) < keep)
                c->work[p->offset + j] = c->base[p->offset + j] - (float)(eps * c->grad[p->offset + j] / norm);
        lm = loss_at(c, c->work, &sel_m);
        if (sel_p == base_sel && sel_m == base_sel)
            break;
    }
    ck_assert_msg(sel_p == base_sel && sel_m == base_sel, "%s: every step changed the selection", name);

    double fd = (lp - lm) / (2.0 * eps);
    fprintf(stderr, "  %-22s eps %.1e  analytic %.6f  finite difference %.6f  rel %.2e\n", name, eps, norm,
            fd, fabs(fd - norm) / norm);
    /* Float loss is rounded near 1e-6 relative, so the difference quotient carries an
     * error near 1e-6 * L / eps; 3% also absorbs the O(eps^2) curvature term. */
    ck_assert_msg(fabs(fd - norm) <= 0.03 * norm + 5e-4, "%s: analytic %.6g vs finite difference %.6g", name,
                  norm, fd);
}

static void fd_setup(fd_ctx *c, dm_backend *be, const dm_config *cfg, dm_data *data)
{
    c->m = create_model(be, cfg);
    dm_train_state_init(c->m, &c->state);
    load_synthetic(data, cfg->seq_len);
    ck_assert_int_eq(dm_batch_alloc(&c->batch, cfg->batch, cfg->seq_len), DM_OK);
    ck_assert_int_eq(dm_data_sample(&data->train, cfg->seed, 0, 0, &c->batch), DM_OK);

    /* A few training steps first, so the routers and layer norms are off their initial values. */
    train_until(c->m, &c->state, data, 5, NULL, NULL);

    c->n = dm_model_n_params(c->m);
    c->base = malloc(c->n * sizeof *c->base);
    c->grad = malloc(c->n * sizeof *c->grad);
    c->work = malloc(c->n * sizeof *c->work);
    ck_assert_int_eq(dm_model_download_params(c->m, c->base), DM_OK);
}

static void fd_base_gradient(fd_ctx *c)
{
    double l1 = loss_at(c, c->base, NULL);
    ck_assert_int_eq(dm_model_download_grads(c->m, c->grad), DM_OK);
    double l2 = loss_at(c, c->base, NULL);
    ck_assert_msg(memcmp(&l1, &l2, sizeof l1) == 0, "the same forward gave %.9g then %.9g", l1, l2);
}

static void fd_teardown(fd_ctx *c, dm_data *data)
{
    free(c->base);
    free(c->grad);
    free(c->work);
    dm_batch_free(&c->batch);
    dm_data_free(data);
    dm_model_free(c->m);
}

START_TEST(grad_dirmoe_soft)
{
    dm_config cfg;
    tiny_config(&cfg, DM_ROUTER_DIRMOE);
    cfg.selection = DM_SELECTION_SOFT;
    cfg.explore = 0.0;          /* every regulariser at full weight */
    cfg.lambda_s = 0.5;
    cfg.beta_b = 0.1;
    cfg.beta_d = 0.01;
    cfg.sparsity = DM_SPARSITY_FIXED;
    dm_backend *be = open_reference();
    dm_data data;
    fd_ctx c;
    fd_setup(&c, be, &cfg, &data);

    /* Draw the noise of this step once, then hold it fixed. */
    int n = cfg.batch * cfg.seq_len;
    size_t ne = (size_t)n * cfg.n_expert;
    float *u = malloc(ne * sizeof *u), *lg = malloc(ne * sizeof *lg);
    loss_at(&c, c.base, NULL);
    for (int l = 0; l < cfg.n_layer; l++) {
        ck_assert_int_eq(dm_model_get_noise(c.m, l, u, lg, n), DM_OK);
        ck_assert_int_eq(dm_model_set_fixed_noise(c.m, l, u, lg, n), DM_OK);
    }
    fd_base_gradient(&c);

    const int R = 2 * cfg.n_expert, E = cfg.n_expert;
    fprintf(stderr, "dirmoe soft, fixed noise:\n");
    check_tensor(&c, "wte", 1, 1, 1e-2);
    check_tensor(&c, "wpe", 1, 1, 1e-2);
    check_tensor(&c, "h.0.attn.qkv.w", 1, 1, 1e-2);
    check_tensor(&c, "h.0.attn.proj.b", 1, 1, 1e-2);
    check_tensor(&c, "h.0.ln1.w", 1, 1, 1e-2);
    check_tensor(&c, "h.1.ln2.b", 1, 1, 1e-2);
    check_tensor(&c, "h.0.experts.fc.w", 1, 1, 1e-2);
    check_tensor(&c, "h.0.experts.fc.b", 1, 1, 1e-2);
    check_tensor(&c, "h.1.experts.proj.w", 1, 1, 1e-2);
    check_tensor(&c, "h.0.router.w", R, E, 1e-2);  /* selection logits s only */
    check_tensor(&c, "h.1.router.b", R, E, 1e-2);
    check_tensor(&c, "lnf.w", 1, 1, 1e-2);

    free(u);
    free(lg);
    fd_teardown(&c, &data);
    dm_backend_close(be);
}
END_TEST

START_TEST(grad_topk)
{
    dm_config cfg;
    tiny_config(&cfg, DM_ROUTER_TOPK);
    cfg.aux_loss = 0.1;
    cfg.z_loss = 0.01;
    dm_backend *be = open_reference();
    dm_data data;
    fd_ctx c;
    fd_setup(&c, be, &cfg, &data);
    fd_base_gradient(&c);

    fprintf(stderr, "topk:\n");
    check_tensor(&c, "wte", 1, 1, 2e-3);
    check_tensor(&c, "h.0.attn.qkv.w", 1, 1, 2e-3);
    check_tensor(&c, "h.1.experts.fc.w", 1, 1, 2e-3);
    check_tensor(&c, "h.1.experts.proj.b", 1, 1, 2e-3);
    check_tensor(&c, "h.1.router.w", 1, 1, 2e-3);
    check_tensor(&c, "lnf.b", 1, 1, 2e-3);

    fd_teardown(&c, &data);
    dm_backend_close(be);
}
END_TEST

START_TEST(grad_dense)
{
    dm_config cfg;
    tiny_config(&cfg, DM_ROUTER_DENSE);
    dm_backend *be = open_reference();
    dm_data data;
    fd_ctx c;
    fd_setup(&c, be, &cfg, &data);
    fd_base_gradient(&c);

    fprintf(stderr, "dense:\n");
    check_tensor(&c, "wte", 1, 1, 1e-2);
    check_tensor(&c, "h.1.ffn.fc.w", 1, 1, 1e-2);
    check_tensor(&c, "h.1.ffn.proj.w", 1, 1, 1e-2);
    check_tensor(&c, "h.0.ffn.fc.b", 1, 1, 1e-2);
    check_tensor(&c, "h.0.ln2.w", 1, 1, 1e-2);

    fd_teardown(&c, &data);
    dm_backend_close(be);
}
END_TEST

static Suite *grad_suite(void)
{
    Suite *s = suite_create("model_grad");
    TCase *tc = tcase_create("grad");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, grad_dirmoe_soft);
    tcase_add_test(tc, grad_topk);
    tcase_add_test(tc, grad_dense);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(grad_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
