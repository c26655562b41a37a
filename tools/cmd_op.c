/* dirmoe op: placeholder until its implementation lands. */
#include "config.h"

#include "cli.h"

int dm_cmd_op(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return dm_cli_fail("op", "not implemented yet");
}
