/* Routing metrics, perplexity and bits per byte against hand-computed values. */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dirmoe/metrics.h"

/* Binary entropy in bits. */
static double h2(double p)
{
    return -p * log2(p) - (1.0 - p) * log2(1.0 - p);
}

START_TEST(load_two_of_four_experts)
{
    /* Four tokens, each routed to experts 0 and 1 of 4. */
    const int32_t mask[4 * 4] = {1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0};
    dm_routing_acc acc;
    dm_routing_metrics m;
    double share[4];

    ck_assert_int_eq(dm_routing_acc_init(&acc, 4, 256), DM_OK);
    ck_assert_int_eq(dm_routing_acc_add(&acc, 4, mask, NULL, NULL), DM_OK);
    dm_routing_acc_finish(&acc, &m, share);

    ck_assert_uint_eq(m.n_tokens, 4);
    ck_assert_double_eq_tol(m.mean_active, 2.0, 1e-15);
    ck_assert_int_eq(m.dead_experts, 2);
    ck_assert_double_eq_tol(share[0], 0.5, 1e-15);
    ck_assert_double_eq_tol(share[1], 0.5, 1e-15);
    ck_assert_double_eq_tol(share[2], 0.0, 1e-15);
    ck_assert_double_eq_tol(share[3], 0.0, 1e-15);
    /* counts (4,4,0,0): mean 2, population std 2, so CV 1 */
    ck_assert_double_eq_tol(m.load_cv, 1.0, 1e-15);
    /* no probabilities and no token ids were given */
    ck_assert(isnan(m.entropy));
    ck_assert_double_eq(m.mutual_info, 0.0);
    dm_routing_acc_free(&acc);
}
END_TEST

START_TEST(balanced_load_has_zero_cv)
{
    const int32_t mask[4 * 2] = {1, 0, 0, 1, 1, 0, 0, 1};
    dm_routing_acc acc;
    dm_routing_metrics m;

    ck_assert_int_eq(dm_routing_acc_init(&acc, 2, 4), DM_OK);
    ck_assert_int_eq(dm_routing_acc_add(&acc, 4, mask, NULL, NULL), DM_OK);
    dm_routing_acc_finish(&acc, &m, NULL);
    ck_assert_double_eq_tol(m.load_cv, 0.0, 1e-15);
    ck_assert_int_eq(m.dead_experts, 0);
    ck_assert_double_eq_tol(m.mean_active, 1.0, 1e-15);
    dm_routing_acc_free(&acc);
}
END_TEST

START_TEST(router_entropy_in_bits)
{
    const int32_t mask[3 * 4] = {1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0};
    /* rows: uniform (2 bits), unnormalised half-half (1 bit), one-hot (0 bits) */
    const float probs[3 * 4] = {0.25f, 0.25f, 0.25f, 0.25f, 2.0f, 2.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.0f, 0.0f};
    /* a row that sums to zero is skipped */
    const float zero_row[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    dm_routing_acc acc;
    dm_routing_metrics m;

    ck_assert_int_eq(dm_routing_acc_init(&acc, 4, 8), DM_OK);
    ck_assert_int_eq(dm_routing_acc_add(&acc, 3, mask, probs, NULL), DM_OK);
    ck_assert_int_eq(dm_routing_acc_add(&acc, 1, mask, zero_row, NULL), DM_OK);
    dm_routing_acc_finish(&acc, &m, NULL);
    ck_assert_double_eq_tol(m.entropy, 1.0, 1e-12);
    ck_assert_uint_eq(m.n_tokens, 4);
    dm_routing_acc_free(&acc);
}
END_TEST

START_TEST(mutual_info_deterministic_routing)
{
    /* token 0 always goes to expert 0, token 1 to expert 1: I(X;E) = H(E) = 1 bit */
    const int32_t mask[4 * 2] = {1, 0, 0, 1, 1, 0, 0, 1};
    const int32_t tokens[4] = {0, 1, 0, 1};
    dm_routing_acc acc;
    dm_routing_metrics m;

    ck_assert_int_eq(dm_routing_acc_init(&acc, 2, 2), DM_OK);
    ck_assert_int_eq(dm_routing_acc_add(&acc, 4, mask, NULL, tokens), DM_OK);
    dm_routing_acc_finish(&acc, &m, NULL);
    ck_assert_double_eq_tol(m.h_expert, 1.0, 1e-12);
    ck_assert_double_eq_tol(m.h_expert_given_token, 0.0, 1e-12);
    ck_assert_double_eq_tol(m.mutual_info, 1.0, 1e-12);
    dm_routing_acc_free(&acc);
}
END_TEST

START_TEST(mutual_info_independent_routing)
{
    /* both tokens go to both experts, so the expert carries no information about the token */
    const int32_t mask[2 * 2] = {1, 1, 1, 1};
    const int32_t tokens[2] = {0, 1};
    dm_routing_acc acc;
    dm_routing_metrics m;

    ck_assert_int_eq(dm_routing_acc_init(&acc, 2, 2), DM_OK);
    ck_assert_int_eq(dm_routing_acc_add(&acc, 2, mask, NULL, tokens), DM_OK);
    dm_routing_acc_finish(&acc, &m, NULL);
    ck_assert_double_eq_tol(m.h_expert, 1.0, 1e-12);
    ck_assert_double_eq_tol(m.h_expert_given_token, 1.0, 1e-12);
    ck_assert_double_eq_tol(m.mutual_info, 0.0, 1e-12);
    dm_routing_acc_free(&acc);
}
END_TEST

START_TEST(mutual_info_partial_routing_across_batches)
{
    /*
     * Joint counts: token 5 -> (expert 0: 3, expert 1: 1), token 9 -> (1, 3),
     * added in two batches. H(E) = 1, H(E|X) = h2(3/4), I = 1 - h2(3/4) = 0.188722...
     */
    const int32_t mask_a[4 * 2] = {1, 0, 1, 0, 0, 1, 0, 1};
    const int32_t tokens_a[4] = {5, 5, 9, 9};
    const int32_t mask_b[4 * 2] = {1, 0, 0, 1, 1, 0, 0, 1};
    const int32_t tokens_b[4] = {5, 5, 9, 9};
    dm_routing_acc acc;
    dm_routing_metrics m;

    ck_assert_int_eq(dm_routing_acc_init(&acc, 2, 16), DM_OK);
    ck_assert_int_eq(dm_routing_acc_add(&acc, 4, mask_a, NULL, tokens_a), DM_OK);
    ck_assert_int_eq(dm_routing_acc_add(&acc, 4, mask_b, NULL, tokens_b), DM_OK);
    dm_routing_acc_finish(&acc, &m, NULL);
    ck_assert_double_eq_tol(m.h_expert, 1.0, 1e-12);
    ck_assert_double_eq_tol(m.h_expert_given_token, h2(0.75), 1e-12);
    ck_assert_double_eq_tol(m.mutual_info, 1.0 - h2(0.75), 1e-12);
    ck_assert_double_eq_tol(m.mutual_info, 0.18872187554086717, 1e-12);

    /* reset clears everything */
    dm_routing_acc_reset(&acc);
    dm_routing_acc_finish(&acc, &m, NULL);
    ck_assert_uint_eq(m.n_tokens, 0);
    ck_assert_double_eq(m.mutual_info, 0.0);
    dm_routing_acc_free(&acc);
}
END_TEST

START_TEST(bad_token_id_rejected)
{
    const int32_t mask[2 * 2] = {1, 0, 0, 1};
    const int32_t tokens[2] = {0, 300};
    dm_routing_acc acc;
    dm_routing_metrics m;

    ck_assert_int_eq(dm_routing_acc_init(&acc, 2, 256), DM_OK);
    ck_assert_int_eq(dm_routing_acc_add(&acc, 2, mask, NULL, tokens), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "300"));
    /* the sums are unchanged */
    dm_routing_acc_finish(&acc, &m, NULL);
    ck_assert_uint_eq(m.n_tokens, 0);
    ck_assert_uint_eq(acc.n_assign, 0);
    dm_routing_acc_free(&acc);

    ck_assert_int_eq(dm_routing_acc_init(&acc, 0, 256), DM_ERR_INVALID);
}
END_TEST

START_TEST(perplexity_and_bits_per_byte)
{
    ck_assert_double_eq_tol(dm_bits_per_byte(log(2.0)), 1.0, 1e-15);
    ck_assert_double_eq_tol(dm_perplexity(log(2.0)), 2.0, 1e-15);
    /* uniform over 256 bytes: 8 bits per byte, perplexity 256 */
    ck_assert_double_eq_tol(dm_bits_per_byte(log(256.0)), 8.0, 1e-13);
    ck_assert_double_eq_tol(dm_perplexity(log(256.0)), 256.0, 1e-11);
}
END_TEST

static Suite *metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("routing");

    tcase_add_test(tc, load_two_of_four_experts);
    tcase_add_test(tc, balanced_load_has_zero_cv);
    tcase_add_test(tc, router_entropy_in_bits);
    tcase_add_test(tc, mutual_info_deterministic_routing);
    tcase_add_test(tc, mutual_info_independent_routing);
    tcase_add_test(tc, mutual_info_partial_routing_across_batches);
    tcase_add_test(tc, bad_token_id_rejected);
    tcase_add_test(tc, perplexity_and_bits_per_byte);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(metrics_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
