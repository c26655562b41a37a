/* Loader: plugin discovery, ABI checks, selection and its error messages. */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dirmoe/dirmoe.h"

static char builddir[1024];
static char tmpdir[1024];

/* Points the loader at: an empty entry, a missing directory, a directory with
 * a corrupt .so, the build tree's plugins and the test modules. */
static void set_plugin_path(void)
{
    char path[4096];

    snprintf(path, sizeof path, "::/nonexistent/dirmoe-plugins:%s:%s/plugins:%s/tests/plugins", tmpdir,
             builddir, builddir);
    setenv("DIRMOE_PLUGIN_PATH", path, 1);
}

static void setup(void)
{
    const char *top = getenv("DIRMOE_TOP_BUILDDIR");
    ck_assert_msg(top != NULL, "DIRMOE_TOP_BUILDDIR must be set by the test harness");
    snprintf(builddir, sizeof builddir, "%s", top);

    snprintf(tmpdir, sizeof tmpdir, "/tmp/dirmoe-loader-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    char corrupt[1200];
    snprintf(corrupt, sizeof corrupt, "%s/dm_corrupt.so", tmpdir);
    FILE *f = fopen(corrupt, "wb");
    ck_assert_ptr_nonnull(f);
    fputs("this is not an ELF shared object\n", f);
    fclose(f);

    set_plugin_path();
    unsetenv("DIRMOE_BACKEND");
}

static void teardown(void)
{
    char corrupt[1200];
    snprintf(corrupt, sizeof corrupt, "%s/dm_corrupt.so", tmpdir);
    unlink(corrupt);
    rmdir(tmpdir);
}

static const dm_plugin_info *find_named(const dm_plugin_list *list, const char *name)
{
    for (int i = 0; i < list->count; i++)
        if (strcmp(list->items[i].name, name) == 0)
            return &list->items[i];
    return NULL;
}

static const dm_plugin_info *find_path(const dm_plugin_list *list, const char *fragment)
{
    for (int i = 0; i < list->count; i++)
        if (strstr(list->items[i].path, fragment))
            return &list->items[i];
    return NULL;
}

START_TEST(scan_finds_build_tree_plugins)
{
    dm_plugin_list list;

    ck_assert_int_eq(dm_plugins_scan(&list), DM_OK);
    const dm_plugin_info *ref = find_named(&list, "reference");
    ck_assert_ptr_nonnull(ref);
    ck_assert_int_eq(ref->usable, 1);
    ck_assert_int_eq(ref->ops_missing, 0);
    ck_assert_uint_eq(ref->abi_version, DM_BACKEND_ABI_VERSION);
    ck_assert_ptr_nonnull(strstr(ref->path, "/plugins/"));
    ck_assert_int_ge(list.auto_index, 0);
    ck_assert_ptr_nonnull(strstr(list.search_path, "/nonexistent/dirmoe-plugins"));
    dm_plugins_free(&list);
}
END_TEST

START_TEST(scan_skips_wrong_abi)
{
    dm_plugin_list list;
    char expected[64];

    ck_assert_int_eq(dm_plugins_scan(&list), DM_OK);
    const dm_plugin_info *bad = find_path(&list, "dm_badabi");
    ck_assert_ptr_nonnull(bad);
    ck_assert_int_eq(bad->usable, 0);
    snprintf(expected, sizeof expected, "version %u", (unsigned)(DM_BACKEND_ABI_VERSION + 998));
    ck_assert_ptr_nonnull(strstr(bad->skip_reason, expected));
    snprintf(expected, sizeof expected, "uses version %u", (unsigned)DM_BACKEND_ABI_VERSION);
    ck_assert_ptr_nonnull(strstr(bad->skip_reason, expected));
    dm_plugins_free(&list);
}
END_TEST

START_TEST(scan_skips_corrupt_and_foreign_modules)
{
    dm_plugin_list list;

    ck_assert_int_eq(dm_plugins_scan(&list), DM_OK);
    const dm_plugin_info *corrupt = find_path(&list, "dm_corrupt.so");
    ck_assert_ptr_nonnull(corrupt);
    ck_assert_int_eq(corrupt->usable, 0);
    ck_assert_ptr_nonnull(strstr(corrupt->skip_reason, "cannot be loaded"));

    const dm_plugin_info *foreign = find_path(&list, "dm_noentry");
    ck_assert_ptr_nonnull(foreign);
    ck_assert_int_eq(foreign->usable, 0);
    ck_assert_ptr_nonnull(strstr(foreign->skip_reason, "not a dirmoe plugin"));
    dm_plugins_free(&list);
}
END_TEST

START_TEST(scan_reports_failed_probe)
{
    dm_plugin_list list;

    ck_assert_int_eq(dm_plugins_scan(&list), DM_OK);
    const dm_plugin_info *np = find_named(&list, "noprobe");
    ck_assert_ptr_nonnull(np);
    ck_assert_int_eq(np->usable, 0);
    ck_assert_ptr_nonnull(strstr(np->skip_reason, "no test device present"));
    ck_assert(list.auto_index < 0 || strcmp(list.items[list.auto_index].name, "noprobe") != 0);
    dm_plugins_free(&list);
}
END_TEST

START_TEST(open_reference_by_name)
{
    dm_backend *be = NULL;

    ck_assert_int_eq(dm_backend_open("reference", &be), DM_OK);
    ck_assert_str_eq(be->name, "reference");
    ck_assert_ptr_nonnull(be->ops->gemm);
    dm_backend_close(be);
}
END_TEST

START_TEST(open_from_environment)
{
    dm_backend *be = NULL;

    setenv("DIRMOE_BACKEND", "reference", 1);
    ck_assert_int_eq(dm_backend_open(NULL, &be), DM_OK);
    ck_assert_str_eq(be->name, "reference");
    dm_backend_close(be);

    /* The explicit name wins over the environment, as --backend does. */
    setenv("DIRMOE_BACKEND", "nope", 1);
    ck_assert_int_eq(dm_backend_open("reference", &be), DM_OK);
    dm_backend_close(be);
}
END_TEST

START_TEST(open_auto_picks_highest_score)
{
    dm_backend *be = NULL;
    dm_plugin_list list;

    ck_assert_int_eq(dm_plugins_scan(&list), DM_OK);
    ck_assert_int_ge(list.auto_index, 0);
    char expected[64];
    snprintf(expected, sizeof expected, "%s", list.items[list.auto_index].name);
    for (int i = 0; i < list.count; i++)
        if (list.items[i].usable && list.items[i].ops_missing == 0)
            ck_assert_int_le(list.items[i].probe.score, list.items[list.auto_index].probe.score);
    dm_plugins_free(&list);

    ck_assert_int_eq(dm_backend_open("auto", &be), DM_OK);
    ck_assert_str_eq(be->name, expected);
    dm_backend_close(be);
}
END_TEST

START_TEST(open_unknown_lists_backends)
{
    dm_backend *be = NULL;

    ck_assert_int_eq(dm_backend_open("nope", &be), DM_ERR_NOT_FOUND);
    ck_assert_ptr_null(be);
    const char *msg = dm_last_error();
    ck_assert_ptr_nonnull(strstr(msg, "unknown backend 'nope'"));
    ck_assert_ptr_nonnull(strstr(msg, "reference"));
    ck_assert_ptr_nonnull(strstr(msg, builddir));
}
END_TEST

START_TEST(open_unusable_names_reason)
{
    dm_backend *be = NULL;

    ck_assert_int_eq(dm_backend_open("noprobe", &be), DM_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "no test device present"));

    ck_assert_int_eq(dm_backend_open("badabi", &be), DM_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(dm_last_error(), "ABI version"));
}
END_TEST

START_TEST(empty_plugin_path_is_harmless)
{
    dm_backend *be = NULL;
    char path[2048];

    snprintf(path, sizeof path, ":::%s/plugins:", builddir);
    setenv("DIRMOE_PLUGIN_PATH", path, 1);
    ck_assert_int_eq(dm_backend_open("reference", &be), DM_OK);
    dm_backend_close(be);
    set_plugin_path();
}
END_TEST

static Suite *loader_suite(void)
{
    Suite *s = suite_create("loader");
    TCase *tc = tcase_create("loader");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, scan_finds_build_tree_plugins);
    tcase_add_test(tc, scan_skips_wrong_abi);
    tcase_add_test(tc, scan_skips_corrupt_and_foreign_modules);
    tcase_add_test(tc, scan_reports_failed_probe);
    tcase_add_test(tc, open_reference_by_name);
    tcase_add_test(tc, open_from_environment);
    tcase_add_test(tc, open_auto_picks_highest_score);
    tcase_add_test(tc, open_unknown_lists_backends);
    tcase_add_test(tc, open_unusable_names_reason);
    tcase_add_test(tc, empty_plugin_path_is_harmless);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(loader_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
