/*
 * The op registry and `dirmoe op`: the runner against host arithmetic, guard
 * regions, and the CLI on files written here, including malformed inputs.
 */
#include "config.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dirmoe/dirmoe.h"
#include "dirmoe/opreg.h"
#include "dirmoe/safetensors.h"

static char in_path[128], out_path[128], err_path[128];

static void setup(void)
{
    snprintf(in_path, sizeof in_path, "test_op_in_%ld.safetensors", (long)getpid());
    snprintf(out_path, sizeof out_path, "test_op_out_%ld.safetensors", (long)getpid());
    snprintf(err_path, sizeof err_path, "test_op_err_%ld.txt", (long)getpid());
}

static void teardown(void)
{
    unlink(in_path);
    unlink(out_path);
    unlink(err_path);
}

/* Runs `dirmoe ARGS` with stderr to err_path; returns the exit status. */
static int run_cli(const char *args)
{
    const char *top = getenv("DIRMOE_TOP_BUILDDIR");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/tools/dirmoe %s > /dev/null 2> %s", top ? top : ".", args, err_path);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static int stderr_contains(const char *fragment)
{
    char buf[4096] = "";
    FILE *f = fopen(err_path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    if (!strstr(buf, fragment)) {
        fprintf(stderr, "stderr was: %s\n", buf);
        return 0;
    }
    return 1;
}

/* Writes gemm inputs a (2,3) and b (3,2), optionally c, with M, N, K in the metadata. */
static void write_gemm_input(const int64_t *a_shape, int with_c)
{
    float a[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, b[6] = {1, 0, 0, 1, 1, 1}, c[4] = {10, 20, 30, 40};
    int64_t b_shape[2] = {3, 2}, c_shape[2] = {2, 2};
    dm_st_writer *w;

    ck_assert_int_eq(dm_st_writer_new(&w), DM_OK);
    ck_assert_int_eq(dm_st_writer_add(w, "a", DM_ST_F32, 2, a_shape, a), DM_OK);
    ck_assert_int_eq(dm_st_writer_add(w, "b", DM_ST_F32, 2, b_shape, b), DM_OK);
    if (with_c)
        ck_assert_int_eq(dm_st_writer_add(w, "c", DM_ST_F32, 2, c_shape, c), DM_OK);
    ck_assert_int_eq(dm_st_writer_set_metadata(w, "M", "2"), DM_OK);
    ck_assert_int_eq(dm_st_writer_set_metadata(w, "N", "2"), DM_OK);
    ck_assert_int_eq(dm_st_writer_set_metadata(w, "K", "3"), DM_OK);
    ck_assert_int_eq(dm_st_writer_save(w, in_path), DM_OK);
    dm_st_writer_free(w);
}

static void read_output(const char *name, float *dst, size_t numel)
{
    dm_st_file *f;
    ck_assert_int_eq(dm_st_open(out_path, &f), DM_OK);
    const dm_st_tensor *t = dm_st_find(f, name);
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(t->numel, numel);
    ck_assert_int_eq(dm_st_read(f, t, DM_ST_F32, dst), DM_OK);
    ck_assert_str_eq(dm_st_metadata(f, "op"), "gemm");
    ck_assert_str_eq(dm_st_metadata(f, "backend"), "reference");
    dm_st_close(f);
}

START_TEST(registry_covers_every_op)
{
    /* Every computing member of dm_backend_ops has an entry: 35 ops. */
    ck_assert_int_eq(dm_op_count(), 35);
    for (int i = 0; i < dm_op_count(); i++) {
        const dm_op_def *op = dm_op_at(i);
        dm_op_attrs a;
        ck_assert_ptr_eq(dm_op_find(op->name), op);
        dm_op_attrs_init(&a, op);
        ck_assert_msg(dm_op_attrs_resolve(&a) == DM_OK, "%s: %s", op->name, dm_last_error());
        for (int t = 0; t < op->n_tensors; t++) {
            int ndim;
            int64_t shape[DM_ST_MAX_DIMS], lo, hi;
            size_t numel;
            ck_assert_msg(dm_op_tensor_shape(&a, t, &ndim, shape, &numel) == DM_OK, "%s", dm_last_error());
            ck_assert_uint_gt(numel, 0);
            if (op->tensors[t].range)
                ck_assert_msg(dm_op_tensor_range(&a, t, &lo, &hi), "%s.%s range", op->name, op->tensors[t].name);
        }
    }
    ck_assert_ptr_null(dm_op_find("nope"));
}
END_TEST

START_TEST(shape_expressions)
{
    const dm_op_def *op = dm_op_find("dirmoe_route_forward");
    dm_op_attrs a;
    int ndim;
    int64_t shape[DM_ST_MAX_DIMS];
    size_t numel;

    dm_op_attrs_init(&a, op);
    ck_assert_int_eq(dm_op_attr_parse(&a, "N", "5"), DM_OK);
    ck_assert_int_eq(dm_op_attr_parse(&a, "E", "3"), DM_OK);
    ck_assert_int_eq(dm_op_attrs_resolve(&a), DM_OK);
    ck_assert_int_eq(dm_op_attr_int(&a, "k_max"), 3);
    ck_assert_int_eq(dm_op_tensor_shape(&a, dm_op_tensor_index(op, "logits"), &ndim, shape, &numel), DM_OK);
    ck_assert_int_eq(ndim, 2);
    ck_assert_int_eq(shape[0], 5);
    ck_assert_int_eq(shape[1], 6);

    op = dm_op_find("dispatch_build");
    dm_op_attrs_init(&a, op);
    ck_assert_int_eq(dm_op_attr_set(&a, "E", 7), DM_OK);
    ck_assert_int_eq(dm_op_tensor_shape(&a, dm_op_tensor_index(op, "offsets"), &ndim, shape, &numel), DM_OK);
    ck_assert_int_eq(shape[0], 8);
    ck_assert_int_eq(dm_op_tensor_shape(&a, dm_op_tensor_index(op, "token_of_slot"), &ndim, shape, &numel), DM_OK);
    ck_assert_int_eq(shape[0], 28);

    /* Bounds and cross-attribute checks name the attribute. */
    op = dm_op_find("topk_route_forward");
    dm_op_attrs_init(&a, op);
    ck_assert_int_eq(dm_op_attr_parse(&a, "k", "9"), DM_OK);
    ck_assert_int_eq(dm_op_attrs_resolve(&a), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "k = 9 exceeds E = 4"));
    ck_assert_int_eq(dm_op_attr_parse(&a, "N", "0"), DM_OK);
    ck_assert_int_eq(dm_op_attrs_resolve(&a), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "attribute N = 0 is out of range"));
    ck_assert_int_eq(dm_op_attr_parse(&a, "N", "x"), DM_ERR_INVALID);
    ck_assert_int_eq(dm_op_attr_parse(&a, "bogus", "1"), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "unknown attribute 'bogus'"));
}
END_TEST

START_TEST(run_philox_with_guards)
{
    const dm_op_def *op = dm_op_find("philox");
    dm_backend *be;
    dm_op_attrs a;
    dm_host_tensor out[DM_OP_MAX_TENSORS];
    int n_out;
    size_t damage[DM_OP_MAX_TENSORS];
    dm_op_run_opts opts = {7, 0x7fc0dead, damage};

    ck_assert_msg(dm_backend_open("reference", &be) == DM_OK, "%s", dm_last_error());
    dm_op_attrs_init(&a, op);
    ck_assert_int_eq(dm_op_attr_parse(&a, "n", "5"), DM_OK);
    ck_assert_int_eq(dm_op_attr_parse(&a, "seed", "18446744073709551615"), DM_OK);
    ck_assert_int_eq(dm_op_attr_parse(&a, "index_base", "100"), DM_OK);
    ck_assert_int_eq(dm_op_attr_parse(&a, "purpose", "3"), DM_OK);
    ck_assert_msg(dm_op_run_ex(be, &a, NULL, 0, out, &n_out, &opts) == DM_OK, "%s", dm_last_error());
    ck_assert_int_eq(n_out, 1);
    ck_assert_uint_eq(out[0].numel, 20);
    ck_assert_uint_eq(damage[0], 0);
    const uint32_t *words = out[0].data;
    for (uint32_t i = 0; i < 5; i++) {
        dm_philox_block b = dm_philox_at(UINT64_MAX, 100 + i, 0, 0, 3, 0);
        for (int k = 0; k < 4; k++)
            ck_assert_uint_eq(words[4 * i + k], b.w[k]);
    }
    dm_host_tensors_free(out, n_out);
    dm_backend_close(be);
}
END_TEST

START_TEST(run_rejects_bad_tensors)
{
    const dm_op_def *op = dm_op_find("encoder_forward");
    dm_backend *be;
    dm_op_attrs a;
    dm_host_tensor in[3], out[DM_OP_MAX_TENSORS];
    int n_out;
    int32_t tokens[8] = {0, 1, 2, 3, 4, 5, 6, 15};
    static float wte[16 * 8], wpe[4 * 8];

    ck_assert_msg(dm_backend_open("reference", &be) == DM_OK, "%s", dm_last_error());
    dm_op_attrs_init(&a, op);
    memset(in, 0, sizeof in);
    snprintf(in[0].name, sizeof in[0].name, "tokens");
    in[0].dtype = DM_ST_I32;
    in[0].ndim = 2;
    in[0].shape[0] = 2;
    in[0].shape[1] = 4;
    in[0].numel = 8;
    in[0].data = tokens;
    snprintf(in[1].name, sizeof in[1].name, "wte");
    in[1].dtype = DM_ST_F32;
    in[1].ndim = 2;
    in[1].shape[0] = 16;
    in[1].shape[1] = 8;
    in[1].numel = 128;
    in[1].data = wte;

    /* Missing wpe. */
    ck_assert_int_eq(dm_op_run(be, &a, in, 2, out, &n_out), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "missing input tensor wpe"));

    snprintf(in[2].name, sizeof in[2].name, "wpe");
    in[2].dtype = DM_ST_F32;
    in[2].ndim = 2;
    in[2].shape[0] = 4;
    in[2].shape[1] = 8;
    in[2].numel = 32;
    in[2].data = wpe;

    /* A token id outside [0, V). */
    tokens[7] = 99;
    ck_assert_int_eq(dm_op_run(be, &a, in, 3, out, &n_out), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "element 7 is 99, outside the valid range [0, 16)"));
    tokens[7] = 15;
    ck_assert_msg(dm_op_run(be, &a, in, 3, out, &n_out) == DM_OK, "%s", dm_last_error());
    dm_host_tensors_free(out, n_out);

    /* A shape that does not match the attributes. */
    in[2].shape[0] = 2;
    in[2].shape[1] = 16;
    ck_assert_int_eq(dm_op_run(be, &a, in, 3, out, &n_out), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "tensor wpe has shape [2, 16], expected [4, 8] (T,C)"));

    /* A wrong dtype. */
    in[2].shape[0] = 4;
    in[2].shape[1] = 8;
    in[2].dtype = DM_ST_I32;
    ck_assert_int_eq(dm_op_run(be, &a, in, 3, out, &n_out), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "tensor wpe has dtype I32, expected F32"));

    /* A name the op does not have. */
    snprintf(in[2].name, sizeof in[2].name, "wpx");
    ck_assert_int_eq(dm_op_run(be, &a, in, 3, out, &n_out), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "unknown tensor 'wpx'"));
    dm_backend_close(be);
}
END_TEST

START_TEST(cli_runs_gemm)
{
    int64_t a_shape[2] = {2, 3};
    float c[4];

    /* c = a b with a = [[1,2,3],[4,5,6]], b = [[1,0],[0,1],[1,1]]. */
    write_gemm_input(a_shape, 0);
    char args[512];
    snprintf(args, sizeof args, "op gemm --in %s --out %s --backend reference", in_path, out_path);
    ck_assert_int_eq(run_cli(args), 0);
    read_output("c", c, 4);
    ck_assert_float_eq(c[0], 4);
    ck_assert_float_eq(c[1], 5);
    ck_assert_float_eq(c[2], 10);
    ck_assert_float_eq(c[3], 11);

    /* c given with beta = 1 and alpha from --attr: c = 2 a b + c. */
    write_gemm_input(a_shape, 1);
    snprintf(args, sizeof args, "op gemm --in %s --out %s --backend reference --attr beta=1 --attr=alpha=2",
             in_path, out_path);
    ck_assert_int_eq(run_cli(args), 0);
    read_output("c", c, 4);
    ck_assert_float_eq(c[0], 18);
    ck_assert_float_eq(c[1], 30);
    ck_assert_float_eq(c[2], 50);
    ck_assert_float_eq(c[3], 62);
}
END_TEST

START_TEST(cli_rejects_malformed_input)
{
    int64_t wrong[2] = {3, 3};
    char args[512];

    write_gemm_input(wrong, 0);
    snprintf(args, sizeof args, "op gemm --in %s --out %s --backend reference", in_path, out_path);
    ck_assert_int_eq(run_cli(args), 1);
    ck_assert(stderr_contains("tensor a has shape [3, 3], expected [2, 3]"));
    ck_assert_int_ne(access(out_path, F_OK), 0);

    snprintf(args, sizeof args, "op gemm --in %s --out %s --backend reference --attr M=x", in_path, out_path);
    ck_assert_int_eq(run_cli(args), 1);
    ck_assert(stderr_contains("invalid value 'x' for attribute M"));

    snprintf(args, sizeof args, "op gemm --in %s --out %s --attr nope=1", in_path, out_path);
    ck_assert_int_eq(run_cli(args), 1);
    ck_assert(stderr_contains("unknown attribute 'nope'"));

    snprintf(args, sizeof args, "op gemmm --in %s --out %s", in_path, out_path);
    ck_assert_int_eq(run_cli(args), 1);
    ck_assert(stderr_contains("unknown op 'gemmm'"));

    snprintf(args, sizeof args, "op axpy --in %s --out %s --backend reference", in_path, out_path);
    ck_assert_int_eq(run_cli(args), 1);
    ck_assert(stderr_contains("tensor 'a' is not a tensor of op axpy"));

    /* A file that is not safetensors. */
    FILE *f = fopen(in_path, "wb");
    fputs("not a safetensors file at all", f);
    fclose(f);
    snprintf(args, sizeof args, "op gemm --in %s --out %s", in_path, out_path);
    ck_assert_int_eq(run_cli(args), 1);
    ck_assert(stderr_contains("header length"));

    snprintf(args, sizeof args, "op gemm --in %s", in_path);
    ck_assert_int_eq(run_cli(args), 1);
    ck_assert(stderr_contains("missing --out"));
}
END_TEST

START_TEST(cli_lists_every_op)
{
    const char *top = getenv("DIRMOE_TOP_BUILDDIR");
    char cmd[512], line[512];
    int found[64] = {0};

    snprintf(cmd, sizeof cmd, "%s/tools/dirmoe op --list --format markdown", top ? top : ".");
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    while (fgets(line, sizeof line, p))
        for (int i = 0; i < dm_op_count(); i++) {
            char heading[128];
            snprintf(heading, sizeof heading, "### %s\n", dm_op_at(i)->name);
            if (strcmp(line, heading) == 0)
                found[i] = 1;
        }
    ck_assert_int_eq(pclose(p), 0);
    for (int i = 0; i < dm_op_count(); i++)
        ck_assert_msg(found[i], "op %s is not listed", dm_op_at(i)->name);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("op");
    TCase *tc = tcase_create("registry");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, registry_covers_every_op);
    tcase_add_test(tc, shape_expressions);
    tcase_add_test(tc, run_philox_with_guards);
    tcase_add_test(tc, run_rejects_bad_tensors);
    tcase_add_test(tc, cli_runs_gemm);
    tcase_add_test(tc, cli_rejects_malformed_input);
    tcase_add_test(tc, cli_lists_every_op);
    suite_add_tcase(s, tc);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
