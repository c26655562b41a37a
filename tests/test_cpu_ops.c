/*
 * The cpu backend, loaded through the loader, against the reference float
 * kernels called directly, op by op, on random inputs with odd sizes.
 * Rules (the conformance rules of the project): normalised mean squared
 * error NMSE = sum (got - want)^2 / sum want^2 at most 1e-7 for forward
 * outputs and 1e-6 for gradients; integer outputs (masks, slots, counts)
 * and Philox words equal. The harness sets DIRMOE_PLUGIN_PATH to the build
 * tree.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dirmoe/loader.h"
#include "dirmoe/philox.h"
#include "dirmoe/status.h"
#include "ref_ops.h"

#include "layers_util.h"

#define NMSE_FORWARD 1e-7
#define NMSE_GRAD 1e-6

static dm_backend *be;

/* Buffers of the running test, freed in teardown. */
#define MAX_BUFFERS 64
static dm_buffer *buffers[MAX_BUFFERS];
static int n_buffers;

static void setup(void)
{
    dm_status st = dm_backend_open("cpu", &be);
    ck_assert_msg(st == DM_OK, "opening the cpu backend failed: %s", dm_last_error());
    n_buffers = 0;
}

static void teardown(void)
{
    for (int i = 0; i < n_buffers; i++)
        be->ops->free(be->ctx, buffers[i]);
    n_buffers = 0;
    dm_backend_close(be);
    be = NULL;
}

static const char *backend_error(void)
{
    return be->desc->last_error(be->ctx);
}

/* A device tensor of n elements holding a copy of host (or undefined when host is NULL). */
static dm_tensor device(const void *host, size_t n)
{
    dm_buffer *buf = NULL;
    dm_status st = be->ops->alloc(be->ctx, n ? n : 1, &buf);

    ck_assert_msg(st == DM_OK, "alloc of %zu elements failed: %s", n, backend_error());
    ck_assert_int_lt(n_buffers, MAX_BUFFERS);
    buffers[n_buffers++] = buf;
    dm_tensor t = {buf, 0};
    if (host && n) {
        st = be->ops->upload(be->ctx, t, host, n);
        ck_assert_msg(st == DM_OK, "upload failed: %s", backend_error());
    }
    return t;
}

static void download(void *dst, dm_tensor src, size_t n)
{
    dm_status st = be->ops->download(be->ctx, dst, src, n);
    ck_assert_msg(st == DM_OK, "download failed: %s", backend_error());
}

static void check_ok(dm_status st, const char *op)
{
    ck_assert_msg(st == DM_OK, "%s failed: %s", op, backend_error());
}

static float *random_floats(tl_rng *rng, size_t n, double lo, double hi)
{
    float *x = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
        x[i] = (float)tl_uniform(rng, lo, hi);
    return x;
}

static double nmse(const float *got, const float *want, size_t n)
{
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        diff += d * d;
        norm += (double)want[i] * want[i];
    }
    if (norm == 0.0)
        return diff == 0.0 ? 0.0 : INFINITY;
    return diff / norm;
}

/* Downloads n floats of t and asserts their NMSE against want is at most limit. */
static void expect_close(dm_tensor t, const float *want, size_t n, double limit, const char *what)
{
    float *got = malloc((n ? n : 1) * sizeof(float));
    download(got, t, n);
    double err = nmse(got, want, n);
    ck_assert_msg(err <= limit, "%s: NMSE %.3g exceeds %.1g (n=%zu)", what, err, limit, n);
    free(got);
}

static void expect_equal_ints(dm_tensor t, const int32_t *want, size_t n, const char *what)
{
    int32_t *got = malloc((n ? n : 1) * sizeof(int32_t));
    download(got, t, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "%s[%zu] = %d, reference %d", what, i, got[i], want[i]);
    free(got);
}

static const int odd_sizes[] = {1, 3, 17, 127};
#define N_ODD 4

/* --- memory ops ------------------------------------------------------------ */

START_TEST(memory_ops_roundtrip)
{
    for (int si = 0; si < N_ODD; si++) {
        size_t n = (size_t)odd_sizes[si] * 700; /* up to 88900: the fill's parallel path too */
        uint32_t *host = malloc(n * sizeof *host), *got = malloc(n * sizeof *got);
        for (size_t i = 0; i < n; i++)
            host[i] = (uint32_t)(i * 2654435761u);
        dm_tensor t = device(NULL, 2 * n + 3);

        /* Upload to the second half, copy it to the first (offset views of one buffer). */
        dm_tensor upper = {t.buf, n + 3};
        check_ok(be->ops->upload(be->ctx, upper, host, n), "upload");
        check_ok(be->ops->copy(be->ctx, t, upper, n), "copy");
        check_ok(be->ops->synchronize(be->ctx), "synchronize");
        download(got, t, n);
        ck_assert_msg(memcmp(got, host, n * sizeof *got) == 0, "copy of %zu elements differs", n);

        /* Fill with a float's bits and with zero; the element after the range is untouched. */
        float one = 1.0f;
        uint32_t one_bits;
        memcpy(&one_bits, &one, sizeof one_bits);
        uint32_t sentinel = 0xdeadbeefu;
        check_ok(be->ops->upload(be->ctx, (dm_tensor){t.buf, n}, &sentinel, 1), "upload sentinel");
        check_ok(be->ops->fill(be->ctx, t, one_bits, n), "fill");
        download(got, t, n + 1);
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(got[i] == one_bits, "fill: element %zu is %08x", i, got[i]);
        ck_assert_msg(got[n] == sentinel, "fill wrote past its %zu elements", n);
        check_ok(be->ops->fill(be->ctx, upper, 0, n), "fill zero");
        download(got, upper, n);
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(got[i] == 0, "fill 0: element %zu is %08x", i, got[i]);
        free(host), free(got);
        teardown();
        setup();
    }
}
END_TEST

/* --- linear algebra ------------------------------------------------------- */

START_TEST(gemm_matches_reference)
{
    tl_rng rng = {1};
    /* Odd sizes, plus one large enough to be split across threads. */
    int shapes[][3] = {{1, 1, 1}, {3, 17, 1}, {17, 3, 127}, {127, 17, 3}, {127, 127, 17}, {200, 301, 150}, {33, 400, 90}};

    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
        for (int ta = 0; ta < 2; ta++) {
            for (int tb = 0; tb < 2; tb++) {
                for (int with_beta = 0; with_beta < 2; with_beta++) {
                    int m = shapes[sh][0], n = shapes[sh][1], k = shapes[sh][2];
                    int lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;
                    size_t na = (size_t)(ta ? k : m) * lda, nb = (size_t)(tb ? n : k) * ldb;
                    size_t nc = (size_t)m * ldc;
                    float *a = random_floats(&rng, na, -1, 1), *b = random_floats(&rng, nb, -1, 1);
                    float *c = random_floats(&rng, nc, -1, 1);
                    float beta = with_beta ? 0.5f : 0.0f;
                    if (!with_beta)
                        for (size_t i = 0; i < nc; i += 7)
                            c[i] = NAN; /* beta = 0 must ignore the old contents */

                    dm_tensor da = device(a, na), db = device(b, nb), dc = device(c, nc);
                    check_ok(be->ops->gemm(be->ctx, ta, tb, m, n, k, 0.75f, da, lda, db, ldb, beta, dc, ldc), "gemm");
                    dm_ref_f_gemm(ta, tb, m, n, k, 0.75f, a, lda, b, ldb, beta, c, ldc);
                    /* Padding columns of C are untouched by both, NaN included: compare the m x n part. */
                    float *got = malloc(nc * sizeof(float));
                    download(got, dc, nc);
                    double diff = 0.0, norm = 0.0;
                    for (int i = 0; i < m; i++)
                        for (int j = 0; j < n; j++) {
                            double d = (double)got[(size_t)i * ldc + j] - c[(size_t)i * ldc + j];
                            diff += d * d;
                            norm += (double)c[(size_t)i * ldc + j] * c[(size_t)i * ldc + j];
                        }
                    ck_assert_msg(diff <= NMSE_FORWARD * norm, "gemm m=%d n=%d k=%d ta=%d tb=%d beta=%g: NMSE %.3g",
                                  m, n, k, ta, tb, beta, diff / norm);
                    free(a), free(b), free(c), free(got);
                    teardown();
                    setup();
                }
            }
        }
    }
}
END_TEST

START_TEST(vector_ops_match_reference)
{
    tl_rng rng = {2};
    size_t sizes[] = {1, 3, 17, 127, 100003};

    for (size_t si = 0; si < 5; si++) {
        size_t n = sizes[si];
        float *x = random_floats(&rng, n, -2, 2), *y = random_floats(&rng, n, -2, 2);
        dm_tensor dx = device(x, n), dy = device(y, n), dout = device(NULL, 1);

        check_ok(be->ops->axpy(be->ctx, n, -0.3f, dx, dy), "axpy");
        dm_ref_f_axpy(n, -0.3f, x, y);
        expect_close(dy, y, n, NMSE_FORWARD, "axpy");

        check_ok(be->ops->scale(be->ctx, n, 1.7f, dx), "scale");
        dm_ref_f_scale(n, 1.7f, x);
        expect_close(dx, x, n, NMSE_FORWARD, "scale");

        float want;
        check_ok(be->ops->sum_squares(be->ctx, n, dx, dout), "sum_squares");
        dm_ref_f_sum_squares(n, x, &want);
        expect_close(dout, &want, 1, NMSE_FORWARD, "sum_squares");
        free(x), free(y);
    }
}
END_TEST

/* --- layers ---------------------------------------------------------------- */

START_TEST(encoder_matches_reference)
{
    tl_rng rng = {3};

    for (int si = 0; si < N_ODD; si++) {
        int b = 2, t = odd_sizes[si], c = odd_sizes[(si + 2) % N_ODD], v = 5;
        size_t nt = (size_t)b * t, n = nt * c;
        int32_t *tok = malloc(nt * sizeof *tok);
        for (size_t i = 0; i < nt; i++)
            tok[i] = tl_int(&rng, v); /* few ids, so the scatter-add repeats rows */
        float *wte = random_floats(&rng, (size_t)v * c, -1, 1), *wpe = random_floats(&rng, (size_t)t * c, -1, 1);
        float *out = malloc(n * sizeof(float)), *dout = random_floats(&rng, n, -1, 1);
        float *dwte = random_floats(&rng, (size_t)v * c, -1, 1), *dwpe = random_floats(&rng, (size_t)t * c, -1, 1);

        dm_tensor dtok = device(tok, nt), dte = device(wte, (size_t)v * c), dpe = device(wpe, (size_t)t * c);
        dm_tensor dout_t = device(NULL, n), dg = device(dout, n);
        dm_tensor ddte = device(dwte, (size_t)v * c), ddpe = device(dwpe, (size_t)t * c);

        check_ok(be->ops->encoder_forward(be->ctx, b, t, c, dout_t, dtok, dte, dpe), "encoder_forward");
        dm_ref_f_encoder_forward(b, t, c, out, tok, wte, wpe);
        expect_close(dout_t, out, n, NMSE_FORWARD, "encoder_forward out");

        check_ok(be->ops->encoder_backward(be->ctx, b, t, c, ddte, ddpe, dg, dtok), "encoder_backward");
        dm_ref_f_encoder_backward(b, t, c, dwte, dwpe, dout, tok);
        expect_close(ddte, dwte, (size_t)v * c, NMSE_GRAD, "encoder_backward dwte");
        expect_close(ddpe, dwpe, (size_t)t * c, NMSE_GRAD, "encoder_backward dwpe");
        free(tok), free(wte), free(wpe), free(out), free(dout), free(dwte), free(dwpe);
    }
}
END_TEST

START_TEST(layernorm_matches_reference)
{
    tl_rng rng = {4};

    for (int si = 0; si < N_ODD; si++) {
        for (int ci = 0; ci < N_ODD; ci++) {
            int n = odd_sizes[si], c = odd_sizes[ci];
            size_t nc = (size_t)n * c;
            float *inp = random_floats(&rng, nc, -3, 3), *w = random_floats(&rng, c, 0.5, 1.5);
            float *bias = random_floats(&rng, c, -1, 1), *dout = random_floats(&rng, nc, -1, 1);
            float *out = malloc(nc * sizeof(float)), *mean = malloc(n * sizeof(float)), *rstd = malloc(n * sizeof(float));
            float *dinp = random_floats(&rng, nc, -1, 1), *dw = random_floats(&rng, c, -1, 1), *db = random_floats(&rng, c, -1, 1);

            dm_tensor di = device(inp, nc), dwt = device(w, c), dbi = device(bias, c), dg = device(dout, nc);
            dm_tensor dout_t = device(NULL, nc), dmean = device(NULL, n), drstd = device(NULL, n);
            dm_tensor ddi = device(dinp, nc), ddw = device(dw, c), ddb = device(db, c);

            check_ok(be->ops->layernorm_forward(be->ctx, n, c, dout_t, dmean, drstd, di, dwt, dbi), "layernorm_forward");
            dm_ref_f_layernorm_forward(n, c, out, mean, rstd, inp, w, bias);
            expect_close(dout_t, out, nc, NMSE_FORWARD, "layernorm out");
            expect_close(dmean, mean, n, NMSE_FORWARD, "layernorm mean");
            expect_close(drstd, rstd, n, NMSE_FORWARD, "layernorm rstd");

            check_ok(be->ops->layernorm_backward(be->ctx, n, c, ddi, ddw, ddb, dg, di, dwt, dmean, drstd), "layernorm_backward");
            dm_ref_f_layernorm_backward(n, c, dinp, dw, db, dout, inp, w, mean, rstd);
            expect_close(ddi, dinp, nc, NMSE_GRAD, "layernorm dinp");
            expect_close(ddw, dw, c, NMSE_GRAD, "layernorm dweight");
            expect_close(ddb, db, c, NMSE_GRAD, "layernorm dbias");
            free(inp), free(w), free(bias), free(dout), free(out), free(mean), free(rstd);
            free(dinp), free(dw), free(db);
            teardown();
            setup();
        }
    }
}
END_TEST

START_TEST(attention_matches_reference)
{
    tl_rng rng = {5};
    /* (B, T, C, NH): single tokens, odd T, T across several 64-row tiles. */
    int shapes[][4] = {{1, 1, 4, 1}, {2, 3, 6, 2}, {1, 17, 12, 3}, {2, 127, 16, 2}, {1, 130, 64, 1}, {3, 65, 24, 4}};

    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
        int b = shapes[sh][0], t = shapes[sh][1], c = shapes[sh][2], nh = shapes[sh][3];
        size_t nqkv = (size_t)b * t * 3 * c, nout = (size_t)b * t * c, nlse = (size_t)b * nh * t;
        float *qkv = random_floats(&rng, nqkv, -2, 2), *dout = random_floats(&rng, nout, -1, 1);
        float *out = malloc(nout * sizeof(float)), *lse = malloc(nlse * sizeof(float));
        float *dqkv = random_floats(&rng, nqkv, -1, 1);

        dm_tensor dq = device(qkv, nqkv), dg = device(dout, nout), dd = device(dqkv, nqkv);
        dm_tensor dout_t = device(NULL, nout), dlse = device(NULL, nlse);

        check_ok(be->ops->attention_forward(be->ctx, b, t, c, nh, dout_t, dlse, dq), "attention_forward");
        dm_ref_f_attention_forward(b, t, c, nh, out, lse, qkv);
        expect_close(dout_t, out, nout, NMSE_FORWARD, "attention out");
        expect_close(dlse, lse, nlse, NMSE_FORWARD, "attention lse");

        check_ok(be->ops->attention_backward(be->ctx, b, t, c, nh, dd, dg, dq, dout_t, dlse), "attention_backward");
        dm_ref_f_attention_backward(b, t, c, nh, dqkv, dout, qkv, out, lse);
        expect_close(dd, dqkv, nqkv, NMSE_GRAD, "attention dqkv");
        free(qkv), free(dout), free(out), free(lse), free(dqkv);
        teardown();
        setup();
    }
}
END_TEST

START_TEST(attention_backward_is_deterministic)
{
    tl_rng rng = {6};
    int b = 2, t = 150, c = 32, nh = 2;
    size_t nqkv = (size_t)b * t * 3 * c, nout = (size_t)b * t * c, nlse = (size_t)b * nh * t;
    float *qkv = random_floats(&rng, nqkv, -2, 2), *dout = random_floats(&rng, nout, -1, 1);
    float *first = malloc(nqkv * sizeof(float)), *second = malloc(nqkv * sizeof(float));
    dm_tensor dq = device(qkv, nqkv), dg = device(dout, nout), dout_t = device(NULL, nout), dlse = device(NULL, nlse);
    dm_tensor dd = device(NULL, nqkv);

    check_ok(be->ops->attention_forward(be->ctx, b, t, c, nh, dout_t, dlse, dq), "attention_forward");
    for (int run = 0; run < 2; run++) {
        check_ok(be->ops->fill(be->ctx, dd, 0, nqkv), "fill");
        check_ok(be->ops->attention_backward(be->ctx, b, t, c, nh, dd, dg, dq, dout_t, dlse), "attention_backward");
        download(run ? second : first, dd, nqkv);
    }
    ck_assert_msg(memcmp(first, second, nqkv * sizeof(float)) == 0, "two runs of attention_backward differ");
    free(qkv), free(dout), free(first), free(second);
}
END_TEST

START_TEST(gelu_and_bias_match_reference)
{
    tl_rng rng = {7};

    for (int si = 0; si < N_ODD; si++) {
        for (int ci = 0; ci < N_ODD; ci++) {
            int m = odd_sizes[si], n = odd_sizes[ci];
            size_t mn = (size_t)m * n;
            float *x = random_floats(&rng, mn, -6, 6), *dout = random_floats(&rng, mn, -1, 1);
            float *bias = random_floats(&rng, n, -1, 1), *dinp = random_floats(&rng, mn, -1, 1);
            float *out = malloc(mn * sizeof(float)), *db = random_floats(&rng, n, -1, 1);

            dm_tensor dx = device(x, mn), dg = device(dout, mn), dbias = device(bias, n);
            dm_tensor dout_t = device(NULL, mn), ddi = device(dinp, mn), ddb = device(db, n);

            check_ok(be->ops->gelu_forward(be->ctx, mn, dout_t, dx), "gelu_forward");
            dm_ref_f_gelu_forward(mn, out, x);
            expect_close(dout_t, out, mn, NMSE_FORWARD, "gelu_forward");

            check_ok(be->ops->gelu_backward(be->ctx, mn, ddi, dx, dg), "gelu_backward");
            dm_ref_f_gelu_backward(mn, dinp, x, dout);
            expect_close(ddi, dinp, mn, NMSE_GRAD, "gelu_backward");

            check_ok(be->ops->bias_backward(be->ctx, m, n, ddb, dg), "bias_backward");
            dm_ref_f_bias_backward(m, n, db, dout);
            expect_close(ddb, db, n, NMSE_GRAD, "bias_backward");

            /* Fused bias + GELU against the two reference steps; pre is updated in place. */
            check_ok(be->ops->bias_gelu_forward(be->ctx, m, n, dout_t, dx, dbias), "bias_gelu_forward");
            dm_ref_f_bias_forward(m, n, x, bias);
            dm_ref_f_gelu_forward(mn, out, x);
            expect_close(dx, x, mn, NMSE_FORWARD, "bias_gelu_forward pre");
            expect_close(dout_t, out, mn, NMSE_FORWARD, "bias_gelu_forward out");

            check_ok(be->ops->bias_forward(be->ctx, m, n, dx, dbias), "bias_forward");
            dm_ref_f_bias_forward(m, n, x, bias);
            expect_close(dx, x, mn, NMSE_FORWARD, "bias_forward");
            free(x), free(dout), free(bias), free(dinp), free(out), free(db);
            teardown();
            setup();
        }
    }
}
END_TEST

/* --- dispatch and combine ---------------------------------------------------- */

START_TEST(dispatch_and_combine_match_reference)
{
    tl_rng rng = {8};
    int capacities[] = {0, 1, 5};

    for (int si = 0; si < N_ODD; si++) {
        for (int cap = 0; cap < 3; cap++) {
            int n = odd_sizes[si], e = 5, c = 19, capacity = capacities[cap];
            size_t ne = (size_t)n * e;
            int32_t *mask = malloc(ne * sizeof *mask);
            for (size_t i = 0; i < ne; i++)
                mask[i] = tl_int(&rng, 3) == 0;
            int32_t *slot = malloc(ne * sizeof *slot), counts[5], demand[5], offsets[6];
            int32_t *tos = malloc(ne * sizeof *tos);

            dm_tensor dmask = device(mask, ne), dslot = device(NULL, ne), dcounts = device(NULL, e);
            dm_tensor ddemand = device(NULL, e), doffsets = device(NULL, e + 1), dtos = device(NULL, ne);
            check_ok(be->ops->dispatch_build(be->ctx, n, e, capacity, dmask, dslot, dcounts, ddemand, doffsets, dtos),
                     "dispatch_build");
            dm_ref_f_dispatch_build(n, e, capacity, mask, slot, counts, demand, offsets, tos);
            expect_equal_ints(dslot, slot, ne, "slot");
            expect_equal_ints(dcounts, counts, e, "counts");
            expect_equal_ints(ddemand, demand, e, "demand");
            expect_equal_ints(doffsets, offsets, e + 1, "offsets");
            int s = offsets[e];
            expect_equal_ints(dtos, tos, s, "token_of_slot");

            float *x = random_floats(&rng, (size_t)n * c, -1, 1), *xg = malloc(((size_t)s + 1) * c * sizeof(float));
            float *dxg = random_floats(&rng, (size_t)s * c, -1, 1), *dx = random_floats(&rng, (size_t)n * c, -1, 1);
            float *w = random_floats(&rng, ne, 0, 1), *y = malloc((size_t)n * c * sizeof(float));
            float *dy = random_floats(&rng, (size_t)n * c, -1, 1);
            float *dyg = malloc(((size_t)s + 1) * c * sizeof(float)), *dw = malloc(ne * sizeof(float));

            dm_tensor dxt = device(x, (size_t)n * c), dxgt = device(NULL, (size_t)s * c);
            dm_tensor ddxg = device(dxg, (size_t)s * c), ddx = device(dx, (size_t)n * c), dwt = device(w, ne);
            dm_tensor dyt = device(NULL, (size_t)n * c), ddy = device(dy, (size_t)n * c);
            dm_tensor ddyg = device(NULL, (size_t)s * c), ddw = device(NULL, ne);

            check_ok(be->ops->gather_forward(be->ctx, s, c, dxgt, dxt, dtos), "gather_forward");
            dm_ref_f_gather_forward(s, c, xg, x, tos);
            expect_close(dxgt, xg, (size_t)s * c, NMSE_FORWARD, "gather_forward");

            check_ok(be->ops->gather_backward(be->ctx, s, c, ddx, ddxg, dtos), "gather_backward");
            dm_ref_f_gather_backward(s, c, dx, dxg, tos);
            expect_close(ddx, dx, (size_t)n * c, NMSE_GRAD, "gather_backward");

            /* The gathered rows stand in for the expert outputs yg. */
            check_ok(be->ops->combine_forward(be->ctx, n, e, c, dyt, dxgt, dslot, dwt), "combine_forward");
            dm_ref_f_combine_forward(n, e, c, y, xg, slot, w);
            expect_close(dyt, y, (size_t)n * c, NMSE_FORWARD, "combine_forward");

            check_ok(be->ops->combine_backward(be->ctx, n, e, c, ddyg, ddw, ddy, dxgt, dslot, dwt), "combine_backward");
            dm_ref_f_combine_backward(n, e, c, dyg, dw, dy, xg, slot, w);
            expect_close(ddyg, dyg, (size_t)s * c, NMSE_GRAD, "combine_backward dyg");
            expect_close(ddw, dw, ne, NMSE_GRAD, "combine_backward dw");

            free(mask), free(slot), free(tos), free(x), free(xg), free(dxg), free(dx), free(w);
            free(y), free(dy), free(dyg), free(dw);
            teardown();
            setup();
        }
    }
}
END_TEST

/* --- router ---------------------------------------------------------------- */

START_TEST(philox_and_gamma_match_reference)
{
    tl_rng rng = {9};
    size_t n = 5000;
    uint32_t *words = malloc(n * 4 * sizeof *words);
    dm_tensor dwords = device(NULL, n * 4);

    check_ok(be->ops->philox(be->ctx, n, 0x1234567890abcdefULL, 77, 3, 2, DM_RNG_GAMMA, 11, dwords), "philox");
    download(words, dwords, n * 4);
    for (size_t i = 0; i < n; i++) {
        dm_philox_block blk = dm_philox_at(0x1234567890abcdefULL, 77 + (uint32_t)i, 3, 2, DM_RNG_GAMMA, 11);
        for (int j = 0; j < 4; j++)
            ck_assert_msg(words[4 * i + j] == blk.w[j], "philox word %d of element %zu differs", j, i);
    }

    /* Gamma draws over alpha in [1e-3, 1e4] (log-uniform): the same float algorithm, so equal bits. */
    float *alpha = malloc(n * sizeof(float)), *log_g = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        alpha[i] = (float)exp(tl_uniform(&rng, log(1e-3), log(1e4)));
    dm_rng_site site = {42, 1, 7, 1000};
    uint32_t fb_ref = 0, fb_cpu = 0;
    dm_tensor dalpha = device(alpha, n), dlog_g = device(NULL, n), dfb = device(&fb_cpu, 1);

    check_ok(be->ops->gamma_sample(be->ctx, n, &site, dlog_g, dalpha, dfb), "gamma_sample");
    dm_ref_f_gamma_sample(n, &site, log_g, alpha, &fb_ref);
    float *got = malloc(n * sizeof(float));
    download(got, dlog_g, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(memcmp(&got[i], &log_g[i], sizeof(float)) == 0, "gamma_sample element %zu: %g, reference %g",
                      i, got[i], log_g[i]);
    download(&fb_cpu, dfb, 1);
    ck_assert_uint_eq(fb_cpu, fb_ref);

    float *grad = malloc(n * sizeof(float));
    dm_tensor dgrad = device(NULL, n);
    check_ok(be->ops->gamma_grad(be->ctx, n, dgrad, dalpha, dlog_g), "gamma_grad");
    dm_ref_f_gamma_grad(n, grad, alpha, log_g);
    expect_close(dgrad, grad, n, NMSE_GRAD, "gamma_grad");
    free(words), free(alpha), free(log_g), free(got), free(grad);
}
END_TEST

/* Runs the DirMoE forward and backward on both backends for one configuration. */
static void check_dirmoe_route(tl_rng *rng, int n, int e, int k_max, int selection, int fixed_noise)
{
    size_t ne = (size_t)n * e, n2e = 2 * ne;
    dm_dirmoe_params p = {n, e, k_max, selection, fixed_noise, 0.7f, 1e-2f, 1e4f, {99, 2, 5, 300}};
    float *logits = random_floats(rng, n2e, -4, 4);
    /* Some concentrations at the alpha_max clamp and near alpha_min. */
    for (int t = 0; t < n; t++)
        logits[(size_t)t * 2 * e + e + (t % e)] = (t % 3 == 0) ? 2e4f : -8.0f;
    float *u = random_floats(rng, ne, 0.001, 0.999), *log_g = random_floats(rng, ne, -3, 1);
    float *zt = malloc(ne * 4), *alpha = malloc(ne * 4), *w = malloc(ne * 4);
    int32_t *mask = malloc(ne * 4);
    uint32_t fb_ref = 0, fb_cpu = 0;

    dm_tensor dl = device(logits, n2e), du = device(u, ne), dlg = device(log_g, ne);
    dm_tensor dzt = device(NULL, ne), dal = device(NULL, ne), dmask = device(NULL, ne), dw_t = device(NULL, ne);
    dm_tensor dfb = device(&fb_cpu, 1);

    check_ok(be->ops->dirmoe_route_forward(be->ctx, &p, dl, du, dlg, dzt, dal, dmask, dw_t, dfb), "dirmoe_route_forward");
    dm_ref_f_dirmoe_route_forward(&p, logits, u, log_g, zt, alpha, mask, w, &fb_ref);
    expect_equal_ints(dmask, mask, ne, "dirmoe mask");
    expect_close(du, u, ne, NMSE_FORWARD, "dirmoe u");
    expect_close(dlg, log_g, ne, NMSE_FORWARD, "dirmoe log_g");
    expect_close(dzt, zt, ne, NMSE_FORWARD, "dirmoe zt");
    expect_close(dal, alpha, ne, NMSE_FORWARD, "dirmoe alpha");
    expect_close(dw_t, w, ne, NMSE_FORWARD, "dirmoe w");
    download(&fb_cpu, dfb, 1);
    ck_assert_uint_eq(fb_cpu, fb_ref);

    float *dw = random_floats(rng, ne, -1, 1), *dlogits = random_floats(rng, n2e, -1, 1);
    dm_tensor ddw = device(dw, ne), ddl = device(dlogits, n2e);
    check_ok(be->ops->dirmoe_route_backward(be->ctx, &p, ddl, ddw, dl, dzt, dal, dlg, dmask, dw_t),
             "dirmoe_route_backward");
    dm_ref_f_dirmoe_route_backward(&p, dlogits, dw, logits, zt, alpha, log_g, mask, w);
    expect_close(ddl, dlogits, n2e, NMSE_GRAD, "dirmoe dlogits");

    check_ok(be->ops->dirmoe_route_eval(be->ctx, &p, dl, dmask, dw_t), "dirmoe_route_eval");
    dm_ref_f_dirmoe_route_eval(&p, logits, mask, w);
    expect_equal_ints(dmask, mask, ne, "dirmoe eval mask");
    expect_close(dw_t, w, ne, NMSE_FORWARD, "dirmoe eval w");
    free(logits), free(u), free(log_g), free(zt), free(alpha), free(w), free(mask), free(dw), free(dlogits);
}

START_TEST(dirmoe_route_matches_reference)
{
    tl_rng rng = {10};
    int experts[] = {1, 3, 8, 17};

    for (int si = 0; si < N_ODD; si++) {
        for (int ei = 0; ei < 4; ei++) {
            int e = experts[ei];
            int k_max = e > 2 ? e - 2 : e;
            for (int sel = 0; sel < 2; sel++) {
                for (int fixed = 0; fixed < 2; fixed++) {
                    check_dirmoe_route(&rng, odd_sizes[si], e, k_max, sel, fixed);
                    teardown();
                    setup();
                }
            }
        }
    }
}
END_TEST

START_TEST(dirmoe_reg_matches_reference)
{
    tl_rng rng = {11};
    int experts[] = {1, 3, 8};

    for (int si = 0; si < N_ODD; si++) {
        for (int ei = 0; ei < 3; ei++) {
            for (int mode = 0; mode < 2; mode++) {
                int n = odd_sizes[si], e = experts[ei];
                size_t n2e = 2 * (size_t)n * e;
                float *logits = random_floats(&rng, n2e, -5, 5);
                logits[0] = -900.0f; /* pi underflows in double: the log-mean path */
                if (n2e > 1)
                    logits[n2e - 1] = 3e4f; /* alpha at the clamp */
                double p0 = 0.2354;
                dm_dirmoe_reg_params p = {n, e, mode, 1e-2f, 1e4f, log(p0), log1p(-p0), 0.7, 2.0,
                                          0.3, 0.05, 0.8, -0.2};
                float stats[DM_REG_NSTATS], *dlogits = random_floats(&rng, n2e, -1, 1);
                dm_tensor dl = device(logits, n2e), dstats = device(NULL, DM_REG_NSTATS), ddl = device(dlogits, n2e);

                check_ok(be->ops->dirmoe_reg_forward(be->ctx, &p, dl, dstats), "dirmoe_reg_forward");
                dm_ref_f_dirmoe_reg_forward(&p, logits, stats);
                for (int i = 0; i < DM_REG_NSTATS; i++) {
                    dm_tensor one = {dstats.buf, (size_t)i};
                    expect_close(one, &stats[i], 1, NMSE_FORWARD, "dirmoe_reg stat");
                }

                check_ok(be->ops->dirmoe_reg_backward(be->ctx, &p, dl, ddl), "dirmoe_reg_backward");
                dm_ref_f_dirmoe_reg_backward(&p, logits, dlogits);
                expect_close(ddl, dlogits, n2e, NMSE_GRAD, "dirmoe_reg dlogits");
                free(logits), free(dlogits);
                teardown();
                setup();
            }
        }
    }
}
END_TEST

START_TEST(topk_and_balance_match_reference)
{
    tl_rng rng = {12};

    for (int si = 0; si < N_ODD; si++) {
        for (int renorm = 0; renorm < 2; renorm++) {
            int n = odd_sizes[si], e = 7, k = renorm ? 3 : 1;
            size_t ne = (size_t)n * e;
            dm_topk_params p = {n, e, k, renorm};
            float *logits = random_floats(&rng, ne, -3, 3), *probs = malloc(ne * 4), *w = malloc(ne * 4);
            int32_t *mask = malloc(ne * 4);
            dm_tensor dl = device(logits, ne), dp = device(NULL, ne), dm = device(NULL, ne), dw_t = device(NULL, ne);

            check_ok(be->ops->topk_route_forward(be->ctx, &p, dl, dp, dm, dw_t), "topk_route_forward");
            dm_ref_f_topk_route_forward(&p, logits, probs, mask, w);
            expect_equal_ints(dm, mask, ne, "topk mask");
            expect_close(dp, probs, ne, NMSE_FORWARD, "topk probs");
            expect_close(dw_t, w, ne, NMSE_FORWARD, "topk w");

            float *dw = random_floats(&rng, ne, -1, 1), *dlogits = random_floats(&rng, ne, -1, 1);
            dm_tensor ddw = device(dw, ne), ddl = device(dlogits, ne);
            check_ok(be->ops->topk_route_backward(be->ctx, &p, ddl, ddw, dp, dm, dw_t), "topk_route_backward");
            dm_ref_f_topk_route_backward(&p, dlogits, dw, probs, mask, w);
            expect_close(ddl, dlogits, ne, NMSE_GRAD, "topk dlogits");

            /* Balance and z-loss with the logits read at stride E. */
            int32_t demand[7];
            for (int j = 0; j < e; j++)
                demand[j] = tl_int(&rng, n * k + 1);
            dm_balance_params bp = {n, e, k, e, 0.01, 0.001};
            float stats[DM_BAL_NSTATS];
            dm_tensor dd = device(demand, e), dstats = device(NULL, DM_BAL_NSTATS);
            check_ok(be->ops->balance_forward(be->ctx, &bp, dl, dp, dd, dstats), "balance_forward");
            dm_ref_f_balance_forward(&bp, logits, probs, demand, stats);
            expect_close(dstats, stats, DM_BAL_NSTATS, NMSE_FORWARD, "balance stats");
            check_ok(be->ops->balance_backward(be->ctx, &bp, dl, dp, dd, ddl), "balance_backward");
            dm_ref_f_balance_backward(&bp, logits, probs, demand, dlogits);
            expect_close(ddl, dlogits, ne, NMSE_GRAD, "balance dlogits");
            free(logits), free(probs), free(w), free(mask), free(dw), free(dlogits);
            teardown();
            setup();
        }
    }
}
END_TEST

/* --- losses and optimizer ---------------------------------------------------- */

START_TEST(xent_and_adamw_match_reference)
{
    tl_rng rng = {13};

    for (int si = 0; si < N_ODD; si++) {
        for (int vi = 0; vi < N_ODD; vi++) {
            int n = odd_sizes[si], v = odd_sizes[vi];
            size_t nv = (size_t)n * v;
            float *logits = random_floats(&rng, nv, -8, 8), *probs = malloc(nv * 4), *losses = malloc(n * 4);
            int32_t *targets = malloc(n * 4);
            for (int i = 0; i < n; i++)
                targets[i] = tl_int(&rng, v);
            dm_tensor dl = device(logits, nv), dp = device(NULL, nv), dloss = device(NULL, n), dt = device(targets, n);

            check_ok(be->ops->xent_forward(be->ctx, n, v, dloss, dp, dl, dt), "xent_forward");
            dm_ref_f_xent_forward(n, v, losses, probs, logits, targets);
            expect_close(dloss, losses, n, NMSE_FORWARD, "xent losses");
            expect_close(dp, probs, nv, NMSE_FORWARD, "xent probs");

            /* In place, as the core calls it. */
            check_ok(be->ops->xent_backward(be->ctx, n, v, 0.25f, dp, dp, dt), "xent_backward");
            dm_ref_f_xent_backward(n, v, 0.25f, probs, probs, targets);
            expect_close(dp, probs, nv, NMSE_GRAD, "xent dlogits");
            free(logits), free(probs), free(losses), free(targets);
            teardown();
            setup();
        }
    }

    size_t sizes[] = {1, 3, 17, 127, 70001};
    for (int si = 0; si < 5; si++) {
        size_t n = sizes[si];
        float *params = random_floats(&rng, n, -1, 1), *grads = random_floats(&rng, n, -1, 1);
        float *m = random_floats(&rng, n, -0.1, 0.1), *v = random_floats(&rng, n, 0, 0.01);
        dm_adamw_params p = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7};
        dm_tensor dpar = device(params, n), dg = device(grads, n), dm = device(m, n), dv = device(v, n);

        check_ok(be->ops->adamw(be->ctx, n, &p, dpar, dg, dm, dv), "adamw");
        dm_ref_f_adamw(n, &p, params, grads, m, v);
        expect_close(dpar, params, n, NMSE_FORWARD, "adamw params");
        expect_close(dm, m, n, NMSE_FORWARD, "adamw m");
        expect_close(dv, v, n, NMSE_FORWARD, "adamw v");
        free(params), free(grads), free(m), free(v);
    }
}
END_TEST

START_TEST(bad_arguments_are_rejected)
{
    dm_tensor t = device(NULL, 16);
    ck_assert_int_eq(be->ops->gemm(be->ctx, 0, 0, -1, 2, 2, 1.0f, t, 2, t, 2, 0.0f, t, 2), DM_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(backend_error(), "gemm"));
    ck_assert_int_eq(be->ops->attention_forward(be->ctx, 1, 1, 6, 4, t, t, t), DM_ERR_INVALID);
    float host[7] = {0};
    ck_assert_int_eq(be->ops->upload(be->ctx, (dm_tensor){t.buf, 10}, host, 7), DM_ERR_INVALID);
    int32_t bad_target = 9;
    dm_tensor tg = device(&bad_target, 1);
    ck_assert_int_eq(be->ops->xent_forward(be->ctx, 1, 4, t, t, t, tg), DM_ERR_INVALID);
}
END_TEST

static Suite *cpu_suite(void)
{
    Suite *s = suite_create("cpu_ops");
    TCase *tc = tcase_create("ops");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, memory_ops_roundtrip);
    tcase_add_test(tc, gemm_matches_reference);
    tcase_add_test(tc, vector_ops_match_reference);
    tcase_add_test(tc, encoder_matches_reference);
    tcase_add_test(tc, layernorm_matches_reference);
    tcase_add_test(tc, attention_matches_reference);
    tcase_add_test(tc, attention_backward_is_deterministic);
    tcase_add_test(tc, gelu_and_bias_match_reference);
    tcase_add_test(tc, dispatch_and_combine_match_reference);
    tcase_add_test(tc, philox_and_gamma_match_reference);
    tcase_add_test(tc, dirmoe_route_matches_reference);
    tcase_add_test(tc, dirmoe_reg_matches_reference);
    tcase_add_test(tc, topk_and_balance_match_reference);
    tcase_add_test(tc, xent_and_adamw_match_reference);
    tcase_add_test(tc, bad_arguments_are_rejected);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(cpu_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
