/* A module that claims a future plugin ABI: the loader must skip it, naming both versions. */
#include "dirmoe/backend.h"

static const dm_backend_desc badabi_desc = {
    .abi_version = DM_BACKEND_ABI_VERSION + 998,
    .struct_size = sizeof(dm_backend_desc),
    .name = "badabi",
    .description = "test module with a wrong ABI version",
};

const dm_backend_desc *dm_backend_entry(void);

const dm_backend_desc *dm_backend_entry(void)
{
    return &badabi_desc;
}
