/* dirmoe: finding, loading and selecting backend plugins with libltdl. */
#ifndef DIRMOE_LOADER_H
#define DIRMOE_LOADER_H

#include <stddef.h>

#include "dirmoe/backend.h"
#include "dirmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What the loader found in one candidate file. */
typedef struct dm_plugin_info {
    char path[1024];
    char name[64];          /* backend name, "" when the file is not a plugin */
    char description[160];
    unsigned abi_version;   /* 0 when the file is not a plugin */
    int usable;             /* 1: right ABI and probe score >= 0 */
    int ops_missing;        /* required ops left NULL: such a plugin is never picked by auto */
    char first_missing_op[48];
    char skip_reason[320];  /* why it is not usable */
    dm_probe_result probe;
    void *module;           /* lt_dlhandle while the list is alive; NULL if it did not load */
} dm_plugin_info;

typedef struct dm_plugin_list {
    int count;
    dm_plugin_info *items;
    char search_path[2048]; /* the directories searched, colon-separated, in order */
    int auto_index;         /* index that auto selects, -1 when none is usable */
} dm_plugin_list;

/* Scans DIRMOE_PLUGIN_PATH then the installed plugin directory. Plugins with
 * the same name later in the path are listed but shadowed by the first one. */
dm_status dm_plugins_scan(dm_plugin_list *out);
void dm_plugins_free(dm_plugin_list *list);

/* An initialised backend: descriptor, context and the module that holds them. */
typedef struct dm_backend {
    const dm_backend_desc *desc;
    const dm_backend_ops *ops;
    void *ctx;
    void *module;           /* lt_dlhandle */
    char name[64];
    char path[1024];
} dm_backend;

/*
 * Opens a backend. `name` is a plugin name, "auto", or NULL for the
 * DIRMOE_BACKEND environment variable (default auto). auto picks the usable
 * plugin with the highest probe score and falls back to the next one when
 * init fails. Errors list the backends found and the directories searched.
 */
dm_status dm_backend_open(const char *name, dm_backend **out);
void dm_backend_close(dm_backend *be);

/* Formats the error of a failed op: "backend NAME: OP failed: <backend message>". */
dm_status dm_backend_fail(const dm_backend *be, const char *op, dm_status st);

/* Calls an op and returns from the enclosing function on failure with a message
 * naming the op. Usage: DM_TRY_OP(be, gemm, 0, 0, m, n, k, ...). */
#define DM_TRY_OP(be, op, ...)                                                   \
    do {                                                                         \
        if (!(be)->ops->op)                                                      \
            return dm_error(DM_ERR_UNSUPPORTED, "backend %s lacks the op " #op   \
                            ": choose a complete backend such as reference",     \
                            (be)->name);                                         \
        dm_status dm_try_st_ = (be)->ops->op((be)->ctx, __VA_ARGS__);            \
        if (dm_try_st_ != DM_OK)                                                 \
            return dm_backend_fail((be), #op, dm_try_st_);                       \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
