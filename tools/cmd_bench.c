/* dirmoe bench: placeholder until its implementation lands. */
#include "config.h"

#include "cli.h"

int dm_cmd_bench(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return dm_cli_fail("bench", "not implemented yet");
}
