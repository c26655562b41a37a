/*
 * OpenCL backend: every op against the reference float kernels
 * (dm_ref_f_*) on odd sizes, the program cache, and device-selection errors.
 *
 * The plugin is opened through the loader (DIRMOE_PLUGIN_PATH points at the
 * build tree). XDG_CACHE_HOME is set to a fresh temporary directory first,
 * so the program cache of the user is never touched and the first open is a
 * cache miss. Tolerances: NMSE <= 1e-7 for forward values, 1e-6 for
 * gradients, integer outputs and Philox words identical.
 */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dirmoe/dirmoe.h"
#include "dirmoe/philox.h"
#include "dm_math.h"
#include "ref_ops.h"

#define NMSE_FWD 1e-7
#define NMSE_GRAD 1e-6

static const int sizes[] = {1, 3, 17, 127};
#define N_SIZES ((int)(sizeof sizes / sizeof sizes[0]))

static dm_backend *be;
static char temp_root[256];
static char cache_root[300];

/* ------------------------------------------------------------------------ */
/* Log capture: counts the program-cache messages of the plugin.            */

static int cache_hits, cache_misses, cache_corrupt;

static void capture_log(dm_log_level level, const char *component, const char *message, void *user)
{
    (void)level;
    (void)user;
    if (strcmp(component, "opencl") != 0)
        return;
    if (strstr(message, "program cache hit"))
        cache_hits++;
    if (strstr(message, "program cache miss"))
        cache_misses++;
    if (strstr(message, "corrupt") || strstr(message, "bad header"))
        cache_corrupt++;
}

static void open_backend(void)
{
    dm_status st = dm_backend_open("opencl", &be);
    ck_assert_msg(st == DM_OK, "opening the opencl backend failed: %s", dm_last_error());
}

/* Points XDG_CACHE_HOME at a fresh directory under the process's temporary root.
 * PoCL reads XDG_CACHE_HOME once per process for its compiler cache. The root must
 * therefore outlive every backend of the process, and main() removes it at the end. */
static void setup_cache_dir(void)
{
    static int serial;

    snprintf(cache_root, sizeof cache_root, "%s/run%d", temp_root, serial++);
    ck_assert_int_eq(mkdir(cache_root, 0700), 0);
    setenv("XDG_CACHE_HOME", cache_root, 1);
    dm_log_set_hook(capture_log, NULL);
    dm_log_set_level(DM_LOG_DEBUG);
}

static void ops_setup(void)
{
    setup_cache_dir();
    open_backend();
}

static void ops_teardown(void)
{
    dm_backend_close(be);
    be = NULL;
}

/* ------------------------------------------------------------------------ */
/* Device tensors and comparisons                                            */

static unsigned long long lcg_state = 12345;

static float frand(float lo, float hi)
{
    lcg_state = lcg_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (hi - lo) * (float)((lcg_state >> 40) & 0xFFFFFF) / 16777216.0f;
}

static float *rand_floats(size_t n, float lo, float hi)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = frand(lo, hi);
    return x;
}

/* A device tensor at element offset 5 of its buffer, so offsets are exercised everywhere. */
#define PAD 5

static dm_tensor dev_new(size_t n)
{
    dm_buffer *buf;
    ck_assert_int_eq(be->ops->alloc(be->ctx, n + PAD, &buf), DM_OK);
    dm_tensor t = {buf, PAD};
    return t;
}

static dm_tensor dev_from(const void *host, size_t n)
{
    dm_tensor t = dev_new(n);
    ck_assert_msg(be->ops->upload(be->ctx, t, host, n) == DM_OK, "upload: %s", be->desc->last_error(be->ctx));
    return t;
}

static void dev_get(void *host, dm_tensor t, size_t n)
{
    ck_assert_msg(be->ops->download(be->ctx, host, t, n) == DM_OK, "download: %s",
                  be->desc->last_error(be->ctx));
}

static void dev_free(dm_tensor t)
{
    be->ops->free(be->ctx, t.buf);
}

static double nmse(const float *got, const float *want, size_t n)
{
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - (double)want[i];
        diff += d * d;
        norm += (double)want[i] * want[i];
    }
    if (norm == 0.0)
        return diff;
    return diff / norm;
}

/* Downloads a float tensor and checks it against want. */
static void expect_close(const char *what, dm_tensor t, const float *want, size_t n, double tol)
{
    float *got = malloc((n ? n : 1) * sizeof *got);
    dev_get(got, t, n);
    double e = nmse(got, want, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(isfinite(got[i]) == isfinite(want[i]), "%s[%zu]: got %g, want %g", what, i, got[i], want[i]);
    ck_assert_msg(e <= tol, "%s: NMSE %.3g > %.1g (n=%zu)", what, e, tol, n);
    free(got);
}

static void expect_equal_ints(const char *what, dm_tensor t, const int32_t *want, size_t n)
{
    int32_t *got = malloc((n ? n : 1) * sizeof *got);
    dev_get(got, t, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "%s[%zu]: got %d, want %d", what, i, got[i], want[i]);
    free(got);
}

#define OK(call) ck_assert_msg((call) == DM_OK, "%s: %s", #call, be->desc->last_error(be->ctx))

/* ------------------------------------------------------------------------ */
/* Memory and linear algebra                                                 */

START_TEST(memory_ops)
{
    for (int si = 0; si < N_SIZES; si++) {
        size_t n = (size_t)sizes[si];
        float *x = rand_floats(n, -1, 1);
        dm_tensor a = dev_from(x, n), b = dev_new(n);
        float want_fill[127];

        OK(be->ops->copy(be->ctx, b, a, n));
        expect_close("copy", b, x, n, 0.0);
        float v = 2.5f;
        uint32_t bits;
        memcpy(&bits, &v, 4);
        OK(be->ops->fill(be->ctx, b, bits, n));
        for (size_t i = 0; i < n; i++)
            want_fill[i] = 2.5f;
        expect_close("fill", b, want_fill, n, 0.0);
        dev_free(a);
        dev_free(b);
        free(x);
    }
}
END_TEST

START_TEST(gemm_all_transposes)
{
    const int dims[][3] = {{1, 1, 1}, {3, 17, 5}, {17, 3, 127}, {127, 17, 3}, {4, 5, 0}};

    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        int m = dims[d][0], n = dims[d][1], k = dims[d][2];
        for (int ta = 0; ta < 2; ta++) {
            for (int tb = 0; tb < 2; tb++) {
                for (int bi = 0; bi < 2; bi++) {
                    float beta = bi ? 0.5f : 0.0f;
                    int lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;
                    size_t na = (size_t)(ta ? k : m) * lda + 1, nb = (size_t)(tb ? n : k) * ldb + 1;
                    size_t nc = (size_t)m * ldc;
                    float *a = rand_floats(na, -1, 1), *b = rand_floats(nb, -1, 1);
                    float *c = rand_floats(nc, -1, 1);
                    if (!bi)
                        c[0] = NAN; /* beta = 0 must not read C */
                    dm_tensor da = dev_from(a, na), db = dev_from(b, nb), dc = dev_from(c, nc);

                    dm_ref_f_gemm(ta, tb, m, n, k, 0.75f, a, lda, b, ldb, beta, c, ldc);
                    OK(be->ops->gemm(be->ctx, ta, tb, m, n, k, 0.75f, da, lda, db, ldb, beta, dc, ldc));
                    for (int i = 0; i < m; i++) /* columns past n are not written by either */
                        for (int j = n; j < ldc; j++)
                            c[(size_t)i * ldc + j] = c[(size_t)i * ldc + j];
                    expect_close("gemm", dc, c, nc, NMSE_FWD);
                    dev_free(da);
                    dev_free(db);
                    dev_free(dc);
                    free(a);
                    free(b);
                    free(c);
                }
            }
        }
    }
}
END_TEST

START_TEST(vector_ops)
{
    const size_t lens[] = {1, 3, 17, 127, 100003};

    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        size_t n = lens[li];
        float *x = rand_floats(n, -2, 2), *y = rand_floats(n, -2, 2);
        dm_tensor dx = dev_from(x, n), dy = dev_from(y, n), dout = dev_new(1);
        float out;

        dm_ref_f_axpy(n, 0.3f, x, y);
        OK(be->ops->axpy(be->ctx, n, 0.3f, dx, dy));
        expect_close("axpy", dy, y, n, NMSE_FWD);

        dm_ref_f_scale(n, -1.5f, x);
        OK(be->ops->scale(be->ctx, n, -1.5f, dx));
        expect_close("scale", dx, x, n, NMSE_FWD);

        dm_ref_f_sum_squares(n, x, &out);
        OK(be->ops->sum_squares(be->ctx, n, dx, dout));
        expect_close("sum_squares", dout, &out, 1, 1e-12);

        dev_free(dx);
        dev_free(dy);
        dev_free(dout);
        free(x);
        free(y);
    }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Layers                                                                    */

START_TEST(encoder_and_layernorm)
{
    for (int si = 0; si < N_SIZES; si++) {
        int b = 2, t = sizes[si] > 17 ? 17 : sizes[si], c = sizes[si], v = 7;
        size_t n = (size_t)b * t;
        int32_t *tok = malloc(n * sizeof *tok);
        for (size_t i = 0; i < n; i++)
            tok[i] = (int32_t)(i * 3 % v);
        float *wte = rand_floats((size_t)v * c, -1, 1), *wpe = rand_floats((size_t)t * c, -1, 1);
        float *out = malloc(n * c * sizeof *out);
        dm_tensor dtok = dev_from(tok, n), dwte = dev_from(wte, (size_t)v * c), dwpe = dev_from(wpe, (size_t)t * c);
        dm_tensor dout = dev_new(n * c);

        dm_ref_f_encoder_forward(b, t, c, out, tok, wte, wpe);
        OK(be->ops->encoder_forward(be->ctx, b, t, c, dout, dtok, dwte, dwpe));
        expect_close("encoder_forward", dout, out, n * c, NMSE_FWD);

        float *g = rand_floats(n * c, -1, 1);
        dm_tensor dg = dev_from(g, n * c);
        dm_ref_f_encoder_backward(b, t, c, wte, wpe, g, tok);
        OK(be->ops->encoder_backward(be->ctx, b, t, c, dwte, dwpe, dg, dtok));
        expect_close("encoder_backward dwte", dwte, wte, (size_t)v * c, NMSE_GRAD);
        expect_close("encoder_backward dwpe", dwpe, wpe, (size_t)t * c, NMSE_GRAD);

        /* layer norm over the (n, c) rows of out */
        float *w = rand_floats(c, 0.5f, 1.5f), *bias = rand_floats(c, -0.5f, 0.5f);
        float *y = malloc(n * c * sizeof *y), *mean = malloc(n * sizeof *mean), *rstd = malloc(n * sizeof *rstd);
        dm_tensor dw = dev_from(w, c), dbias = dev_from(bias, c), dy = dev_new(n * c);
        dm_tensor dmean = dev_new(n), drstd = dev_new(n);
        dm_ref_f_layernorm_forward((int)n, c, y, mean, rstd, out, w, bias);
        OK(be->ops->layernorm_forward(be->ctx, (int)n, c, dy, dmean, drstd, dout, dw, dbias));
        expect_close("layernorm_forward out", dy, y, n * c, NMSE_FWD);
        expect_close("layernorm_forward mean", dmean, mean, n, NMSE_FWD);
        expect_close("layernorm_forward rstd", drstd, rstd, n, NMSE_FWD);

        float *dinp = rand_floats(n * c, -1, 1), *dwt = rand_floats(c, -1, 1), *dbs = rand_floats(c, -1, 1);
        dm_tensor ddinp = dev_from(dinp, n * c), ddw = dev_from(dwt, c), ddb = dev_from(dbs, c);
        dm_ref_f_layernorm_backward((int)n, c, dinp, dwt, dbs, g, out, w, mean, rstd);
        OK(be->ops->layernorm_backward(be->ctx, (int)n, c, ddinp, ddw, ddb, dg, dout, dw, dmean, drstd));
        expect_close("layernorm_backward dinp", ddinp, dinp, n * c, NMSE_GRAD);
        expect_close("layernorm_backward dweight", ddw, dwt, c, NMSE_GRAD);
        expect_close("layernorm_backward dbias", ddb, dbs, c, NMSE_GRAD);

        dm_tensor all[] = {dtok, dwte, dwpe, dout, dg, dw, dbias, dy, dmean, drstd, ddinp, ddw, ddb};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            dev_free(all[i]);
        free(tok); free(wte); free(wpe); free(out); free(g); free(w); free(bias); free(y);
        free(mean); free(rstd); free(dinp); free(dwt); free(dbs);
    }
}
END_TEST

START_TEST(attention)
{
    const int shapes[][3] = {{1, 1, 1}, {3, 6, 3}, {17, 8, 2}, {2, 12, 4}}; /* T, C, NH */

    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int b = 2, t = shapes[s][0], c = shapes[s][1], nh = shapes[s][2];
        size_t nqkv = (size_t)b * t * 3 * c, nout = (size_t)b * t * c, nlse = (size_t)b * nh * t;
        float *qkv = rand_floats(nqkv, -1, 1), *out = malloc(nout * 4), *lse = malloc(nlse * 4);
        dm_tensor dqkv_in = dev_from(qkv, nqkv), dout = dev_new(nout), dlse = dev_new(nlse);

        dm_ref_f_attention_forward(b, t, c, nh, out, lse, qkv);
        OK(be->ops->attention_forward(be->ctx, b, t, c, nh, dout, dlse, dqkv_in));
        expect_close("attention_forward out", dout, out, nout, NMSE_FWD);
        expect_close("attention_forward lse", dlse, lse, nlse, NMSE_FWD);

        float *g = rand_floats(nout, -1, 1), *dqkv = rand_floats(nqkv, -1, 1);
        dm_tensor dg = dev_from(g, nout), ddqkv = dev_from(dqkv, nqkv);
        dm_ref_f_attention_backward(b, t, c, nh, dqkv, g, qkv, out, lse);
        OK(be->ops->attention_backward(be->ctx, b, t, c, nh, ddqkv, dg, dqkv_in, dout, dlse));
        expect_close("attention_backward", ddqkv, dqkv, nqkv, NMSE_GRAD);

        dev_free(dqkv_in); dev_free(dout); dev_free(dlse); dev_free(dg); dev_free(ddqkv);
        free(qkv); free(out); free(lse); free(g); free(dqkv);
    }
}
END_TEST

START_TEST(gelu_and_bias)
{
    for (int si = 0; si < N_SIZES; si++) {
        int m = sizes[si], n = sizes[(si + 1) % N_SIZES];
        size_t mn = (size_t)m * n;
        float *x = rand_floats(mn, -4, 4), *y = malloc(mn * 4), *bias = rand_floats(n, -1, 1);
        float *g = rand_floats(mn, -1, 1), *dx = rand_floats(mn, -1, 1), *dbias = rand_floats(n, -1, 1);
        dm_tensor dxin = dev_from(x, mn), dy = dev_new(mn), dbi = dev_from(bias, n);
        dm_tensor dg = dev_from(g, mn), ddx = dev_from(dx, mn), ddb = dev_from(dbias, n);

        dm_ref_f_gelu_forward(mn, y, x);
        OK(be->ops->gelu_forward(be->ctx, mn, dy, dxin));
        expect_close("gelu_forward", dy, y, mn, NMSE_FWD);

        dm_ref_f_gelu_backward(mn, dx, x, g);
        OK(be->ops->gelu_backward(be->ctx, mn, ddx, dxin, dg));
        expect_close("gelu_backward", ddx, dx, mn, NMSE_GRAD);

        dm_ref_f_bias_backward(m, n, dbias, g);
        OK(be->ops->bias_backward(be->ctx, m, n, ddb, dg));
        expect_close("bias_backward", ddb, dbias, n, NMSE_GRAD);

        /* fused bias + GELU against bias_forward then gelu_forward */
        float *pre = malloc(mn * 4);
        memcpy(pre, x, mn * 4);
        dm_ref_f_bias_forward(m, n, pre, bias);
        dm_ref_f_gelu_forward(mn, y, pre);
        OK(be->ops->bias_gelu_forward(be->ctx, m, n, dy, dxin, dbi));
        expect_close("bias_gelu_forward pre", dxin, pre, mn, NMSE_FWD);
        expect_close("bias_gelu_forward out", dy, y, mn, NMSE_FWD);

        OK(be->ops->bias_forward(be->ctx, m, n, dxin, dbi));
        dm_ref_f_bias_forward(m, n, pre, bias);
        expect_close("bias_forward", dxin, pre, mn, NMSE_FWD);

        dev_free(dxin); dev_free(dy); dev_free(dbi); dev_free(dg); dev_free(ddx); dev_free(ddb);
        free(x); free(y); free(bias); free(g); free(dx); free(dbias); free(pre);
    }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Dispatch and combine                                                      */

START_TEST(dispatch_gather_combine)
{
    for (int si = 0; si < N_SIZES; si++) {
        for (int capacity = 0; capacity <= 2; capacity += 2) {
            int n = sizes[si], e = 5, c = 3;
            size_t ne = (size_t)n * e;
            int32_t *mask = malloc(ne * 4), *slot = malloc(ne * 4), *tos = malloc(ne * 4);
            int32_t counts[5], demand[5], offsets[6];
            for (size_t i = 0; i < ne; i++)
                mask[i] = frand(0, 1) < 0.4f;
            dm_tensor dmask = dev_from(mask, ne), dslot = dev_new(ne), dtos = dev_new(ne);
            dm_tensor dcounts = dev_new(e), ddemand = dev_new(e), doffsets = dev_new(e + 1);

            dm_ref_f_dispatch_build(n, e, capacity, mask, slot, counts, demand, offsets, tos);
            OK(be->ops->dispatch_build(be->ctx, n, e, capacity, dmask, dslot, dcounts, ddemand, doffsets, dtos));
            expect_equal_ints("dispatch slot", dslot, slot, ne);
            expect_equal_ints("dispatch counts", dcounts, counts, e);
            expect_equal_ints("dispatch demand", ddemand, demand, e);
            expect_equal_ints("dispatch offsets", doffsets, offsets, e + 1);
            expect_equal_ints("dispatch token_of_slot", dtos, tos, ne);

            int s = offsets[e];
            float *x = rand_floats((size_t)n * c, -1, 1), *xg = malloc((ne + 1) * c * 4);
            dm_tensor dx = dev_from(x, (size_t)n * c), dxg = dev_new((ne + 1) * c);
            dm_ref_f_gather_forward(s, c, xg, x, tos);
            OK(be->ops->gather_forward(be->ctx, s, c, dxg, dx, dtos));
            expect_close("gather_forward", dxg, xg, (size_t)s * c, NMSE_FWD);

            float *dxh = rand_floats((size_t)n * c, -1, 1);
            dm_tensor ddx = dev_from(dxh, (size_t)n * c);
            dm_ref_f_gather_backward(s, c, dxh, xg, tos);
            OK(be->ops->gather_backward(be->ctx, s, c, ddx, dxg, dtos));
            expect_close("gather_backward", ddx, dxh, (size_t)n * c, NMSE_GRAD);

            float *w = rand_floats(ne, 0, 1), *y = malloc((size_t)n * c * 4);
            dm_tensor dw = dev_from(w, ne), dy = dev_new((size_t)n * c);
            dm_ref_f_combine_forward(n, e, c, y, xg, slot, w);
            OK(be->ops->combine_forward(be->ctx, n, e, c, dy, dxg, dslot, dw));
            expect_close("combine_forward", dy, y, (size_t)n * c, NMSE_FWD);

            float *gy = rand_floats((size_t)n * c, -1, 1), *dyg = calloc((ne + 1) * c, 4), *dwh = malloc(ne * 4);
            dm_tensor dgy = dev_from(gy, (size_t)n * c), ddyg = dev_from(dyg, (ne + 1) * c), ddw = dev_new(ne);
            dm_ref_f_combine_backward(n, e, c, dyg, dwh, gy, xg, slot, w);
            OK(be->ops->combine_backward(be->ctx, n, e, c, ddyg, ddw, dgy, dxg, dslot, dw));
            expect_close("combine_backward dyg", ddyg, dyg, (size_t)s * c, NMSE_GRAD);
            expect_close("combine_backward dw", ddw, dwh, ne, NMSE_GRAD);

            dm_tensor all[] = {dmask, dslot, dtos, dcounts, ddemand, doffsets, dx, dxg, ddx, dw, dy, dgy, ddyg, ddw};
            for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
                dev_free(all[i]);
            free(mask); free(slot); free(tos); free(x); free(xg); free(dxh); free(w); free(y);
            free(gy); free(dyg); free(dwh);
        }
    }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Router                                                                    */

START_TEST(philox_words_match)
{
    size_t n = 127;
    uint32_t got[127 * 4];
    dm_tensor d = dev_new(4 * n);

    OK(be->ops->philox(be->ctx, n, 0x123456789abcdefULL, 1000, 3, 2, DM_RNG_GAMMA, 77, d));
    dev_get(got, d, 4 * n);
    for (size_t i = 0; i < n; i++) {
        dm_philox_block blk = dm_philox_at(0x123456789abcdefULL, 1000 + (uint32_t)i, 3, 2, DM_RNG_GAMMA, 77);
        for (int w = 0; w < 4; w++)
            ck_assert_msg(got[4 * i + w] == blk.w[w], "philox element %zu word %d: got %08x, want %08x", i, w,
                          got[4 * i + w], blk.w[w]);
    }
    dev_free(d);
}
END_TEST

START_TEST(gamma_sample_and_grad)
{
    size_t n = 2000;
    float *alpha = malloc(n * 4), *lg = malloc(n * 4), *grad = malloc(n * 4);
    uint32_t fb = 0, zero = 0;
    dm_rng_site rng = {42, 1, 9, 100};

    for (size_t i = 0; i < n; i++)
        alpha[i] = expf(frand(logf(1e-3f), logf(1e4f)));
    dm_tensor da = dev_from(alpha, n), dlg = dev_new(n), dfb = dev_from(&zero, 1), dgrad = dev_new(n);

    dm_ref_f_gamma_sample(n, &rng, lg, alpha, &fb);
    OK(be->ops->gamma_sample(be->ctx, n, &rng, dlg, da, dfb));
    expect_close("gamma_sample log_g", dlg, lg, n, NMSE_FWD);
    uint32_t got_fb;
    dev_get(&got_fb, dfb, 1);
    ck_assert_uint_eq(got_fb, fb);

    /* The gradient on the reference's samples, so both see identical inputs. */
    OK(be->ops->upload(be->ctx, dlg, lg, n));
    dm_ref_f_gamma_grad(n, grad, alpha, lg);
    OK(be->ops->gamma_grad(be->ctx, n, dgrad, da, dlg));
    expect_close("gamma_grad", dgrad, grad, n, NMSE_GRAD);

    dev_free(da); dev_free(dlg); dev_free(dfb); dev_free(dgrad);
    free(alpha); free(lg); free(grad);
}
END_TEST

/* Runs DirMoE forward, backward and evaluation on both backends and compares them.
 * The random logits of these sizes put no s + l within 1e-5 of 0, so every mask entry
 * must agree (dirmoe conformance covers the margin rule). */
static void check_dirmoe(int n, int e, int k_max, int soft, int fixed)
{
    dm_dirmoe_params p = {n, e, k_max, soft, fixed, 0.7f, 1e-2f, 1e4f, {7, 2, 11, 300}};
    size_t ne = (size_t)n * e;
    float *logits = rand_floats(2 * ne, -3, 3);
    float *u = rand_floats(ne, 0.01f, 0.99f), *lg = rand_floats(ne, -3, 1);
    float *zt = malloc(ne * 4), *alpha = malloc(ne * 4), *w = malloc(ne * 4);
    int32_t *mask = malloc(ne * 4), *gmask = malloc(ne * 4);
    uint32_t fb = 0, zero = 0;
    dm_tensor dl = dev_from(logits, 2 * ne), du = dev_from(u, ne), dlg = dev_from(lg, ne);
    dm_tensor dzt = dev_new(ne), dal = dev_new(ne), dmask = dev_new(ne), dw = dev_new(ne), dfb = dev_from(&zero, 1);

    dm_ref_f_dirmoe_route_forward(&p, logits, u, lg, zt, alpha, mask, w, &fb);
    OK(be->ops->dirmoe_route_forward(be->ctx, &p, dl, du, dlg, dzt, dal, dmask, dw, dfb));
    dev_get(gmask, dmask, ne);
    int flips = 0;
    for (size_t i = 0; i < ne; i++)
        flips += gmask[i] != mask[i];
    ck_assert_msg(flips == 0, "dirmoe forward: %d mask entries differ (N=%d E=%d soft=%d fixed=%d)", flips, n, e,
                  soft, fixed);
    expect_close("dirmoe u", du, u, ne, NMSE_FWD);
    expect_close("dirmoe log_g", dlg, lg, ne, NMSE_FWD);
    expect_close("dirmoe zt", dzt, zt, ne, NMSE_FWD);
    expect_close("dirmoe alpha", dal, alpha, ne, NMSE_FWD);
    expect_close("dirmoe w", dw, w, ne, NMSE_FWD);

    /* Backward on the reference's saved tensors. */
    float *dwin = rand_floats(ne, -1, 1), *dlog = rand_floats(2 * ne, -1, 1);
    dm_tensor ddwin = dev_from(dwin, ne), ddlog = dev_from(dlog, 2 * ne);
    OK(be->ops->upload(be->ctx, dlg, lg, ne));
    OK(be->ops->upload(be->ctx, dzt, zt, ne));
    OK(be->ops->upload(be->ctx, dal, alpha, ne));
    OK(be->ops->upload(be->ctx, dmask, mask, ne));
    OK(be->ops->upload(be->ctx, dw, w, ne));
    dm_ref_f_dirmoe_route_backward(&p, dlog, dwin, logits, zt, alpha, lg, mask, w);
    OK(be->ops->dirmoe_route_backward(be->ctx, &p, ddlog, ddwin, dl, dzt, dal, dlg, dmask, dw));
    expect_close("dirmoe backward", ddlog, dlog, 2 * ne, NMSE_GRAD);

    /* Evaluation routing. */
    dm_ref_f_dirmoe_route_eval(&p, logits, mask, w);
    OK(be->ops->dirmoe_route_eval(be->ctx, &p, dl, dmask, dw));
    expect_equal_ints("dirmoe eval mask", dmask, mask, ne);
    expect_close("dirmoe eval w", dw, w, ne, NMSE_FWD);

    dm_tensor all[] = {dl, du, dlg, dzt, dal, dmask, dw, dfb, ddwin, ddlog};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        dev_free(all[i]);
    free(logits); free(u); free(lg); free(zt); free(alpha); free(w); free(mask); free(gmask);
    free(dwin); free(dlog);
}

START_TEST(dirmoe_routing)
{
    for (int si = 0; si < N_SIZES; si++) {
        for (int mode = 0; mode < 4; mode++) {
            check_dirmoe(sizes[si], 1, 1, mode & 1, mode >> 1);
            check_dirmoe(sizes[si], 7, 3, mode & 1, mode >> 1);
        }
    }
}
END_TEST

START_TEST(dirmoe_regularisers)
{
    for (int si = 0; si < N_SIZES; si++) {
        for (int mode = 0; mode < 2; mode++) {
            int n = sizes[si], e = 5;
            double p0 = dm_solve_p0(e, 2.0);
            dm_dirmoe_reg_params p = {n, e, mode, 1e-2f, 1e4f, log(p0), log1p(-p0), 0.5, 2.0, 0.3, 0.2, 0.1, 0.05};
            float *logits = rand_floats(2 * (size_t)n * e, -4, 4);
            logits[e] = 12.0f; /* a large concentration pre-activation */
            float stats[DM_REG_NSTATS];
            float *dlog = rand_floats(2 * (size_t)n * e, -1, 1);
            dm_tensor dl = dev_from(logits, 2 * (size_t)n * e), ds = dev_new(DM_REG_NSTATS);
            dm_tensor ddl = dev_from(dlog, 2 * (size_t)n * e);

            dm_ref_f_dirmoe_reg_forward(&p, logits, stats);
            OK(be->ops->dirmoe_reg_forward(be->ctx, &p, dl, ds));
            expect_close("dirmoe_reg_forward stats", ds, stats, DM_REG_NSTATS, NMSE_FWD);

            dm_ref_f_dirmoe_reg_backward(&p, logits, dlog);
            OK(be->ops->dirmoe_reg_backward(be->ctx, &p, dl, ddl));
            expect_close("dirmoe_reg_backward", ddl, dlog, 2 * (size_t)n * e, NMSE_GRAD);

            dev_free(dl); dev_free(ds); dev_free(ddl);
            free(logits); free(dlog);
        }
    }
}
END_TEST

START_TEST(topk_routing)
{
    for (int si = 0; si < N_SIZES; si++) {
        for (int renorm = 0; renorm < 2; renorm++) {
            int n = sizes[si], e = 6;
            size_t ne = (size_t)n * e;
            dm_topk_params p = {n, e, renorm ? 2 : 1, renorm};
            float *s = rand_floats(ne, -2, 2), *probs = malloc(ne * 4), *w = malloc(ne * 4);
            int32_t *mask = malloc(ne * 4);
            if (n > 1)
                s[e + 1] = s[e + 4]; /* a tie: the lower index wins */
            dm_tensor dsl = dev_from(s, ne), dp = dev_new(ne), dm = dev_new(ne), dw = dev_new(ne);

            dm_ref_f_topk_route_forward(&p, s, probs, mask, w);
            OK(be->ops->topk_route_forward(be->ctx, &p, dsl, dp, dm, dw));
            expect_close("topk probs", dp, probs, ne, NMSE_FWD);
            expect_equal_ints("topk mask", dm, mask, ne);
            expect_close("topk w", dw, w, ne, NMSE_FWD);

            float *dwin = rand_floats(ne, -1, 1), *dl = rand_floats(ne, -1, 1);
            dm_tensor ddwin = dev_from(dwin, ne), ddl = dev_from(dl, ne);
            dm_ref_f_topk_route_backward(&p, dl, dwin, probs, mask, w);
            OK(be->ops->topk_route_backward(be->ctx, &p, ddl, ddwin, dp, dm, dw));
            expect_close("topk backward", ddl, dl, ne, NMSE_GRAD);

            /* Balance and z-loss on these probabilities, with demand from the mask. */
            int32_t demand[6] = {0};
            for (size_t i = 0; i < ne; i++)
                demand[i % e] += mask[i];
            dm_balance_params bp = {n, e, p.k, e, 0.01, 0.001};
            float stats[DM_BAL_NSTATS];
            dm_tensor dd = dev_from(demand, e), dst = dev_new(DM_BAL_NSTATS);
            dm_ref_f_balance_forward(&bp, s, probs, demand, stats);
            OK(be->ops->balance_forward(be->ctx, &bp, dsl, dp, dd, dst));
            expect_close("balance_forward", dst, stats, DM_BAL_NSTATS, NMSE_FWD);
            dm_ref_f_balance_backward(&bp, s, probs, demand, dl);
            OK(be->ops->balance_backward(be->ctx, &bp, dsl, dp, dd, ddl));
            expect_close("balance_backward", ddl, dl, ne, NMSE_GRAD);

            dm_tensor all[] = {dsl, dp, dm, dw, ddwin, ddl, dd, dst};
            for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
                dev_free(all[i]);
            free(s); free(probs); free(w); free(mask); free(dwin); free(dl);
        }
    }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Losses and optimizer                                                      */

START_TEST(xent_and_adamw)
{
    for (int si = 0; si < N_SIZES; si++) {
        int n = sizes[si], v = sizes[(si + 2) % N_SIZES];
        size_t nv = (size_t)n * v;
        float *logits = rand_floats(nv, -5, 5), *probs = malloc(nv * 4), *losses = malloc(n * 4);
        int32_t *tg = malloc(n * 4);
        for (int i = 0; i < n; i++)
            tg[i] = (i * 7) % v;
        dm_tensor dl = dev_from(logits, nv), dp = dev_new(nv), dloss = dev_new(n), dt = dev_from(tg, n);

        dm_ref_f_xent_forward(n, v, losses, probs, logits, tg);
        OK(be->ops->xent_forward(be->ctx, n, v, dloss, dp, dl, dt));
        expect_close("xent losses", dloss, losses, n, NMSE_FWD);
        expect_close("xent probs", dp, probs, nv, NMSE_FWD);

        dm_ref_f_xent_backward(n, v, 0.25f, probs, probs, tg);
        OK(be->ops->xent_backward(be->ctx, n, v, 0.25f, dp, dp, dt)); /* aliased, as allowed */
        expect_close("xent_backward", dp, probs, nv, NMSE_GRAD);

        size_t np = nv;
        float *prm = rand_floats(np, -1, 1), *g = rand_floats(np, -1, 1);
        float *m = rand_floats(np, -0.1f, 0.1f), *vv = rand_floats(np, 0, 0.1f);
        dm_tensor dprm = dev_from(prm, np), dg = dev_from(g, np), dm = dev_from(m, np), dv = dev_from(vv, np);
        dm_adamw_params ap = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3};
        dm_ref_f_adamw(np, &ap, prm, g, m, vv);
        OK(be->ops->adamw(be->ctx, np, &ap, dprm, dg, dm, dv));
        expect_close("adamw params", dprm, prm, np, NMSE_FWD);
        expect_close("adamw m", dm, m, np, NMSE_FWD);
        expect_close("adamw v", dv, vv, np, NMSE_FWD);

        dm_tensor all[] = {dl, dp, dloss, dt, dprm, dg, dm, dv};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            dev_free(all[i]);
        free(logits); free(probs); free(losses); free(tg); free(prm); free(g); free(m); free(vv);
    }
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Program cache and device selection                                        */

START_TEST(program_cache_reuse)
{
    setup_cache_dir();
    cache_hits = cache_misses = cache_corrupt = 0;

    open_backend();
    dm_backend_close(be);
    ck_assert_int_eq(cache_misses, 1);
    ck_assert_int_eq(cache_hits, 0);

    open_backend();
    dm_backend_close(be);
    ck_assert_int_eq(cache_misses, 1);
    ck_assert_int_eq(cache_hits, 1);

    /* Flip one payload byte: the checksum must catch it and the entry be rebuilt. */
    char cmd[600];
    snprintf(cmd, sizeof cmd,
             "f=$(ls '%s'/dirmoe/opencl-*.bin) && printf '\\377' | dd of=\"$f\" bs=1 seek=100 conv=notrunc 2>/dev/null",
             cache_root);
    ck_assert_int_eq(system(cmd), 0);
    open_backend();
    dm_backend_close(be);
    ck_assert_int_eq(cache_corrupt, 1);
    ck_assert_int_eq(cache_misses, 2);

    open_backend();
    dm_backend_close(be);
    ck_assert_int_eq(cache_hits, 2);
    be = NULL;
}
END_TEST

START_TEST(unknown_device_error)
{
    setup_cache_dir();
    setenv("DIRMOE_OPENCL_DEVICE", "nonexistent", 1);
    dm_status st = dm_backend_open("opencl", &be);
    unsetenv("DIRMOE_OPENCL_DEVICE");
    ck_assert_int_ne(st, DM_OK);
    ck_assert_msg(strstr(dm_last_error(), "DIRMOE_OPENCL_DEVICE=nonexistent matches no OpenCL device") != NULL,
                  "unexpected message: %s", dm_last_error());
    be = NULL;
}
END_TEST

static Suite *opencl_suite(void)
{
    Suite *s = suite_create("opencl");
    TCase *ops = tcase_create("ops");
    TCase *setup = tcase_create("setup");

    tcase_add_unchecked_fixture(ops, ops_setup, ops_teardown);
    tcase_set_timeout(ops, 600);
    tcase_add_test(ops, memory_ops);
    tcase_add_test(ops, gemm_all_transposes);
    tcase_add_test(ops, vector_ops);
    tcase_add_test(ops, encoder_and_layernorm);
    tcase_add_test(ops, attention);
    tcase_add_test(ops, gelu_and_bias);
    tcase_add_test(ops, dispatch_gather_combine);
    tcase_add_test(ops, philox_words_match);
    tcase_add_test(ops, gamma_sample_and_grad);
    tcase_add_test(ops, dirmoe_routing);
    tcase_add_test(ops, dirmoe_regularisers);
    tcase_add_test(ops, topk_routing);
    tcase_add_test(ops, xent_and_adamw);
    suite_add_tcase(s, ops);

    tcase_set_timeout(setup, 600);
    tcase_add_test(setup, program_cache_reuse);
    tcase_add_test(setup, unknown_device_error);
    suite_add_tcase(s, setup);
    return s;
}

int main(void)
{
    snprintf(temp_root, sizeof temp_root, "/tmp/dirmoe-ocltest-XXXXXX");
    if (!mkdtemp(temp_root)) {
        perror("test_opencl_ops: mkdtemp");
        return EXIT_FAILURE;
    }
    setenv("XDG_CACHE_HOME", temp_root, 1);

    /* PoCL compiles each kernel on first launch and caches it under XDG_CACHE_HOME,
     * which is fresh here. A PoCL cache in the build tree keeps reruns to seconds. */
    const char *builddir = getenv("DIRMOE_TOP_BUILDDIR");
    if (builddir && !getenv("POCL_CACHE_DIR")) {
        char pocl[400];
        snprintf(pocl, sizeof pocl, "%s/tests/pocl-cache", builddir);
        mkdir(pocl, 0755);
        setenv("POCL_CACHE_DIR", pocl, 1);
    }

    SRunner *sr = srunner_create(opencl_suite());
    /* One process for the whole suite: the backend (and the CLBlast kernels it compiled)
     * is shared by the op tests, which keeps the run short on a CPU device. */
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);

    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", temp_root);
    if (system(cmd) != 0)
        fprintf(stderr, "test_opencl_ops: could not remove %s\n", temp_root);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
