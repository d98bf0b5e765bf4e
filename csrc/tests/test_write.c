/* test_write.c - copy-up and changes leave the upper layer as the kernel
 * would: whiteouts, opaque directories, no trace for upper-only names. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "testutil.h"
#include "../ovl_internal.h"

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

/* One lower "<p>l", upper "<p>u", work "<p>w" with the given options. */
static int open_one(const char *p, unsigned flags, int whiteouts, int xattr_ns,
		    struct ovl_stack **s)
{
	char l1[4096], up[4096], wk[4096], rel[64];
	const char *lw[1] = { l1 };
	struct ovl_config cfg = { .lowers = lw, .nlowers = 1, .upper = up, .work = wk,
				  .whiteouts = whiteouts, .xattr_ns = xattr_ns, .flags = flags };

	snprintf(rel, sizeof(rel), "%sl", p);
	snprintf(l1, sizeof(l1), "%s", t_path(rel));
	snprintf(rel, sizeof(rel), "%su", p);
	snprintf(up, sizeof(up), "%s", t_path(rel));
	snprintf(rel, sizeof(rel), "%sw", p);
	snprintf(wk, sizeof(wk), "%s", t_path(rel));
	*s = NULL;
	return ovl_stack_open(&cfg, s, NULL);
}

static int open_redirect(unsigned flags, int whiteouts, int xattr_ns, struct ovl_stack **s)
{
	return open_one("r", flags, whiteouts, xattr_ns, s);
}

static int redirect_is(const char *rel, const char *want)
{
	char v[300];
	ssize_t n = getxattr(t_path(rel), "trusted.overlay.redirect", v, sizeof(v) - 1);

	if (n < 0)
		return 0;
	v[n] = '\0';
	return !strcmp(v, want);
}

static void test_redirect_dir(void)
{
	struct ovl_stack *s;
	struct stat st;

	t_file("rl/ld/y", "y");
	t_file("rl/ld/sub/z", "z");
	t_mkdir("rl/m");
	t_mkdir("ru");
	t_mkdir("rw");

	/* Combinations the kernel cannot read or refuses. */
	CHECK_EQ(open_redirect(OVL_CFG_REDIRECT_DIR | OVL_CFG_REDIRECT_NOFOLLOW, OVL_WHITEOUT_AUTO,
			       OVL_XATTR_TRUSTED, &s), -EINVAL);
	CHECK_EQ(open_redirect(OVL_CFG_REDIRECT_DIR, OVL_WHITEOUT_OCI, OVL_XATTR_TRUSTED, &s), -EINVAL);
	CHECK_EQ(open_redirect(OVL_CFG_REDIRECT_DIR, OVL_WHITEOUT_AUTO, OVL_XATTR_USER, &s), -EINVAL);

	/* Without the flag: EXDEV, nothing written. */
	CHECK_EQ(open_redirect(0, OVL_WHITEOUT_AUTO, OVL_XATTR_TRUSTED, &s), 0);
	CHECK_EQ(ovl_rename(s, "ld", "ld2"), -EXDEV);
	CHECK(lstat(t_path("ru/ld"), &st) < 0);
	ovl_stack_close(s);

	CHECK_EQ(open_redirect(OVL_CFG_REDIRECT_DIR, OVL_WHITEOUT_AUTO, OVL_XATTR_TRUSTED, &s), 0);
	/* Warm the cache first: the renamed subtree must not be answered from it. */
	CHECK(!strcmp(t_list(s, "ld"), "sub,y"));
	CHECK(!strcmp(t_list(s, "ld/sub"), "z"));
	/* Same parent: relative redirect, whiteout at the old name, the
	 * directory alone copied up. */
	CHECK_EQ(ovl_rename(s, "ld", "ld2"), 0);
	CHECK(redirect_is("ru/ld2", "ld"));
	CHECK(lstat(t_path("ru/ld"), &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0));
	CHECK(lstat(t_path("ru/ld2/y"), &st) < 0);
	CHECK_EQ(t_layer(s, "ld", 0), -ENOENT);
	CHECK_EQ(t_layer(s, "ld/sub", 0), -ENOENT);
	CHECK(!strcmp(t_list(s, "ld2"), "sub,y"));
	CHECK(!strcmp(t_list(s, "ld2/sub"), "z"));
	/* Into another parent: absolute, built from the parent's redirect. */
	CHECK_EQ(ovl_rename(s, "ld2/sub", "m/s"), 0);
	CHECK(redirect_is("ru/m/s", "/ld/sub"));
	CHECK(!strcmp(t_list(s, "m/s"), "z"));
	CHECK(!strcmp(t_list(s, "ld2"), "y"));
	/* Renamed again in the same parent: the redirect stays. */
	CHECK_EQ(ovl_rename(s, "ld2", "ld3"), 0);
	CHECK(redirect_is("ru/ld3", "ld"));
	CHECK(!strcmp(t_list(s, ""), "m,ld3"));	/* the lower's names first */
	/* A new directory in a merged one is opaque. */
	CHECK_EQ(ovl_mkdir(s, "ld3/new", 0755), 0);
	CHECK(getxattr(t_path("ru/ld3/new"), "trusted.overlay.opaque", NULL, 0) == 1);
	ovl_stack_close(s);
}

/* An upper metacopy file ("mu/NAME", size 5, data in "ml/NAME" unless
 * data is NULL), as a kernel mount with metacopy=on leaves one. */
static void t_metacopy(const char *name, const char *data)
{
	char rel[64];

	snprintf(rel, sizeof(rel), "ml/%s", name);
	if (data)
		t_file(rel, data);
	snprintf(rel, sizeof(rel), "mu/%s", name);
	t_file(rel, "");
	CHECK(truncate(t_path(rel), 5) == 0 && chmod(t_path(rel), 0600) == 0);
	t_xattr(rel, "trusted.overlay.metacopy", "");
}

static bool is_metacopy(const char *name)
{
	char rel[64];

	snprintf(rel, sizeof(rel), "mu/%s", name);
	return getxattr(t_path(rel), "trusted.overlay.metacopy", NULL, 0) >= 0;
}

/* Writing or truncating an upper metacopy file copies its data up first
 * (copy_up.c:ovl_copy_up_meta_inode_data); a metadata change does not. */
static void test_metacopy_data(void)
{
	char buf[16];
	struct ovl_stack *s = NULL;
	struct ovl_info info;
	struct stat st;
	int fd;

	t_mkdir("mw");
	t_metacopy("f", "hello");
	t_metacopy("g", "hello");
	t_metacopy("h", "hello");
	t_metacopy("k", "hello");
	t_metacopy("none", NULL);
	CHECK_EQ(open_one("m", OVL_CFG_METACOPY | OVL_CFG_REDIRECT_DIR, OVL_WHITEOUT_KERNEL,
			  OVL_XATTR_TRUSTED, &s), 0);
	if (!s)
		return;

	CHECK_EQ(ovl_chmod(s, "h", 0, 0640), 0);
	CHECK(is_metacopy("h"));

	CHECK_EQ(ovl_lookup(s, "f", 0, &info), 0);
	CHECK(info.flags & OVL_INFO_METACOPY);
	fd = ovl_open_write(s, "f", O_RDWR, 0);
	CHECK(fd >= 0);
	if (fd >= 0) {
		CHECK_EQ(pread(fd, buf, sizeof(buf), 0), 5);
		CHECK(!memcmp(buf, "hello", 5));
		close(fd);
	}
	CHECK(!is_metacopy("f"));
	CHECK_EQ(ovl_lookup(s, "f", 0, &info), 0);
	CHECK(!(info.flags & OVL_INFO_METACOPY) && info.data_layer == 0);

	fd = ovl_open_write(s, "g", O_WRONLY | O_TRUNC, 0);
	CHECK(fd >= 0 && fstat(fd, &st) == 0 && st.st_size == 0);
	if (fd >= 0)
		close(fd);
	CHECK(!is_metacopy("g"));

	CHECK(ovl_copy_up(s, "k", 0) > OVL_COPY_NONE);
	CHECK(!is_metacopy("k"));
	CHECK_EQ(ovl_copy_up(s, "k", 0), OVL_COPY_NONE);

	CHECK_EQ(ovl_open_write(s, "none", O_RDWR, 0), -EIO);
	CHECK_EQ(ovl_truncate(s, "none", 0), -EIO);
	CHECK(is_metacopy("none"));
	ovl_stack_close(s);
}

static bool zeros(int fd)
{
	char buf[4] = "xxxx";

	return read(fd, buf, sizeof(buf)) == 4 && !memcmp(buf, "\0\0\0\0", 4);
}

/* Device nodes open only with OVL_CFG_DEVICES; without it -EACCES as on a
 * nodev mount, in a lower layer (a nodev clone) and in the upper, also for
 * one that took a cached name's place.  Their xattrs are read without
 * opening them, and a copy-up copies the node. */
static void test_devices(void)
{
	char v[8];
	struct ovl_stack *s = NULL;
	struct ovl_info info;
	struct stat st;
	int fd;

	t_mkdir("dl");
	t_mkdir("du");
	t_mkdir("dw");
	t_file("dl/f", "f");
	t_file("du/g", "g");
	if (mknod(t_path("dl/zero"), S_IFCHR | 0666, makedev(1, 5)) < 0 ||
	    mknod(t_path("du/uzero"), S_IFCHR | 0666, makedev(1, 5)) < 0) {
		fprintf(stderr, "test_devices: skipped, mknod: %s\n", strerror(errno));
		return;
	}
	t_xattr("dl/zero", "trusted.k", "v");
	CHECK_EQ(open_one("d", 0, OVL_WHITEOUT_KERNEL, OVL_XATTR_TRUSTED, &s), 0);
	if (!s)
		return;
	CHECK_EQ(ovl_open(s, "zero", O_RDONLY), -EACCES);
	CHECK_EQ(ovl_open(s, "uzero", O_RDONLY | O_NONBLOCK), -EACCES);
	CHECK_EQ(ovl_open(s, "zero", O_RDONLY | O_DIRECTORY), -ENOTDIR);
	CHECK_EQ(ovl_open_write(s, "zero", O_WRONLY, 0), -EACCES);
	CHECK_EQ(ovl_open_write(s, "uzero", O_RDWR | O_TRUNC, 0), -EACCES);
	CHECK_EQ(ovl_open_write(s, "zero", O_WRONLY | O_DIRECTORY, 0), -ENOTDIR);
	CHECK(lstat(t_path("du/zero"), &st) < 0 && errno == ENOENT);
	/* Names that became devices behind the cache: the lower's clone
	 * refuses them (when it could be made), the upper's fd is checked. */
	CHECK_EQ(ovl_lookup(s, "f", 0, &info), 0);
	CHECK_EQ(ovl_lookup(s, "g", 0, &info), 0);
	CHECK(unlink(t_path("dl/f")) == 0 && unlink(t_path("du/g")) == 0);
	CHECK(mknod(t_path("dl/f"), S_IFCHR | 0666, makedev(1, 5)) == 0);
	CHECK(mknod(t_path("du/g"), S_IFCHR | 0666, makedev(1, 5)) == 0);
	if (s->layers[1].nodev)
		CHECK_EQ(ovl_open(s, "f", O_RDONLY), -EACCES);
	CHECK_EQ(ovl_open(s, "g", O_RDONLY), -EACCES);
	CHECK_EQ(ovl_open_write(s, "g", O_WRONLY, 0), -EACCES);
	/* xattrs, also the way kernels before 6.13 read them. */
	for (int i = 0; i < 2; i++) {
		CHECK_EQ(ovl_getxattr(s, "zero", 0, "trusted.k", v, sizeof(v)), 1);
		CHECK(ovl_listxattr(s, "zero", 0, v, 0) > 0);
		CHECK_EQ(ovl_getxattr(s, "uzero", 0, "trusted.k", v, sizeof(v)), -ENODATA);
		s->have_xattrat = false;
	}
	/* Copying the node up is metadata: mknod, not an open. */
	CHECK_EQ(ovl_chmod(s, "zero", 0, 0600), 0);
	CHECK(lstat(t_path("du/zero"), &st) == 0 && S_ISCHR(st.st_mode) &&
	      st.st_rdev == makedev(1, 5) && (st.st_mode & 07777) == 0600);
	ovl_stack_close(s);

	CHECK_EQ(open_one("d", OVL_CFG_DEVICES, OVL_WHITEOUT_KERNEL, OVL_XATTR_TRUSTED, &s), 0);
	if (!s)
		return;
	CHECK(!s->layers[1].nodev);
	fd = ovl_open(s, "f", O_RDONLY);
	CHECK(fd >= 0 && zeros(fd));
	if (fd >= 0)
		close(fd);
	fd = ovl_open_write(s, "uzero", O_RDWR, 0);
	CHECK(fd >= 0 && zeros(fd) && write(fd, "x", 1) == 1);
	if (fd >= 0)
		close(fd);
	ovl_stack_close(s);
}

int main(void)
{
	t_setup("write");
	test_changes();
	test_redirect_dir();
	test_metacopy_data();
	test_devices();
	return t_teardown();
}
