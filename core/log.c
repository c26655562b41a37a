/* The library's single log hook. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dirmoe/log.h"

static dm_log_fn log_hook;
static void *log_user;
static int log_level = -1; /* -1: not yet read from DIRMOE_LOG_LEVEL */

int dm_log_parse_level(const char *name)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};

    if (!name)
        return -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

dm_log_level dm_log_get_level(void)
{
    if (log_level < 0) {
        const char *env = getenv("DIRMOE_LOG_LEVEL");
        int parsed = dm_log_parse_level(env);
        log_level = parsed >= 0 ? parsed : DM_LOG_WARN;
        if (env && *env && parsed < 0)
            fprintf(stderr, "dirmoe[log]: invalid DIRMOE_LOG_LEVEL '%s': use error, warn, info or debug\n", env);
    }
    return (dm_log_level)log_level;
}

void dm_log_set_level(dm_log_level level)
{
    log_level = level;
}

void dm_log_set_hook(dm_log_fn fn, void *user)
{
    log_hook = fn;
    log_user = user;
}

void dm_log(dm_log_level level, const char *component, const char *fmt, ...)
{
    static const char *const prefixes[] = {"error: ", "warning: ", "", ""};
    char message[2048];
    va_list ap;

    if ((int)level > (int)dm_log_get_level())
        return;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);

    if (log_hook) {
        log_hook(level, component, message, log_user);
        return;
    }
    fprintf(stderr, "dirmoe[%s]: %s%s\n", component, prefixes[level], message);
}
