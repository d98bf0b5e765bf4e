/* test_lookup.c - resolution across layers: order, stop rules, symlinks
 * inside the union root, errors, redirects, metacopy. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

static const char *L3[] = { "l1", "l2", "l3" };

static void test_order_and_stops(void)
{
	struct ovl_stack *s;
	struct ovl_info info;

	t_file("l1/a", "1");
	t_file("l2/a", "22");
	t_file("l3/b", "333");
	t_file("l3/d/deep", "x");	/* hidden: l2 has a file d between */
	t_file("l2/d", "file");
	t_mkdir("l1/d");
	t_file("l1/d/top", "t");
	t_whiteout("l2/gone");
	t_file("l3/gone", "old");
	t_mkdir("l1/o");
	t_file("l1/o/mine", "m");
	t_xattr("l1/o", "trusted.overlay.opaque", "y");
	t_file("l2/o/theirs", "t");
	t_mkdir("l1/n");
	t_xattr("l1/n", "trusted.overlay.opaque", "yy");	/* not opaque */
	t_file("l2/n/below", "b");
	s = t_open(L3, 3, 0);

	CHECK_EQ(t_layer(s, "a", 0), 1);
	CHECK_EQ(ovl_lookup(s, "a", 0, &info), 0);
	CHECK_EQ(info.st.st_size, 1);
	CHECK_EQ(t_layer(s, "b", 0), 3);
	CHECK_EQ(t_layer(s, "/b", 0), 3);
	CHECK_EQ(t_layer(s, "d/top", 0), 1);
	CHECK_EQ(t_layer(s, "d/deep", 0), -ENOENT);	/* cut by the file in l2 */
	CHECK_EQ(t_layer(s, "gone", 0), -ENOENT);
	CHECK_EQ(t_layer(s, "o/mine", 0), 1);
	CHECK_EQ(t_layer(s, "o/theirs", 0), -ENOENT);
	CHECK_EQ(t_layer(s, "n/below", 0), 2);
	CHECK_EQ(ovl_lookup(s, "d", 0, &info), 0);
	CHECK(!(info.flags & OVL_INFO_MERGED));	/* the file in l2 ends the merge */
	CHECK_EQ(info.st.st_nlink, 2);
	CHECK_EQ(ovl_lookup(s, "n", 0, &info), 0);
	CHECK_EQ(info.st.st_nlink, 1);	/* merged dir */
	CHECK(info.flags & OVL_INFO_MERGED);
	CHECK_EQ(ovl_lookup(s, "o", 0, &info), 0);
	CHECK(!(info.flags & OVL_INFO_MERGED));
	CHECK(info.flags & OVL_INFO_OPAQUE);
	CHECK_EQ(t_layer(s, "", 0), 1);
	CHECK_EQ(t_layer(s, "a/x", 0), -ENOTDIR);
	CHECK_EQ(t_layer(s, "a/", 0), -ENOTDIR);
	CHECK_EQ(t_layer(s, "d/", 0), 1);
	ovl_stack_close(s);
}

static void test_symlinks_stay_inside(void)
{
	struct ovl_stack *s;
	char buf[PATH_MAX];
	long n;

	t_file("l3/etc/passwd", "inside");
	t_symlink("/etc/passwd", "l1/abs");
	t_symlink("../../../../../etc/passwd", "l2/climb");
	t_symlink("loop2", "l1/loop1");
	t_symlink("loop1", "l2/loop2");
	t_symlink("etc", "l1/etcdir");
	t_symlink("nowhere", "l1/dangling");
	s = t_open(L3, 3, 0);

	CHECK_EQ(t_layer(s, "abs", OVL_LOOKUP_FOLLOW), 3);
	CHECK_EQ(t_layer(s, "climb", OVL_LOOKUP_FOLLOW), 3);
	CHECK_EQ(t_layer(s, "abs", 0), 1);
	CHECK_EQ(t_layer(s, "loop1", OVL_LOOKUP_FOLLOW), -ELOOP);
	CHECK_EQ(t_layer(s, "loop1", 0), 1);
	CHECK_EQ(t_layer(s, "etcdir/passwd", 0), 3);
	CHECK_EQ(t_layer(s, "etcdir/../etc/passwd", 0), 3);
	CHECK_EQ(t_layer(s, "../../etc/passwd", 0), 3);
	CHECK_EQ(t_layer(s, "dangling", OVL_LOOKUP_FOLLOW), -ENOENT);
	CHECK_EQ(t_layer(s, "dangling", 0), 1);
	n = ovl_realpath(s, "climb", OVL_LOOKUP_FOLLOW, 0, buf, sizeof(buf), NULL);
	CHECK(n > 0 && !strcmp(buf, t_path("l3/etc/passwd")));
	n = ovl_readlink(s, "climb", buf, sizeof(buf));
	CHECK_EQ(n, 25);
	CHECK_EQ(ovl_readlink(s, "etc", buf, sizeof(buf)), -EINVAL);
	int fd = ovl_open(s, "abs", O_RDONLY);

	CHECK(fd >= 0);
	if (fd >= 0) {
		CHECK_EQ(read(fd, buf, sizeof(buf)), 6);
		close(fd);
	}
	CHECK_EQ(ovl_open(s, "abs", O_RDONLY | O_NOFOLLOW), -ELOOP);
	fd = ovl_open(s, "etc", O_RDONLY | O_DIRECTORY);	/* the top layer's dir */
	CHECK(fd >= 0);
	if (fd >= 0)
		close(fd);
	CHECK_EQ(ovl_open(s, "abs", O_RDONLY | O_DIRECTORY), -ENOTDIR);
	CHECK_EQ(ovl_open(s, "abs", O_WRONLY), -EROFS);
	ovl_stack_close(s);
}

static void test_errors(void)
{
	struct ovl_stack *s;
	char name[300];
	struct ovl_config cfg = { 0 };
	const char *missing[] = { "/nonexistent-ovl-layer" };
	struct ovl_open_error bad;

	t_mkdir("l1");
	t_mkdir("l2");
	t_mkdir("l3");
	s = t_open(L3, 3, 0);
	memset(name, 'a', 256);
	name[256] = '\0';
	CHECK_EQ(t_layer(s, name, 0), -ENAMETOOLONG);
	name[255] = '\0';
	CHECK_EQ(t_layer(s, name, 0), -ENOENT);
	ovl_stack_close(s);

	cfg.lowers = missing;
	cfg.nlowers = 1;
	cfg.whiteouts = OVL_WHITEOUT_AUTO;
	CHECK_EQ(ovl_stack_open(&cfg, &s, &bad), -ENOENT);
	CHECK_EQ(bad.layer, 1);
	cfg.nlowers = 0;
	CHECK_EQ(ovl_stack_open(&cfg, &s, &bad), -EINVAL);
	cfg.nlowers = 1;
	cfg.upper = "/tmp";
	CHECK_EQ(ovl_stack_open(&cfg, &s, &bad), -EINVAL);	/* no work dir */
}

/* Layers that overlap are refused as the kernel refuses to mount them. */
static void test_overlaps(void)
{
	struct ovl_stack *s;
	struct ovl_config cfg = { .whiteouts = OVL_WHITEOUT_KERNEL };
	struct ovl_open_error bad;
	char l[PATH_MAX], l2[PATH_MAX], u[PATH_MAX], w[PATH_MAX], uin[PATH_MAX];
	const char *lowers[2] = { l, l2 };

	t_mkdir("l");
	t_mkdir("l/in");
	t_mkdir("u");
	t_mkdir("u/in");
	t_mkdir("w");
	snprintf(l, sizeof(l), "%s", t_path("l"));
	snprintf(u, sizeof(u), "%s", t_path("u"));
	snprintf(w, sizeof(w), "%s", t_path("w"));
	snprintf(uin, sizeof(uin), "%s", t_path("u/in"));
	cfg.lowers = lowers;
	cfg.nlowers = 1;
	cfg.upper = l;		/* the lower as its own upper */
	cfg.work = w;
	CHECK_EQ(ovl_stack_open(&cfg, &s, &bad), -ELOOP);
	CHECK_EQ(bad.layer, 1);
	CHECK_EQ(bad.other, 0);
	cfg.upper = u;
	cfg.work = uin;		/* work inside upper */
	CHECK_EQ(ovl_stack_open(&cfg, &s, &bad), -EINVAL);
	CHECK_EQ(bad.layer, OVL_LAYER_WORK);
	cfg.work = u;
	CHECK_EQ(ovl_stack_open(&cfg, &s, &bad), -EINVAL);
	cfg.work = w;
	snprintf(l2, sizeof(l2), "%s", t_path("l/in"));
	cfg.nlowers = 2;	/* a lower inside another */
	CHECK_EQ(ovl_stack_open(&cfg, &s, &bad), -ELOOP);
	CHECK_EQ(bad.layer, 2);
	CHECK_EQ(bad.other, 1);
	CHECK(bad.inside);
	snprintf(l2, sizeof(l2), "%s", t_path("l"));
	CHECK_EQ(ovl_stack_open(&cfg, &s, &bad), -ELOOP);	/* given twice */
	CHECK_EQ(bad.layer, 2);
	CHECK_EQ(bad.other, 1);
	CHECK(!bad.inside);
	/* An upper inside a lower mounts; reaching it through the lower is
	 * a trap. */
	snprintf(u, sizeof(u), "%s", t_path("l/in"));
	cfg.nlowers = 1;
	CHECK_EQ(ovl_stack_open(&cfg, &s, &bad), 0);
	CHECK_EQ(t_layer(s, "in", 0), -ELOOP);
	ovl_stack_close(s);
}

static void test_redirects(void)
{
	struct ovl_stack *s;
	const char *lw[] = { "l1", "l2" };

	t_mkdir("l1/new");
	t_xattr("l1/new", "trusted.overlay.redirect", "old");
	t_whiteout("l1/old");
	t_file("l2/old/content", "c");
	t_mkdir("l1/sub/moved");
	t_xattr("l1/sub/moved", "trusted.overlay.redirect", "/a/b");
	t_file("l2/a/b/deep", "d");
	t_mkdir("l1/bad");
	t_xattr("l1/bad", "trusted.overlay.redirect", "x/y");
	t_mkdir("l2/bad");
	s = t_open(lw, 2, 0);
	CHECK_EQ(t_layer(s, "new/content", 0), 2);
	CHECK_EQ(t_layer(s, "old", 0), -ENOENT);
	CHECK_EQ(t_layer(s, "sub/moved/deep", 0), 2);
	CHECK_EQ(t_layer(s, "bad", 0), -EINVAL);
	ovl_stack_close(s);
}

static void test_metacopy(void)
{
	struct ovl_stack *s;
	struct ovl_config cfg = { 0 };
	const char *lw[2];
	char p1[4096], p2[4096], buf[16];
	struct ovl_info info;
	int fd;

	t_file("l1/f", "");
	t_xattr("l1/f", "trusted.overlay.metacopy", "");
	t_file("l2/f", "data!");
	t_file("l1/orphan", "");
	t_xattr("l1/orphan", "trusted.overlay.metacopy", "");
	snprintf(p1, sizeof(p1), "%s", t_path("l1"));
	snprintf(p2, sizeof(p2), "%s", t_path("l2"));
	lw[0] = p1;
	lw[1] = p2;
	cfg.lowers = lw;
	cfg.nlowers = 2;
	cfg.whiteouts = OVL_WHITEOUT_AUTO;
	CHECK_EQ(ovl_stack_open(&cfg, &s, NULL), 0);
	CHECK_EQ(t_layer(s, "f", 0), -EPERM);	/* metacopy not enabled */
	ovl_stack_close(s);
	cfg.flags = OVL_CFG_METACOPY;
	CHECK_EQ(ovl_stack_open(&cfg, &s, NULL), 0);
	CHECK_EQ(ovl_lookup(s, "f", 0, &info), 0);
	CHECK_EQ(info.layer, 1);
	CHECK_EQ(info.data_layer, 2);
	CHECK(info.flags & OVL_INFO_METACOPY);
	fd = ovl_open(s, "f", O_RDONLY);
	CHECK(fd >= 0);
	if (fd >= 0) {
		CHECK_EQ(read(fd, buf, sizeof(buf)), 5);
		close(fd);
	}
	CHECK_EQ(t_layer(s, "orphan", 0), -EIO);
	ovl_stack_close(s);
}

/* What ovl_last_error says after a lookup meets a damaged stack: the
 * layer, the object in it, a reason and the offending value, for the call
 * that failed only (never after a success or another error). */
static void test_last_error(void)
{
	struct ovl_stack *s, *other;
	const char *lw[] = { "l1", "l2" };
	struct ovl_error_detail d;
	struct ovl_info info;
	char buf[16];

	t_mkdir("l1/x/bad");
	t_xattr("l1/x/bad", "trusted.overlay.redirect", "a/b");
	t_mkdir("l2/x/bad");
	t_file("l1/ok", "ok");
	t_file("l1/orphan", "");
	t_xattr("l1/orphan", "trusted.overlay.metacopy", "");
	s = t_open(lw, 2, 0);
	other = t_open(lw, 2, 0);

	CHECK_EQ(ovl_lookup(s, "x/bad", 0, &info), -EINVAL);
	CHECK_EQ(ovl_last_error(s, -EINVAL, &d), 0);
	CHECK_EQ(d.layer, 1);
	CHECK(!strcmp(d.path, "x/bad"));
	CHECK(!strcmp(d.value, "a/b"));
	CHECK(d.reason && strstr(d.reason, "redirect"));
	/* Only for that errno and that stack. */
	CHECK_EQ(ovl_last_error(s, -EIO, &d), -ENODATA);
	CHECK_EQ(ovl_last_error(other, -EINVAL, &d), -ENODATA);
	/* Below a bad directory: the same detail. */
	CHECK_EQ(ovl_lookup(s, "x/bad/y", 0, &info), -EINVAL);
	CHECK_EQ(ovl_last_error(s, -EINVAL, &d), 0);
	CHECK(!strcmp(d.path, "x/bad"));

	/* A success forgets it; so does an error with no detail. */
	CHECK_EQ(ovl_lookup(s, "ok", 0, &info), 0);
	CHECK_EQ(ovl_last_error(s, -EINVAL, &d), -ENODATA);
	CHECK_EQ(ovl_lookup(s, "x/bad", 0, &info), -EINVAL);
	CHECK_EQ(ovl_readlink(s, "ok", buf, sizeof(buf)), -EINVAL);	/* not a symlink */
	CHECK_EQ(ovl_last_error(s, -EINVAL, &d), -ENODATA);
	CHECK_EQ(ovl_lookup(s, "missing", 0, &info), -ENOENT);
	CHECK_EQ(ovl_last_error(s, -ENOENT, &d), -ENODATA);

	/* metacopy without data (here not even followed: EPERM, and why). */
	CHECK_EQ(ovl_lookup(s, "orphan", 0, &info), -EPERM);
	CHECK_EQ(ovl_last_error(s, -EPERM, &d), 0);
	CHECK_EQ(d.layer, 1);
	CHECK(!strcmp(d.path, "orphan"));
	CHECK(d.reason && strstr(d.reason, "metacopy"));
	CHECK(!strcmp(d.value, ""));
	/* From the cache too: the second lookup answers without I/O. */
	CHECK_EQ(ovl_lookup(s, "x/bad", OVL_LOOKUP_CACHED, &info), -EAGAIN);
	CHECK_EQ(ovl_last_error(s, -EAGAIN, &d), -ENODATA);
	ovl_stack_close(other);
	ovl_stack_close(s);
}

int main(void)
{
	int rc = 0;

	t_setup("order");
	test_order_and_stops();
	rc |= t_teardown();
	t_setup("symlinks");
	test_symlinks_stay_inside();
	rc |= t_teardown();
	t_setup("errors");
	test_errors();
	rc |= t_teardown();
	t_setup("overlaps");
	test_overlaps();
	rc |= t_teardown();
	t_setup("redirect");
	test_redirects();
	rc |= t_teardown();
	t_setup("metacopy");
	test_metacopy();
	rc |= t_teardown();
	t_setup("last_error");
	test_last_error();
	rc |= t_teardown();
	return rc;
}
