/*
 * Options of `dirmoe train`: one table that maps every command-line option
 * (and every `name = value` line of a --config file) to a dm_config field or
 * to a setting of the command itself, with its unit, default and range.
 */
#ifndef DM_TRAIN_OPTIONS_H
#define DM_TRAIN_OPTIONS_H

#include <stdio.h>

#include "dirmoe/config.h"
#include "cli.h"

/* Room for every entry of the table, including the terminating one. */
#define DM_TRAIN_MAX_OPTIONS 96

/* Settings of one `dirmoe train` invocation. */
typedef struct dm_train_cli {
    dm_config cfg;

    /* Settings of the command, not of the model. */
    const char *data;       /* --data FILE; NULL: the default corpus (dm_default_corpus_path) */
    const char *val;        /* --val FILE; NULL: hold out --val-fraction of --data */
    const char *backend;    /* --backend NAME; NULL: DIRMOE_BACKEND or auto */
    const char *out;        /* --out DIR */
    int resume;             /* --resume: continue from OUT/checkpoint.safetensors */
    int stop_after;         /* --stop-after N: save and stop after step N, 0 = off */
    int progress;           /* --progress auto|always|never, as DM_PROGRESS_* */

    /* Values parsed as text or in another type, copied into cfg by dm_train_cli_parse. */
    const char *router, *sparsity, *schedule, *kl_b, *selection, *progress_mode;
    double tau[2], alpha0[2];
    long long seed;
    char text[5][16];       /* storage for the choice names above after dm_train_cli_sync */

    dm_option opts[DM_TRAIN_MAX_OPTIONS];
} dm_train_cli;

enum { DM_PROGRESS_AUTO = 0, DM_PROGRESS_ALWAYS = 1, DM_PROGRESS_NEVER = 2 };

/* Fills cfg with the library defaults and the command's settings with theirs,
 * and builds the option table over this struct's fields. */
void dm_train_cli_init(dm_train_cli *cli);

/* Copies cfg's enum, range and seed values into the parsed-as-text fields, so a
 * later parse starts from cfg (used to start from a checkpoint's configuration). */
void dm_train_cli_sync(dm_train_cli *cli);

/*
 * Parses argv (argv[0] is the command name) on top of the current values and
 * checks every value and the combinations of values. Returns DM_CLI_OK,
 * DM_CLI_HELP (after printing the help to stdout) or DM_CLI_ERROR (after one
 * line on stderr that names the option).
 */
int dm_train_cli_parse(dm_train_cli *cli, int argc, char **argv);

/* Checks combinations of options (k against experts, heads against d_model, ...). */
int dm_train_cli_check(const dm_train_cli *cli);

/* Prints usage for `cmd` with one line per option, each followed by the
 * default taken from the option's current value. */
void dm_options_usage(FILE *out, const char *cmd, const char *args, const char *summary,
                      const dm_option *opts);

/*
 * Writes the default corpus path into buf: $DIRMOE_DATA_DIR/kjv.txt, else
 * $HOME/.local/share/dirmoe/kjv.txt. Returns 0, or 1 when neither variable is set.
 */
int dm_default_corpus_path(char *buf, size_t len);

/*
 * Reads the training data and validation paths that a run recorded in the
 * configuration row (the first line) of its metrics.jsonl. Returns 1 when
 * found, else 0. *val is "" when the run held out the end of its data instead
 * of reading a separate file.
 */
int dm_run_data_paths(const char *metrics_path, char *data, char *val, size_t size);

#endif
