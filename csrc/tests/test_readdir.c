/* test_readdir.c - merged listings: dedup, whiteouts hidden, the kernel's
 * order, OCI whiteouts and opaque markers. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>

#include "testutil.h"

static void test_merge(void)
{
	const char *lw[] = { "l1", "l2" };
	struct ovl_stack *s;
	struct ovl_dirlist *l;

	t_file("l2/d/z", "");	/* bottom names come first */
	t_file("l1/d/a", "");
	t_file("l1/d/z", "");
	t_whiteout("l1/d/gone");
	t_file("l2/d/gone", "");
	t_whiteout("l1/d/neverwas");
	t_mkdir("l1/plain");
	t_whiteout("l1/plain/wh");	/* hidden even in a one-layer dir */
	t_file("l1/plain/f", "");
	s = t_open(lw, 2, 0);
	CHECK(!strcmp(t_list(s, "d"), "z,a"));
	CHECK(!strcmp(t_list(s, "plain"), "f"));
	CHECK(!strcmp(t_list(s, "d/z"), "ERR20"));
	CHECK(!strcmp(t_list(s, "missing"), "ERR2"));
	CHECK_EQ(ovl_listdir(s, "d", 0, &l), 0);
	CHECK_EQ(l->n, 2);
	CHECK_EQ(l->ents[0].layer, 1);	/* z: the top-most occurrence supplies it */
	ovl_dirlist_free(l);
	ovl_stack_close(s);
}

static void test_xwhiteouts(void)
{
	const char *lw[] = { "l1", "l2", "l3" };
	struct ovl_stack *s;

	t_file("l3/d/x", "real");
	t_file("l3/d/y", "real");
	t_file("l2/d/x", "");
	t_xattr("l2/d/x", "trusted.overlay.whiteout", "");
	t_xattr("l2/d", "trusted.overlay.opaque", "x");
	t_file("l1/d/y", "");
	t_xattr("l1/d/y", "trusted.overlay.whiteout", "");	/* unmarked */
	s = t_open(lw, 3, 0);
	CHECK_EQ(t_layer(s, "d/x", 0), -ENOENT);
	CHECK_EQ(t_layer(s, "d/y", 0), -ENOENT);
	/* Marked: hidden from the listing; unmarked: listed, as the kernel does. */
	CHECK(!strcmp(t_list(s, "d"), "x,y") == 0);
	CHECK(!strcmp(t_list(s, "d"), "y"));
	ovl_stack_close(s);
}

static void test_oci(void)
{
	const char *lw[] = { "l1", "l2" };
	struct ovl_stack *s;

	t_file("l2/d/old", "");
	t_file("l2/d/kept", "");
	t_file("l1/d/.wh.old", "");
	t_file("l2/o/hidden", "");
	t_file("l1/o/.wh..wh..opq", "");
	t_file("l1/o/mine", "");
	t_file("l2/r/x", "");
	t_file("l1/r/.wh.x", "");
	t_file("l1/r/x", "");	/* same layer: x stays, lower x hidden */
	s = t_open(lw, 2, OVL_WHITEOUT_OCI);
	CHECK(!strcmp(t_list(s, "d"), "kept"));
	CHECK(!strcmp(t_list(s, "o"), "mine"));
	CHECK(!strcmp(t_list(s, "r"), "x"));
	CHECK_EQ(t_layer(s, "d/old", 0), -ENOENT);
	CHECK_EQ(t_layer(s, "d/.wh.old", 0), -ENOENT);
	CHECK_EQ(t_layer(s, "r/x", 0), 1);
	ovl_stack_close(s);
	/* In kernel mode the same names are ordinary files. */
	s = t_open(lw, 2, OVL_WHITEOUT_KERNEL);
	CHECK_EQ(t_layer(s, "d/.wh.old", 0), 1);
	CHECK_EQ(t_layer(s, "d/old", 0), 2);
	ovl_stack_close(s);
}

int main(void)
{
	int rc = 0;

	t_setup("merge");
	test_merge();
	rc |= t_teardown();
	t_setup("xwhiteout");
	test_xwhiteouts();
	rc |= t_teardown();
	t_setup("oci");
	test_oci();
	rc |= t_teardown();
	return rc;
}
