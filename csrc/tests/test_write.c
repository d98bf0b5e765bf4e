/* test_write.c - copy-up and changes leave the upper layer as the kernel
 * would: whiteouts, opaque directories, no trace for upper-only names. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "testutil.h"

static struct ovl_stack *open_rw(void)
{
	char l1[4096], l2[4096], up[4096], wk[4096];
	const char *lw[2] = { l1, l2 };
	struct ovl_config cfg = { .lowers = lw, .nlowers = 2, .upper = up, .work = wk,
				  .whiteouts = OVL_WHITEOUT_AUTO };
	struct ovl_stack *s = NULL;

	snprintf(l1, sizeof(l1), "%s", t_path("l1"));
	snprintf(l2, sizeof(l2), "%s", t_path("l2"));
	snprintf(up, sizeof(up), "%s", t_path("u"));
	snprintf(wk, sizeof(wk), "%s", t_path("w"));
	CHECK_EQ(ovl_stack_open(&cfg, &s, NULL), 0);
	return s;
}

static void test_changes(void)
{
	struct ovl_stack *s;
	struct stat st;
	char v[8];
	int fd;

	t_file("l2/d/lower", "L");
	t_file("l1/d/sub/x", "x");
	t_file("l2/file", "data");
	t_mkdir("u");
	t_mkdir("w");
	s = open_rw();

	/* Copy-up keeps content and creates the parent chain. */
	CHECK(ovl_copy_up(s, "d/sub/x", 0) >= 0);
	CHECK(lstat(t_path("u/d/sub/x"), &st) == 0 && st.st_size == 1);
	CHECK_EQ(t_layer(s, "d/sub/x", 0), 0);
	CHECK_EQ(ovl_copy_up(s, "d/sub/x", 0), OVL_COPY_NONE);

	/* A lower name goes with a whiteout; an upper-only one without trace. */
	CHECK_EQ(ovl_unlink(s, "d/lower"), 0);
	CHECK(lstat(t_path("u/d/lower"), &st) == 0 && S_ISCHR(st.st_mode) &&
	      st.st_rdev == makedev(0, 0));
	CHECK_EQ(t_layer(s, "d/lower", 0), -ENOENT);
	fd = ovl_open_write(s, "d/new", O_WRONLY | O_CREAT | O_EXCL, 0644);
	CHECK(fd >= 0);
	if (fd >= 0)
		close(fd);
	CHECK_EQ(ovl_unlink(s, "d/new"), 0);
	CHECK(lstat(t_path("u/d/new"), &st) < 0 && errno == ENOENT);

	/* Errors as through a mount. */
	CHECK_EQ(ovl_unlink(s, "d"), -EISDIR);
	CHECK_EQ(ovl_rmdir(s, "d"), -ENOTEMPTY);
	CHECK_EQ(ovl_rmdir(s, "file"), -ENOTDIR);
	CHECK_EQ(ovl_mkdir(s, "d", 0755), -EEXIST);
	CHECK_EQ(ovl_unlink(s, "nope"), -ENOENT);
	CHECK_EQ(ovl_mknod(s, "wh", S_IFCHR | 0600, makedev(0, 0)), -EPERM);

	/* A directory made over a whiteout is opaque. */
	CHECK_EQ(ovl_mkdir(s, "d/lower", 0755), 0);
	CHECK(getxattr(t_path("u/d/lower"), "trusted.overlay.opaque", v, sizeof(v)) == 1 &&
	      v[0] == 'y');
	CHECK(!strcmp(t_list(s, "d/lower"), ""));

	/* Attributes copy up first. */
	CHECK_EQ(ovl_chmod(s, "file", OVL_LOOKUP_FOLLOW, 0600), 0);
	CHECK(lstat(t_path("u/file"), &st) == 0 && (st.st_mode & 07777) == 0600 &&
	      st.st_size == 4);
	CHECK_EQ(ovl_truncate(s, "file", 1), 0);
	CHECK(lstat(t_path("u/file"), &st) == 0 && st.st_size == 1);
	CHECK(lstat(t_path("l2/file"), &st) == 0 && st.st_size == 4);
	ovl_stack_close(s);
}

int main(void)
{
	t_setup("write");
	test_changes();
	return t_teardown();
}
