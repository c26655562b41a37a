/* Option tables for the dirmoe subcommands: long options, a config file, checked values. */
#ifndef DM_CLI_H
#define DM_CLI_H

#include <stdio.h>

typedef enum dm_opt_type {
    DM_OPT_INT,     /* target: int; range [min, max] */
    DM_OPT_LONG,    /* target: long long; range [min, max] */
    DM_OPT_DOUBLE,  /* target: double; range [min, max] */
    DM_OPT_STRING,  /* target: const char * (points into argv or the config file copy) */
    DM_OPT_CHOICE,  /* target: const char *; value must be one of `choices` ("a|b|c") */
    DM_OPT_FLAG,    /* target: int, set to 1 (config file: true/false/1/0) */
    DM_OPT_RANGE    /* target: double[2]; "START:END" or one value for both; each in [min, max] */
} dm_opt_type;

typedef struct dm_option {
    const char *name;     /* long name without the leading "--" */
    dm_opt_type type;
    void *target;
    const char *metavar;  /* shown in --help, for example "N" or "FILE" */
    const char *help;     /* what the option sets, with its unit and default */
    double min, max;      /* inclusive bounds for numeric types */
    const char *choices;  /* for DM_OPT_CHOICE */
} dm_option;

/* Result of dm_cli_parse. */
enum { DM_CLI_OK = 0, DM_CLI_ERROR = 1, DM_CLI_HELP = 2 };

/*
 * Parses argv[1..argc-1] of subcommand `cmd` against `opts` (terminated by an
 * entry with name NULL). Accepts "--name value", "--name=value", "--help"
 * and "--config FILE", whose "name = value" lines are applied first so the
 * command line wins. Positional arguments are rejected unless `positional`
 * is non-NULL (it then receives up to `max_positional` of them, and their
 * count in *n_positional). On error prints one line to stderr.
 */
int dm_cli_parse(const char *cmd, const dm_option *opts, int argc, char **argv,
                 const char **positional, int max_positional, int *n_positional);

/* Prints "usage: dirmoe CMD [options]", the summary and one line per option. */
void dm_cli_usage(FILE *out, const char *cmd, const char *args, const char *summary,
                  const dm_option *opts);

/* Prints "dirmoe CMD: MESSAGE" to stderr and returns 1, for `return dm_cli_fail(...)`. */
int dm_cli_fail(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Entry points of the subcommands: each returns the process exit status. */
int dm_cmd_backends(int argc, char **argv);
int dm_cmd_train(int argc, char **argv);
int dm_cmd_eval(int argc, char **argv);
int dm_cmd_sample(int argc, char **argv);
int dm_cmd_op(int argc, char **argv);
int dm_cmd_conformance(int argc, char **argv);
int dm_cmd_bench(int argc, char **argv);

#endif
