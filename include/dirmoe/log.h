/* dirmoe: one logging hook with levels, shared by the core and the plugins. */
#ifndef DIRMOE_LOG_H
#define DIRMOE_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dm_log_level {
    DM_LOG_ERROR = 0,
    DM_LOG_WARN = 1,
    DM_LOG_INFO = 2,
    DM_LOG_DEBUG = 3
} dm_log_level;

/* Receives every message at or above the threshold; `component` is "loader", "train", "opencl", ... */
typedef void (*dm_log_fn)(dm_log_level level, const char *component, const char *message, void *user);

/* Installs a log hook (NULL restores the default, which writes "dirmoe[component]: message" to stderr). */
void dm_log_set_hook(dm_log_fn fn, void *user);

/* Sets the threshold. The default comes from DIRMOE_LOG_LEVEL (error|warn|info|debug), else warn. */
void dm_log_set_level(dm_log_level level);
dm_log_level dm_log_get_level(void);

/* Parses "error", "warn", "info" or "debug"; returns -1 for anything else. */
int dm_log_parse_level(const char *name);

void dm_log(dm_log_level level, const char *component, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#ifdef __cplusplus
}
#endif
#endif
