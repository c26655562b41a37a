/* Status names and the per-thread error message. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>

#include "dirmoe/dirmoe.h"

static _Thread_local char last_error[1024];

const char *dm_status_name(dm_status st)
{
    switch (st) {
    case DM_OK: return "ok";
    case DM_ERR_INVALID: return "invalid argument";
    case DM_ERR_NOT_FOUND: return "not found";
    case DM_ERR_IO: return "I/O error";
    case DM_ERR_FORMAT: return "malformed file";
    case DM_ERR_NOMEM: return "out of memory";
    case DM_ERR_BACKEND: return "backend error";
    case DM_ERR_ABI: return "plugin ABI mismatch";
    case DM_ERR_UNSUPPORTED: return "unsupported";
    case DM_ERR_NUMERIC: return "non-finite value";
    case DM_ERR_INTERRUPTED: return "interrupted";
    }
    return "unknown status";
}

const char *dm_last_error(void)
{
    return last_error;
}

dm_status dm_error(dm_status st, const char *fmt, ...)
{
    char message[sizeof last_error];
    va_list ap;

    /* Format into a scratch copy first: fmt's arguments may point into last_error. */
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    snprintf(last_error, sizeof last_error, "%s", message);
    return st;
}

const char *dm_version(void)
{
    return PACKAGE_VERSION;
}
