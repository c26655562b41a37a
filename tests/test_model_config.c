/*
 * Configuration, schedules and data: defaults validate, options parse by name,
 * invalid values are rejected with the option named, JSON round-trips every
 * field, the schedules and learning rate hit their end points, and the data
 * loader and sampler handle their errors and layout.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core_util.h"
#include "dirmoe/philox.h"

START_TEST(defaults_validate)
{
    dm_config cfg;
    dm_config_defaults(&cfg);
    ck_assert_int_eq(dm_config_validate(&cfg), DM_OK);
    ck_assert_int_eq(cfg.d_model, 256);
    ck_assert_int_eq(cfg.n_layer, 4);
    ck_assert_int_eq(cfg.n_expert, 8);
    ck_assert_double_eq(cfg.k, 2.0);
    ck_assert_int_eq(dm_config_k_max(&cfg), 8);
    ck_assert_int_eq(dm_config_n_moe_layers(&cfg), 4);
    cfg.moe_every = 2;
    ck_assert_int_eq(dm_config_n_moe_layers(&cfg), 2);
    ck_assert(!dm_config_is_moe_layer(&cfg, 0));
    ck_assert(dm_config_is_moe_layer(&cfg, 1));
}
END_TEST

START_TEST(set_parses_options)
{
    dm_config cfg;
    dm_config_defaults(&cfg);
    ck_assert_int_eq(dm_config_set(&cfg, "router", "topk"), DM_OK);
    ck_assert_int_eq(cfg.router, DM_ROUTER_TOPK);
    ck_assert_int_eq(dm_config_set(&cfg, "layers", "6"), DM_OK);
    ck_assert_int_eq(cfg.n_layer, 6);
    ck_assert_int_eq(dm_config_set(&cfg, "d_model", "128"), DM_OK);
    ck_assert_int_eq(cfg.d_model, 128);
    ck_assert_int_eq(dm_config_set(&cfg, "tau", "1:0.2"), DM_OK);
    ck_assert_double_eq(cfg.tau_start, 1.0);
    ck_assert_double_eq(cfg.tau_end, 0.2);
    ck_assert_int_eq(dm_config_set(&cfg, "alpha0", "3"), DM_OK);
    ck_assert_double_eq(cfg.alpha0_start, 3.0);
    ck_assert_double_eq(cfg.alpha0_end, 3.0);
    ck_assert_int_eq(dm_config_set(&cfg, "seed", "18446744073709551615"), DM_OK);
    ck_assert_uint_eq(cfg.seed, UINT64_MAX);
    ck_assert_int_eq(dm_config_set(&cfg, "selection", "soft"), DM_OK);
    ck_assert_int_eq(cfg.selection, DM_SELECTION_SOFT);

    char buf[64];
    ck_assert_int_eq(dm_config_get(&cfg, "schedule", buf, sizeof buf), DM_OK);
    ck_assert_str_eq(buf, "linear");

    ck_assert_int_eq(dm_config_set(&cfg, "no-such-option", "1"), DM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "--no-such-option"));
    ck_assert_int_eq(dm_config_set(&cfg, "router", "moe"), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "--router"));
    ck_assert_int_eq(dm_config_set(&cfg, "batch", "12x"), DM_ERR_INVALID);
    ck_assert_int_eq(dm_config_set(&cfg, "lr", "nan"), DM_ERR_INVALID);
    ck_assert_int_eq(dm_config_set(&cfg, "seed", "-1"), DM_ERR_INVALID);

    /* Every listed option round-trips through get and set. */
    dm_config copy;
    dm_config_defaults(&copy);
    for (int i = 0; i < dm_config_option_count(); i++) {
        const dm_config_option *o = dm_config_option_at(i);
        char value[128];
        ck_assert_int_eq(dm_config_get(&cfg, o->name, value, sizeof value), DM_OK);
        ck_assert_msg(dm_config_set(&copy, o->name, value) == DM_OK, "--%s %s: %s", o->name, value,
                      dm_last_error());
    }
    char name[96], va[96], vb[96];
    ck_assert_int_eq(dm_config_diff(&cfg, &copy, 1, name, va, vb, sizeof name), 0);
}
END_TEST

/* Each invalid configuration is rejected and the message names its option. */
START_TEST(validate_names_option)
{
    static const struct { const char *option, *value; } cases[] = {
        {"heads", "3"},        /* does not divide 256 */
        {"k", "9"},             /* above k_max = E */
        {"k", "0.5"},           /* below 1 */
        {"explore", "0.6"},
        {"select-init", "1"},
        {"alpha-max", "1e5"},
        {"vocab", "300"},
        {"experts", "300"},
        {"lr", "0"},
        {"tau", "0:1"},
        {"k-max", "9"},
        {"val-fraction", "1"},
        {"beta2", "1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dm_config cfg;
        dm_config_defaults(&cfg);
        ck_assert_int_eq(dm_config_set(&cfg, cases[i].option, cases[i].value), DM_OK);
        dm_status st = dm_config_validate(&cfg);
        ck_assert_msg(st == DM_ERR_INVALID, "--%s %s was accepted", cases[i].option, cases[i].value);
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", cases[i].option);
        ck_assert_msg(strstr(dm_last_error(), flag) != NULL, "--%s %s: message '%s' does not name it",
                      cases[i].option, cases[i].value, dm_last_error());
    }

    /* topk needs an integer k; dirmoe accepts a fractional one. */
    dm_config cfg;
    dm_config_defaults(&cfg);
    cfg.k = 1.5;
    ck_assert_int_eq(dm_config_validate(&cfg), DM_OK);
    cfg.router = DM_ROUTER_TOPK;
    ck_assert_int_eq(dm_config_validate(&cfg), DM_ERR_INVALID);
    cfg.router = DM_ROUTER_SWITCH;
    ck_assert_int_eq(dm_config_validate(&cfg), DM_OK);
    ck_assert_double_eq(dm_config_target_k(&cfg), 1.0);
}
END_TEST

START_TEST(json_round_trip)
{
    dm_config cfg, back;
    dm_config_defaults(&cfg);
    cfg.seed = 0xfedcba9876543210ull;
    cfg.lr = 3.0e-4 / 7.0; /* not short in decimal */
    cfg.router = DM_ROUTER_SWITCH;
    cfg.schedule = DM_SCHEDULE_COSINE;
    cfg.tau_end = 0.2;
    char *text = dm_config_to_json_string(&cfg);
    ck_assert_ptr_nonnull(text);
    ck_assert_int_eq(dm_config_from_json_string(text, &back), DM_OK);
    ck_assert_int_eq(memcmp(&cfg.lr, &back.lr, sizeof cfg.lr), 0);
    char name[96], va[96], vb[96];
    ck_assert_msg(!dm_config_diff(&cfg, &back, 1, name, va, vb, sizeof name), "--%s %s != %s", name, va, vb);
    free(text);

    ck_assert_int_eq(dm_config_from_json_string("{\"bogus\": 1}", &back), DM_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "bogus"));
    ck_assert_int_eq(dm_config_from_json_string("{\"n_layer\": 1.5}", &back), DM_ERR_FORMAT);
    ck_assert_int_eq(dm_config_from_json_string("{\"router\": \"x\"}", &back), DM_ERR_FORMAT);
    ck_assert_int_eq(dm_config_from_json_string("not json", &back), DM_ERR_FORMAT);
}
END_TEST

START_TEST(schedules_end_points)
{
    dm_config cfg;
    dm_config_defaults(&cfg);
    cfg.steps = 1000;
    cfg.explore = 0.2;
    cfg.tau_start = 1.0;
    cfg.tau_end = 0.2;
    cfg.alpha0_start = 1.0;
    cfg.alpha0_end = 100.0;

    for (int shape = DM_SCHEDULE_LINEAR; shape <= DM_SCHEDULE_EXP; shape++) {
        cfg.schedule = (dm_schedule_shape)shape;
        dm_router_coefs a, mid, b;
        dm_router_coefs_at(&cfg, 0, &a);
        dm_router_coefs_at(&cfg, 500, &mid);
        dm_router_coefs_at(&cfg, 1000, &b);
        ck_assert_double_eq_tol(a.tau, 1.0, 1e-12);
        ck_assert_double_eq_tol(b.tau, 0.2, 1e-12);
        ck_assert_double_eq_tol(a.alpha0, 1.0, 1e-12);
        ck_assert_double_eq_tol(b.alpha0, 100.0, 1e-9);
        ck_assert(mid.tau < 1.0 && mid.tau > 0.2);
    }
    cfg.schedule = DM_SCHEDULE_EXP;
    dm_router_coefs mid;
    dm_router_coefs_at(&cfg, 500, &mid);
    ck_assert_double_eq_tol(mid.alpha0, 10.0, 1e-9); /* geometric mean of 1 and 100 */

    /* Exploration ramp: 0 before 0.2, linear to 1 at 0.4. */
    dm_router_coefs r;
    dm_router_coefs_at(&cfg, 100, &r);
    ck_assert_double_eq(r.ramp, 0.0);
    dm_router_coefs_at(&cfg, 300, &r);
    ck_assert_double_eq_tol(r.ramp, 0.5, 1e-12);
    dm_router_coefs_at(&cfg, 400, &r);
    ck_assert_double_eq(r.ramp, 1.0);
    cfg.explore = 0.0;
    dm_router_coefs_at(&cfg, 0, &r);
    ck_assert_double_eq(r.ramp, 1.0);

    /* p0 for E = 8, k = 2 solves 8 p0 + (1 - p0)^8 = 2. */
    ck_assert_double_eq_tol(r.p0, 0.2354, 1e-4);
    ck_assert_double_eq_tol(8 * r.p0 + pow(1 - r.p0, 8), 2.0, 1e-9);

    /* Learning rate: warm-up to the peak, cosine to lr * lr_min_frac. */
    cfg.lr = 1e-3;
    cfg.warmup = 100;
    cfg.lr_min_frac = 0.1;
    ck_assert_double_eq_tol(dm_lr_at(&cfg, 0), 1e-5, 1e-15);
    ck_assert_double_eq_tol(dm_lr_at(&cfg, 99), 1e-3, 1e-15);
    ck_assert_double_eq_tol(dm_lr_at(&cfg, 100), 1e-3, 1e-15);
    ck_assert_double_eq_tol(dm_lr_at(&cfg, 550), 0.55e-3, 1e-12);
    ck_assert_double_eq_tol(dm_lr_at(&cfg, 1000), 1e-4, 1e-15);
}
END_TEST

START_TEST(data_errors)
{
    dm_data data;
    ck_assert_int_eq(dm_data_load("/nonexistent/input.txt", NULL, 0.1, 16, &data), DM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "/nonexistent/input.txt"));

    char *empty = write_text_file(0);
    ck_assert_int_eq(dm_data_load(empty, NULL, 0.1, 16, &data), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "empty"));

    char *tiny = write_text_file(16);
    ck_assert_int_eq(dm_data_load(tiny, NULL, 0.0, 16, &data), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "--seq-len 16"));
    ck_assert_int_eq(dm_data_load(tiny, NULL, 0.0, 15, &data), DM_OK);
    dm_data_free(&data);

    /* The validation tail must hold one sequence too. */
    char *small = write_text_file(200);
    ck_assert_int_eq(dm_data_load(small, NULL, 0.05, 16, &data), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "--val-fraction"));

    ck_assert_int_eq(dm_data_load("/tmp", NULL, 0.1, 16, &data), DM_ERR_IO);

    unlink(empty);
    unlink(tiny);
    unlink(small);
    free(empty);
    free(tiny);
    free(small);
}
END_TEST

START_TEST(data_split_and_sample)
{
    char *path = write_text_file(1000);
    dm_data data;
    ck_assert_int_eq(dm_data_load(path, NULL, 0.1, 16, &data), DM_OK);
    ck_assert_uint_eq(data.train.n, 900);
    ck_assert_uint_eq(data.val.n, 100);
    dm_data whole;
    ck_assert_int_eq(dm_data_load(path, NULL, 0.0, 16, &whole), DM_OK);
    ck_assert_uint_eq(whole.val.n, 0);
    ck_assert_int_eq(memcmp(data.val.bytes, whole.train.bytes + 900, 100), 0); /* the tail */
    dm_data_free(&whole);

    dm_batch a, b;
    ck_assert_int_eq(dm_batch_alloc(&a, 8, 16), DM_OK);
    ck_assert_int_eq(dm_batch_alloc(&b, 8, 16), DM_OK);
    ck_assert_int_eq(dm_data_sample(&data.train, 7, DM_DATA_STREAM_TRAIN, 3, &a), DM_OK);
    ck_assert_int_eq(dm_data_sample(&data.train, 7, DM_DATA_STREAM_TRAIN, 3, &b), DM_OK);
    ck_assert_int_eq(memcmp(a.inputs, b.inputs, 8 * 16 * sizeof(int32_t)), 0);
    for (int i = 0; i < 8; i++)
        for (int t = 0; t + 1 < 16; t++)
            ck_assert_int_eq(a.targets[i * 16 + t], a.inputs[i * 16 + t + 1]);
    ck_assert_int_eq(dm_data_sample(&data.train, 7, DM_DATA_STREAM_TRAIN, 4, &b), DM_OK);
    ck_assert_int_ne(memcmp(a.inputs, b.inputs, 8 * 16 * sizeof(int32_t)), 0);

    /* The offset of sequence 0 follows the documented Philox layout. */
    dm_philox_block blk = dm_philox_at(7, 0, 0, DM_DATA_STREAM_TRAIN, DM_RNG_DATA, 3);
    uint64_t start = ((((uint64_t)blk.w[1]) << 32) | blk.w[0]) % (900 - 16);
    for (int t = 0; t < 16; t++)
        ck_assert_int_eq(a.inputs[t], data.train.bytes[start + t]);

    dm_batch_free(&a);
    dm_batch_free(&b);
    dm_data_free(&data);

    /* A separate validation file is used whole. */
    char *val = write_text_file(100);
    ck_assert_int_eq(dm_data_load(path, val, 0.5, 16, &data), DM_OK);
    ck_assert_uint_eq(data.train.n, 1000);
    ck_assert_uint_eq(data.val.n, 100);
    dm_data_free(&data);

    unlink(path);
    unlink(val);
    free(path);
    free(val);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("model_config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, defaults_validate);
    tcase_add_test(tc, set_parses_options);
    tcase_add_test(tc, validate_names_option);
    tcase_add_test(tc, json_round_trip);
    tcase_add_test(tc, schedules_end_points);
    tcase_add_test(tc, data_errors);
    tcase_add_test(tc, data_split_and_sample);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
