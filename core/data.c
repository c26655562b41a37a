/*
 * Byte-level text data: loading, the validation split, and batch sampling
 * with Philox so a batch depends only on (seed, stream, step).
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dirmoe/philox.h"
#include "dirmoe/train.h"

static dm_status read_file(const char *path, dm_dataset *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->path, sizeof out->path, "%s", path);

    FILE *f = fopen(path, "rb");
    if (!f) {
        int err = errno;
        if (err == ENOENT)
            return dm_error(DM_ERR_NOT_FOUND, "data file %s does not exist: check the path", path);
        return dm_error(DM_ERR_IO, "cannot open data file %s: %s", path, strerror(err));
    }

    size_t cap = 1 << 20, n = 0;
    uint8_t *bytes = malloc(cap);
    if (!bytes) {
        fclose(f);
        return dm_error(DM_ERR_NOMEM, "out of host memory while reading %s", path);
    }
    for (;;) {
        if (n == cap) {
            uint8_t *grown = realloc(bytes, cap * 2);
            if (!grown) {
                free(bytes);
                fclose(f);
                return dm_error(DM_ERR_NOMEM, "out of host memory while reading %s (%zu bytes so far)",
                                path, n);
            }
            bytes = grown;
            cap *= 2;
        }
        size_t got = fread(bytes + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(bytes);
        return dm_error(DM_ERR_IO, "cannot read data file %s (is it a directory?)", path);
    }
    if (n == 0) {
        free(bytes);
        return dm_error(DM_ERR_INVALID, "data file %s is empty: give a text file with at least one "
                        "sequence of bytes", path);
    }
    out->bytes = bytes;
    out->n = n;
    return DM_OK;
}

static dm_status check_length(const dm_dataset *ds, int seq_len, const char *part, const char *fix)
{
    if (ds->n < (size_t)seq_len + 1)
        return dm_error(DM_ERR_INVALID, "%s of %s has %zu bytes, fewer than one sequence of --seq-len %d "
                        "plus its next-token target (%d): %s", part, ds->path, ds->n, seq_len,
                        seq_len + 1, fix);
    return DM_OK;
}

dm_status dm_data_load(const char *train_path, const char *val_path, double val_fraction,
                       int seq_len, dm_data *out)
{
    dm_status st;
    memset(out, 0, sizeof *out);

    if (seq_len < 1)
        return dm_error(DM_ERR_INVALID, "--seq-len %d is invalid: use 1 or more", seq_len);
    if ((st = read_file(train_path, &out->train)) != DM_OK)
        return st;

    if (val_path) {
        if ((st = read_file(val_path, &out->val)) != DM_OK ||
            (st = check_length(&out->train, seq_len, "the training data", "use a longer file or a "
                               "smaller --seq-len")) != DM_OK ||
            (st = check_length(&out->val, seq_len, "the validation data", "use a longer file or a "
                               "smaller --seq-len")) != DM_OK) {
            dm_data_free(out);
            return st;
        }
        return DM_OK;
    }

    if (val_fraction < 0.0 || val_fraction >= 1.0) {
        dm_data_free(out);
        return dm_error(DM_ERR_INVALID, "--val-fraction %g is out of range: use [0, 1)", val_fraction);
    }
    size_t n_val = (size_t)(val_fraction * (double)out->train.n);
    if (n_val > 0) {
        /* The split keeps the tail of the file; the training part keeps its buffer. */
        out->val.bytes = malloc(n_val);
        if (!out->val.bytes) {
            dm_data_free(out);
            return dm_error(DM_ERR_NOMEM, "out of host memory for the validation split of %s", train_path);
        }
        memcpy(out->val.bytes, out->train.bytes + out->train.n - n_val, n_val);
        out->val.n = n_val;
        out->train.n -= n_val;
        snprintf(out->val.path, sizeof out->val.path, "%s", train_path);
    }

    if ((st = check_length(&out->train, seq_len, "the training part", "use a longer file, a smaller "
                           "--seq-len or a smaller --val-fraction")) != DM_OK ||
        (n_val > 0 && (st = check_length(&out->val, seq_len, "the validation part (the last "
                                         "--val-fraction of the file)", "use a longer file, a larger "
                                         "--val-fraction or a separate validation file")) != DM_OK)) {
        dm_data_free(out);
        return st;
    }
    return DM_OK;
}

void dm_data_free(dm_data *data)
{
    free(data->train.bytes);
    free(data->val.bytes);
    memset(data, 0, sizeof *data);
}

dm_status dm_batch_alloc(dm_batch *batch, int b, int t)
{
    memset(batch, 0, sizeof *batch);
    if (b < 1 || t < 1)
        return dm_error(DM_ERR_INVALID, "batch of %d x %d tokens is empty", b, t);
    batch->inputs = malloc((size_t)b * t * sizeof *batch->inputs);
    batch->targets = malloc((size_t)b * t * sizeof *batch->targets);
    if (!batch->inputs || !batch->targets) {
        dm_batch_free(batch);
        return dm_error(DM_ERR_NOMEM, "out of host memory for a batch of %d x %d tokens", b, t);
    }
    batch->b = b;
    batch->t = t;
    return DM_OK;
}

void dm_batch_free(dm_batch *batch)
{
    free(batch->inputs);
    free(batch->targets);
    memset(batch, 0, sizeof *batch);
}

dm_status dm_data_sample(const dm_dataset *ds, uint64_t seed, uint32_t stream, uint32_t step,
                         dm_batch *batch)
{
    const int b = batch->b, t = batch->t;

    if (ds->n < (size_t)t + 1)
        return dm_error(DM_ERR_INVALID, "%s has %zu bytes, fewer than one sequence of %d plus its target",
                        ds->path[0] ? ds->path : "the data", ds->n, t);

    /* Starts range over 0 .. n - t - 1, so start + t, the last target, stays inside the data. */
    const uint64_t span = (uint64_t)(ds->n - (size_t)t);
    for (int i = 0; i < b; i++) {
        dm_philox_block blk = dm_philox_at(seed, (uint32_t)i, 0, stream, DM_RNG_DATA, step);
        uint64_t start = ((((uint64_t)blk.w[1]) << 32) | blk.w[0]) % span;
        const uint8_t *src = ds->bytes + start;
        int32_t *in = batch->inputs + (size_t)i * t;
        int32_t *tg = batch->targets + (size_t)i * t;
        for (int j = 0; j < t; j++) {
            in[j] = src[j];
            tg[j] = src[j + 1];
        }
    }
    return DM_OK;
}
