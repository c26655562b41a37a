/*
 * OpenCL backend plugin: descriptor, probe, device choice, context set-up.
 *
 * Devices are numbered across platforms in platform order, as `dirmoe
 * backends` lists them. DIRMOE_OPENCL_PLATFORM (index or case-insensitive
 * substring of the platform name) restricts the candidates to one platform;
 * DIRMOE_OPENCL_DEVICE (index in the list or substring of the device name)
 * picks one device. Without them the first GPU is used, else the first device.
 */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ocl.h"

#define MAX_PLATFORMS 8
#define MAX_DEVICES 32

typedef struct ocl_device_entry {
    cl_platform_id platform;
    cl_device_id device;
    cl_device_type type;
    char platform_name[128];
    char name[128];
    char version[128];
    char version_short[16];   /* "OpenCL 3.0": the first two words of version */
    char driver[64];
    cl_ulong mem;
    int fp64;
} ocl_device_entry;

typedef struct ocl_device_list {
    int count;
    ocl_device_entry items[MAX_DEVICES];
    int n_platforms;
    char platform_names[MAX_PLATFORMS][128];
} ocl_device_list;

/* Case-insensitive substring test. */
static int contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);

    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == n)
            return 1;
    }
    return n == 0;
}

/* Returns the index when s is a plain non-negative integer, else -1. */
static int parse_index(const char *s)
{
    char *end;
    long v;

    if (!s[0] || !isdigit((unsigned char)s[0]))
        return -1;
    v = strtol(s, &end, 10);
    return (*end == '\0' && v >= 0 && v < 1000000) ? (int)v : -1;
}

/* Lists every device of every platform; writes a message and returns -1 when none. */
static int enumerate(ocl_device_list *list, char *err, size_t errlen)
{
    cl_platform_id platforms[MAX_PLATFORMS];
    cl_uint np = 0;
    cl_int rc = clGetPlatformIDs(MAX_PLATFORMS, platforms, &np);

    memset(list, 0, sizeof *list);
    if (rc != CL_SUCCESS || np == 0) {
        snprintf(err, errlen,
                 "no OpenCL platform found (clGetPlatformIDs: %s): install an OpenCL driver "
                 "(an ICD file under /etc/OpenCL/vendors, for example pocl-opencl-icd for CPUs)",
                 rc != CL_SUCCESS ? ocl_error_name(rc) : "0 platforms");
        return -1;
    }
    if (np > MAX_PLATFORMS)
        np = MAX_PLATFORMS;
    list->n_platforms = (int)np;

    for (cl_uint p = 0; p < np; p++) {
        char *pname = list->platform_names[p];
        clGetPlatformInfo(platforms[p], CL_PLATFORM_NAME, 127, pname, NULL);

        cl_device_id devs[MAX_DEVICES];
        cl_uint nd = 0;
        if (clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, MAX_DEVICES, devs, &nd) != CL_SUCCESS)
            continue;
        for (cl_uint d = 0; d < nd && list->count < MAX_DEVICES; d++) {
            ocl_device_entry *e = &list->items[list->count++];
            char ext[4096] = "";
            e->platform = platforms[p];
            e->device = devs[d];
            snprintf(e->platform_name, sizeof e->platform_name, "%s", pname);
            clGetDeviceInfo(devs[d], CL_DEVICE_TYPE, sizeof e->type, &e->type, NULL);
            clGetDeviceInfo(devs[d], CL_DEVICE_NAME, sizeof e->name - 1, e->name, NULL);
            clGetDeviceInfo(devs[d], CL_DEVICE_VERSION, sizeof e->version - 1, e->version, NULL);
            clGetDeviceInfo(devs[d], CL_DRIVER_VERSION, sizeof e->driver - 1, e->driver, NULL);
            clGetDeviceInfo(devs[d], CL_DEVICE_GLOBAL_MEM_SIZE, sizeof e->mem, &e->mem, NULL);
            clGetDeviceInfo(devs[d], CL_DEVICE_EXTENSIONS, sizeof ext - 1, ext, NULL);
            e->fp64 = strstr(ext, "cl_khr_fp64") != NULL;
            int major = 0, minor = 0;
            sscanf(e->version, "OpenCL %d.%d", &major, &minor);
            snprintf(e->version_short, sizeof e->version_short, "OpenCL %d.%d", major % 100, minor % 100);
        }
    }
    if (list->count == 0) {
        snprintf(err, errlen, "no OpenCL device found on %d platform%s (first: %s)", list->n_platforms,
                 list->n_platforms == 1 ? "" : "s", list->platform_names[0]);
        return -1;
    }
    return 0;
}

/* Applies DIRMOE_OPENCL_PLATFORM and DIRMOE_OPENCL_DEVICE; returns the chosen index or -1. */
static int choose(const ocl_device_list *list, char *err, size_t errlen)
{
    const char *penv = getenv("DIRMOE_OPENCL_PLATFORM");
    const char *denv = getenv("DIRMOE_OPENCL_DEVICE");
    int allowed[MAX_DEVICES];
    char names[1024] = "";

    /* Platform filter. */
    for (int i = 0; i < list->count; i++)
        allowed[i] = 1;
    if (penv && penv[0]) {
        int pidx = parse_index(penv);
        int any = 0;
        for (int p = 0; p < list->n_platforms; p++) {
            int match = pidx >= 0 ? p == pidx : contains_nocase(list->platform_names[p], penv);
            for (int i = 0; i < list->count; i++)
                if (strcmp(list->items[i].platform_name, list->platform_names[p]) == 0 && !match)
                    allowed[i] = 0;
            any |= match;
            size_t len = strlen(names);
            snprintf(names + len, sizeof names - len, "%s%d: %s", p ? ", " : "", p, list->platform_names[p]);
        }
        if (!any) {
            snprintf(err, errlen,
                     "DIRMOE_OPENCL_PLATFORM=%s matches no OpenCL platform; available: %s "
                     "(use an index or part of a name)", penv, names);
            return -1;
        }
    }

    /* Device choice. */
    if (denv && denv[0]) {
        int didx = parse_index(denv);
        names[0] = '\0';
        for (int i = 0; i < list->count; i++) {
            if (!allowed[i])
                continue;
            if (didx >= 0 ? i == didx : contains_nocase(list->items[i].name, denv))
                return i;
            size_t len = strlen(names);
            snprintf(names + len, sizeof names - len, "%s%d: %s", len ? ", " : "", i, list->items[i].name);
        }
        snprintf(err, errlen,
                 "DIRMOE_OPENCL_DEVICE=%s matches no OpenCL device%s; available: %s "
                 "(use an index or part of a name)", denv, penv && penv[0] ? " on the chosen platform" : "",
                 names[0] ? names : "none");
        return -1;
    }
    for (int i = 0; i < list->count; i++)
        if (allowed[i] && (list->items[i].type & CL_DEVICE_TYPE_GPU))
            return i;
    for (int i = 0; i < list->count; i++)
        if (allowed[i])
            return i;
    snprintf(err, errlen, "no OpenCL device on the platform chosen by DIRMOE_OPENCL_PLATFORM=%s", penv);
    return -1;
}

/* Checks what the kernels need: OpenCL 1.2 and an online compiler. */
static int check_features(const ocl_device_entry *e, char *err, size_t errlen)
{
    int major = 0, minor = 0;
    cl_bool compiler = CL_FALSE;

    sscanf(e->version, "OpenCL %d.%d", &major, &minor);
    if (major < 1 || (major == 1 && minor < 2)) {
        snprintf(err, errlen, "OpenCL device %s reports \"%s\", but the kernels need OpenCL 1.2 or newer",
                 e->name, e->version);
        return -1;
    }
    clGetDeviceInfo(e->device, CL_DEVICE_COMPILER_AVAILABLE, sizeof compiler, &compiler, NULL);
    if (!compiler) {
        snprintf(err, errlen, "OpenCL device %s has no online compiler, so the kernels cannot be built",
                 e->name);
        return -1;
    }
    return 0;
}

static void ocl_probe(dm_probe_result *out)
{
    ocl_device_list list;

    memset(out, 0, sizeof *out);
    if (enumerate(&list, out->reason, sizeof out->reason) != 0) {
        out->score = -1;
        return;
    }
    for (int i = 0; i < list.count && i < DM_MAX_DEVICES; i++) {
        const ocl_device_entry *e = &list.items[i];
        dm_device_info *d = &out->devices[out->n_devices++];
        snprintf(d->name, sizeof d->name, "%s", e->name);
        snprintf(d->detail, sizeof d->detail, "%s %s, %s, driver %s, %llu MiB%s",
                 (e->type & CL_DEVICE_TYPE_GPU) ? "GPU" : (e->type & CL_DEVICE_TYPE_CPU) ? "CPU" : "device",
                 e->version_short, e->platform_name, e->driver, (unsigned long long)(e->mem >> 20),
                 e->fp64 ? ", fp64" : "");
    }

    int chosen = choose(&list, out->reason, sizeof out->reason);
    if (chosen < 0) {
        out->score = -1;
        return;
    }
    if (check_features(&list.items[chosen], out->reason, sizeof out->reason) != 0) {
        out->score = -1;
        return;
    }
    out->score = (list.items[chosen].type & CL_DEVICE_TYPE_GPU) ? DM_SCORE_OPENCL_GPU : DM_SCORE_OPENCL_CPU;
    snprintf(out->reason, sizeof out->reason, "selected device %d: %s", chosen, list.items[chosen].name);
}

static void ocl_shutdown(void *ctx)
{
    ocl_ctx *c = ctx;

    if (!c)
        return;
    if (c->queue)
        clFinish(c->queue);
    for (int i = 0; i < OCL_K_COUNT; i++)
        if (c->kernels[i])
            clReleaseKernel(c->kernels[i]);
    if (c->program)
        clReleaseProgram(c->program);
    if (c->scratch)
        clReleaseMemObject(c->scratch);
    if (c->scratch2)
        clReleaseMemObject(c->scratch2);
    if (c->dummy)
        clReleaseMemObject(c->dummy);
    if (c->queue)
        clReleaseCommandQueue(c->queue);
    if (c->context)
        clReleaseContext(c->context);
    free(c);
}

static dm_status ocl_init(void **ctx, char *err, size_t errlen)
{
    ocl_device_list list;
    ocl_ctx *c;
    cl_int rc;

    *ctx = NULL;
    if (enumerate(&list, err, errlen) != 0)
        return DM_ERR_UNSUPPORTED;
    int chosen = choose(&list, err, errlen);
    if (chosen < 0)
        return DM_ERR_NOT_FOUND;
    const ocl_device_entry *e = &list.items[chosen];
    if (check_features(e, err, errlen) != 0)
        return DM_ERR_UNSUPPORTED;

    if (!(c = calloc(1, sizeof *c))) {
        snprintf(err, errlen, "opencl init: out of host memory");
        return DM_ERR_NOMEM;
    }
    c->platform = e->platform;
    c->device = e->device;
    c->has_fp64 = e->fp64;
    snprintf(c->device_name, sizeof c->device_name, "%s", e->name);
    snprintf(c->driver_version, sizeof c->driver_version, "%s", e->driver);
    clGetDeviceInfo(c->device, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof c->max_wg, &c->max_wg, NULL);

    dm_status st = DM_ERR_BACKEND;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)c->platform, 0};
    c->context = clCreateContext(props, 1, &c->device, NULL, NULL, &rc);
    if (rc != CL_SUCCESS) {
        st = ocl_fail_cl(c, "init", "clCreateContext", rc);
        goto fail;
    }
    c->queue = clCreateCommandQueue(c->context, c->device, 0, &rc);
    if (rc != CL_SUCCESS) {
        st = ocl_fail_cl(c, "init", "clCreateCommandQueue", rc);
        goto fail;
    }
    c->dummy = clCreateBuffer(c->context, CL_MEM_READ_WRITE, 16, NULL, &rc);
    if (rc != CL_SUCCESS) {
        st = ocl_fail_cl(c, "init", "clCreateBuffer", rc);
        goto fail;
    }
    if ((st = ocl_program_load(c)) != DM_OK)
        goto fail;

    ocl_log(DM_LOG_INFO, "device %d: %s (%s, driver %s)%s", chosen, c->device_name, e->platform_name,
            c->driver_version, c->has_fp64 ? "" : "; no fp64, so router gradients use the float forms");
    *ctx = c;
    return DM_OK;

fail:
    snprintf(err, errlen, "%s", c->error);
    ocl_shutdown(c);
    return st;
}

static const char *ocl_last_error(void *ctx)
{
    return ((ocl_ctx *)ctx)->error;
}

static const dm_backend_desc ocl_desc = {
    .abi_version = DM_BACKEND_ABI_VERSION,
    .struct_size = sizeof(dm_backend_desc),
    .name = "opencl",
    .description = "OpenCL kernels and CLBlast GEMM on a GPU or CPU device",
    .probe = ocl_probe,
    .init = ocl_init,
    .shutdown = ocl_shutdown,
    .last_error = ocl_last_error,
    .set_log = ocl_set_log,
    .ops = {
        .alloc = ocl_alloc,
        .free = ocl_free,
        .upload = ocl_upload,
        .download = ocl_download,
        .fill = ocl_fill,
        .copy = ocl_copy,
        .synchronize = ocl_synchronize,
        .gemm = ocl_gemm,
        .axpy = ocl_axpy,
        .scale = ocl_scale,
        .sum_squares = ocl_sum_squares,
        .encoder_forward = ocl_encoder_forward,
        .encoder_backward = ocl_encoder_backward,
        .layernorm_forward = ocl_layernorm_forward,
        .layernorm_backward = ocl_layernorm_backward,
        .attention_forward = ocl_attention_forward,
        .attention_backward = ocl_attention_backward,
        .gelu_forward = ocl_gelu_forward,
        .gelu_backward = ocl_gelu_backward,
        .bias_forward = ocl_bias_forward,
        .bias_backward = ocl_bias_backward,
        .bias_gelu_forward = ocl_bias_gelu_forward,
        .dispatch_build = ocl_dispatch_build,
        .gather_forward = ocl_gather_forward,
        .gather_backward = ocl_gather_backward,
        .combine_forward = ocl_combine_forward,
        .combine_backward = ocl_combine_backward,
        .philox = ocl_philox,
        .gamma_sample = ocl_gamma_sample,
        .gamma_grad = ocl_gamma_grad,
        .dirmoe_route_forward = ocl_dirmoe_route_forward,
        .dirmoe_route_backward = ocl_dirmoe_route_backward,
        .dirmoe_route_eval = ocl_dirmoe_route_eval,
        .dirmoe_reg_forward = ocl_dirmoe_reg_forward,
        .dirmoe_reg_backward = ocl_dirmoe_reg_backward,
        .topk_route_forward = ocl_topk_route_forward,
        .topk_route_backward = ocl_topk_route_backward,
        .balance_forward = ocl_balance_forward,
        .balance_backward = ocl_balance_backward,
        .xent_forward = ocl_xent_forward,
        .xent_backward = ocl_xent_backward,
        .adamw = ocl_adamw,
    },
};

const dm_backend_desc *dm_backend_entry(void);

const dm_backend_desc *dm_backend_entry(void)
{
    return &ocl_desc;
}
