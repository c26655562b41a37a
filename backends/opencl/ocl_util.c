/*
 * OpenCL backend: error names, error messages, logging, kernel argument
 * helpers and the scratch buffers.
 */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ocl.h"

const char *ocl_error_name(cl_int err)
{
    switch (err) {
#define NAME(code) \
    case code:     \
        return #code;
        NAME(CL_SUCCESS)
        NAME(CL_DEVICE_NOT_FOUND)
        NAME(CL_DEVICE_NOT_AVAILABLE)
        NAME(CL_COMPILER_NOT_AVAILABLE)
        NAME(CL_MEM_OBJECT_ALLOCATION_FAILURE)
        NAME(CL_OUT_OF_RESOURCES)
        NAME(CL_OUT_OF_HOST_MEMORY)
        NAME(CL_PROFILING_INFO_NOT_AVAILABLE)
        NAME(CL_MEM_COPY_OVERLAP)
        NAME(CL_IMAGE_FORMAT_MISMATCH)
        NAME(CL_IMAGE_FORMAT_NOT_SUPPORTED)
        NAME(CL_BUILD_PROGRAM_FAILURE)
        NAME(CL_MAP_FAILURE)
        NAME(CL_MISALIGNED_SUB_BUFFER_OFFSET)
        NAME(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST)
        NAME(CL_COMPILE_PROGRAM_FAILURE)
        NAME(CL_LINKER_NOT_AVAILABLE)
        NAME(CL_LINK_PROGRAM_FAILURE)
        NAME(CL_DEVICE_PARTITION_FAILED)
        NAME(CL_KERNEL_ARG_INFO_NOT_AVAILABLE)
        NAME(CL_INVALID_VALUE)
        NAME(CL_INVALID_DEVICE_TYPE)
        NAME(CL_INVALID_PLATFORM)
        NAME(CL_INVALID_DEVICE)
        NAME(CL_INVALID_CONTEXT)
        NAME(CL_INVALID_QUEUE_PROPERTIES)
        NAME(CL_INVALID_COMMAND_QUEUE)
        NAME(CL_INVALID_HOST_PTR)
        NAME(CL_INVALID_MEM_OBJECT)
        NAME(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR)
        NAME(CL_INVALID_IMAGE_SIZE)
        NAME(CL_INVALID_SAMPLER)
        NAME(CL_INVALID_BINARY)
        NAME(CL_INVALID_BUILD_OPTIONS)
        NAME(CL_INVALID_PROGRAM)
        NAME(CL_INVALID_PROGRAM_EXECUTABLE)
        NAME(CL_INVALID_KERNEL_NAME)
        NAME(CL_INVALID_KERNEL_DEFINITION)
        NAME(CL_INVALID_KERNEL)
        NAME(CL_INVALID_ARG_INDEX)
        NAME(CL_INVALID_ARG_VALUE)
        NAME(CL_INVALID_ARG_SIZE)
        NAME(CL_INVALID_KERNEL_ARGS)
        NAME(CL_INVALID_WORK_DIMENSION)
        NAME(CL_INVALID_WORK_GROUP_SIZE)
        NAME(CL_INVALID_WORK_ITEM_SIZE)
        NAME(CL_INVALID_GLOBAL_OFFSET)
        NAME(CL_INVALID_EVENT_WAIT_LIST)
        NAME(CL_INVALID_EVENT)
        NAME(CL_INVALID_OPERATION)
        NAME(CL_INVALID_GL_OBJECT)
        NAME(CL_INVALID_BUFFER_SIZE)
        NAME(CL_INVALID_MIP_LEVEL)
        NAME(CL_INVALID_GLOBAL_WORK_SIZE)
        NAME(CL_INVALID_PROPERTY)
        NAME(CL_INVALID_IMAGE_DESCRIPTOR)
        NAME(CL_INVALID_COMPILER_OPTIONS)
        NAME(CL_INVALID_LINKER_OPTIONS)
        NAME(CL_INVALID_DEVICE_PARTITION_COUNT)
#undef NAME
    case -1001:
        return "CL_PLATFORM_NOT_FOUND_KHR";
    default:
        return "unknown OpenCL error";
    }
}

const char *ocl_clblast_status_name(int status)
{
    switch (status) {
    case -1024: return "CLBlastNotImplemented";
    case -1022: return "CLBlastInvalidMatrixA";
    case -1021: return "CLBlastInvalidMatrixB";
    case -1020: return "CLBlastInvalidMatrixC";
    case -1019: return "CLBlastInvalidVectorX";
    case -1018: return "CLBlastInvalidVectorY";
    case -1017: return "CLBlastInvalidDimension";
    case -1016: return "CLBlastInvalidLeadDimA";
    case -1015: return "CLBlastInvalidLeadDimB";
    case -1014: return "CLBlastInvalidLeadDimC";
    case -1013: return "CLBlastInvalidIncrementX";
    case -1012: return "CLBlastInvalidIncrementY";
    case -1011: return "CLBlastInsufficientMemoryA";
    case -1010: return "CLBlastInsufficientMemoryB";
    case -1009: return "CLBlastInsufficientMemoryC";
    case -1008: return "CLBlastInsufficientMemoryX";
    case -1007: return "CLBlastInsufficientMemoryY";
    case -2050: return "CLBlastInsufficientMemoryTemp";
    case -2049: return "CLBlastInvalidBatchCount";
    case -2048: return "CLBlastInvalidOverrideKernel";
    case -2047: return "CLBlastMissingOverrideParameter";
    case -2046: return "CLBlastInvalidLocalMemUsage";
    case -2045: return "CLBlastNoHalfPrecision";
    case -2044: return "CLBlastNoDoublePrecision";
    case -2043: return "CLBlastInvalidVectorScalar";
    case -2042: return "CLBlastInsufficientMemoryScalar";
    case -2041: return "CLBlastDatabaseError";
    case -2040: return "CLBlastUnknownError";
    case -2039: return "CLBlastUnexpectedError";
    default:
        /* The codes above -1000 are OpenCL's own. */
        return ocl_error_name(status);
    }
}

dm_status ocl_fail(ocl_ctx *c, dm_status st, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
    ocl_log(DM_LOG_DEBUG, "%s", c->error);
    return st;
}

dm_status ocl_fail_cl(ocl_ctx *c, const char *op, const char *call, cl_int err)
{
    dm_status st = DM_ERR_BACKEND;

    if (err == CL_MEM_OBJECT_ALLOCATION_FAILURE || err == CL_OUT_OF_HOST_MEMORY ||
        err == CL_OUT_OF_RESOURCES)
        st = DM_ERR_NOMEM;
    return ocl_fail(c, st, "opencl %s: %s failed: %s (%d) on %s", op, call, ocl_error_name(err),
                    (int)err, c->device_name[0] ? c->device_name : "the OpenCL device");
}

static void (*log_hook)(dm_log_level level, const char *component, const char *message);

void ocl_set_log(void (*log)(dm_log_level level, const char *component, const char *message))
{
    log_hook = log;
}

void ocl_log(dm_log_level level, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    if (!log_hook)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_hook(level, "opencl", msg);
}

double ocl_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

ocl_args ocl_args_begin(ocl_ctx *c, ocl_kernel_id id)
{
    ocl_args a = {c, id, c->kernels[id], 0, CL_SUCCESS, 0};
    return a;
}

static void set_arg(ocl_args *a, size_t size, const void *value)
{
    cl_int err = clSetKernelArg(a->k, a->next, size, value);

    if (err != CL_SUCCESS && a->err == CL_SUCCESS) {
        a->err = err;
        a->err_index = a->next;
    }
    a->next++;
}

void ocl_arg_mem(ocl_args *a, cl_mem mem)
{
    set_arg(a, sizeof mem, &mem);
}

void ocl_arg_t(ocl_args *a, dm_tensor t)
{
    cl_mem mem = t.buf ? t.buf->mem : a->c->dummy;
    cl_uint off = (cl_uint)t.off;

    /* Offsets travel as 32-bit element counts: buffers stay below 16 GiB. */
    if (t.off > 0xFFFFFFFFu && a->err == CL_SUCCESS) {
        a->err = CL_INVALID_ARG_VALUE;
        a->err_index = a->next + 1;
    }
    set_arg(a, sizeof mem, &mem);
    set_arg(a, sizeof off, &off);
}

void ocl_arg_i(ocl_args *a, int32_t v)
{
    cl_int x = v;
    set_arg(a, sizeof x, &x);
}

void ocl_arg_u(ocl_args *a, uint32_t v)
{
    cl_uint x = v;
    set_arg(a, sizeof x, &x);
}

void ocl_arg_f(ocl_args *a, float v)
{
    cl_float x = v;
    set_arg(a, sizeof x, &x);
}

void ocl_arg_n(ocl_args *a, size_t n)
{
    cl_ulong x = n;
    set_arg(a, sizeof x, &x);
}

void ocl_arg_d(ocl_args *a, double v)
{
    if (a->c->has_fp64) {
        cl_double x = v;
        set_arg(a, sizeof x, &x);
    } else {
        cl_float x = (cl_float)v;
        set_arg(a, sizeof x, &x);
    }
}

void ocl_arg_local(ocl_args *a, size_t bytes)
{
    set_arg(a, bytes, NULL);
}

static dm_status check_args(ocl_args *a, const char *op)
{
    if (a->err == CL_SUCCESS)
        return DM_OK;
    return ocl_fail(a->c, DM_ERR_BACKEND,
                    "opencl %s: clSetKernelArg failed for argument %u of kernel %s: %s (%d)", op,
                    (unsigned)a->err_index, ocl_kernel_names[a->id], ocl_error_name(a->err),
                    (int)a->err);
}

dm_status ocl_run(ocl_args *a, const char *op, size_t global, size_t local)
{
    dm_status st = check_args(a, op);
    if (st)
        return st;
    if (global == 0)
        return DM_OK;

    cl_int err = clEnqueueNDRangeKernel(a->c->queue, a->k, 1, NULL, &global, local ? &local : NULL,
                                        0, NULL, NULL);
    if (err != CL_SUCCESS)
        return ocl_fail_cl(a->c, op, "clEnqueueNDRangeKernel", err);
    return DM_OK;
}

dm_status ocl_run2(ocl_args *a, const char *op, size_t global0, size_t global1)
{
    dm_status st = check_args(a, op);
    if (st)
        return st;
    if (global0 == 0 || global1 == 0)
        return DM_OK;

    size_t global[2] = {global0, global1};
    cl_int err = clEnqueueNDRangeKernel(a->c->queue, a->k, 2, NULL, global, NULL, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return ocl_fail_cl(a->c, op, "clEnqueueNDRangeKernel", err);
    return DM_OK;
}

static dm_status grow(ocl_ctx *c, const char *op, size_t bytes, cl_mem *mem, size_t *have)
{
    if (bytes == 0)
        bytes = 16;
    if (*mem && *have >= bytes)
        return DM_OK;

    /* The queue may still use the old buffer; clReleaseMemObject defers the free until
     * the enqueued kernels that use it have finished. */
    if (*mem)
        clReleaseMemObject(*mem);
    *mem = NULL;
    *have = 0;

    cl_int err;
    cl_mem m = clCreateBuffer(c->context, CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (err != CL_SUCCESS)
        return ocl_fail_cl(c, op, "clCreateBuffer (scratch)", err);
    *mem = m;
    *have = bytes;
    return DM_OK;
}

dm_status ocl_scratch(ocl_ctx *c, const char *op, size_t bytes, cl_mem *out)
{
    dm_status st = grow(c, op, bytes, &c->scratch, &c->scratch_bytes);
    *out = c->scratch;
    return st;
}

dm_status ocl_scratch2(ocl_ctx *c, const char *op, size_t bytes, cl_mem *out)
{
    dm_status st = grow(c, op, bytes, &c->scratch2, &c->scratch2_bytes);
    *out = c->scratch2;
    return st;
}

dm_status ocl_check_range(ocl_ctx *c, const char *op, dm_tensor t, size_t n)
{
    if (!t.buf)
        return ocl_fail(c, DM_ERR_INVALID, "opencl %s: tensor has no buffer", op);
    if (t.off > t.buf->n || n > t.buf->n - t.off)
        return ocl_fail(c, DM_ERR_INVALID,
                        "opencl %s: %zu elements at offset %zu exceed the buffer of %zu elements", op,
                        n, t.off, t.buf->n);
    return DM_OK;
}
