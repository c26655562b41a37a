/* dirmoe conformance: compares a backend with the reference, op by op. */
#include "config.h"

#include <regex.h>
#include <stdio.h>
#include <string.h>

#include "dirmoe/conformance.h"
#include "dirmoe/dirmoe.h"
#include "cli.h"

typedef struct report_ctx {
    int csv;
    int verbose;
} report_ctx;

static const char *result_name(dm_conf_result r)
{
    return r == DM_CONF_PASS ? "pass" : r == DM_CONF_FAIL ? "FAIL" : "skip";
}

static void report_row(const dm_conf_row *row, void *user)
{
    const report_ctx *rc = user;

    if (rc->csv) {
        /* Notes never contain double quotes, so quoting them is enough. */
        printf("%s,\"%s\",%s,%.3e,%.0e,%ld,\"%s\"\n", row->op, row->case_name, result_name(row->result), row->nmse,
               row->bound, row->flips, row->note);
        return;
    }
    printf("%-22s %-58s %-4s %10.3e %6.0e %5ld  %s\n", row->op, row->case_name, result_name(row->result), row->nmse,
           row->bound, row->flips, row->note);
    fflush(stdout);
}

int dm_cmd_conformance(int argc, char **argv)
{
    const char *backend = NULL, *op_regex = NULL, *format = "table";
    long long seed = 20260209;
    int no_model = 0;
    const dm_option opts[] = {
        {"backend", DM_OPT_STRING, &backend, "NAME", "backend under test (overrides DIRMOE_BACKEND; default auto)", 0, 0, NULL},
        {"op", DM_OPT_STRING, &op_regex, "REGEX", "only ops whose name matches this POSIX extended regular expression", 0, 0, NULL},
        {"format", DM_OPT_CHOICE, &format, "FMT", "output format: table or csv (default table)", 0, 0, "table|csv"},
        {"no-model", DM_OPT_FLAG, &no_model, NULL, "skip the whole-model check (20 training steps on both backends)", 0, 0, NULL},
        {"seed", DM_OPT_LONG, &seed, "N", "seed of the generated test data (default 20260209)", 1, 9.2e18, NULL},
        {NULL, 0, NULL, NULL, NULL, 0, 0, NULL},
    };
    int rc = dm_cli_parse("conformance", opts, argc, argv, NULL, 0, NULL);
    if (rc == DM_CLI_HELP) {
        dm_cli_usage(stdout, "conformance", NULL,
                     "Run every op of the registry (dirmoe op --list) on the backend under test and on\n"
                     "the reference with identical inputs, over sizes 1, primes and odd sizes, random,\n"
                     "zero and edge-value data, and fixed-noise and Philox-drawn router noise. A case\n"
                     "passes when no NaN appears where the reference has none, infinities match, the\n"
                     "NMSE is at most 1e-7 (forward) or 1e-6 (gradients) unless the op states a looser\n"
                     "bound, integer outputs are equal, routing decisions are equal wherever the margin\n"
                     "exceeds 1e-5 (flips inside it are counted), and guard elements around every\n"
                     "buffer are unchanged. Exits with status 1 when any case fails.",
                     opts);
        return 0;
    }
    if (rc)
        return 1;

    dm_backend *ref = NULL, *test = NULL;
    if (dm_backend_open("reference", &ref) != DM_OK)
        return dm_cli_fail("conformance", "%s", dm_last_error());
    if (dm_backend_open(backend, &test) != DM_OK) {
        dm_backend_close(ref);
        return dm_cli_fail("conformance", "%s", dm_last_error());
    }

    report_ctx ctx = {strcmp(format, "csv") == 0, 0};
    if (ctx.csv)
        printf("op,case,result,nmse,bound,flips,note\n");
    else
        printf("backend under test: %s (%s)\nreference: %s\n\n%-22s %-58s %-4s %10s %6s %5s  %s\n", test->name,
               test->path, ref->path, "op", "case", "res", "nmse", "bound", "flips", "note");

    dm_conf_options copts = {op_regex, (uint64_t)seed};
    dm_conf_summary sum;
    dm_status st = dm_conformance_run(ref, test, &copts, report_row, &ctx, &sum);

    /* The whole-model check runs with every op, or when --op matches "model". */
    regex_t re;
    int want_model = 1;
    if (op_regex && regcomp(&re, op_regex, REG_EXTENDED | REG_NOSUB) == 0) {
        want_model = regexec(&re, "model", 0, NULL, 0) == 0;
        regfree(&re);
    }
    if (!st && want_model && !no_model) {
        dm_conf_row row;
        st = dm_conformance_model(ref, test, 20, &row);
        if (!st) {
            report_row(&row, &ctx);
            sum.cases++;
            sum.passed += row.result == DM_CONF_PASS;
            sum.failed += row.result == DM_CONF_FAIL;
        }
    }
    dm_backend_close(test);
    dm_backend_close(ref);
    if (st)
        return dm_cli_fail("conformance", "%s", dm_last_error());

    fprintf(ctx.csv ? stderr : stdout,
            "\nsummary: %d cases, %d passed, %d failed, %d skipped; %ld routing decisions flipped inside the %g margin\n",
            sum.cases, sum.passed, sum.failed, sum.skipped, sum.flips, DM_CONF_DECISION_MARGIN);
    if (sum.cases == 0)
        return dm_cli_fail("conformance", "no op matches --op '%s': see dirmoe op --list", op_regex ? op_regex : "");
    return sum.failed ? 1 : 0;
}
