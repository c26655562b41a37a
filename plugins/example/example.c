/*
 * A minimal out-of-tree dirmoe backend. It builds against the installed
 * headers only (pkg-config dirmoe) and implements the tensor ops and GEMM on
 * host memory. The training ops are left NULL, so `dirmoe backends` lists it
 * as partial and auto never selects it; a real backend fills every member of
 * dm_backend_ops that backend.h does not mark OPTIONAL.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dirmoe/backend.h>

struct dm_buffer {
    size_t n;
    float data[];
};

typedef struct example_ctx {
    char error[256];
} example_ctx;

static float *at(dm_tensor t)
{
    return t.buf->data + t.off;
}

static dm_status example_alloc(void *ctx, size_t n, dm_buffer **out)
{
    dm_buffer *buf = malloc(sizeof *buf + (n ? n : 1) * sizeof(float));

    if (!buf) {
        snprintf(((example_ctx *)ctx)->error, sizeof ((example_ctx *)ctx)->error,
                 "cannot allocate %zu elements", n);
        return DM_ERR_NOMEM;
    }
    buf->n = n;
    *out = buf;
    return DM_OK;
}

static void example_free(void *ctx, dm_buffer *buf)
{
    (void)ctx;
    free(buf);
}

static dm_status example_upload(void *ctx, dm_tensor dst, const void *src, size_t n)
{
    (void)ctx;
    memcpy(at(dst), src, n * 4);
    return DM_OK;
}

static dm_status example_download(void *ctx, void *dst, dm_tensor src, size_t n)
{
    (void)ctx;
    memcpy(dst, at(src), n * 4);
    return DM_OK;
}

static dm_status example_fill(void *ctx, dm_tensor dst, uint32_t bits, size_t n)
{
    (void)ctx;
    for (size_t i = 0; i < n; i++)
        memcpy(at(dst) + i, &bits, 4);
    return DM_OK;
}

static dm_status example_copy(void *ctx, dm_tensor dst, dm_tensor src, size_t n)
{
    (void)ctx;
    memmove(at(dst), at(src), n * 4);
    return DM_OK;
}

static dm_status example_synchronize(void *ctx)
{
    (void)ctx;
    return DM_OK;
}

/* Row-major C = alpha op(A) op(B) + beta C with a plain triple loop. */
static dm_status example_gemm(void *ctx, int ta, int tb, int m, int n, int k, float alpha, dm_tensor a,
                              int lda, dm_tensor b, int ldb, float beta, dm_tensor c, int ldc)
{
    const float *pa = at(a), *pb = at(b);
    float *pc = at(c);

    (void)ctx;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double sum = 0.0;
            for (int p = 0; p < k; p++) {
                float x = ta ? pa[p * lda + i] : pa[i * lda + p];
                float y = tb ? pb[j * ldb + p] : pb[p * ldb + j];
                sum += (double)x * y;
            }
            float old = beta == 0.0f ? 0.0f : beta * pc[i * ldc + j];
            pc[i * ldc + j] = alpha * (float)sum + old;
        }
    return DM_OK;
}

static void example_probe(dm_probe_result *out)
{
    memset(out, 0, sizeof *out);
    out->score = 1;
    out->n_devices = 1;
    snprintf(out->devices[0].name, sizeof out->devices[0].name, "host memory (example)");
}

static dm_status example_init(void **ctx, char *err, size_t errlen)
{
    *ctx = calloc(1, sizeof(example_ctx));
    if (!*ctx) {
        snprintf(err, errlen, "out of memory");
        return DM_ERR_NOMEM;
    }
    return DM_OK;
}

static void example_shutdown(void *ctx)
{
    free(ctx);
}

static const char *example_last_error(void *ctx)
{
    return ((example_ctx *)ctx)->error;
}

static const dm_backend_desc example_desc = {
    .abi_version = DM_BACKEND_ABI_VERSION,
    .struct_size = sizeof(dm_backend_desc),
    .name = "example",
    .description = "out-of-tree example: tensor ops and GEMM only",
    .probe = example_probe,
    .init = example_init,
    .shutdown = example_shutdown,
    .last_error = example_last_error,
    .ops = {
        .alloc = example_alloc,
        .free = example_free,
        .upload = example_upload,
        .download = example_download,
        .fill = example_fill,
        .copy = example_copy,
        .synchronize = example_synchronize,
        .gemm = example_gemm,
    },
};

const dm_backend_desc *dm_backend_entry(void);

const dm_backend_desc *dm_backend_entry(void)
{
    return &example_desc;
}
