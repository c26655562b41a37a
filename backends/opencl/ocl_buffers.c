/*
 * OpenCL backend: device buffers and the memory ops. Uploads and downloads
 * block, so the caller's host memory is free to reuse when they return;
 * fill and copy are enqueued and run in queue order with the kernels.
 */
#include "config.h"

#include <stdlib.h>

#include "ocl.h"

dm_status ocl_alloc(void *ctx, size_t n, dm_buffer **out)
{
    ocl_ctx *c = ctx;
    dm_buffer *buf = malloc(sizeof *buf);
    cl_int err;

    if (!buf)
        return ocl_fail(c, DM_ERR_NOMEM, "opencl alloc: out of host memory");

    /* OpenCL rejects zero-sized buffers, so an empty tensor gets one element. */
    size_t bytes = (n ? n : 1) * sizeof(uint32_t);
    buf->mem = clCreateBuffer(c->context, CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (err != CL_SUCCESS) {
        free(buf);
        ocl_fail_cl(c, "alloc", "clCreateBuffer", err);
        return ocl_fail(c, DM_ERR_NOMEM, "%s (requested %zu bytes)", c->error, bytes);
    }
    buf->n = n;
    *out = buf;
    return DM_OK;
}

void ocl_free(void *ctx, dm_buffer *buf)
{
    (void)ctx;
    if (!buf)
        return;
    clReleaseMemObject(buf->mem);
    free(buf);
}

dm_status ocl_upload(void *ctx, dm_tensor dst, const void *src, size_t n)
{
    ocl_ctx *c = ctx;
    dm_status st = ocl_check_range(c, "upload", dst, n);
    if (st || n == 0)
        return st;

    cl_int err = clEnqueueWriteBuffer(c->queue, dst.buf->mem, CL_TRUE, dst.off * 4, n * 4, src, 0,
                                      NULL, NULL);
    if (err != CL_SUCCESS)
        return ocl_fail_cl(c, "upload", "clEnqueueWriteBuffer", err);
    return DM_OK;
}

dm_status ocl_download(void *ctx, void *dst, dm_tensor src, size_t n)
{
    ocl_ctx *c = ctx;
    dm_status st = ocl_check_range(c, "download", src, n);
    if (st || n == 0)
        return st;

    cl_int err = clEnqueueReadBuffer(c->queue, src.buf->mem, CL_TRUE, src.off * 4, n * 4, dst, 0,
                                     NULL, NULL);
    if (err != CL_SUCCESS)
        return ocl_fail_cl(c, "download", "clEnqueueReadBuffer", err);
    return DM_OK;
}

dm_status ocl_fill(void *ctx, dm_tensor dst, uint32_t bits, size_t n)
{
    ocl_ctx *c = ctx;
    dm_status st = ocl_check_range(c, "fill", dst, n);
    if (st || n == 0)
        return st;

    cl_uint pattern = bits;
    cl_int err = clEnqueueFillBuffer(c->queue, dst.buf->mem, &pattern, sizeof pattern, dst.off * 4,
                                     n * 4, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return ocl_fail_cl(c, "fill", "clEnqueueFillBuffer", err);
    return DM_OK;
}

dm_status ocl_copy(void *ctx, dm_tensor dst, dm_tensor src, size_t n)
{
    ocl_ctx *c = ctx;
    dm_status st = ocl_check_range(c, "copy", dst, n);
    if (st || (st = ocl_check_range(c, "copy", src, n)) || n == 0)
        return st;
    if (dst.buf == src.buf && dst.off < src.off + n && src.off < dst.off + n)
        return ocl_fail(c, DM_ERR_INVALID,
                        "opencl copy: source [%zu, %zu) and destination [%zu, %zu) overlap in one buffer",
                        src.off, src.off + n, dst.off, dst.off + n);

    cl_int err = clEnqueueCopyBuffer(c->queue, src.buf->mem, dst.buf->mem, src.off * 4, dst.off * 4,
                                     n * 4, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return ocl_fail_cl(c, "copy", "clEnqueueCopyBuffer", err);
    return DM_OK;
}

dm_status ocl_synchronize(void *ctx)
{
    ocl_ctx *c = ctx;
    cl_int err = clFinish(c->queue);

    if (err != CL_SUCCESS)
        return ocl_fail_cl(c, "synchronize", "clFinish", err);
    return DM_OK;
}
