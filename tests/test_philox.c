/*
 * Philox4x32-10 known-answer vectors and the word-to-variate conversions.
 * Deterministic: no false failures.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "dirmoe/philox.h"
#include "dm_math.h"

struct kat {
    uint32_t ctr[4];
    uint32_t key[2];
    uint32_t expected[4];
};

/* Known-answer vectors of philox4x32-10 from Random123's kat_vectors. */
static const struct kat kats[] = {
    {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
    {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
     {0xffffffffu, 0xffffffffu},
     {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
    {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
     {0xa4093822u, 0x299f31d0u},
     {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
};

START_TEST(philox_known_answers)
{
    const struct kat *k = &kats[_i];
    dm_philox_block b = dm_philox4x32_10(k->ctr, k->key);
    for (int w = 0; w < 4; w++)
        ck_assert_msg(b.w[w] == k->expected[w], "vector %d word %d: got %08x, expected %08x", _i, w,
                      b.w[w], k->expected[w]);
}
END_TEST

START_TEST(philox_counter_layout)
{
    /* dm_philox_at maps (seed, index, attempt, layer, purpose, step) onto key and counter. */
    uint64_t seed = 0x299f31d0a4093822ull;
    dm_philox_block b = dm_philox_at(seed, 0x243f6a88u, 0x85a308d3u, 0x13198au, 0x2eu, 0x03707344u);
    for (int w = 0; w < 4; w++)
        ck_assert_uint_eq(b.w[w], kats[2].expected[w]);
}
END_TEST

START_TEST(uniform_extremes_inside_interval)
{
    float lo = dm_uniform_from_word(0);
    float hi = dm_uniform_from_word(0xffffffffu);
    ck_assert(lo > 0.0f);
    ck_assert(hi < 1.0f);
    ck_assert(lo == 0x1p-24f);
    ck_assert(hi == 1.0f - 0x1p-24f);
    ck_assert(dm_uniform_from_word(0x80000000u) == 0.5f + 0x1p-24f);
}
END_TEST

START_TEST(select_uniform_is_word0)
{
    uint64_t seed = 12345;
    dm_philox_block b = dm_philox_at(seed, 77, 0, 3, DM_RNG_SELECT, 9);
    ck_assert(dm_select_uniform(seed, 77, 3, 9) == dm_uniform_from_word(b.w[0]));
}
END_TEST

START_TEST(normal_from_words_values)
{
    /* u0 = 2^-24 gives the largest radius sqrt(48 log 2); u1 = 1/2 + 2^-24 gives cos near -1. */
    float r_max = sqrtf(48.0f * logf(2.0f));
    ck_assert_float_eq_tol(dm_normal_from_words(0, 0), r_max, 1e-5f);
    ck_assert_float_eq_tol(dm_normal_from_words(0, 0x80000000u), -r_max, 1e-5f);

    /* Every output is finite and bounded by r_max. */
    for (uint32_t i = 0; i < 4096; i++) {
        dm_philox_block b = dm_philox_at(1, i, 0, 0, DM_RNG_GAMMA, 0);
        float z = dm_normal_from_words(b.w[0], b.w[1]);
        ck_assert(isfinite(z));
        ck_assert(fabsf(z) <= r_max * 1.0001f);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("philox");
    TCase *tc = tcase_create("philox");
    tcase_add_loop_test(tc, philox_known_answers, 0, (int)(sizeof kats / sizeof kats[0]));
    tcase_add_test(tc, philox_counter_layout);
    tcase_add_test(tc, uniform_extremes_inside_interval);
    tcase_add_test(tc, select_uniform_is_word0);
    tcase_add_test(tc, normal_from_words_values);
    suite_add_tcase(s, tc);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
