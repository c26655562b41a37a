/* dirmoe eval: placeholder until its implementation lands. */
#include "config.h"

#include "cli.h"

int dm_cmd_eval(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return dm_cli_fail("eval", "not implemented yet");
}
