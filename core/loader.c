/*
 * Plugin loader: finds backend modules on DIRMOE_PLUGIN_PATH and the
 * installed plugin directory, checks their ABI version, probes them and
 * opens the one the user selects.
 */
#include "config.h"

#include <dirent.h>
#include <stddef.h>
#include <ltdl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dirmoe/dirmoe.h"

#define MAX_CANDIDATES 256

/* Every member of dm_backend_ops that is not marked OPTIONAL in backend.h. */
typedef struct required_op {
    const char *name;
    size_t offset;
} required_op;

#define REQUIRED_OP(member) {#member, offsetof(dm_backend_ops, member)}
static const required_op required_ops[] = {
    REQUIRED_OP(alloc),
    REQUIRED_OP(free),
    REQUIRED_OP(upload),
    REQUIRED_OP(download),
    REQUIRED_OP(fill),
    REQUIRED_OP(copy),
    REQUIRED_OP(synchronize),
    REQUIRED_OP(gemm),
    REQUIRED_OP(axpy),
    REQUIRED_OP(scale),
    REQUIRED_OP(sum_squares),
    REQUIRED_OP(encoder_forward),
    REQUIRED_OP(encoder_backward),
    REQUIRED_OP(layernorm_forward),
    REQUIRED_OP(layernorm_backward),
    REQUIRED_OP(attention_forward),
    REQUIRED_OP(attention_backward),
    REQUIRED_OP(gelu_forward),
    REQUIRED_OP(gelu_backward),
    REQUIRED_OP(bias_forward),
    REQUIRED_OP(bias_backward),
    REQUIRED_OP(dispatch_build),
    REQUIRED_OP(gather_forward),
    REQUIRED_OP(gather_backward),
    REQUIRED_OP(combine_forward),
    REQUIRED_OP(combine_backward),
    REQUIRED_OP(philox),
    REQUIRED_OP(gamma_sample),
    REQUIRED_OP(gamma_grad),
    REQUIRED_OP(dirmoe_route_forward),
    REQUIRED_OP(dirmoe_route_backward),
    REQUIRED_OP(dirmoe_route_eval),
    REQUIRED_OP(dirmoe_reg_forward),
    REQUIRED_OP(dirmoe_reg_backward),
    REQUIRED_OP(topk_route_forward),
    REQUIRED_OP(topk_route_backward),
    REQUIRED_OP(balance_forward),
    REQUIRED_OP(balance_backward),
    REQUIRED_OP(xent_forward),
    REQUIRED_OP(xent_backward),
    REQUIRED_OP(adamw),
};
#define N_REQUIRED_OPS (sizeof required_ops / sizeof required_ops[0])

/* Counts the required ops a descriptor leaves NULL and names the first one. */
static int count_missing_ops(const dm_backend_desc *desc, const char **first)
{
    int missing = 0;

    *first = NULL;
    for (size_t i = 0; i < N_REQUIRED_OPS; i++) {
        void (*fn)(void);
        memcpy(&fn, (const char *)&desc->ops + required_ops[i].offset, sizeof fn);
        if (!fn) {
            if (!missing)
                *first = required_ops[i].name;
            missing++;
        }
    }
    return missing;
}

static int ltdl_ready;

static dm_status ensure_ltdl(void)
{
    if (ltdl_ready)
        return DM_OK;
    if (lt_dlinit() != 0)
        return dm_error(DM_ERR_BACKEND, "loader: lt_dlinit failed: %s", lt_dlerror());
    ltdl_ready = 1;
    return DM_OK;
}

/* Plugins log through the core's hook, so DIRMOE_LOG_LEVEL applies to them too. */
static void plugin_log(dm_log_level level, const char *component, const char *message)
{
    dm_log(level, component, "%s", message);
}

static int has_suffix(const char *name, const char *suffix)
{
    size_t n = strlen(name), m = strlen(suffix);
    return n > m && strcmp(name + n - m, suffix) == 0;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Appends the module files of one directory to `paths`, sorted by name. A
 * libtool .la file hides the .so of the same stem, which it describes. */
static int list_directory(const char *dir, char **paths, int count)
{
    DIR *d = opendir(dir);
    char *names[MAX_CANDIDATES];
    int n = 0;
    struct dirent *ent;

    if (!d) {
        dm_log(DM_LOG_DEBUG, "loader", "skipping plugin directory %s: cannot open it", dir);
        return count;
    }
    while ((ent = readdir(d)) != NULL && n < MAX_CANDIDATES) {
        if (has_suffix(ent->d_name, ".la") || has_suffix(ent->d_name, ".so"))
            names[n++] = strdup(ent->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], name_cmp);

    for (int i = 0; i < n; i++) {
        int hidden = 0;
        if (has_suffix(names[i], ".so")) {
            size_t stem = strlen(names[i]) - 3;
            for (int j = 0; j < n; j++)
                if (has_suffix(names[j], ".la") && strlen(names[j]) == stem + 3 &&
                    strncmp(names[j], names[i], stem) == 0)
                    hidden = 1;
        }
        if (!hidden && count < MAX_CANDIDATES) {
            size_t len = strlen(dir) + strlen(names[i]) + 2;
            paths[count] = malloc(len);
            if (paths[count])
                snprintf(paths[count++], len, "%s/%s", dir, names[i]);
        }
    }
    /* Freed only now: the hiding test above reads every name, earlier ones included. */
    for (int i = 0; i < n; i++)
        free(names[i]);
    return count;
}

static void append_dir(char *search, size_t size, const char *dir)
{
    size_t used = strlen(search);
    snprintf(search + used, size - used, "%s%s", used ? ":" : "", dir);
}

/* Loads one candidate and fills `info`; leaves the module open when it is a plugin. */
static void inspect_candidate(const char *path, dm_plugin_info *info)
{
    memset(info, 0, sizeof *info);
    snprintf(info->path, sizeof info->path, "%s", path);
    info->probe.score = -1;

    lt_dlhandle module = lt_dlopen(path);
    if (!module) {
        snprintf(info->skip_reason, sizeof info->skip_reason, "cannot be loaded: %s", lt_dlerror());
        return;
    }
    dm_backend_entry_fn entry = (dm_backend_entry_fn)(uintptr_t)lt_dlsym(module, DM_BACKEND_ENTRY_SYMBOL);
    const dm_backend_desc *desc = entry ? entry() : NULL;
    if (!desc) {
        snprintf(info->skip_reason, sizeof info->skip_reason,
                 "not a dirmoe plugin (no %s symbol)", DM_BACKEND_ENTRY_SYMBOL);
        lt_dlclose(module);
        return;
    }

    info->module = module;
    info->abi_version = desc->abi_version;
    if (desc->abi_version != DM_BACKEND_ABI_VERSION) {
        /* Only the version field is trusted: the rest of another ABI's descriptor may differ. */
        snprintf(info->skip_reason, sizeof info->skip_reason,
                 "built for plugin ABI version %u, but this dirmoe uses version %u: rebuild the plugin against this dirmoe",
                 desc->abi_version, (unsigned)DM_BACKEND_ABI_VERSION);
        return;
    }
    if (!desc->probe || !desc->init || !desc->shutdown || !desc->name) {
        snprintf(info->skip_reason, sizeof info->skip_reason,
                 "invalid plugin: the descriptor lacks name, probe, init or shutdown");
        return;
    }
    const char *first_missing;
    info->ops_missing = count_missing_ops(desc, &first_missing);
    if (first_missing)
        snprintf(info->first_missing_op, sizeof info->first_missing_op, "%s", first_missing);
    snprintf(info->name, sizeof info->name, "%s", desc->name ? desc->name : "");
    snprintf(info->description, sizeof info->description, "%s", desc->description ? desc->description : "");
    if (desc->set_log)
        desc->set_log(plugin_log);
    desc->probe(&info->probe);
    if (info->probe.score < 0) {
        snprintf(info->skip_reason, sizeof info->skip_reason, "probe failed: %s",
                 info->probe.reason[0] ? info->probe.reason : "no usable device");
        return;
    }
    info->usable = 1;
}

dm_status dm_plugins_scan(dm_plugin_list *out)
{
    char *paths[MAX_CANDIDATES];
    int count = 0;
    dm_status st;

    memset(out, 0, sizeof *out);
    out->auto_index = -1;
    if ((st = ensure_ltdl()) != DM_OK)
        return st;

    /* DIRMOE_PLUGIN_PATH first; empty entries are ignored, never read as ".". */
    const char *env = getenv("DIRMOE_PLUGIN_PATH");
    if (env) {
        char *copy = strdup(env), *save = NULL;
        for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
            append_dir(out->search_path, sizeof out->search_path, dir);
            count = list_directory(dir, paths, count);
        }
        free(copy);
    }
    append_dir(out->search_path, sizeof out->search_path, DM_PKGLIBDIR);
    count = list_directory(DM_PKGLIBDIR, paths, count);

    out->items = calloc((size_t)(count ? count : 1), sizeof *out->items);
    if (!out->items) {
        for (int i = 0; i < count; i++)
            free(paths[i]);
        return dm_error(DM_ERR_NOMEM, "loader: out of memory listing plugins");
    }
    for (int i = 0; i < count; i++) {
        dm_plugin_info *info = &out->items[out->count++];
        inspect_candidate(paths[i], info);
        free(paths[i]);
        if (!info->usable) {
            dm_log(DM_LOG_DEBUG, "loader", "skipping %s: %s", info->path, info->skip_reason);
            continue;
        }
        for (int j = 0; j < out->count - 1; j++)
            if (out->items[j].usable && strcmp(out->items[j].name, info->name) == 0) {
                snprintf(info->skip_reason, sizeof info->skip_reason,
                         "shadowed by %.250s earlier in the search path", out->items[j].path);
                info->usable = 0;
            }
        if (info->usable && info->ops_missing == 0 &&
            (out->auto_index < 0 || info->probe.score > out->items[out->auto_index].probe.score))
            out->auto_index = out->count - 1;
    }
    return DM_OK;
}

void dm_plugins_free(dm_plugin_list *list)
{
    if (!list || !list->items)
        return;
    for (int i = 0; i < list->count; i++)
        if (list->items[i].module)
            lt_dlclose((lt_dlhandle)list->items[i].module);
    free(list->items);
    list->items = NULL;
    list->count = 0;
}

/* Writes "reference (score 10), cpu (score 50), ..." for error messages. */
static void describe_found(const dm_plugin_list *list, char *buf, size_t size)
{
    buf[0] = '\0';
    for (int i = 0; i < list->count; i++) {
        const dm_plugin_info *info = &list->items[i];
        size_t used = strlen(buf);
        if (info->name[0] == '\0')
            continue;
        if (info->usable)
            snprintf(buf + used, size - used, "%s%s", used ? ", " : "", info->name);
        else
            snprintf(buf + used, size - used, "%s%s (unusable)", used ? ", " : "", info->name);
    }
    if (buf[0] == '\0')
        snprintf(buf, size, "none");
}

static dm_status init_plugin(dm_plugin_list *list, int index, dm_backend **out)
{
    dm_plugin_info *info = &list->items[index];
    lt_dlhandle module = (lt_dlhandle)info->module;
    dm_backend_entry_fn entry = (dm_backend_entry_fn)(uintptr_t)lt_dlsym(module, DM_BACKEND_ENTRY_SYMBOL);
    const dm_backend_desc *desc = entry();
    char err[512] = "";
    void *ctx = NULL;

    dm_status st = desc->init(&ctx, err, sizeof err);
    if (st != DM_OK)
        return dm_error(st, "backend %s (%s): initialisation failed: %s", info->name, info->path,
                        err[0] ? err : dm_status_name(st));

    dm_backend *be = calloc(1, sizeof *be);
    if (!be) {
        desc->shutdown(ctx);
        return dm_error(DM_ERR_NOMEM, "loader: out of memory");
    }
    be->desc = desc;
    be->ops = &desc->ops;
    be->ctx = ctx;
    be->module = module;
    snprintf(be->name, sizeof be->name, "%s", info->name);
    snprintf(be->path, sizeof be->path, "%s", info->path);
    info->module = NULL; /* now owned by the backend */
    *out = be;
    dm_log(DM_LOG_INFO, "loader", "using backend %s from %s", be->name, be->path);
    return DM_OK;
}

dm_status dm_backend_open(const char *name, dm_backend **out)
{
    dm_plugin_list list;
    char found[1024];
    dm_status st;

    *out = NULL;
    if (!name || !*name)
        name = getenv("DIRMOE_BACKEND");
    if (!name || !*name)
        name = "auto";
    if ((st = dm_plugins_scan(&list)) != DM_OK)
        return st;
    describe_found(&list, found, sizeof found);

    if (strcasecmp(name, "auto") == 0) {
        /* Try usable plugins from the highest score down, so a failed init falls back. */
        int tried[MAX_CANDIDATES] = {0};
        for (;;) {
            int best = -1;
            for (int i = 0; i < list.count; i++)
                if (list.items[i].usable && list.items[i].ops_missing == 0 && !tried[i] &&
                    (best < 0 || list.items[i].probe.score > list.items[best].probe.score))
                    best = i;
            if (best < 0)
                break;
            tried[best] = 1;
            st = init_plugin(&list, best, out);
            if (st == DM_OK)
                break;
            dm_log(DM_LOG_INFO, "loader", "%s; trying the next backend", dm_last_error());
        }
        if (!*out)
            st = dm_error(DM_ERR_NOT_FOUND,
                          "loader: no usable backend found (backends found: %s; searched: %s): "
                          "run 'dirmoe backends' to see why, or set DIRMOE_PLUGIN_PATH",
                          found, list.search_path);
        dm_plugins_free(&list);
        return st;
    }

    int match = -1;
    for (int i = 0; i < list.count && match < 0; i++)
        if (strcmp(list.items[i].name, name) == 0 && list.items[i].usable)
            match = i;
    if (match < 0) {
        for (int i = 0; i < list.count && match < 0; i++)
            if (strcmp(list.items[i].name, name) == 0)
                match = i;
        if (match >= 0)
            st = dm_error(DM_ERR_UNSUPPORTED, "loader: backend '%s' (%s) is unusable: %s (backends found: %s)",
                          name, list.items[match].path, list.items[match].skip_reason, found);
        else {
            /* A module of another ABI has no trusted name: mention it by file name. */
            char abi_note[1536] = "";
            for (int i = 0; i < list.count; i++)
                if (list.items[i].abi_version && list.items[i].abi_version != DM_BACKEND_ABI_VERSION &&
                    strstr(list.items[i].path, name)) {
                    snprintf(abi_note, sizeof abi_note, "; %.1000s %.320s", list.items[i].path,
                             list.items[i].skip_reason);
                    break;
                }
            st = dm_error(DM_ERR_NOT_FOUND,
                          "loader: unknown backend '%s' (backends found: %s; searched: %s%s): "
                          "set DIRMOE_BACKEND or --backend to one of the names found, or auto",
                          name, found, list.search_path, abi_note);
        }
        dm_plugins_free(&list);
        return st;
    }
    st = init_plugin(&list, match, out);
    dm_plugins_free(&list);
    return st;
}

void dm_backend_close(dm_backend *be)
{
    if (!be)
        return;
    if (be->desc && be->ctx)
        be->desc->shutdown(be->ctx);
    if (be->module)
        lt_dlclose((lt_dlhandle)be->module);
    free(be);
}

dm_status dm_backend_fail(const dm_backend *be, const char *op, dm_status st)
{
    const char *detail = be->desc->last_error ? be->desc->last_error(be->ctx) : "";
    return dm_error(st, "backend %s: %s failed: %s", be->name, op,
                    detail && *detail ? detail : dm_status_name(st));
}
