/* A shared module without the dirmoe entry symbol: not a plugin. */
int dm_test_not_a_plugin(void);

int dm_test_not_a_plugin(void)
{
    return 42;
}
