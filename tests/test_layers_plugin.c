/*
 * The reference plugin loaded through the loader: its memory ops, and gemm,
 * layer norm and attention through the op table against the float kernels
 * called directly. Both paths run the same code, so results must be equal
 * bit for bit. The harness sets DIRMOE_PLUGIN_PATH to the build tree.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "dirmoe/loader.h"
#include "dirmoe/status.h"

#include "layers_util.h"

void dm_ref_f_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc);
void dm_ref_f_layernorm_forward(int n, int c, float *out, float *mean, float *rstd,
                                const float *inp, const float *weight, const float *bias);
void dm_ref_f_attention_forward(int b, int t, int c, int nh, float *out, float *lse,
                                const float *qkv);

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

static float *random_floats(tl_rng *rng, size_t n)
{
    float *x = malloc(n * sizeof(float));

    for (size_t i = 0; i < n; i++)
        x[i] = (float)tl_uniform(rng, -1.0, 1.0);
    return x;
}

/* One buffer holding several tensors at element offsets, as the core lays
 * out parameters. */
static dm_buffer *alloc_checked(size_t n)
{
    dm_buffer *buf = NULL;
    dm_status st = be->ops->alloc(be->ctx, n, &buf);

    ck_assert_msg(st == DM_OK, "alloc of %zu elements failed: %s", n, be->desc->last_error(be->ctx));
    return buf;
}

static void upload_checked(dm_tensor dst, const void *src, size_t n)
{
    dm_status st = be->ops->upload(be->ctx, dst, src, n);
    ck_assert_msg(st == DM_OK, "upload failed: %s", be->desc->last_error(be->ctx));
}

static void download_checked(void *dst, dm_tensor src, size_t n)
{
    dm_status st = be->ops->download(be->ctx, dst, src, n);
    ck_assert_msg(st == DM_OK, "download failed: %s", be->desc->last_error(be->ctx));
}

START_TEST(plugin_is_reference)
{
    ck_assert_str_eq(be->name, "reference");
    ck_assert_ptr_nonnull(be->ops->gemm);
    ck_assert_ptr_nonnull(be->ops->attention_backward);
    ck_assert_ptr_nonnull(be->ops->adamw);
}
END_TEST

START_TEST(fill_copy_roundtrip)
{
    dm_buffer *buf = alloc_checked(16);
    float one_and_half = 1.5f, got[16];
    uint32_t bits;
    memcpy(&bits, &one_and_half, sizeof bits);

    ck_assert_int_eq(be->ops->fill(be->ctx, (dm_tensor){buf, 0}, 0, 16), DM_OK);
    ck_assert_int_eq(be->ops->fill(be->ctx, (dm_tensor){buf, 2}, bits, 5), DM_OK);
    ck_assert_int_eq(be->ops->copy(be->ctx, (dm_tensor){buf, 10}, (dm_tensor){buf, 1}, 4), DM_OK);
    ck_assert_int_eq(be->ops->synchronize(be->ctx), DM_OK);
    download_checked(got, (dm_tensor){buf, 0}, 16);

    /* fill: elements 2..6 are 1.5, the rest 0; copy: 10..13 = old 1..4. */
    for (int i = 0; i < 16; i++) {
        float want = (i >= 2 && i <= 6) ? 1.5f : 0.0f;
        if (i >= 10 && i <= 13)
            want = (i - 9 >= 2) ? 1.5f : 0.0f;
        ck_assert_msg(got[i] == want, "element %d is %g, expected %g", i, (double)got[i],
                      (double)want);
    }

    float src[3] = {-1.0f, 2.0f, 3.25f}, back[3];
    upload_checked((dm_tensor){buf, 13}, src, 3);
    download_checked(back, (dm_tensor){buf, 13}, 3);
    ck_assert_mem_eq(back, src, sizeof src);
    be->ops->free(be->ctx, buf);
}
END_TEST

START_TEST(upload_out_of_range_rejected)
{
    dm_buffer *buf = alloc_checked(8);
    float src[8] = {0};

    dm_status st = be->ops->upload(be->ctx, (dm_tensor){buf, 4}, src, 5);
    ck_assert_int_eq(st, DM_ERR_INVALID);
    const char *msg = be->desc->last_error(be->ctx);
    ck_assert_ptr_nonnull(msg);
    ck_assert_msg(strstr(msg, "upload") != NULL, "message does not name the op: \"%s\"", msg);
    ck_assert_msg(strstr(msg, "8") != NULL, "message does not give the buffer size: \"%s\"", msg);

    st = be->ops->download(be->ctx, src, (dm_tensor){buf, 9}, 0);
    ck_assert_int_eq(st, DM_ERR_INVALID);
    ck_assert_str_ne(be->desc->last_error(be->ctx), "");

    /* The loader turns the backend message into one line naming backend and op. */
    st = dm_backend_fail(be, "upload", DM_ERR_INVALID);
    ck_assert_int_eq(st, DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "reference"));
    be->ops->free(be->ctx, buf);
}
END_TEST

/* _i selects the transposes; the three matrices share one buffer. */
START_TEST(gemm_through_op_table)
{
    int trans_a = _i & 1, trans_b = (_i >> 1) & 1;
    int m = 5, n = 3, k = 17;
    size_t na = (size_t)m * k, nb = (size_t)k * n, nc = (size_t)m * n;
    int lda = trans_a ? m : k, ldb = trans_b ? k : n;
    tl_rng rng = {700u + (uint64_t)_i};
    float *a = random_floats(&rng, na), *b = random_floats(&rng, nb), *c = random_floats(&rng, nc);
    float *got = malloc(nc * sizeof(float));
    dm_buffer *buf = alloc_checked(1 + na + nb + nc);
    dm_tensor ta = {buf, 1}, tb = {buf, 1 + na}, tc = {buf, 1 + na + nb};

    upload_checked(ta, a, na);
    upload_checked(tb, b, nb);
    upload_checked(tc, c, nc);
    dm_status st = be->ops->gemm(be->ctx, trans_a, trans_b, m, n, k, 0.5f, ta, lda, tb, ldb, 1.0f,
                                 tc, n);
    ck_assert_msg(st == DM_OK, "gemm failed: %s", be->desc->last_error(be->ctx));
    download_checked(got, tc, nc);

    dm_ref_f_gemm(trans_a, trans_b, m, n, k, 0.5f, a, lda, b, ldb, 1.0f, c, n);
    ck_assert_mem_eq(got, c, nc * sizeof(float));
    free(a);
    free(b);
    free(c);
    free(got);
    be->ops->free(be->ctx, buf);
}
END_TEST

START_TEST(gemm_negative_size_rejected)
{
    dm_buffer *buf = alloc_checked(4);
    dm_tensor t = {buf, 0};

    dm_status st = be->ops->gemm(be->ctx, 0, 0, -1, 2, 2, 1.0f, t, 2, t, 2, 0.0f, t, 2);
    ck_assert_int_eq(st, DM_ERR_INVALID);
    ck_assert_str_ne(be->desc->last_error(be->ctx), "");
    be->ops->free(be->ctx, buf);
}
END_TEST

START_TEST(layernorm_through_op_table)
{
    int n = 4, c = 11;
    size_t nc = (size_t)n * c;
    tl_rng rng = {800};
    float *inp = random_floats(&rng, nc), *w = random_floats(&rng, c), *bias = random_floats(&rng, c);
    float *out = malloc(nc * sizeof(float)), mean[4], rstd[4];
    float *got = malloc(nc * sizeof(float)), got_mean[4], got_rstd[4];
    dm_buffer *buf = alloc_checked(2 * nc + 2 * (size_t)c + 2 * (size_t)n);
    dm_tensor t_inp = {buf, 0}, t_w = {buf, nc}, t_b = {buf, nc + c}, t_out = {buf, nc + 2 * c};
    dm_tensor t_mean = {buf, 2 * nc + 2 * c}, t_rstd = {buf, 2 * nc + 2 * c + n};

    upload_checked(t_inp, inp, nc);
    upload_checked(t_w, w, c);
    upload_checked(t_b, bias, c);
    dm_status st = be->ops->layernorm_forward(be->ctx, n, c, t_out, t_mean, t_rstd, t_inp, t_w, t_b);
    ck_assert_msg(st == DM_OK, "layernorm_forward failed: %s", be->desc->last_error(be->ctx));
    download_checked(got, t_out, nc);
    download_checked(got_mean, t_mean, n);
    download_checked(got_rstd, t_rstd, n);

    dm_ref_f_layernorm_forward(n, c, out, mean, rstd, inp, w, bias);
    ck_assert_mem_eq(got, out, nc * sizeof(float));
    ck_assert_mem_eq(got_mean, mean, sizeof mean);
    ck_assert_mem_eq(got_rstd, rstd, sizeof rstd);
    free(inp);
    free(w);
    free(bias);
    free(out);
    free(got);
    be->ops->free(be->ctx, buf);
}
END_TEST

START_TEST(attention_through_op_table)
{
    int b = 2, t = 5, c = 8, nh = 2;
    size_t n_qkv = (size_t)b * t * 3 * c, n_out = (size_t)b * t * c, n_lse = (size_t)b * nh * t;
    tl_rng rng = {900};
    float *qkv = random_floats(&rng, n_qkv);
    float *out = malloc(n_out * sizeof(float)), *lse = malloc(n_lse * sizeof(float));
    float *got = malloc(n_out * sizeof(float)), *got_lse = malloc(n_lse * sizeof(float));
    dm_buffer *buf = alloc_checked(n_qkv + n_out + n_lse);
    dm_tensor t_qkv = {buf, 0}, t_out = {buf, n_qkv}, t_lse = {buf, n_qkv + n_out};

    upload_checked(t_qkv, qkv, n_qkv);
    dm_status st = be->ops->attention_forward(be->ctx, b, t, c, nh, t_out, t_lse, t_qkv);
    ck_assert_msg(st == DM_OK, "attention_forward failed: %s", be->desc->last_error(be->ctx));
    download_checked(got, t_out, n_out);
    download_checked(got_lse, t_lse, n_lse);

    dm_ref_f_attention_forward(b, t, c, nh, out, lse, qkv);
    ck_assert_mem_eq(got, out, n_out * sizeof(float));
    ck_assert_mem_eq(got_lse, lse, n_lse * sizeof(float));

    /* 8 columns do not split into 3 heads. */
    st = be->ops->attention_forward(be->ctx, b, t, c, 3, t_out, t_lse, t_qkv);
    ck_assert_int_eq(st, DM_ERR_INVALID);
    ck_assert_str_ne(be->desc->last_error(be->ctx), "");
    free(qkv);
    free(out);
    free(lse);
    free(got);
    free(got_lse);
    be->ops->free(be->ctx, buf);
}
END_TEST

static Suite *plugin_suite(void)
{
    Suite *s = suite_create("reference plugin op table");
    TCase *tc = tcase_create("ops");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, plugin_is_reference);
    tcase_add_test(tc, fill_copy_roundtrip);
    tcase_add_test(tc, upload_out_of_range_rejected);
    tcase_add_loop_test(tc, gemm_through_op_table, 0, 4);
    tcase_add_test(tc, gemm_negative_size_rejected);
    tcase_add_test(tc, layernorm_through_op_table);
    tcase_add_test(tc, attention_through_op_table);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(plugin_suite());

    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
