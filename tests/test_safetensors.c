/* safetensors reader and writer: round trip, conversions and every malformed case. */
#include "config.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dirmoe/safetensors.h"
#include "dirmoe/status.h"

static char path[256];

static void make_path(const char *stem)
{
    snprintf(path, sizeof path, "test_st_%s_%ld.safetensors", stem, (long)getpid());
}

/* Writes a raw file: 8-byte length (given, so it can lie), the header text, then `data`. */
static void write_raw(uint64_t header_len, const char *header, const void *data, size_t data_len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(header_len >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    if (data_len)
        fwrite(data, 1, data_len, f);
    fclose(f);
}

/* Writes a well-formed header around `header` and `data_len` bytes of data. */
static void write_file(const char *header, size_t data_len)
{
    unsigned char data[256] = {0};
    ck_assert_uint_le(data_len, sizeof data);
    write_raw(strlen(header), header, data, data_len);
}

/* Opens `path`, expects failure with `status` and a message containing both fragments. */
static void expect_reject(dm_status status, const char *frag1, const char *frag2)
{
    dm_st_file *f = (dm_st_file *)1;
    dm_status st = dm_st_open(path, &f);
    ck_assert_int_eq(st, status);
    ck_assert_ptr_null(f);
    const char *msg = dm_last_error();
    ck_assert_msg(strstr(msg, path) != NULL, "message does not name the file: %s", msg);
    ck_assert_msg(strstr(msg, frag1) != NULL, "message lacks '%s': %s", frag1, msg);
    if (frag2)
        ck_assert_msg(strstr(msg, frag2) != NULL, "message lacks '%s': %s", frag2, msg);
    unlink(path);
}

START_TEST(round_trip)
{
    float x[6] = {1.5f, -2.0f, 0.0f, 3.25f, 1e-30f, -1e30f};
    int32_t idx[3] = {7, -1, 2147483647};
    uint32_t words[2] = {0xdeadbeefu, 0u};
    double d[2] = {0.1, -1e300};
    int64_t shape_x[2] = {2, 3}, shape_idx[1] = {3}, shape_w[1] = {2}, shape_d[1] = {2};
    dm_st_writer *w;

    make_path("round");
    ck_assert_int_eq(dm_st_writer_new(&w), DM_OK);
    ck_assert_int_eq(dm_st_writer_add(w, "x", DM_ST_F32, 2, shape_x, x), DM_OK);
    ck_assert_int_eq(dm_st_writer_add(w, "idx", DM_ST_I32, 1, shape_idx, idx), DM_OK);
    ck_assert_int_eq(dm_st_writer_add(w, "words", DM_ST_U32, 1, shape_w, words), DM_OK);
    ck_assert_int_eq(dm_st_writer_add(w, "d", DM_ST_F64, 1, shape_d, d), DM_OK);
    ck_assert_int_eq(dm_st_writer_add(w, "scalar", DM_ST_F32, 0, NULL, x), DM_OK);
    ck_assert_int_eq(dm_st_writer_add(w, "x", DM_ST_F32, 2, shape_x, x), DM_ERR_INVALID);
    ck_assert_int_eq(dm_st_writer_add(w, "__metadata__", DM_ST_F32, 2, shape_x, x), DM_ERR_INVALID);
    ck_assert_int_eq(dm_st_writer_set_metadata(w, "op", "gemm"), DM_OK);
    ck_assert_int_eq(dm_st_writer_set_metadata(w, "N", "3"), DM_OK);
    ck_assert_int_eq(dm_st_writer_set_metadata(w, "N", "4"), DM_OK);
    ck_assert_int_eq(dm_st_writer_save(w, path), DM_OK);
    dm_st_writer_free(w);

    dm_st_file *f;
    ck_assert_int_eq(dm_st_open(path, &f), DM_OK);
    ck_assert_int_eq(dm_st_count(f), 5);
    ck_assert_str_eq(dm_st_metadata(f, "op"), "gemm");
    ck_assert_str_eq(dm_st_metadata(f, "N"), "4");
    ck_assert_ptr_null(dm_st_metadata(f, "missing"));
    ck_assert_int_eq(dm_st_metadata_count(f), 2);

    const dm_st_tensor *t = dm_st_find(f, "x");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->dtype, DM_ST_F32);
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_int_eq(t->shape[0], 2);
    ck_assert_int_eq(t->shape[1], 3);
    ck_assert_uint_eq(t->numel, 6);
    float xr[6];
    ck_assert_int_eq(dm_st_read(f, t, DM_ST_F32, xr), DM_OK);
    ck_assert_mem_eq(xr, x, sizeof x);

    int32_t ir[3];
    ck_assert_int_eq(dm_st_read(f, dm_st_find(f, "idx"), DM_ST_I32, ir), DM_OK);
    ck_assert_mem_eq(ir, idx, sizeof idx);
    uint32_t wr[2];
    ck_assert_int_eq(dm_st_read(f, dm_st_find(f, "words"), DM_ST_U32, wr), DM_OK);
    ck_assert_mem_eq(wr, words, sizeof words);
    double dr[2];
    ck_assert_int_eq(dm_st_read(f, dm_st_find(f, "d"), DM_ST_F64, dr), DM_OK);
    ck_assert_mem_eq(dr, d, sizeof d);

    /* Conversions: F64 rounds to F32; U32 above INT32_MAX is not an I32. */
    float fr[2];
    ck_assert_int_eq(dm_st_read(f, dm_st_find(f, "d"), DM_ST_F32, fr), DM_OK);
    ck_assert(fr[0] == 0.1f);
    ck_assert_int_eq(dm_st_read(f, dm_st_find(f, "words"), DM_ST_I32, ir), DM_ERR_FORMAT);
    ck_assert_int_eq(dm_st_read(f, dm_st_find(f, "x"), DM_ST_I32, ir), DM_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "'x'"));

    t = dm_st_find(f, "scalar");
    ck_assert_int_eq(t->ndim, 0);
    ck_assert_uint_eq(t->numel, 1);
    ck_assert_ptr_null(dm_st_find(f, "nope"));
    dm_st_close(f);
    unlink(path);
}
END_TEST

START_TEST(empty_file_round_trip)
{
    dm_st_writer *w;
    dm_st_file *f;

    make_path("empty");
    ck_assert_int_eq(dm_st_writer_new(&w), DM_OK);
    ck_assert_int_eq(dm_st_writer_save(w, path), DM_OK);
    dm_st_writer_free(w);
    ck_assert_int_eq(dm_st_open(path, &f), DM_OK);
    ck_assert_int_eq(dm_st_count(f), 0);
    dm_st_close(f);
    unlink(path);
}
END_TEST

START_TEST(save_leaves_no_temporary)
{
    dm_st_writer *w;
    float x = 1;
    int64_t one = 1;

    /* A directory that does not exist: the save fails and no file appears. */
    snprintf(path, sizeof path, "no_such_dir_%ld/out.safetensors", (long)getpid());
    ck_assert_int_eq(dm_st_writer_new(&w), DM_OK);
    ck_assert_int_eq(dm_st_writer_add(w, "x", DM_ST_F32, 1, &one, &x), DM_OK);
    ck_assert_int_eq(dm_st_writer_save(w, path), DM_ERR_IO);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), path));
    ck_assert_int_ne(access(path, F_OK), 0);

    /* Overwriting an existing file replaces it whole. */
    make_path("overwrite");
    write_file("{}", 0);
    ck_assert_int_eq(dm_st_writer_save(w, path), DM_OK);
    dm_st_writer_free(w);
    dm_st_file *f;
    ck_assert_int_eq(dm_st_open(path, &f), DM_OK);
    ck_assert_int_eq(dm_st_count(f), 1);
    dm_st_close(f);
    unlink(path);
}
END_TEST

START_TEST(reject_missing_file)
{
    make_path("missing");
    expect_reject(DM_ERR_NOT_FOUND, "cannot open", NULL);
}
END_TEST

START_TEST(reject_short_file)
{
    make_path("short");
    FILE *f = fopen(path, "wb");
    fwrite("abc", 1, 3, f);
    fclose(f);
    expect_reject(DM_ERR_FORMAT, "fewer than the 8-byte header length", NULL);
}
END_TEST

START_TEST(reject_header_beyond_file)
{
    make_path("beyond");
    write_raw(1000, "{}", NULL, 0);
    expect_reject(DM_ERR_FORMAT, "header length 1000", "beyond the end of the file");
}
END_TEST

START_TEST(reject_bad_json)
{
    make_path("json");
    write_file("{\"x\": {\"dtype\": \"F32\",", 0);
    expect_reject(DM_ERR_FORMAT, "not valid JSON", NULL);

    make_path("array");
    write_file("[1, 2]", 0);
    expect_reject(DM_ERR_FORMAT, "not a JSON object", NULL);

    make_path("meta");
    write_file("{\"__metadata__\": {\"a\": 1}}", 0);
    expect_reject(DM_ERR_FORMAT, "metadata value of 'a'", NULL);
}
END_TEST

START_TEST(reject_unknown_dtype)
{
    make_path("dtype");
    write_file("{\"x\": {\"dtype\": \"BF16\", \"shape\": [2], \"data_offsets\": [0, 4]}}", 4);
    expect_reject(DM_ERR_FORMAT, "tensor 'x'", "unsupported dtype 'BF16'");

    make_path("nodtype");
    write_file("{\"x\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", 8);
    expect_reject(DM_ERR_FORMAT, "tensor 'x'", "dtype");
}
END_TEST

START_TEST(reject_wrong_shape)
{
    /* Three floats need 12 bytes, the offsets give 8. */
    make_path("shape");
    write_file("{\"x\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", 8);
    expect_reject(DM_ERR_FORMAT, "tensor 'x'", "need 12");

    make_path("negative");
    write_file("{\"x\": {\"dtype\": \"F32\", \"shape\": [-2], \"data_offsets\": [0, 8]}}", 8);
    expect_reject(DM_ERR_FORMAT, "tensor 'x'", "shape entry 0");

    make_path("fraction");
    write_file("{\"x\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 8]}}", 8);
    expect_reject(DM_ERR_FORMAT, "tensor 'x'", "shape entry 0");

    make_path("reversed");
    write_file("{\"x\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 0]}}", 8);
    expect_reject(DM_ERR_FORMAT, "tensor 'x'", "end before they begin");
}
END_TEST

START_TEST(reject_truncated_data)
{
    make_path("truncated");
    write_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
               " \"b\": {\"dtype\": \"I32\", \"shape\": [4], \"data_offsets\": [8, 24]}}",
               20);
    expect_reject(DM_ERR_FORMAT, "tensor 'b'", "truncated");
}
END_TEST

START_TEST(reject_overlap_and_duplicates)
{
    make_path("overlap");
    write_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
               " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
               12);
    expect_reject(DM_ERR_FORMAT, "'a' and 'b' overlap", NULL);

    make_path("duplicate");
    write_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
               " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
               8);
    expect_reject(DM_ERR_FORMAT, "tensor 'a' appears twice", NULL);
}
END_TEST

START_TEST(accepts_padding_and_holes)
{
    /* Trailing spaces pad the header; a hole between tensors is allowed. */
    make_path("padding");
    write_file("{\"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]},"
               " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}      ",
               12);
    dm_st_file *f;
    ck_assert_int_eq(dm_st_open(path, &f), DM_OK);
    ck_assert_int_eq(dm_st_count(f), 2);
    ck_assert_str_eq(dm_st_tensor_at(f, 0)->name, "a");
    ck_assert_str_eq(dm_st_tensor_at(f, 1)->name, "b");
    dm_st_close(f);
    unlink(path);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, round_trip);
    tcase_add_test(tc, empty_file_round_trip);
    tcase_add_test(tc, save_leaves_no_temporary);
    tcase_add_test(tc, reject_missing_file);
    tcase_add_test(tc, reject_short_file);
    tcase_add_test(tc, reject_header_beyond_file);
    tcase_add_test(tc, reject_bad_json);
    tcase_add_test(tc, reject_unknown_dtype);
    tcase_add_test(tc, reject_wrong_shape);
    tcase_add_test(tc, reject_truncated_data);
    tcase_add_test(tc, reject_overlap_and_duplicates);
    tcase_add_test(tc, accepts_padding_and_holes);
    suite_add_tcase(s, tc);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
