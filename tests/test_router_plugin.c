/*
 * Router, dispatch and router-loss ops of the reference plugin, loaded through
 * the loader, against the float kernels called directly. Both paths run the
 * same code, so every output must be equal bit for bit; this checks the
 * plugin's tensor-to-pointer wrappers (argument order, element offsets,
 * int32/uint32 views) and its parameter checks. The harness sets
 * DIRMOE_PLUGIN_PATH to the build tree.
 */
#include "config.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "dirmoe/loader.h"
#include "dirmoe/status.h"
#include "ref_ops.h"

#include "router_util.h"

static dm_backend *be;

static void setup(void)
{
    dm_status st = dm_backend_open("reference", &be);
    ck_assert_msg(st == DM_OK, "opening the reference backend failed: %s", dm_last_error());
}

static void teardown(void)
{
    dm_backend_close(be);
    be = NULL;
}

/* One device buffer that hands out tensors at increasing element offsets, with a
 * one-element gap between them so a wrapper using the wrong offset reads junk. */
typedef struct arena {
    dm_buffer *buf;
    size_t used, size;
} arena;

static arena arena_make(size_t size)
{
    arena a = {NULL, 1, size};
    dm_status st = be->ops->alloc(be->ctx, size, &a.buf);

    ck_assert_msg(st == DM_OK, "alloc of %zu elements failed: %s", size, be->desc->last_error(be->ctx));
    ck_assert_int_eq(be->ops->fill(be->ctx, (dm_tensor){a.buf, 0}, 0x7fc00000u, size), DM_OK);
    return a;
}

/* Reserves n elements and uploads src there when it is not NULL. */
static dm_tensor arena_put(arena *a, const void *src, size_t n)
{
    dm_tensor t = {a->buf, a->used};

    ck_assert_msg(a->used + n + 1 <= a->size, "test arena of %zu elements is too small", a->size);
    a->used += n + 1;
    if (src && n)
        ck_assert_int_eq(be->ops->upload(be->ctx, t, src, n), DM_OK);
    return t;
}

static void arena_get(void *dst, dm_tensor t, size_t n)
{
    dm_status st = be->ops->download(be->ctx, dst, t, n);
    ck_assert_msg(st == DM_OK, "download failed: %s", be->desc->last_error(be->ctx));
}

static void expect_ok(dm_status st, const char *op)
{
    ck_assert_msg(st == DM_OK, "%s failed: %s", op, be->desc->last_error(be->ctx));
}

static float *random_floats(test_rng *rng, size_t n, double scale)
{
    float *x = test_calloc(n, sizeof(float));

    for (size_t i = 0; i < n; i++)
        x[i] = (float)(scale * test_rng_normal(rng));
    return x;
}

/* Compares a device tensor with a host array bit for bit. */
static void expect_equal(const char *what, dm_tensor t, const void *want, size_t n)
{
    uint32_t *got = test_calloc(n, sizeof(uint32_t));

    arena_get(got, t, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == ((const uint32_t *)want)[i], "%s: element %zu differs from the direct kernel",
                      what, i);
    free(got);
}

START_TEST(test_plugin_dirmoe_route)
{
    enum { N = 7, E = 5 };
    test_rng rng = {1};
    arena a = arena_make(4096);
    dm_dirmoe_params p = {.n_tokens = N, .n_expert = E, .k_max = 3, .selection = _i,
                          .fixed_noise = 0, .tau = 0.8f, .alpha_min = 1e-2f, .alpha_max = 1e4f,
                          .rng = {.seed = 77, .layer = 2, .step = 9, .token_base = 100}};
    float *logits = random_floats(&rng, N * 2 * E, 2.0);
    float *dw = random_floats(&rng, N * E, 1.0);
    float u[N * E], log_g[N * E], zt[N * E], alpha[N * E], w[N * E];
    float dlogits[N * 2 * E] = {0}, w_eval[N * E];
    int32_t mask[N * E], mask_eval[N * E];
    uint32_t fallbacks = 0, zero = 0;

    dm_tensor t_logits = arena_put(&a, logits, N * 2 * E);
    dm_tensor t_u = arena_put(&a, NULL, N * E), t_log_g = arena_put(&a, NULL, N * E);
    dm_tensor t_zt = arena_put(&a, NULL, N * E), t_alpha = arena_put(&a, NULL, N * E);
    dm_tensor t_mask = arena_put(&a, NULL, N * E), t_w = arena_put(&a, NULL, N * E);
    dm_tensor t_fallbacks = arena_put(&a, &zero, 1);
    dm_tensor t_dw = arena_put(&a, dw, N * E), t_dlogits = arena_put(&a, dlogits, N * 2 * E);
    dm_tensor t_mask_eval = arena_put(&a, NULL, N * E), t_w_eval = arena_put(&a, NULL, N * E);

    expect_ok(be->ops->dirmoe_route_forward(be->ctx, &p, t_logits, t_u, t_log_g, t_zt, t_alpha, t_mask,
                                            t_w, t_fallbacks), "dirmoe_route_forward");
    expect_ok(be->ops->dirmoe_route_backward(be->ctx, &p, t_dlogits, t_dw, t_logits, t_zt, t_alpha,
                                             t_log_g, t_mask, t_w), "dirmoe_route_backward");
    expect_ok(be->ops->dirmoe_route_eval(be->ctx, &p, t_logits, t_mask_eval, t_w_eval),
              "dirmoe_route_eval");

    dm_ref_f_dirmoe_route_forward(&p, logits, u, log_g, zt, alpha, mask, w, &fallbacks);
    dm_ref_f_dirmoe_route_backward(&p, dlogits, dw, logits, zt, alpha, log_g, mask, w);
    dm_ref_f_dirmoe_route_eval(&p, logits, mask_eval, w_eval);

    expect_equal("u", t_u, u, N * E);
    expect_equal("log_g", t_log_g, log_g, N * E);
    expect_equal("zt", t_zt, zt, N * E);
    expect_equal("alpha", t_alpha, alpha, N * E);
    expect_equal("mask", t_mask, mask, N * E);
    expect_equal("w", t_w, w, N * E);
    expect_equal("fallbacks", t_fallbacks, &fallbacks, 1);
    expect_equal("dlogits", t_dlogits, dlogits, N * 2 * E);
    expect_equal("eval mask", t_mask_eval, mask_eval, N * E);
    expect_equal("eval w", t_w_eval, w_eval, N * E);

    free(logits);
    free(dw);
    be->ops->free(be->ctx, a.buf);
}
END_TEST

START_TEST(test_plugin_gamma_ops)
{
    enum { N = 9 };
    arena a = arena_make(256);
    dm_rng_site site = {.seed = 5, .layer = 1, .step = 3, .token_base = 1000};
    float alpha[N] = {1e-2f, 0.1f, 0.5f, 0.99f, 1.0f, 2.5f, 30.0f, 1e3f, 1e4f};
    float log_g[N], grad[N];
    uint32_t fallbacks = 0, zero = 0;

    dm_tensor t_alpha = arena_put(&a, alpha, N), t_log_g = arena_put(&a, NULL, N);
    dm_tensor t_fallbacks = arena_put(&a, &zero, 1), t_grad = arena_put(&a, NULL, N);
    expect_ok(be->ops->gamma_sample(be->ctx, N, &site, t_log_g, t_alpha, t_fallbacks), "gamma_sample");
    expect_ok(be->ops->gamma_grad(be->ctx, N, t_grad, t_alpha, t_log_g), "gamma_grad");

    dm_ref_f_gamma_sample(N, &site, log_g, alpha, &fallbacks);
    dm_ref_f_gamma_grad(N, grad, alpha, log_g);
    expect_equal("log_g", t_log_g, log_g, N);
    expect_equal("fallbacks", t_fallbacks, &fallbacks, 1);
    expect_equal("gamma_grad", t_grad, grad, N);
    be->ops->free(be->ctx, a.buf);
}
END_TEST

START_TEST(test_plugin_router_losses)
{
    enum { N = 6, E = 4 };
    test_rng rng = {2};
    arena a = arena_make(1024);
    float *logits = random_floats(&rng, N * 2 * E, 2.0);
    float dlogits[N * 2 * E] = {0}, stats[DM_REG_NSTATS];
    dm_dirmoe_reg_params rp = {.n_tokens = N, .n_expert = E, .kl_b_mode = _i, .alpha_min = 1e-2f,
                               .alpha_max = 1e4f, .log_p0 = -1.4, .log_1mp0 = -0.28, .alpha0 = 0.5,
                               .k_target = 2.0, .coef_kl_b = 0.1, .coef_kl_d = 0.01, .coef_sq = 0.3,
                               .coef_lin = -0.2};

    dm_tensor t_logits = arena_put(&a, logits, N * 2 * E);
    dm_tensor t_stats = arena_put(&a, NULL, DM_REG_NSTATS);
    dm_tensor t_dlogits = arena_put(&a, dlogits, N * 2 * E);
    expect_ok(be->ops->dirmoe_reg_forward(be->ctx, &rp, t_logits, t_stats), "dirmoe_reg_forward");
    expect_ok(be->ops->dirmoe_reg_backward(be->ctx, &rp, t_logits, t_dlogits), "dirmoe_reg_backward");
    dm_ref_f_dirmoe_reg_forward(&rp, logits, stats);
    dm_ref_f_dirmoe_reg_backward(&rp, logits, dlogits);
    expect_equal("reg stats", t_stats, stats, DM_REG_NSTATS);
    expect_equal("reg dlogits", t_dlogits, dlogits, N * 2 * E);

    /* Balance on DirMoE's s columns (stride 2E), with top-k probabilities of them. */
    dm_topk_params tp = {.n_tokens = N, .n_expert = E, .k = 2, .renormalize = 1};
    float s[N * E], probs[N * E], w[N * E], bstats[DM_BAL_NSTATS], bd[N * 2 * E] = {0};
    int32_t mask[N * E], demand[E] = {3, 0, 6, 3};
    for (int t = 0; t < N; t++)
        memcpy(s + t * E, logits + t * 2 * E, E * sizeof(float));
    dm_ref_f_topk_route_forward(&tp, s, probs, mask, w);

    dm_balance_params bp = {.n_tokens = N, .n_expert = E, .k = 2, .logits_stride = 2 * E,
                            .coef_balance = 0.01, .coef_z = 1e-3};
    dm_tensor t_probs = arena_put(&a, probs, N * E), t_demand = arena_put(&a, demand, E);
    dm_tensor t_bstats = arena_put(&a, NULL, DM_BAL_NSTATS), t_bd = arena_put(&a, bd, N * 2 * E);
    expect_ok(be->ops->balance_forward(be->ctx, &bp, t_logits, t_probs, t_demand, t_bstats),
              "balance_forward");
    expect_ok(be->ops->balance_backward(be->ctx, &bp, t_logits, t_probs, t_demand, t_bd),
              "balance_backward");
    dm_ref_f_balance_forward(&bp, logits, probs, demand, bstats);
    dm_ref_f_balance_backward(&bp, logits, probs, demand, bd);
    expect_equal("balance stats", t_bstats, bstats, DM_BAL_NSTATS);
    expect_equal("balance dlogits", t_bd, bd, N * 2 * E);

    free(logits);
    be->ops->free(be->ctx, a.buf);
}
END_TEST

START_TEST(test_plugin_topk_dispatch_combine)
{
    enum { N = 8, E = 4, C = 3, K = 2, CAP = 3 };
    test_rng rng = {3};
    arena a = arena_make(4096);
    dm_topk_params tp = {.n_tokens = N, .n_expert = E, .k = K, .renormalize = _i};
    float *s = random_floats(&rng, N * E, 1.5), *dw_in = random_floats(&rng, N * E, 1.0);
    float *x = random_floats(&rng, N * C, 1.0), *dy = random_floats(&rng, N * C, 1.0);
    float probs[N * E], w[N * E], ds[N * E] = {0};
    int32_t mask[N * E];

    dm_tensor t_s = arena_put(&a, s, N * E), t_probs = arena_put(&a, NULL, N * E);
    dm_tensor t_mask = arena_put(&a, NULL, N * E), t_w = arena_put(&a, NULL, N * E);
    dm_tensor t_dw_in = arena_put(&a, dw_in, N * E), t_ds = arena_put(&a, ds, N * E);
    expect_ok(be->ops->topk_route_forward(be->ctx, &tp, t_s, t_probs, t_mask, t_w), "topk_route_forward");
    expect_ok(be->ops->topk_route_backward(be->ctx, &tp, t_ds, t_dw_in, t_probs, t_mask, t_w),
              "topk_route_backward");
    dm_ref_f_topk_route_forward(&tp, s, probs, mask, w);
    dm_ref_f_topk_route_backward(&tp, ds, dw_in, probs, mask, w);
    expect_equal("topk probs", t_probs, probs, N * E);
    expect_equal("topk mask", t_mask, mask, N * E);
    expect_equal("topk w", t_w, w, N * E);
    expect_equal("topk ds", t_ds, ds, N * E);

    /* Dispatch with capacity dropping, then gather and combine over the kept slots. */
    int32_t slot[N * E], counts[E], demand[E], offsets[E + 1], tos[N * E];
    dm_tensor t_slot = arena_put(&a, NULL, N * E), t_counts = arena_put(&a, NULL, E);
    dm_tensor t_demand = arena_put(&a, NULL, E), t_offsets = arena_put(&a, NULL, E + 1);
    dm_tensor t_tos = arena_put(&a, NULL, N * E);
    expect_ok(be->ops->dispatch_build(be->ctx, N, E, CAP, t_mask, t_slot, t_counts, t_demand, t_offsets,
                                      t_tos), "dispatch_build");
    dm_ref_f_dispatch_build(N, E, CAP, mask, slot, counts, demand, offsets, tos);
    expect_equal("slot", t_slot, slot, N * E);
    expect_equal("counts", t_counts, counts, E);
    expect_equal("demand", t_demand, demand, E);
    expect_equal("offsets", t_offsets, offsets, E + 1);
    expect_equal("token_of_slot", t_tos, tos, N * E);

    int S = offsets[E];
    float *xg = test_calloc((size_t)S * C, sizeof(float)), *yg = random_floats(&rng, (size_t)S * C, 1.0);
    float *dyg = test_calloc((size_t)S * C, sizeof(float)), y[N * C], dw[N * E], dx[N * C] = {0};
    dm_tensor t_x = arena_put(&a, x, N * C), t_xg = arena_put(&a, NULL, (size_t)S * C);
    dm_tensor t_yg = arena_put(&a, yg, (size_t)S * C), t_y = arena_put(&a, NULL, N * C);
    dm_tensor t_dy = arena_put(&a, dy, N * C), t_dyg = arena_put(&a, NULL, (size_t)S * C);
    dm_tensor t_dw = arena_put(&a, NULL, N * E), t_dx = arena_put(&a, dx, N * C);
    expect_ok(be->ops->gather_forward(be->ctx, S, C, t_xg, t_x, t_tos), "gather_forward");
    expect_ok(be->ops->combine_forward(be->ctx, N, E, C, t_y, t_yg, t_slot, t_w), "combine_forward");
    expect_ok(be->ops->combine_backward(be->ctx, N, E, C, t_dyg, t_dw, t_dy, t_yg, t_slot, t_w),
              "combine_backward");
    expect_ok(be->ops->gather_backward(be->ctx, S, C, t_dx, t_dyg, t_tos), "gather_backward");
    dm_ref_f_gather_forward(S, C, xg, x, tos);
    dm_ref_f_combine_forward(N, E, C, y, yg, slot, w);
    dm_ref_f_combine_backward(N, E, C, dyg, dw, dy, yg, slot, w);
    dm_ref_f_gather_backward(S, C, dx, dyg, tos);
    expect_equal("xg", t_xg, xg, (size_t)S * C);
    expect_equal("y", t_y, y, N * C);
    expect_equal("dyg", t_dyg, dyg, (size_t)S * C);
    expect_equal("combine dw", t_dw, dw, N * E);
    expect_equal("gather dx", t_dx, dx, N * C);

    free(s);
    free(dw_in);
    free(x);
    free(dy);
    free(xg);
    free(yg);
    free(dyg);
    be->ops->free(be->ctx, a.buf);
}
END_TEST

/* Invalid routing parameters are rejected with a message that names the value. */
START_TEST(test_plugin_route_rejects_k_max)
{
    arena a = arena_make(64);
    dm_dirmoe_params p = {.n_tokens = 1, .n_expert = 2, .k_max = 3, .tau = 1.0f, .alpha_min = 1e-2f,
                          .alpha_max = 1e4f};
    dm_tensor t = arena_put(&a, NULL, 8);

    dm_status st = be->ops->dirmoe_route_forward(be->ctx, &p, t, t, t, t, t, t, t, t);
    ck_assert_int_eq(st, DM_ERR_INVALID);
    const char *msg = be->desc->last_error(be->ctx);
    ck_assert_msg(strstr(msg, "k_max=3") != NULL, "message does not name k_max: \"%s\"", msg);

    p.k_max = 1;
    p.tau = 0.0f;
    st = be->ops->dirmoe_route_backward(be->ctx, &p, t, t, t, t, t, t, t, t);
    ck_assert_int_eq(st, DM_ERR_INVALID);
    msg = be->desc->last_error(be->ctx);
    ck_assert_msg(strstr(msg, "tau") != NULL, "message does not name tau: \"%s\"", msg);
    be->ops->free(be->ctx, a.buf);
}
END_TEST

static Suite *router_plugin_suite(void)
{
    Suite *s = suite_create("router_plugin");
    TCase *tc = tcase_create("reference");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_loop_test(tc, test_plugin_dirmoe_route, DM_SELECTION_HARD, DM_SELECTION_SOFT + 1);
    tcase_add_test(tc, test_plugin_gamma_ops);
    tcase_add_loop_test(tc, test_plugin_router_losses, DM_KL_B_BATCH, DM_KL_B_TOKEN + 1);
    tcase_add_loop_test(tc, test_plugin_topk_dispatch_combine, 0, 2);
    tcase_add_test(tc, test_plugin_route_rejects_k_max);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(router_plugin_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
