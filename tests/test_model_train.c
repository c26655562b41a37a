/*
 * End-to-end training of tiny models on the reference backend: the loss falls
 * on repeated text for every router, the DirMoE realised count moves toward k,
 * evaluation and the logits forward run, and fixed noise reproduces a draw.
 * A non-finite router output is reported as DM_ERR_NUMERIC naming its block.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_util.h"

static double mean_of(const double *x, int from, int to)
{
    double s = 0.0;
    for (int i = from; i < to; i++)
        s += x[i];
    return s / (to - from);
}

static void check_loss_falls(dm_router_kind router)
{
    dm_config cfg;
    tiny_config(&cfg, router);
    dm_backend *be = open_reference();
    dm_model *m = create_model(be, &cfg);
    dm_data data;
    load_synthetic(&data, cfg.seq_len);

    dm_train_state state;
    dm_train_state_init(m, &state);
    double losses[30];
    train_until(m, &state, &data, 30, losses, NULL);

    double first = mean_of(losses, 0, 3), last = mean_of(losses, 27, 30);
    fprintf(stderr, "%s: loss %.3f (steps 0-2) -> %.3f (steps 27-29)\n", dm_router_name(router), first, last);
    /* Uniform prediction costs ln 256 = 5.55 nats; the repeated sentence has about 28 distinct
     * bytes, so a model that has only learnt the unigram frequencies is near 3 nats. */
    ck_assert_double_gt(first, 5.0);
    ck_assert_double_lt(last, 3.0);

    dm_data_free(&data);
    dm_model_free(m);
    dm_backend_close(be);
}

START_TEST(loss_falls_dirmoe) { check_loss_falls(DM_ROUTER_DIRMOE); }
END_TEST
START_TEST(loss_falls_topk) { check_loss_falls(DM_ROUTER_TOPK); }
END_TEST
START_TEST(loss_falls_switch) { check_loss_falls(DM_ROUTER_SWITCH); }
END_TEST
START_TEST(loss_falls_dense) { check_loss_falls(DM_ROUTER_DENSE); }
END_TEST

/* With select_init 0.5 and 8 experts a token starts with about 4 experts; the sparsity
 * term and the dual variable pull the realised count toward k = 2. */
START_TEST(count_moves_toward_k)
{
    dm_config cfg;
    tiny_config(&cfg, DM_ROUTER_DIRMOE);
    cfg.n_expert = 8;
    cfg.k = 2;
    cfg.explore = 0.0;
    cfg.lambda_s = 1.0;
    cfg.dual_step = 0.1;
    cfg.steps = 40;
    dm_backend *be = open_reference();
    dm_model *m = create_model(be, &cfg);
    dm_data data;
    load_synthetic(&data, cfg.seq_len);

    dm_train_state state;
    dm_train_state_init(m, &state);
    dm_step_stats stats;
    train_until(m, &state, &data, 1, NULL, &stats);
    double first = stats.layers[0].active_mean, first_kbar = stats.layers[0].kbar;
    train_until(m, &state, &data, 40, NULL, &stats);
    double last = stats.layers[0].active_mean, last_kbar = stats.layers[0].kbar;
    fprintf(stderr, "dirmoe E=8 k=2: realised count %.3f -> %.3f, Kbar %.3f -> %.3f, mu %.4f\n", first, last,
            first_kbar, last_kbar, state.mu[0]);

    ck_assert_double_gt(first, 3.0);
    ck_assert_double_lt(fabs(last - 2.0), 0.5 * fabs(first - 2.0));
    ck_assert_double_lt(fabs(last_kbar - 2.0), 0.5 * fabs(first_kbar - 2.0));

    dm_data_free(&data);
    dm_model_free(m);
    dm_backend_close(be);
}
END_TEST

START_TEST(evaluate_and_logits)
{
    dm_config cfg;
    tiny_config(&cfg, DM_ROUTER_DIRMOE);
    dm_backend *be = open_reference();
    dm_model *m = create_model(be, &cfg);
    dm_data data;
    load_synthetic(&data, cfg.seq_len);
    dm_train_state state;
    dm_train_state_init(m, &state);
    train_until(m, &state, &data, 10, NULL, NULL);

    dm_batch batch;
    ck_assert_int_eq(dm_batch_alloc(&batch, cfg.batch, cfg.seq_len), DM_OK);
    ck_assert_int_eq(dm_data_sample(&data.val, cfg.seed, DM_DATA_STREAM_VAL, 0, &batch), DM_OK);
    dm_run_opts opts = {.want_routing = 1};
    dm_step_stats s1, s2;
    ck_assert_int_eq(dm_model_evaluate(m, &batch, NULL, &s2), DM_OK);
    ck_assert_int_eq(dm_model_evaluate(m, &batch, &opts, &s1), DM_OK); /* s1.layers is current */
    ck_assert(isfinite(s1.loss));
    ck_assert_double_eq(s1.loss, s2.loss); /* deterministic routing */
    ck_assert_double_eq(s1.loss, s1.ce);
    ck_assert_int_eq(s1.n_moe, 2);

    /* Evaluation keeps round(K) experts, at least 1 and at most k_max, per token. */
    const dm_layer_stats *ls = &s1.layers[0];
    int n = cfg.batch * cfg.seq_len;
    for (int t = 0; t < n; t++) {
        int selected = 0;
        double wsum = 0.0;
        for (int e = 0; e < cfg.n_expert; e++) {
            selected += ls->mask[t * cfg.n_expert + e];
            wsum += ls->weights[t * cfg.n_expert + e];
        }
        ck_assert_int_ge(selected, 1);
        ck_assert_double_eq_tol(wsum, 1.0, 1e-5);
    }

    /* The logits of one sequence give the cross-entropy that evaluating it alone reports. */
    float *logits = malloc((size_t)cfg.seq_len * cfg.vocab * sizeof *logits);
    ck_assert_int_eq(dm_model_logits(m, batch.inputs, cfg.seq_len, logits), DM_OK);
    double ce = 0.0;
    for (int t = 0; t < cfg.seq_len; t++) {
        const float *row = logits + (size_t)t * cfg.vocab;
        double mx = row[0], z = 0.0;
        for (int v = 1; v < cfg.vocab; v++)
            mx = row[v] > mx ? row[v] : mx;
        for (int v = 0; v < cfg.vocab; v++)
            z += exp(row[v] - mx);
        ce += mx + log(z) - row[batch.targets[t]];
    }
    ce /= cfg.seq_len;
    dm_batch one;
    ck_assert_int_eq(dm_batch_alloc(&one, 1, cfg.seq_len), DM_OK);
    memcpy(one.inputs, batch.inputs, (size_t)cfg.seq_len * sizeof *one.inputs);
    memcpy(one.targets, batch.targets, (size_t)cfg.seq_len * sizeof *one.targets);
    dm_step_stats s_one;
    ck_assert_int_eq(dm_model_evaluate(m, &one, NULL, &s_one), DM_OK);
    ck_assert_double_eq_tol(ce, s_one.ce, 1e-4);
    dm_batch_free(&one);
    ck_assert_int_ne(dm_model_logits(m, batch.inputs, cfg.seq_len + 1, logits), DM_OK);

    free(logits);
    dm_batch_free(&batch);
    dm_data_free(&data);
    dm_model_free(m);
    dm_backend_close(be);
}
END_TEST

/* Noise taken from one training forward and fed back as fixed noise reproduces its loss exactly. */
START_TEST(fixed_noise_reproduces_draw)
{
    dm_config cfg;
    tiny_config(&cfg, DM_ROUTER_DIRMOE);
    dm_backend *be = open_reference();
    dm_model *m = create_model(be, &cfg);
    dm_data data;
    load_synthetic(&data, cfg.seq_len);
    dm_train_state state;
    dm_train_state_init(m, &state);
    dm_batch batch;
    ck_assert_int_eq(dm_batch_alloc(&batch, cfg.batch, cfg.seq_len), DM_OK);
    ck_assert_int_eq(dm_data_sample(&data.train, cfg.seed, 0, 0, &batch), DM_OK);

    dm_step_stats drawn, fixed;
    ck_assert_int_eq(dm_model_forward_backward(m, &state, &batch, NULL, &drawn), DM_OK);
    int n = cfg.batch * cfg.seq_len;
    size_t ne = (size_t)n * cfg.n_expert;
    float *u = malloc(ne * sizeof *u), *lg = malloc(ne * sizeof *lg);
    for (int l = 0; l < cfg.n_layer; l++) {
        ck_assert_int_eq(dm_model_get_noise(m, l, u, lg, n), DM_OK);
        ck_assert_int_eq(dm_model_set_fixed_noise(m, l, u, lg, n), DM_OK);
    }

    /* A different step would draw different noise; the fixed noise ignores the step. */
    state.step = 7;
    ck_assert_int_eq(dm_model_forward_backward(m, &state, &batch, NULL, &fixed), DM_OK);
    state.step = 0;
    ck_assert_double_eq(drawn.ce, fixed.ce);
    ck_assert_double_eq(drawn.layers[0].active_mean, fixed.layers[0].active_mean);

    /* Clearing the mode draws again; a wrong token count is rejected. */
    ck_assert_int_eq(dm_model_set_fixed_noise(m, 0, u, lg, n / 2), DM_OK);
    ck_assert_int_eq(dm_model_forward_backward(m, &state, &batch, NULL, &fixed), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "fixed noise"));
    ck_assert_int_eq(dm_model_set_fixed_noise(m, 0, NULL, NULL, 0), DM_OK);
    ck_assert_int_eq(dm_model_set_fixed_noise(m, 1, NULL, NULL, 0), DM_OK);
    ck_assert_int_eq(dm_model_forward_backward(m, &state, &batch, NULL, &fixed), DM_OK);
    ck_assert_double_eq(drawn.ce, fixed.ce);

    free(u);
    free(lg);
    dm_batch_free(&batch);
    dm_data_free(&data);
    dm_model_free(m);
    dm_backend_close(be);
}
END_TEST

START_TEST(nan_router_is_reported)
{
    dm_config cfg;
    tiny_config(&cfg, DM_ROUTER_DIRMOE);
    dm_backend *be = open_reference();
    dm_model *m = create_model(be, &cfg);
    dm_data data;
    load_synthetic(&data, cfg.seq_len);

    /* Poison the router bias of block 1. */
    size_t n = dm_model_n_params(m);
    float *host = malloc(n * sizeof *host);
    ck_assert_int_eq(dm_model_download_params(m, host), DM_OK);
    const dm_param_info *p = dm_model_param_find(m, "h.1.router.b");
    ck_assert_ptr_nonnull(p);
    host[p->offset] = NAN;
    ck_assert_int_eq(dm_model_upload_params(m, host), DM_OK);

    dm_train_state state;
    dm_train_state_init(m, &state);
    dm_batch batch;
    ck_assert_int_eq(dm_batch_alloc(&batch, cfg.batch, cfg.seq_len), DM_OK);
    ck_assert_int_eq(dm_data_sample(&data.train, cfg.seed, 0, 0, &batch), DM_OK);
    dm_status st = dm_train_step(m, &state, &batch, NULL, NULL);
    ck_assert_int_eq(st, DM_ERR_NUMERIC);
    ck_assert_msg(strstr(dm_last_error(), "MoE block 1") != NULL, "message: %s", dm_last_error());
    ck_assert_msg(strstr(dm_last_error(), "step 0") != NULL, "message: %s", dm_last_error());
    ck_assert_int_eq(state.step, 0);

    /* The parameters are unchanged by the failed step. */
    float *after = malloc(n * sizeof *after);
    ck_assert_int_eq(dm_model_download_params(m, after), DM_OK);
    ck_assert_int_eq(memcmp(host, after, n * sizeof *host), 0);

    free(after);
    free(host);
    dm_batch_free(&batch);
    dm_data_free(&data);
    dm_model_free(m);
    dm_backend_close(be);
}
END_TEST

START_TEST(parameter_table_layout)
{
    dm_config cfg;
    tiny_config(&cfg, DM_ROUTER_DIRMOE);
    cfg.moe_every = 2;
    dm_backend *be = open_reference();
    dm_model *m = create_model(be, &cfg);

    /* Block 0 is dense, block 1 MoE; matrices precede vectors; the table tiles the buffer. */
    ck_assert_ptr_nonnull(dm_model_param_find(m, "h.0.ffn.fc.w"));
    ck_assert_ptr_null(dm_model_param_find(m, "h.0.router.w"));
    const dm_param_info *rw = dm_model_param_find(m, "h.1.router.w");
    ck_assert_ptr_nonnull(rw);
    ck_assert_int_eq(rw->shape[1], 2 * cfg.n_expert);
    size_t next = 0;
    int seen_vector = 0;
    for (int i = 0; i < dm_model_param_count(m); i++) {
        const dm_param_info *p = dm_model_param_at(m, i);
        ck_assert_uint_eq(p->offset, next);
        next += p->numel;
        if (!p->decay)
            seen_vector = 1;
        ck_assert_msg(!(seen_vector && p->decay), "matrix %s after a vector", p->name);
    }
    ck_assert_uint_eq(next, dm_model_n_params(m));

    /* Initial values: LN gains 1, selection bias logit(0.5) = 0, weights with std near 0.02. */
    float *host = malloc(next * sizeof *host);
    ck_assert_int_eq(dm_model_download_params(m, host), DM_OK);
    const dm_param_info *ln = dm_model_param_find(m, "h.0.ln1.w");
    ck_assert_float_eq(host[ln->offset], 1.0f);
    const dm_param_info *wte = dm_model_param_find(m, "wte");
    double ss = 0.0;
    for (size_t j = 0; j < wte->numel; j++)
        ss += (double)host[wte->offset + j] * host[wte->offset + j];
    double sd = sqrt(ss / wte->numel);
    ck_assert_double_gt(sd, 0.018);
    ck_assert_double_lt(sd, 0.022);

    free(host);
    dm_model_free(m);
    dm_backend_close(be);
}
END_TEST

static Suite *model_train_suite(void)
{
    Suite *s = suite_create("model_train");
    TCase *tc = tcase_create("train");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, loss_falls_dirmoe);
    tcase_add_test(tc, loss_falls_topk);
    tcase_add_test(tc, loss_falls_switch);
    tcase_add_test(tc, loss_falls_dense);
    tcase_add_test(tc, count_moves_toward_k);
    tcase_add_test(tc, evaluate_and_logits);
    tcase_add_test(tc, fixed_noise_reproduces_draw);
    tcase_add_test(tc, nan_router_is_reported);
    tcase_add_test(tc, parameter_table_layout);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(model_train_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
