/* dirmoe sample: placeholder until its implementation lands. */
#include "config.h"

#include "cli.h"

int dm_cmd_sample(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return dm_cli_fail("sample", "not implemented yet");
}
