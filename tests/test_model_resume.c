/*
 * Checkpoints: 20 steps in one run equal 10 steps, save, load into a fresh
 * model, 10 more steps (losses, weights and AdamW moments bit for bit), for
 * dirmoe with adaptive mu and for topk; and the errors for a differing
 * configuration, a truncated file and a file that is not a checkpoint.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core_util.h"

static char *temp_path(void)
{
    char *path = strdup("/tmp/dirmoe-ckpt-XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    return path;
}

static float *download_all(dm_model *m, dm_tensor t)
{
    size_t n = dm_model_n_params(m);
    float *host = malloc(n * sizeof *host);
    dm_backend *be = dm_model_backend(m);
    ck_assert_int_eq(be->ops->download(be->ctx, host, t, n), DM_OK);
    return host;
}

static void check_resume(dm_router_kind router)
{
    dm_config cfg;
    tiny_config(&cfg, router);
    cfg.steps = 20;
    cfg.explore = 0.1; /* mu starts moving at step 2, so the checkpoint carries a nonzero mu */
    dm_backend *be = open_reference();
    dm_data data;
    load_synthetic(&data, cfg.seq_len);

    /* Straight run of 20 steps. */
    dm_model *a = create_model(be, &cfg);
    dm_train_state sa;
    dm_train_state_init(a, &sa);
    double la[20], lb[20];
    train_until(a, &sa, &data, 20, la, NULL);

    /* 10 steps, save, load into a new model, 10 steps. */
    char *path = temp_path();
    dm_model *b = create_model(be, &cfg);
    dm_train_state sb;
    dm_train_state_init(b, &sb);
    train_until(b, &sb, &data, 10, lb, NULL);
    dm_status st = dm_checkpoint_save(path, b, &sb);
    ck_assert_msg(st == DM_OK, "save: %s", dm_last_error());
    dm_train_state saved = sb;
    dm_model_free(b);

    b = create_model(be, &cfg);
    dm_train_state sr;
    st = dm_checkpoint_load(path, b, &sr);
    ck_assert_msg(st == DM_OK, "load: %s", dm_last_error());
    ck_assert_int_eq(sr.step, 10);
    ck_assert_uint_eq(sr.seed, cfg.seed);
    for (int l = 0; l < cfg.n_layer; l++)
        ck_assert_msg(memcmp(&sr.mu[l], &saved.mu[l], sizeof(double)) == 0, "mu[%d] %.17g != %.17g", l,
                      sr.mu[l], saved.mu[l]);
    if (router == DM_ROUTER_DIRMOE)
        ck_assert_double_ne(sr.mu[0], 0.0);
    train_until(b, &sr, &data, 20, lb, NULL);

    for (int i = 0; i < 20; i++)
        ck_assert_msg(memcmp(&la[i], &lb[i], sizeof(double)) == 0, "%s step %d: loss %.9g != %.9g",
                      dm_router_name(router), i, la[i], lb[i]);
    size_t n = dm_model_n_params(a);
    float *pa = download_all(a, dm_model_params_tensor(a)), *pb = download_all(b, dm_model_params_tensor(b));
    ck_assert_int_eq(memcmp(pa, pb, n * sizeof *pa), 0);
    free(pa);
    free(pb);
    pa = download_all(a, dm_model_adam_v_tensor(a));
    pb = download_all(b, dm_model_adam_v_tensor(b));
    ck_assert_int_eq(memcmp(pa, pb, n * sizeof *pa), 0);
    free(pa);
    free(pb);
    for (int l = 0; l < cfg.n_layer; l++)
        ck_assert(memcmp(&sa.mu[l], &sr.mu[l], sizeof(double)) == 0);
    fprintf(stderr, "%s: resumed run matches, loss at step 19 %.6f, mu[0] %.6g\n", dm_router_name(router),
            la[19], sa.mu[0]);

    unlink(path);
    free(path);
    dm_model_free(a);
    dm_model_free(b);
    dm_data_free(&data);
    dm_backend_close(be);
}

START_TEST(resume_exact_dirmoe) { check_resume(DM_ROUTER_DIRMOE); }
END_TEST
START_TEST(resume_exact_topk) { check_resume(DM_ROUTER_TOPK); }
END_TEST

START_TEST(load_rejects_other_config)
{
    dm_config cfg;
    tiny_config(&cfg, DM_ROUTER_DIRMOE);
    dm_backend *be = open_reference();
    dm_model *m = create_model(be, &cfg);
    dm_train_state state;
    dm_train_state_init(m, &state);
    char *path = temp_path();
    ck_assert_int_eq(dm_checkpoint_save(path, m, &state), DM_OK);

    /* The stored configuration reads back equal. */
    dm_config back;
    ck_assert_int_eq(dm_checkpoint_read_config(path, &back), DM_OK);
    char name[96], va[96], vb[96];
    ck_assert_int_eq(dm_config_diff(&cfg, &back, 1, name, va, vb, sizeof name), 0);

    /* A different learning rate is named in the error. */
    dm_config other = cfg;
    other.lr = 5e-3;
    dm_model *m2 = create_model(be, &other);
    dm_status st = dm_checkpoint_load(path, m2, &state);
    ck_assert_int_eq(st, DM_ERR_INVALID);
    ck_assert_msg(strstr(dm_last_error(), "--lr") != NULL, "message: %s", dm_last_error());
    dm_model_free(m2);

    /* Options that do not change the computation may differ. */
    other = cfg;
    other.eval_every = 7;
    m2 = create_model(be, &other);
    ck_assert_msg(dm_checkpoint_load(path, m2, &state) == DM_OK, "%s", dm_last_error());
    dm_model_free(m2);

    unlink(path);
    free(path);
    dm_model_free(m);
    dm_backend_close(be);
}
END_TEST

START_TEST(load_rejects_truncated_file)
{
    dm_config cfg;
    tiny_config(&cfg, DM_ROUTER_TOPK);
    dm_backend *be = open_reference();
    dm_model *m = create_model(be, &cfg);
    dm_train_state state;
    dm_train_state_init(m, &state);
    char *path = temp_path();
    ck_assert_int_eq(dm_checkpoint_save(path, m, &state), DM_OK);

    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    ck_assert_int_eq(truncate(path, size - 100), 0);
    dm_status st = dm_checkpoint_load(path, m, &state);
    ck_assert_int_eq(st, DM_ERR_FORMAT);
    fprintf(stderr, "truncated: %s\n", dm_last_error());

    /* A text file is not a checkpoint either. */
    f = fopen(path, "wb");
    fputs("hello", f);
    fclose(f);
    ck_assert_int_ne(dm_checkpoint_load(path, m, &state), DM_OK);
    ck_assert_int_ne(dm_checkpoint_load("/nonexistent/ckpt.safetensors", m, NULL), DM_OK);

    unlink(path);
    free(path);
    dm_model_free(m);
    dm_backend_close(be);
}
END_TEST

static Suite *resume_suite(void)
{
    Suite *s = suite_create("model_resume");
    TCase *tc = tcase_create("resume");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, resume_exact_dirmoe);
    tcase_add_test(tc, resume_exact_topk);
    tcase_add_test(tc, load_rejects_other_config);
    tcase_add_test(tc, load_rejects_truncated_file);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(resume_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
