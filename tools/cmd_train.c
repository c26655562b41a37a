/* dirmoe train: placeholder until its implementation lands. */
#include "config.h"

#include "cli.h"

int dm_cmd_train(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return dm_cli_fail("train", "not implemented yet");
}
