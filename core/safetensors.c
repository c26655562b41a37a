/*
 * safetensors reader and writer (format described in dirmoe/safetensors.h).
 * The reader loads the whole file and validates it before returning; the
 * writer builds the header with cJSON and replaces the target atomically.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* open, fsync, fstat */
#endif
#include "config.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dirmoe/safetensors.h"

#define METADATA_KEY "__metadata__"

struct dm_st_file {
    char *path;
    unsigned char *data;      /* the data block, data_size bytes */
    size_t data_size;
    int count;
    dm_st_tensor *tensors;    /* sorted by data offset */
    size_t *begin;            /* byte offset of each tensor in the data block */
    int meta_count;
    char **meta_keys;
    char **meta_values;
};

typedef struct writer_entry {
    char *name;
    dm_st_dtype dtype;
    int ndim;
    int64_t shape[DM_ST_MAX_DIMS];
    size_t nbytes;
    void *data;
} writer_entry;

struct dm_st_writer {
    int count, cap;
    writer_entry *entries;
    int meta_count, meta_cap;
    char **meta_keys;
    char **meta_values;
};

static const char *const dtype_names[] = {"F32", "I32", "U32", "F64"};

const char *dm_st_dtype_name(dm_st_dtype dtype)
{
    return (unsigned)dtype < 4 ? dtype_names[dtype] : "?";
}

size_t dm_st_dtype_size(dm_st_dtype dtype)
{
    return dtype == DM_ST_F64 ? 8 : 4;
}

static int dtype_from_name(const char *name, dm_st_dtype *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, dtype_names[i]) == 0) {
            *out = (dm_st_dtype)i;
            return 1;
        }
    return 0;
}

static char *copy_string(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* Multiplies the dimensions; fails when numel * elem_size would overflow size_t. */
static int shape_numel(int ndim, const int64_t *shape, size_t elem_size, size_t *numel)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return 0;
        if (shape[i] != 0 && n > (SIZE_MAX / elem_size) / (size_t)shape[i])
            return 0;
        n *= (size_t)shape[i];
    }
    *numel = n;
    return 1;
}

/* ---- reading ------------------------------------------------------------ */

void dm_st_close(dm_st_file *file)
{
    if (!file)
        return;
    for (int i = 0; i < file->count; i++)
        free((char *)file->tensors[i].name);
    for (int i = 0; i < file->meta_count; i++) {
        free(file->meta_keys[i]);
        free(file->meta_values[i]);
    }
    free(file->tensors);
    free(file->begin);
    free(file->meta_keys);
    free(file->meta_values);
    free(file->data);
    free(file->path);
    free(file);
}

/* Reads a JSON number that must be an integer in [0, 2^53]. */
static int json_size(const cJSON *item, int64_t *out)
{
    if (!cJSON_IsNumber(item))
        return 0;
    double v = item->valuedouble;
    if (!(v >= 0 && v <= 9007199254740992.0) || v != floor(v))
        return 0;
    *out = (int64_t)v;
    return 1;
}

static dm_status parse_metadata(dm_st_file *f, const cJSON *meta)
{
    if (!cJSON_IsObject(meta))
        return dm_error(DM_ERR_FORMAT, "safetensors %s: %s must be an object of strings", f->path, METADATA_KEY);
    int n = cJSON_GetArraySize(meta);
    f->meta_keys = calloc((size_t)(n ? n : 1), sizeof(char *));
    f->meta_values = calloc((size_t)(n ? n : 1), sizeof(char *));
    if (!f->meta_keys || !f->meta_values)
        return dm_error(DM_ERR_NOMEM, "safetensors %s: out of memory reading the metadata", f->path);

    const cJSON *item;
    cJSON_ArrayForEach(item, meta) {
        if (!cJSON_IsString(item))
            return dm_error(DM_ERR_FORMAT, "safetensors %s: metadata value of '%s' is not a string",
                            f->path, item->string);
        for (int i = 0; i < f->meta_count; i++)
            if (strcmp(f->meta_keys[i], item->string) == 0)
                return dm_error(DM_ERR_FORMAT, "safetensors %s: metadata key '%s' appears twice",
                                f->path, item->string);
        f->meta_keys[f->meta_count] = copy_string(item->string);
        f->meta_values[f->meta_count] = copy_string(item->valuestring);
        f->meta_count++;
        if (!f->meta_keys[f->meta_count - 1] || !f->meta_values[f->meta_count - 1])
            return dm_error(DM_ERR_NOMEM, "safetensors %s: out of memory reading the metadata", f->path);
    }
    return DM_OK;
}

/* Parses one tensor entry into f->tensors[f->count] and its begin offset. */
static dm_status parse_tensor(dm_st_file *f, const cJSON *entry)
{
    const char *name = entry->string;
    dm_st_tensor *t = &f->tensors[f->count];
    int64_t begin, end;

    if (!cJSON_IsObject(entry))
        return dm_error(DM_ERR_FORMAT, "safetensors %s: tensor '%s': entry is not a JSON object", f->path, name);
    for (int i = 0; i < f->count; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return dm_error(DM_ERR_FORMAT, "safetensors %s: tensor '%s' appears twice in the header", f->path, name);

    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    if (!cJSON_IsString(dtype))
        return dm_error(DM_ERR_FORMAT, "safetensors %s: tensor '%s': missing \"dtype\" string", f->path, name);
    if (!dtype_from_name(dtype->valuestring, &t->dtype))
        return dm_error(DM_ERR_FORMAT,
                        "safetensors %s: tensor '%s': unsupported dtype '%s' (supported: F32, I32, U32, F64)",
                        f->path, name, dtype->valuestring);

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    if (!cJSON_IsArray(shape))
        return dm_error(DM_ERR_FORMAT, "safetensors %s: tensor '%s': missing \"shape\" array", f->path, name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > DM_ST_MAX_DIMS)
        return dm_error(DM_ERR_FORMAT, "safetensors %s: tensor '%s': %d dimensions, at most %d are supported",
                        f->path, name, ndim, DM_ST_MAX_DIMS);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        if (!json_size(cJSON_GetArrayItem(shape, i), &t->shape[i]))
            return dm_error(DM_ERR_FORMAT, "safetensors %s: tensor '%s': shape entry %d is not a non-negative integer",
                            f->path, name, i);
    size_t elem = dm_st_dtype_size(t->dtype);
    if (!shape_numel(ndim, t->shape, elem, &t->numel))
        return dm_error(DM_ERR_FORMAT, "safetensors %s: tensor '%s': shape is too large", f->path, name);
    t->nbytes = t->numel * elem;

    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
        !json_size(cJSON_GetArrayItem(offsets, 0), &begin) || !json_size(cJSON_GetArrayItem(offsets, 1), &end))
        return dm_error(DM_ERR_FORMAT,
                        "safetensors %s: tensor '%s': \"data_offsets\" must be two non-negative integers [begin, end]",
                        f->path, name);
    if (end < begin)
        return dm_error(DM_ERR_FORMAT, "safetensors %s: tensor '%s': data_offsets [%lld, %lld] end before they begin",
                        f->path, name, (long long)begin, (long long)end);
    if ((uint64_t)(end - begin) != (uint64_t)t->nbytes)
        return dm_error(DM_ERR_FORMAT,
                        "safetensors %s: tensor '%s': data_offsets [%lld, %lld] span %lld bytes, but shape and dtype %s need %zu",
                        f->path, name, (long long)begin, (long long)end, (long long)(end - begin),
                        dm_st_dtype_name(t->dtype), t->nbytes);
    if ((uint64_t)end > (uint64_t)f->data_size)
        return dm_error(DM_ERR_FORMAT,
                        "safetensors %s: tensor '%s': data ends at byte %lld of the data block, which has only %zu bytes (truncated file?)",
                        f->path, name, (long long)end, f->data_size);

    t->name = copy_string(name);
    if (!t->name)
        return dm_error(DM_ERR_NOMEM, "safetensors %s: out of memory", f->path);
    t->data = f->data + begin;
    f->begin[f->count] = (size_t)begin;
    f->count++;
    return DM_OK;
}

/* Sorts tensors by begin offset (insertion sort: headers are small) and rejects overlaps. */
static dm_status check_overlaps(dm_st_file *f)
{
    for (int i = 1; i < f->count; i++) {
        dm_st_tensor t = f->tensors[i];
        size_t b = f->begin[i];
        int j = i - 1;
        while (j >= 0 && f->begin[j] > b) {
            f->tensors[j + 1] = f->tensors[j];
            f->begin[j + 1] = f->begin[j];
            j--;
        }
        f->tensors[j + 1] = t;
        f->begin[j + 1] = b;
    }
    for (int i = 1; i < f->count; i++)
        if (f->begin[i - 1] + f->tensors[i - 1].nbytes > f->begin[i] && f->tensors[i].nbytes > 0)
            return dm_error(DM_ERR_FORMAT, "safetensors %s: tensors '%s' and '%s' overlap in the data block",
                            f->path, f->tensors[i - 1].name, f->tensors[i].name);
    return DM_OK;
}

static dm_status parse_header(dm_st_file *f, const char *json)
{
    const char *error_at = NULL;
    cJSON *root = cJSON_ParseWithOpts(json, &error_at, 1);
    dm_status st = DM_OK;

    if (!root)
        return dm_error(DM_ERR_FORMAT, "safetensors %s: header is not valid JSON (error near byte %ld of the header)",
                        f->path, error_at ? (long)(error_at - json) : -1L);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return dm_error(DM_ERR_FORMAT, "safetensors %s: header is not a JSON object", f->path);
    }

    int n = cJSON_GetArraySize(root);
    f->tensors = calloc((size_t)(n ? n : 1), sizeof *f->tensors);
    f->begin = calloc((size_t)(n ? n : 1), sizeof *f->begin);
    if (!f->tensors || !f->begin) {
        cJSON_Delete(root);
        return dm_error(DM_ERR_NOMEM, "safetensors %s: out of memory", f->path);
    }

    const cJSON *entry;
    cJSON_ArrayForEach(entry, root) {
        if (strcmp(entry->string, METADATA_KEY) == 0) {
            if (f->meta_keys)
                st = dm_error(DM_ERR_FORMAT, "safetensors %s: %s appears twice", f->path, METADATA_KEY);
            else
                st = parse_metadata(f, entry);
        } else {
            st = parse_tensor(f, entry);
        }
        if (st)
            break;
    }
    cJSON_Delete(root);
    return st ? st : check_overlaps(f);
}

static dm_status read_all(dm_st_file *f, FILE *fp, char **json)
{
    unsigned char len_bytes[8];
    struct stat sb;
    uint64_t header_len = 0;

    if (fstat(fileno(fp), &sb) != 0)
        return dm_error(DM_ERR_IO, "safetensors %s: cannot stat: %s", f->path, strerror(errno));
    uint64_t file_size = (uint64_t)sb.st_size;
    if (file_size < 8 || fread(len_bytes, 1, 8, fp) != 8)
        return dm_error(DM_ERR_FORMAT, "safetensors %s: file has %llu bytes, fewer than the 8-byte header length",
                        f->path, (unsigned long long)file_size);
    for (int i = 7; i >= 0; i--)
        header_len = (header_len << 8) | len_bytes[i];
    if (header_len > file_size - 8)
        return dm_error(DM_ERR_FORMAT,
                        "safetensors %s: header length %llu extends beyond the end of the file (%llu bytes): not a safetensors file, or truncated",
                        f->path, (unsigned long long)header_len, (unsigned long long)file_size);
    if (header_len > DM_ST_MAX_HEADER)
        return dm_error(DM_ERR_FORMAT, "safetensors %s: header length %llu exceeds the limit of %u bytes",
                        f->path, (unsigned long long)header_len, DM_ST_MAX_HEADER);

    *json = malloc((size_t)header_len + 1);
    f->data_size = (size_t)(file_size - 8 - header_len);
    f->data = malloc(f->data_size ? f->data_size : 1);
    if (!*json || !f->data)
        return dm_error(DM_ERR_NOMEM, "safetensors %s: out of memory for %llu bytes", f->path,
                        (unsigned long long)file_size);
    if (fread(*json, 1, (size_t)header_len, fp) != header_len ||
        fread(f->data, 1, f->data_size, fp) != f->data_size)
        return dm_error(DM_ERR_IO, "safetensors %s: read failed: %s", f->path,
                        ferror(fp) ? strerror(errno) : "file shrank while reading");
    (*json)[header_len] = '\0';
    if (strlen(*json) != header_len) {
        /* Trailing spaces are allowed padding, but a NUL byte is not JSON. */
        return dm_error(DM_ERR_FORMAT, "safetensors %s: header contains a NUL byte at offset %zu",
                        f->path, strlen(*json));
    }
    return DM_OK;
}

dm_status dm_st_open(const char *path, dm_st_file **out)
{
    char *json = NULL;
    dm_status st;

    *out = NULL;
    dm_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = copy_string(path))) {
        free(f);
        return dm_error(DM_ERR_NOMEM, "safetensors %s: out of memory", path);
    }
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        st = dm_error(errno == ENOENT ? DM_ERR_NOT_FOUND : DM_ERR_IO, "safetensors %s: cannot open: %s", path,
                      strerror(errno));
        dm_st_close(f);
        return st;
    }
    st = read_all(f, fp, &json);
    fclose(fp);
    if (!st)
        st = parse_header(f, json);
    free(json);
    if (st) {
        dm_st_close(f);
        return st;
    }
    *out = f;
    return DM_OK;
}

const char *dm_st_path(const dm_st_file *file)
{
    return file->path;
}

int dm_st_count(const dm_st_file *file)
{
    return file->count;
}

const dm_st_tensor *dm_st_tensor_at(const dm_st_file *file, int index)
{
    return index >= 0 && index < file->count ? &file->tensors[index] : NULL;
}

const dm_st_tensor *dm_st_find(const dm_st_file *file, const char *name)
{
    for (int i = 0; i < file->count; i++)
        if (strcmp(file->tensors[i].name, name) == 0)
            return &file->tensors[i];
    return NULL;
}

const char *dm_st_metadata(const dm_st_file *file, const char *key)
{
    for (int i = 0; i < file->meta_count; i++)
        if (strcmp(file->meta_keys[i], key) == 0)
            return file->meta_values[i];
    return NULL;
}

int dm_st_metadata_count(const dm_st_file *file)
{
    return file->meta_count;
}

void dm_st_metadata_at(const dm_st_file *file, int index, const char **key, const char **value)
{
    *key = file->meta_keys[index];
    *value = file->meta_values[index];
}

/* Element i of a little-endian block (the data pointer may be unaligned). */
static uint64_t load_le(const unsigned char *p, size_t size, size_t i)
{
    uint64_t v = 0;
    for (size_t b = size; b-- > 0;)
        v = (v << 8) | p[i * size + b];
    return v;
}

dm_status dm_st_read(const dm_st_file *file, const dm_st_tensor *t, dm_st_dtype want, void *dst)
{
    const unsigned char *src = t->data;
    size_t size = dm_st_dtype_size(t->dtype);

    for (size_t i = 0; i < t->numel; i++) {
        uint64_t bits = load_le(src, size, i);
        uint32_t b32 = (uint32_t)bits;
        float fv;
        double dv;

        if (t->dtype == want && size == 4) {
            ((uint32_t *)dst)[i] = b32;
            continue;
        }
        switch (want) {
        case DM_ST_F32:
            if (t->dtype != DM_ST_F64)
                goto mismatch;
            memcpy(&dv, &bits, 8);
            ((float *)dst)[i] = (float)dv;
            break;
        case DM_ST_F64:
            if (t->dtype == DM_ST_F64) {
                memcpy(&dv, &bits, 8);
            } else if (t->dtype == DM_ST_F32) {
                memcpy(&fv, &b32, 4);
                dv = fv;
            } else {
                goto mismatch;
            }
            ((double *)dst)[i] = dv;
            break;
        case DM_ST_I32:
        case DM_ST_U32:
            /* I32 <-> U32: the same bits, valid when the value is in [0, INT32_MAX]. */
            if ((t->dtype != DM_ST_I32 && t->dtype != DM_ST_U32) || b32 > INT32_MAX)
                goto mismatch;
            ((uint32_t *)dst)[i] = b32;
            break;
        }
    }
    return DM_OK;

mismatch:
    return dm_error(DM_ERR_FORMAT, "safetensors %s: tensor '%s' has dtype %s, which cannot be read as %s%s",
                    file->path, t->name, dm_st_dtype_name(t->dtype), dm_st_dtype_name(want),
                    (t->dtype == DM_ST_I32 || t->dtype == DM_ST_U32) &&
                            (want == DM_ST_I32 || want == DM_ST_U32)
                        ? " (a value does not fit)"
                        : "");
}

/* ---- writing ------------------------------------------------------------ */

dm_status dm_st_writer_new(dm_st_writer **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? DM_OK : dm_error(DM_ERR_NOMEM, "safetensors: out of memory");
}

void dm_st_writer_free(dm_st_writer *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->count; i++) {
        free(w->entries[i].name);
        free(w->entries[i].data);
    }
    for (int i = 0; i < w->meta_count; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->entries);
    free(w->meta_keys);
    free(w->meta_values);
    free(w);
}

dm_status dm_st_writer_add(dm_st_writer *w, const char *name, dm_st_dtype dtype, int ndim,
                           const int64_t *shape, const void *data)
{
    size_t numel;

    if (strcmp(name, METADATA_KEY) == 0)
        return dm_error(DM_ERR_INVALID, "safetensors: '%s' is reserved and cannot name a tensor", name);
    if ((unsigned)dtype > DM_ST_F64)
        return dm_error(DM_ERR_INVALID, "safetensors: tensor '%s': unknown dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > DM_ST_MAX_DIMS)
        return dm_error(DM_ERR_INVALID, "safetensors: tensor '%s': %d dimensions, expected 0 to %d", name, ndim,
                        DM_ST_MAX_DIMS);
    if (!shape_numel(ndim, shape, dm_st_dtype_size(dtype), &numel))
        return dm_error(DM_ERR_INVALID, "safetensors: tensor '%s': negative or too large shape", name);
    for (int i = 0; i < w->count; i++)
        if (strcmp(w->entries[i].name, name) == 0)
            return dm_error(DM_ERR_INVALID, "safetensors: tensor '%s' was already added", name);

    if (w->count == w->cap) {
        int cap = w->cap ? 2 * w->cap : 8;
        writer_entry *grown = realloc(w->entries, (size_t)cap * sizeof *grown);
        if (!grown)
            return dm_error(DM_ERR_NOMEM, "safetensors: out of memory");
        w->entries = grown;
        w->cap = cap;
    }
    writer_entry *e = &w->entries[w->count];
    memset(e, 0, sizeof *e);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e->shape[i] = shape[i];
    e->nbytes = numel * dm_st_dtype_size(dtype);
    e->name = copy_string(name);
    e->data = malloc(e->nbytes ? e->nbytes : 1);
    if (!e->name || !e->data) {
        free(e->name);
        free(e->data);
        return dm_error(DM_ERR_NOMEM, "safetensors: out of memory copying tensor '%s'", name);
    }
    if (e->nbytes)
        memcpy(e->data, data, e->nbytes);
    w->count++;
    return DM_OK;
}

dm_status dm_st_writer_set_metadata(dm_st_writer *w, const char *key, const char *value)
{
    char *v = copy_string(value);
    if (!v)
        return dm_error(DM_ERR_NOMEM, "safetensors: out of memory");
    for (int i = 0; i < w->meta_count; i++)
        if (strcmp(w->meta_keys[i], key) == 0) {
            free(w->meta_values[i]);
            w->meta_values[i] = v;
            return DM_OK;
        }
    if (w->meta_count == w->meta_cap) {
        int cap = w->meta_cap ? 2 * w->meta_cap : 8;
        char **keys = realloc(w->meta_keys, (size_t)cap * sizeof *keys);
        if (keys)
            w->meta_keys = keys;
        char **values = keys ? realloc(w->meta_values, (size_t)cap * sizeof *values) : NULL;
        if (values)
            w->meta_values = values;
        if (!keys || !values) {
            free(v);
            return dm_error(DM_ERR_NOMEM, "safetensors: out of memory");
        }
        w->meta_cap = cap;
    }
    w->meta_keys[w->meta_count] = copy_string(key);
    if (!w->meta_keys[w->meta_count]) {
        free(v);
        return dm_error(DM_ERR_NOMEM, "safetensors: out of memory");
    }
    w->meta_values[w->meta_count++] = v;
    return DM_OK;
}

/* Builds the JSON header; data offsets follow the order of addition, without gaps. */
static char *build_header(const dm_st_writer *w)
{
    cJSON *root = cJSON_CreateObject();
    size_t offset = 0;
    char *json = NULL;

    if (!root)
        return NULL;
    if (w->meta_count) {
        cJSON *meta = cJSON_AddObjectToObject(root, METADATA_KEY);
        for (int i = 0; meta && i < w->meta_count; i++)
            if (!cJSON_AddStringToObject(meta, w->meta_keys[i], w->meta_values[i]))
                goto done;
        if (!meta)
            goto done;
    }
    for (int i = 0; i < w->count; i++) {
        const writer_entry *e = &w->entries[i];
        cJSON *t = cJSON_AddObjectToObject(root, e->name);
        cJSON *shape = t ? cJSON_AddArrayToObject(t, "shape") : NULL;
        cJSON *offsets = shape ? cJSON_AddArrayToObject(t, "data_offsets") : NULL;
        if (!offsets || !cJSON_AddStringToObject(t, "dtype", dm_st_dtype_name(e->dtype)))
            goto done;
        for (int d = 0; d < e->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->shape[d]));
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)offset));
        offset += e->nbytes;
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)offset));
    }
    json = cJSON_PrintUnformatted(root);
done:
    cJSON_Delete(root);
    return json;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return 0;
        p += k;
        n -= (size_t)k;
    }
    return 1;
}

/* Writes every byte of the file to fd; returns 0 with errno set on failure. */
static int write_contents(int fd, const dm_st_writer *w, const char *json)
{
    /* Pad the header with spaces so the data block starts 8-byte aligned. */
    size_t len = strlen(json);
    size_t padded = (len + 7) / 8 * 8;
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; i++)
        len_bytes[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    if (!write_all(fd, len_bytes, 8) || !write_all(fd, json, len) || !write_all(fd, "        ", padded - len))
        return 0;

    /* The data block: little-endian, which is the host order on every supported platform. */
    for (int i = 0; i < w->count; i++)
        if (!write_all(fd, w->entries[i].data, w->entries[i].nbytes))
            return 0;
    return 1;
}

dm_status dm_st_writer_save(const dm_st_writer *w, const char *path)
{
    static unsigned counter;
    char tmp[4096];
    int fd = -1;

    /* A name unique to this process and call, created with O_EXCL so no other file is reused. */
    for (int attempt = 0; fd < 0 && attempt < 100; attempt++) {
        if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%u", path, (long)getpid(), counter++) >= (int)sizeof tmp)
            return dm_error(DM_ERR_INVALID, "safetensors %s: path is too long", path);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0666);
        if (fd < 0 && errno != EEXIST)
            return dm_error(DM_ERR_IO, "safetensors %s: cannot create the temporary file %s: %s", path, tmp,
                            strerror(errno));
    }
    if (fd < 0)
        return dm_error(DM_ERR_IO, "safetensors %s: cannot create a temporary file next to it", path);

    char *json = build_header(w);
    if (!json) {
        close(fd);
        unlink(tmp);
        return dm_error(DM_ERR_NOMEM, "safetensors %s: out of memory building the header", path);
    }
    int ok = write_contents(fd, w, json) && fsync(fd) == 0;
    int saved_errno = errno;
    free(json);
    if (close(fd) != 0 && ok) {
        ok = 0;
        saved_errno = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = 0;
        saved_errno = errno;
    }
    if (!ok) {
        unlink(tmp);
        return dm_error(DM_ERR_IO, "safetensors %s: write failed: %s (the file was left unchanged)", path,
                        strerror(saved_errno));
    }
    return DM_OK;
}
