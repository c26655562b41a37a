/* dirmoe backends: what the loader finds and what auto would pick. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "dirmoe/dirmoe.h"
#include "cli.h"

int dm_cmd_backends(int argc, char **argv)
{
    const char *backend = NULL;
    const dm_option opts[] = {
        {"backend", DM_OPT_STRING, &backend, "NAME", "backend to check (overrides DIRMOE_BACKEND; default auto)", 0, 0, NULL},
        {NULL, 0, NULL, NULL, NULL, 0, 0, NULL},
    };
    int rc = dm_cli_parse("backends", opts, argc, argv, NULL, 0, NULL);
    if (rc == DM_CLI_HELP) {
        dm_cli_usage(stdout, "backends", NULL,
                     "List every plugin on DIRMOE_PLUGIN_PATH and in the installed plugin directory,\n"
                     "with its path, ABI version, devices and probe score, then open the selected\n"
                     "backend (DIRMOE_BACKEND or --backend, default auto) and report it.", opts);
        return 0;
    }
    if (rc)
        return 1;

    dm_plugin_list list;
    if (dm_plugins_scan(&list) != DM_OK)
        return dm_cli_fail("backends", "%s", dm_last_error());

    printf("searched: %s\n", list.search_path);
    for (int i = 0; i < list.count; i++) {
        const dm_plugin_info *p = &list.items[i];
        if (p->abi_version == 0) {
            printf("\n%s\n  not a plugin: %s\n", p->path, p->skip_reason);
            continue;
        }
        printf("\n%s%s\n  path:   %s\n  ABI:    %u\n", p->name[0] ? p->name : "(unnamed)",
               i == list.auto_index ? "   [auto]" : "", p->path, p->abi_version);
        if (p->description[0])
            printf("  about:  %s\n", p->description);
        if (p->abi_version == DM_BACKEND_ABI_VERSION)
            printf("  probe:  score %d\n", p->probe.score);
        for (int d = 0; d < p->probe.n_devices; d++)
            printf("  device %d: %s%s%s\n", d, p->probe.devices[d].name,
                   p->probe.devices[d].detail[0] ? " - " : "", p->probe.devices[d].detail);
        if (p->usable && p->ops_missing)
            printf("  partial: %d of the required ops are missing (first: %s), so auto never picks it\n",
                   p->ops_missing, p->first_missing_op);
        if (!p->usable)
            printf("  unusable: %s\n", p->skip_reason);
    }
    if (list.auto_index >= 0)
        printf("\nauto selects: %s\n", list.items[list.auto_index].name);
    else
        printf("\nauto selects: nothing (no usable backend)\n");
    dm_plugins_free(&list);

    /* Open the selected backend, so a bad DIRMOE_BACKEND fails here with the list of names. */
    dm_backend *be;
    if (dm_backend_open(backend, &be) != DM_OK)
        return dm_cli_fail("backends", "%s", dm_last_error());
    const char *requested = backend ? backend : getenv("DIRMOE_BACKEND");
    printf("selected: %s (%s; requested: %s)\n", be->name, be->path,
           requested && *requested ? requested : "auto");
    dm_backend_close(be);
    return 0;
}
