/* A plugin whose probe finds no device: listed, but never selected. */
#include <stdio.h>
#include <string.h>

#include "dirmoe/backend.h"

static void noprobe_probe(dm_probe_result *out)
{
    memset(out, 0, sizeof *out);
    out->score = -1;
    snprintf(out->reason, sizeof out->reason, "no test device present");
}

static dm_status noprobe_init(void **ctx, char *err, size_t errlen)
{
    *ctx = NULL;
    snprintf(err, errlen, "no test device present");
    return DM_ERR_UNSUPPORTED;
}

static void noprobe_shutdown(void *ctx)
{
    (void)ctx;
}

static const dm_backend_desc noprobe_desc = {
    .abi_version = DM_BACKEND_ABI_VERSION,
    .struct_size = sizeof(dm_backend_desc),
    .name = "noprobe",
    .description = "test module whose probe fails",
    .probe = noprobe_probe,
    .init = noprobe_init,
    .shutdown = noprobe_shutdown,
};

const dm_backend_desc *dm_backend_entry(void);

const dm_backend_desc *dm_backend_entry(void)
{
    return &noprobe_desc;
}
