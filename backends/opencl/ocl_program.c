/*
 * OpenCL backend: building the kernel program, with an on-disk cache of
 * program binaries.
 *
 * All kernels live in one program, because a build costs seconds on a CPU
 * device (PoCL) and more on some GPU drivers. The cache file is
 *   $XDG_CACHE_HOME/dirmoe/opencl-<key>.bin   (default ~/.cache/dirmoe)
 * where <key> hashes the platform, device name, device and driver versions,
 * the build options and every source byte, so a changed driver or kernel
 * gets a new entry. The file starts with a header holding a magic string,
 * the key, the payload size and a checksum of the payload. An entry that
 * fails any check, or that the driver rejects (binary status, clBuildProgram
 * or clCreateKernel), is rebuilt from source and overwritten. The file name
 * alone never makes an entry trusted.
 */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ocl.h"

const char *const ocl_kernel_names[OCL_K_COUNT] = {
#define OCL_KERNEL(name) "dm_" #name,
#include "ocl_kernels.def"
#undef OCL_KERNEL
};

#define CACHE_MAGIC "DMOCLBN1"

/* Header of a cache file; the payload (the program binary) follows. Host byte order:
 * a cache directory shared between machines of different endianness fails the key check. */
typedef struct cache_header {
    char magic[8];
    uint64_t key;
    uint64_t size;
    uint64_t checksum;
} cache_header;

/* FNV-1a, 64 bits: enough to tell stale entries apart and to catch torn or corrupted files. */
static uint64_t fnv1a(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;

    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t fnv1a_str(uint64_t h, const char *s)
{
    /* Includes the terminating NUL, so ("ab","c") and ("a","bc") differ. */
    return fnv1a(h, s, strlen(s) + 1);
}

#define FNV_OFFSET 0xcbf29ce484222325ULL

int ocl_cache_dir(char *buf, size_t len)
{
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    int n;

    if (xdg && xdg[0] == '/')
        n = snprintf(buf, len, "%s/dirmoe", xdg);
    else if (home && home[0])
        n = snprintf(buf, len, "%s/.cache/dirmoe", home);
    else
        return -1;
    return (n > 0 && (size_t)n < len) ? 0 : -1;
}

/* Creates dir and its parent (one level is enough for ~/.cache/dirmoe). */
static int make_dirs(const char *dir)
{
    char parent[4096];

    if (mkdir(dir, 0755) == 0 || errno == EEXIST)
        return 0;
    snprintf(parent, sizeof parent, "%s", dir);
    char *slash = strrchr(parent, '/');
    if (!slash || slash == parent)
        return -1;
    *slash = '\0';
    if (mkdir(parent, 0755) != 0 && errno != EEXIST)
        return -1;
    return (mkdir(dir, 0755) == 0 || errno == EEXIST) ? 0 : -1;
}

static void build_options(const ocl_ctx *c, char *buf, size_t len)
{
    cl_device_fp_config fp = 0;

    clGetDeviceInfo(c->device, CL_DEVICE_SINGLE_FP_CONFIG, sizeof fp, &fp, NULL);
    snprintf(buf, len, "-cl-std=CL1.2%s%s",
             (fp & CL_FP_CORRECTLY_ROUNDED_DIVIDE_SQRT) ? " -cl-fp32-correctly-rounded-divide-sqrt" : "",
             c->has_fp64 ? " -DDM_FP64=1" : " -cl-single-precision-constant");
}

static char *device_string(cl_device_id dev, cl_device_info what)
{
    size_t size = 0;

    if (clGetDeviceInfo(dev, what, 0, NULL, &size) != CL_SUCCESS || size == 0)
        return strdup("");
    char *s = malloc(size + 1);
    if (!s)
        return NULL;
    if (clGetDeviceInfo(dev, what, size, s, NULL) != CL_SUCCESS)
        s[0] = '\0';
    s[size] = '\0';
    return s;
}

static uint64_t cache_key(const ocl_ctx *c, const char *options)
{
    uint64_t h = FNV_OFFSET;
    char platform[256] = "";
    cl_device_info fields[] = {CL_DEVICE_NAME, CL_DEVICE_VERSION, CL_DRIVER_VERSION, CL_DEVICE_VENDOR};

    clGetPlatformInfo(c->platform, CL_PLATFORM_VERSION, sizeof platform - 1, platform, NULL);
    h = fnv1a_str(h, platform);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        char *s = device_string(c->device, fields[i]);
        h = fnv1a_str(h, s ? s : "");
        free(s);
    }
    h = fnv1a_str(h, options);
    for (size_t i = 0; i < dm_ocl_kernel_count; i++)
        h = fnv1a_str(h, dm_ocl_kernel_sources[i]);
    return h;
}

static dm_status build_log_error(ocl_ctx *c, cl_program prog, cl_int err, const char *options)
{
    size_t size = 0;
    char *log = NULL;

    if (clGetProgramBuildInfo(prog, c->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &size) == CL_SUCCESS &&
        size > 0 && (log = malloc(size + 1)) != NULL) {
        if (clGetProgramBuildInfo(prog, c->device, CL_PROGRAM_BUILD_LOG, size, log, NULL) != CL_SUCCESS)
            log[0] = '\0';
        log[size] = '\0';
    }
    ocl_log(DM_LOG_ERROR, "kernel build log (options \"%s\"):\n%s", options, log ? log : "(none)");
    dm_status st = ocl_fail(c, DM_ERR_BACKEND,
                            "opencl init: clBuildProgram failed: %s (%d) on %s with options \"%s\"; build log:\n%s",
                            ocl_error_name(err), (int)err, c->device_name, options,
                            log ? log : "(the driver returned no build log)");
    free(log);
    return st;
}

/* Reads and checks a cache file; returns the payload (malloc'd) or NULL. */
static unsigned char *cache_read(const char *path, uint64_t key, size_t *size)
{
    FILE *f = fopen(path, "rb");
    cache_header h;
    unsigned char *data = NULL;

    if (!f)
        return NULL;
    if (fread(&h, sizeof h, 1, f) != 1 || memcmp(h.magic, CACHE_MAGIC, 8) != 0 || h.key != key ||
        h.size == 0 || h.size > ((uint64_t)1 << 31)) {
        ocl_log(DM_LOG_INFO, "program cache %s: bad header, rebuilding", path);
        goto out;
    }
    data = malloc(h.size);
    if (!data)
        goto out;
    if (fread(data, 1, h.size, f) != h.size || fgetc(f) != EOF ||
        fnv1a(FNV_OFFSET, data, h.size) != h.checksum) {
        ocl_log(DM_LOG_INFO, "program cache %s: truncated or corrupt, rebuilding", path);
        free(data);
        data = NULL;
        goto out;
    }
    *size = h.size;
out:
    fclose(f);
    return data;
}

/* Writes the program binary to the cache: a temporary file renamed into place, so
 * concurrent processes never read a half-written entry. Failures only log a warning. */
static void cache_write(ocl_ctx *c, cl_program prog, const char *dir, const char *path, uint64_t key)
{
    size_t size = 0;
    unsigned char *bin = NULL;
    char tmp[4300];

    if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) != CL_SUCCESS ||
        size == 0 || !(bin = malloc(size)))
        goto fail;
    unsigned char *bins[1] = {bin};
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) != CL_SUCCESS)
        goto fail;
    if (make_dirs(dir) != 0)
        goto fail;

    cache_header h;
    memcpy(h.magic, CACHE_MAGIC, 8);
    h.key = key;
    h.size = size;
    h.checksum = fnv1a(FNV_OFFSET, bin, size);

    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f)
        goto fail;
    int ok = fwrite(&h, sizeof h, 1, f) == 1 && fwrite(bin, 1, size, f) == size;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        goto fail;
    }
    ocl_log(DM_LOG_DEBUG, "program cache: stored %zu bytes in %s", size, path);
    free(bin);
    return;
fail:
    ocl_log(DM_LOG_WARN, "program cache: cannot write %s (%s); the next run builds again", path,
            strerror(errno));
    free(bin);
    (void)c;
}

static void release_kernels(ocl_ctx *c)
{
    for (int i = 0; i < OCL_K_COUNT; i++) {
        if (c->kernels[i])
            clReleaseKernel(c->kernels[i]);
        c->kernels[i] = NULL;
    }
}

/* Creates every kernel; on failure names the kernel. */
static dm_status create_kernels(ocl_ctx *c, cl_program prog)
{
    for (int i = 0; i < OCL_K_COUNT; i++) {
        cl_int err;
        c->kernels[i] = clCreateKernel(prog, ocl_kernel_names[i], &err);
        if (err != CL_SUCCESS) {
            release_kernels(c);
            char call[128];
            snprintf(call, sizeof call, "clCreateKernel(%s)", ocl_kernel_names[i]);
            return ocl_fail_cl(c, "init", call, err);
        }
    }
    return DM_OK;
}

/* Tries the cached binary; returns 1 when the program and kernels are ready. */
static int load_cached(ocl_ctx *c, const char *path, uint64_t key, const char *options)
{
    size_t size = 0;
    unsigned char *bin = cache_read(path, key, &size);
    cl_int err, status = CL_SUCCESS;

    if (!bin)
        return 0;
    const unsigned char *bins[1] = {bin};
    cl_program prog = clCreateProgramWithBinary(c->context, 1, &c->device, &size, bins, &status, &err);
    free(bin);
    if (err != CL_SUCCESS || status != CL_SUCCESS) {
        ocl_log(DM_LOG_INFO, "program cache %s: driver rejected the binary (%s), rebuilding", path,
                ocl_error_name(err != CL_SUCCESS ? err : status));
        if (prog && err == CL_SUCCESS)
            clReleaseProgram(prog);
        return 0;
    }
    err = clBuildProgram(prog, 1, &c->device, options, NULL, NULL);
    if (err != CL_SUCCESS || create_kernels(c, prog) != DM_OK) {
        ocl_log(DM_LOG_INFO, "program cache %s: binary failed to build (%s), rebuilding", path,
                ocl_error_name(err));
        clReleaseProgram(prog);
        c->error[0] = '\0';
        return 0;
    }
    c->program = prog;
    return 1;
}

dm_status ocl_program_load(ocl_ctx *c)
{
    char options[256], dir[4096], path[4200];
    double t0 = ocl_now();

    build_options(c, options, sizeof options);
    uint64_t key = cache_key(c, options);
    int have_dir = ocl_cache_dir(dir, sizeof dir) == 0;
    if (have_dir)
        snprintf(path, sizeof path, "%s/opencl-%016llx.bin", dir, (unsigned long long)key);

    if (have_dir && load_cached(c, path, key, options)) {
        ocl_log(DM_LOG_DEBUG, "program cache hit: loaded %s in %.3f s", path, ocl_now() - t0);
        return DM_OK;
    }

    /* Build from the embedded sources. */
    cl_int err;
    cl_program prog = clCreateProgramWithSource(c->context, (cl_uint)dm_ocl_kernel_count,
                                                (const char **)dm_ocl_kernel_sources, NULL, &err);
    if (err != CL_SUCCESS)
        return ocl_fail_cl(c, "init", "clCreateProgramWithSource", err);
    err = clBuildProgram(prog, 1, &c->device, options, NULL, NULL);
    if (err != CL_SUCCESS) {
        dm_status st = build_log_error(c, prog, err, options);
        clReleaseProgram(prog);
        return st;
    }
    dm_status st = create_kernels(c, prog);
    if (st) {
        clReleaseProgram(prog);
        return st;
    }
    c->program = prog;
    ocl_log(DM_LOG_DEBUG, "program cache miss: built %zu kernel files from source in %.3f s",
            dm_ocl_kernel_count, ocl_now() - t0);

    if (have_dir)
        cache_write(c, prog, dir, path, key);
    else
        ocl_log(DM_LOG_WARN, "program cache: neither XDG_CACHE_HOME nor HOME is set, so nothing is cached");
    return DM_OK;
}
