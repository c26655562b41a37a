/* Option parsing shared by the subcommands. */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"

int dm_cli_fail(const char *cmd, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "dirmoe %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

static const dm_option *find_option(const dm_option *opts, const char *name, size_t len)
{
    for (const dm_option *o = opts; o->name; o++)
        if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
            return o;
    return NULL;
}

static int parse_double(const char *text, double *out)
{
    char *end;

    errno = 0;
    *out = strtod(text, &end);
    return *text != '\0' && *end == '\0' && errno == 0 && isfinite(*out);
}

static int choice_ok(const char *choices, const char *value)
{
    size_t len = strlen(value);
    const char *p = choices;

    while (p && *p) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && strncmp(p, value, n) == 0)
            return 1;
        p = bar ? bar + 1 : NULL;
    }
    return 0;
}

/* Applies one value; `source` is "" for the command line or " (in FILE)" for a config file. */
static int apply(const char *cmd, const dm_option *o, const char *value, const char *source)
{
    double x, y;

    switch (o->type) {
    case DM_OPT_INT:
    case DM_OPT_LONG: {
        char *end;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (*value == '\0' || *end != '\0' || errno != 0)
            return dm_cli_fail(cmd, "invalid value '%s' for --%s%s: expected an integer", value, o->name, source);
        if ((double)v < o->min || (double)v > o->max)
            return dm_cli_fail(cmd, "invalid value %lld for --%s%s: must be between %.15g and %.15g",
                               v, o->name, source, o->min, o->max);
        if (o->type == DM_OPT_INT)
            *(int *)o->target = (int)v;
        else
            *(long long *)o->target = v;
        return 0;
    }
    case DM_OPT_DOUBLE:
        if (!parse_double(value, &x))
            return dm_cli_fail(cmd, "invalid value '%s' for --%s%s: expected a finite number", value, o->name, source);
        if (x < o->min || x > o->max)
            return dm_cli_fail(cmd, "invalid value %g for --%s%s: must be between %g and %g",
                               x, o->name, source, o->min, o->max);
        *(double *)o->target = x;
        return 0;
    case DM_OPT_RANGE: {
        char buf[128];
        snprintf(buf, sizeof buf, "%s", value);
        char *colon = strchr(buf, ':');
        if (colon)
            *colon = '\0';
        if (!parse_double(buf, &x) || (colon ? !parse_double(colon + 1, &y) : ((y = x), 0)))
            return dm_cli_fail(cmd, "invalid value '%s' for --%s%s: expected START:END or one number",
                               value, o->name, source);
        if (x < o->min || x > o->max || y < o->min || y > o->max)
            return dm_cli_fail(cmd, "invalid value '%s' for --%s%s: both ends must be between %g and %g",
                               value, o->name, source, o->min, o->max);
        ((double *)o->target)[0] = x;
        ((double *)o->target)[1] = y;
        return 0;
    }
    case DM_OPT_STRING:
        if (*value == '\0')
            return dm_cli_fail(cmd, "empty value for --%s%s: give a non-empty value", o->name, source);
        *(const char **)o->target = value;
        return 0;
    case DM_OPT_CHOICE:
        if (!choice_ok(o->choices, value))
            return dm_cli_fail(cmd, "invalid value '%s' for --%s%s: expected one of %s", value, o->name,
                               source, o->choices);
        *(const char **)o->target = value;
        return 0;
    case DM_OPT_FLAG:
        if (strcasecmp(value, "1") == 0 || strcasecmp(value, "true") == 0 || strcasecmp(value, "yes") == 0)
            *(int *)o->target = 1;
        else if (strcasecmp(value, "0") == 0 || strcasecmp(value, "false") == 0 || strcasecmp(value, "no") == 0)
            *(int *)o->target = 0;
        else
            return dm_cli_fail(cmd, "invalid value '%s' for --%s%s: expected true or false", value, o->name, source);
        return 0;
    }
    return 1;
}

/* Strings set from the config file must outlive parsing: they stay in this list. */
static char *config_lines[512];
static int config_line_count;

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

static int apply_config(const char *cmd, const dm_option *opts, const char *path)
{
    FILE *f = fopen(path, "r");
    char line[1024], source[1100];
    int lineno = 0;

    if (!f)
        return dm_cli_fail(cmd, "cannot open config file '%s': %s", path, strerror(errno));
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *s = trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            fclose(f);
            return dm_cli_fail(cmd, "%s:%d: expected 'name = value', got '%s'", path, lineno, s);
        }
        *eq = '\0';
        char *key = trim(s), *value = trim(eq + 1);
        if (strncmp(key, "--", 2) == 0)
            key += 2;
        const dm_option *o = find_option(opts, key, strlen(key));
        if (!o) {
            fclose(f);
            return dm_cli_fail(cmd, "%s:%d: unknown option '%s' (see dirmoe %s --help)", path, lineno, key, cmd);
        }
        if (config_line_count == (int)(sizeof config_lines / sizeof config_lines[0])) {
            fclose(f);
            return dm_cli_fail(cmd, "%s: too many lines (at most 512)", path);
        }
        char *kept = strdup(value);
        config_lines[config_line_count++] = kept;
        snprintf(source, sizeof source, " (%s:%d)", path, lineno);
        if (apply(cmd, o, kept, source)) {
            fclose(f);
            return 1;
        }
    }
    fclose(f);
    return 0;
}

int dm_cli_parse(const char *cmd, const dm_option *opts, int argc, char **argv,
                 const char **positional, int max_positional, int *n_positional)
{
    if (n_positional)
        *n_positional = 0;

    /* Pass 1: --help and --config, so the file's values come before the command line's. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return DM_CLI_HELP;
        if (strcmp(argv[i], "--config") == 0 || strncmp(argv[i], "--config=", 9) == 0) {
            const char *path = argv[i][8] == '=' ? argv[i] + 9 : (i + 1 < argc ? argv[++i] : NULL);
            if (!path)
                return dm_cli_fail(cmd, "missing value for --config: give a file of 'name = value' lines");
            if (apply_config(cmd, opts, path))
                return DM_CLI_ERROR;
        }
    }

    /* Pass 2: the command line. */
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--config") == 0) {
            i++;
            continue;
        }
        if (strncmp(arg, "--config=", 9) == 0)
            continue;
        if (strncmp(arg, "--", 2) != 0) {
            if (positional && n_positional && *n_positional < max_positional) {
                positional[(*n_positional)++] = arg;
                continue;
            }
            return dm_cli_fail(cmd, "unexpected argument '%s' (see dirmoe %s --help)", arg, cmd);
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const dm_option *o = find_option(opts, name, len);
        if (!o)
            return dm_cli_fail(cmd, "unknown option '--%.*s' (see dirmoe %s --help)", (int)len, name, cmd);
        const char *value;
        if (eq)
            value = eq + 1;
        else if (o->type == DM_OPT_FLAG)
            value = "1";
        else if (i + 1 < argc)
            value = argv[++i];
        else
            return dm_cli_fail(cmd, "missing value for --%s", o->name);
        if (apply(cmd, o, value, ""))
            return DM_CLI_ERROR;
    }
    return DM_CLI_OK;
}

void dm_cli_usage(FILE *out, const char *cmd, const char *args, const char *summary, const dm_option *opts)
{
    fprintf(out, "usage: dirmoe %s [options]%s%s\n\n%s\n\noptions:\n", cmd, args ? " " : "", args ? args : "",
            summary);
    for (const dm_option *o = opts; o && o->name; o++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        fprintf(out, "  %-24s %s\n", left, o->help);
    }
    fprintf(out, "  %-24s %s\n", "--config FILE", "read options from FILE ('name = value' lines); the command line wins");
    fprintf(out, "  %-24s %s\n", "--help", "show this help");
}
