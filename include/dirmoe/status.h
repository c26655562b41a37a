/* dirmoe: status codes shared by the library, the CLI and every backend. */
#ifndef DIRMOE_STATUS_H
#define DIRMOE_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

/* Every fallible function returns one of these. DM_OK is zero, so `if (st)` tests for failure. */
typedef enum dm_status {
    DM_OK = 0,
    DM_ERR_INVALID = 1,     /* invalid argument or option value */
    DM_ERR_NOT_FOUND = 2,   /* missing file, unknown backend, unknown op */
    DM_ERR_IO = 3,          /* read or write failed */
    DM_ERR_FORMAT = 4,      /* corrupt or malformed file (checkpoint, safetensors) */
    DM_ERR_NOMEM = 5,       /* host or device allocation failed */
    DM_ERR_BACKEND = 6,     /* a backend call failed (driver error, kernel build) */
    DM_ERR_ABI = 7,         /* plugin built for another ABI version */
    DM_ERR_UNSUPPORTED = 8, /* the backend lacks an op or a device feature */
    DM_ERR_NUMERIC = 9,     /* NaN or Inf where a finite value is required */
    DM_ERR_INTERRUPTED = 10 /* stopped by SIGINT or SIGTERM */
} dm_status;

/* Returns a short constant name for a status, such as "invalid argument". */
const char *dm_status_name(dm_status st);

/*
 * Per-thread error message of the last failure in the library. Functions that
 * return a status other than DM_OK set it first, so a caller prints it as it is.
 */
const char *dm_last_error(void);

/* Sets the per-thread error message (printf format) and returns `st`, so that
 * `return dm_error(DM_ERR_INVALID, "...")` reports and fails in one statement. */
dm_status dm_error(dm_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#ifdef __cplusplus
}
#endif
#endif
