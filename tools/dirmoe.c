/* dirmoe command-line tool: dispatches to one subcommand per file. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dirmoe/dirmoe.h"
#include "cli.h"

typedef struct subcommand {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} subcommand;

static const subcommand subcommands[] = {
    {"train", dm_cmd_train, "train an MoE language model on a text corpus"},
    {"eval", dm_cmd_eval, "evaluate a checkpoint: loss, perplexity, bits per byte, routing metrics"},
    {"sample", dm_cmd_sample, "generate text from a checkpoint"},
    {"backends", dm_cmd_backends, "list backend plugins, their devices and which one auto picks"},
    {"op", dm_cmd_op, "run one backend op on tensors from a safetensors file"},
    {"conformance", dm_cmd_conformance, "check that a backend computes what the reference computes"},
    {"bench", dm_cmd_bench, "time training steps and report throughput and FLOP utilisation"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: dirmoe [--version] [--help] COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        fprintf(out, "  %-12s %s\n", subcommands[i].name, subcommands[i].summary);
    fprintf(out, "\nRun 'dirmoe COMMAND --help' for the options of a command.\n"
                 "Environment: DIRMOE_BACKEND, DIRMOE_PLUGIN_PATH, DIRMOE_LOG_LEVEL (see README.md).\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("dirmoe %s (plugin ABI %d)\n", dm_version(), DM_BACKEND_ABI_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }

    /* OpenMP threads (cpu backend) sleep while they wait instead of spinning, unless the
     * user set a policy. libgomp reads the variable when a plugin first loads it. Spinning
     * threads made training steps 1.5 to 2.4 times slower on a shared 2-core machine, where a
     * spinning thread occupies the core its partner needs (docs/BENCHMARKS.md). */
    setenv("OMP_WAIT_POLICY", "passive", 0);

    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        if (strcmp(argv[1], subcommands[i].name) == 0)
            return subcommands[i].run(argc - 1, argv + 1);

    fprintf(stderr, "dirmoe: unknown command '%s': run 'dirmoe --help' for the list of commands\n", argv[1]);
    return 2;
}
