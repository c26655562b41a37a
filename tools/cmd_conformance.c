/* dirmoe conformance: placeholder until its implementation lands. */
#include "config.h"

#include "cli.h"

int dm_cmd_conformance(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return dm_cli_fail("conformance", "not implemented yet");
}
