/*
 * dirmoe: reading and writing tensors in the safetensors format.
 *
 * A safetensors file is an 8-byte little-endian header length H, then H bytes
 * of JSON, then the data block. The JSON maps each tensor name to
 * {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, with byte
 * offsets relative to the start of the data block and data in little-endian
 * row-major order. An optional "__metadata__" entry maps strings to strings.
 *
 * dm_st_open checks the whole file before it returns, so a caller never sees a
 * half-valid file: every tensor's dtype, shape and offsets are checked against
 * each other and against the size of the data block. Holes between tensors
 * are allowed; overlapping tensors are not.
 */
#ifndef DIRMOE_SAFETENSORS_H
#define DIRMOE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "dirmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element types this reader and writer support. */
typedef enum dm_st_dtype {
    DM_ST_F32 = 0,
    DM_ST_I32 = 1,
    DM_ST_U32 = 2,
    DM_ST_F64 = 3   /* read and written, for high-precision test data */
} dm_st_dtype;

/* Largest number of dimensions of a tensor. */
#define DM_ST_MAX_DIMS 8

/* Largest accepted JSON header, in bytes (the limit of the reference implementation). */
#define DM_ST_MAX_HEADER (100u * 1000u * 1000u)

/* One tensor of an open file. `data` points into the file's data block and is
 * not necessarily aligned for the element type: read it with dm_st_read. */
typedef struct dm_st_tensor {
    const char *name;
    dm_st_dtype dtype;
    int ndim;                        /* 0 for a scalar */
    int64_t shape[DM_ST_MAX_DIMS];
    size_t numel;                    /* product of shape; 1 for a scalar */
    size_t nbytes;                   /* numel * element size */
    const void *data;
} dm_st_tensor;

typedef struct dm_st_file dm_st_file;
typedef struct dm_st_writer dm_st_writer;

/* Returns "F32", "I32", "U32" or "F64". */
const char *dm_st_dtype_name(dm_st_dtype dtype);

/* Returns the size of one element in bytes (4 or 8). */
size_t dm_st_dtype_size(dm_st_dtype dtype);

/* ---- reading ------------------------------------------------------------ */

/* Reads and validates the whole file. On failure *out is NULL and the message
 * names the file and, where one is at fault, the tensor. */
dm_status dm_st_open(const char *path, dm_st_file **out);
void dm_st_close(dm_st_file *file);

/* The path given to dm_st_open. */
const char *dm_st_path(const dm_st_file *file);

/* Tensors in the order of their data offsets. */
int dm_st_count(const dm_st_file *file);
const dm_st_tensor *dm_st_tensor_at(const dm_st_file *file, int index);

/* Returns the tensor called `name`, or NULL. */
const dm_st_tensor *dm_st_find(const dm_st_file *file, const char *name);

/* Returns the metadata value of `key`, or NULL when the file has none. */
const char *dm_st_metadata(const dm_st_file *file, const char *key);
int dm_st_metadata_count(const dm_st_file *file);
/* Writes the key and value of entry `index` (0 <= index < dm_st_metadata_count). */
void dm_st_metadata_at(const dm_st_file *file, int index, const char **key, const char **value);

/*
 * Copies tensor `t` into dst (t->numel elements of type `want`), converting:
 * F64 to F32 rounds to nearest; F32 to F64 is exact; I32 and U32 convert to
 * each other only when every value fits. Any other pair fails with
 * DM_ERR_FORMAT, and the message names the tensor and both types.
 */
dm_status dm_st_read(const dm_st_file *file, const dm_st_tensor *t, dm_st_dtype want, void *dst);

/* ---- writing ------------------------------------------------------------ */

dm_status dm_st_writer_new(dm_st_writer **out);
void dm_st_writer_free(dm_st_writer *writer);

/* Adds a tensor; copies shape and data (numel * element size bytes). A name
 * may be added once, and "__metadata__" is reserved. */
dm_status dm_st_writer_add(dm_st_writer *writer, const char *name, dm_st_dtype dtype, int ndim,
                           const int64_t *shape, const void *data);

/* Sets one metadata string; a second call with the same key replaces the value. */
dm_status dm_st_writer_set_metadata(dm_st_writer *writer, const char *key, const char *value);

/*
 * Writes the file atomically: the bytes go to a new temporary file in the
 * same directory, which is flushed, synced and then renamed over `path`. On
 * failure the temporary file is removed and `path` is left as it was.
 */
dm_status dm_st_writer_save(const dm_st_writer *writer, const char *path);

#ifdef __cplusplus
}
#endif
#endif
