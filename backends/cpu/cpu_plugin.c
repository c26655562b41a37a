/*
 * cpu backend plugin: host buffers, scratch, probe, init and the op table.
 * The kernels live in the other cpu_*.c files, one per family of ops.
 */
#include "config.h"

#include <cblas.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"

/* Alignment of every buffer and scratch array, in bytes: one cache line, enough for AVX-512. */
#define CPU_ALIGN 64

dm_status cpu_fail(cpu_ctx *cx, dm_status st, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(cx->error, sizeof cx->error, fmt, ap);
    va_end(ap);
    return st;
}

static void *aligned_array(size_t bytes)
{
    void *p = NULL;

    if (posix_memalign(&p, CPU_ALIGN, bytes ? bytes : CPU_ALIGN) != 0)
        return NULL;
    return p;
}

double *cpu_reduce_scratch(cpu_ctx *cx, size_t n)
{
    if (n <= cx->reduce_n)
        return cx->reduce;

    double *p = aligned_array(n * sizeof(double));
    if (!p)
        return NULL;
    free(cx->reduce);
    cx->reduce = p;
    cx->reduce_n = n;
    return p;
}

dm_status cpu_thread_scratch_reserve(cpu_ctx *cx, size_t n)
{
    for (int i = 0; i < cx->nthreads; i++) {
        cpu_thread_scratch *ts = &cx->thread[i];
        if (ts->n >= n)
            continue;

        float *p = aligned_array(n * sizeof(float));
        if (!p)
            return cpu_fail(cx, DM_ERR_NOMEM, "cannot allocate %zu bytes of attention scratch", n * 4);
        free(ts->mem);
        ts->mem = p;
        ts->n = n;
    }
    return DM_OK;
}

/* --- buffers ------------------------------------------------------------ */

static dm_status cpu_alloc(void *ctx, size_t n, dm_buffer **out)
{
    dm_buffer *buf = malloc(sizeof *buf);

    if (buf)
        buf->data = aligned_array(n * sizeof(uint32_t));
    if (!buf || !buf->data) {
        free(buf);
        return cpu_fail(ctx, DM_ERR_NOMEM, "cannot allocate %zu bytes of host memory", n * 4);
    }
    buf->n = n;
    *out = buf;
    return DM_OK;
}

static void cpu_free(void *ctx, dm_buffer *buf)
{
    (void)ctx;
    if (buf)
        free(buf->data);
    free(buf);
}

static dm_status check_range(void *ctx, dm_tensor t, size_t n, const char *what)
{
    if (!t.buf)
        return cpu_fail(ctx, DM_ERR_INVALID, "%s: null buffer", what);
    if (t.off > t.buf->n || n > t.buf->n - t.off)
        return cpu_fail(ctx, DM_ERR_INVALID, "%s: %zu elements at offset %zu exceed the buffer of %zu",
                        what, n, t.off, t.buf->n);
    return DM_OK;
}

static dm_status cpu_upload(void *ctx, dm_tensor dst, const void *src, size_t n)
{
    dm_status st = check_range(ctx, dst, n, "upload");
    if (st)
        return st;
    memcpy(u32(dst), src, n * sizeof(uint32_t));
    return DM_OK;
}

static dm_status cpu_download(void *ctx, void *dst, dm_tensor src, size_t n)
{
    dm_status st = check_range(ctx, src, n, "download");
    if (st)
        return st;
    memcpy(dst, u32(src), n * sizeof(uint32_t));
    return DM_OK;
}

static dm_status cpu_fill(void *ctx, dm_tensor dst, uint32_t bits, size_t n)
{
    cpu_ctx *cx = ctx;
    dm_status st = check_range(ctx, dst, n, "fill");
    if (st)
        return st;

    uint32_t *p = u32(dst);
    if (bits == 0 && n < (1u << 16)) {
        memset(p, 0, n * sizeof *p);
        return DM_OK;
    }
#pragma omp parallel for num_threads(cx->nthreads) schedule(static) if (n >= (1u << 16))
    for (size_t i = 0; i < n; i++)
        p[i] = bits;
    return DM_OK;
}

static dm_status cpu_copy(void *ctx, dm_tensor dst, dm_tensor src, size_t n)
{
    dm_status st = check_range(ctx, dst, n, "copy");
    if (st || (st = check_range(ctx, src, n, "copy")))
        return st;
    memmove(u32(dst), u32(src), n * sizeof(uint32_t));
    return DM_OK;
}

static dm_status cpu_synchronize(void *ctx)
{
    (void)ctx;
    return DM_OK;
}

/* --- descriptor ------------------------------------------------------------ */

/* Copies the "model name" line of /proc/cpuinfo into name, or a generic name. */
static void read_cpu_model(char *name, size_t len)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];

    snprintf(name, len, "host CPU");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0)
            continue;
        char *colon = strchr(line, ':');
        if (!colon)
            break;
        colon++;
        while (*colon == ' ' || *colon == '\t')
            colon++;
        colon[strcspn(colon, "\n")] = '\0';
        snprintf(name, len, "%s", colon);
        break;
    }
    fclose(f);
}

static void cpu_probe(dm_probe_result *out)
{
    memset(out, 0, sizeof *out);
    out->score = DM_SCORE_CPU;
    out->n_devices = 1;
    read_cpu_model(out->devices[0].name, sizeof out->devices[0].name);
    snprintf(out->devices[0].detail, sizeof out->devices[0].detail,
             "%d OpenMP threads; %.90s", omp_get_max_threads(), openblas_get_config());
}

static dm_status cpu_init(void **ctx, char *err, size_t errlen)
{
    cpu_ctx *cx = calloc(1, sizeof *cx);

    if (cx) {
        cx->nthreads = omp_get_max_threads();
        if (cx->nthreads < 1)
            cx->nthreads = 1;
        cx->thread = calloc((size_t)cx->nthreads, sizeof *cx->thread);
    }
    if (!cx || !cx->thread) {
        free(cx);
        snprintf(err, errlen, "out of memory");
        return DM_ERR_NOMEM;
    }

    /* One BLAS thread per call: the OpenMP team does the splitting (see cpu_ops.h). */
    openblas_set_num_threads(1);
    *ctx = cx;
    return DM_OK;
}

static void cpu_shutdown(void *ctx)
{
    cpu_ctx *cx = ctx;

    if (!cx)
        return;
    for (int i = 0; i < cx->nthreads; i++)
        free(cx->thread[i].mem);
    free(cx->thread);
    free(cx->reduce);
    free(cx);
}

static const char *cpu_last_error(void *ctx)
{
    return ((cpu_ctx *)ctx)->error;
}

static const dm_backend_desc cpu_desc = {
    .abi_version = DM_BACKEND_ABI_VERSION,
    .struct_size = sizeof(dm_backend_desc),
    .name = "cpu",
    .description = "host CPU: OpenBLAS SGEMM and OpenMP kernels",
    .probe = cpu_probe,
    .init = cpu_init,
    .shutdown = cpu_shutdown,
    .last_error = cpu_last_error,
    .set_log = NULL,
    .ops = {
        .alloc = cpu_alloc,
        .free = cpu_free,
        .upload = cpu_upload,
        .download = cpu_download,
        .fill = cpu_fill,
        .copy = cpu_copy,
        .synchronize = cpu_synchronize,
        .gemm = cpu_gemm,
        .axpy = cpu_axpy,
        .scale = cpu_scale,
        .sum_squares = cpu_sum_squares,
        .encoder_forward = cpu_encoder_forward,
        .encoder_backward = cpu_encoder_backward,
        .layernorm_forward = cpu_layernorm_forward,
        .layernorm_backward = cpu_layernorm_backward,
        .attention_forward = cpu_attention_forward,
        .attention_backward = cpu_attention_backward,
        .gelu_forward = cpu_gelu_forward,
        .gelu_backward = cpu_gelu_backward,
        .bias_forward = cpu_bias_forward,
        .bias_backward = cpu_bias_backward,
        .bias_gelu_forward = cpu_bias_gelu_forward,
        .dispatch_build = cpu_dispatch_build,
        .gather_forward = cpu_gather_forward,
        .gather_backward = cpu_gather_backward,
        .combine_forward = cpu_combine_forward,
        .combine_backward = cpu_combine_backward,
        .philox = cpu_philox,
        .gamma_sample = cpu_gamma_sample,
        .gamma_grad = cpu_gamma_grad,
        .dirmoe_route_forward = cpu_dirmoe_route_forward,
        .dirmoe_route_backward = cpu_dirmoe_route_backward,
        .dirmoe_route_eval = cpu_dirmoe_route_eval,
        .dirmoe_reg_forward = cpu_dirmoe_reg_forward,
        .dirmoe_reg_backward = cpu_dirmoe_reg_backward,
        .topk_route_forward = cpu_topk_route_forward,
        .topk_route_backward = cpu_topk_route_backward,
        .balance_forward = cpu_balance_forward,
        .balance_backward = cpu_balance_backward,
        .xent_forward = cpu_xent_forward,
        .xent_backward = cpu_xent_backward,
        .adamw = cpu_adamw,
    },
};

const dm_backend_desc *dm_backend_entry(void);

const dm_backend_desc *dm_backend_entry(void)
{
    return &cpu_desc;
}
