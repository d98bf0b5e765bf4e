/* whiteout.c - what marks a name as deleted or a directory as opaque.
 *
 * Kernel forms (fs.h:IS_WHITEOUT, util.c:ovl_path_is_whiteout,
 * ovl_get_dir_xattr_val): a char device 0:0 with any mode bits; a zero-size
 * regular file carrying <ns>.overlay.whiteout; <ns>.overlay.opaque of
 * exactly "y" (opaque) or "x" (may hold xattr whiteouts).  The OCI/AUFS
 * on-disk forms are names, not attributes: ".wh.NAME" hides NAME in the
 * layers below (a NAME beside it is still seen), ".wh..wh..opq" makes its
 * directory opaque, and no name starting ".wh." is ever visible itself.
 * Every rule about these forms is here, named; the files that read
 * directories (readdir.c), look names up (namei.c) and change them
 * (dir.c) call it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "ovl_internal.h"

#define OCI_WH ".wh."
#define OCI_WH_LEN 4
#define OCI_OPQ ".wh..wh..opq"

/* Would mknod(2) with this mode and device make a kernel whiteout (a char
 * device 0:0)? */
bool ovl_is_whiteout_dev(mode_t mode, dev_t rdev)
{
	return S_ISCHR(mode) && rdev == makedev(0, 0);
}

/* Is this the metadata of a kernel whiteout, a char device 0:0 with any
 * mode bits (fs.h:IS_WHITEOUT)? */
bool ovl_is_whiteout_stat(const struct stat *st)
{
	return ovl_is_whiteout_dev(st->st_mode, st->st_rdev);
}

/* Make a kernel whiteout named name in dfd.  Return 0 or -errno. */
int ovl_mknod_whiteout(int dfd, const char *name)
{
	return mknodat(dfd, name, S_IFCHR, makedev(0, 0)) < 0 ? -errno : 0;
}

/* A DT_CHR entry: return 1 if it is a whiteout (rdev 0:0), 0 if a real
 * device, -errno on error. */
int ovl_classify_chr(const struct ovl_stack *s, int dfd, const char *name)
{
	struct stat st;

	(void)s;
	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return ovl_is_whiteout_stat(&st);
}

/* Return 1 if dfd/name is a zero-size regular file with <ns>.overlay.whiteout,
 * 0 if not, -errno on error. */
int ovl_is_xwhiteout_at(const struct ovl_stack *s, int dfd, const char *name)
{
	struct stat st;
	long r;

	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || st.st_size != 0)
		return 0;
	r = ovl_at_getxattr(s, dfd, name, s->x_whiteout, NULL, 0);
	if (r >= 0 || r == -ERANGE)
		return 1;
	return r == -ENODATA || r == -EOPNOTSUPP ? 0 : (int)r;
}

/* Is name (len bytes) an OCI marker, starting ".wh.": a whiteout
 * ".wh.NAME", the opaque marker, or ".wh." alone; never a visible name? */
bool ovl_oci_is_marker(const char *name, size_t len)
{
	return len >= OCI_WH_LEN && !memcmp(name, OCI_WH, OCI_WH_LEN);
}

/* Is name the OCI opaque marker ".wh..wh..opq"? */
bool ovl_oci_is_opaque_marker(const char *name)
{
	return !strcmp(name, OCI_OPQ);
}

/* The name an OCI marker (ovl_oci_is_marker) of len bytes hides: *hidden
 * points at NAME in ".wh.NAME"; return its length (0 for ".wh." alone). */
size_t ovl_oci_hidden_name(const char *marker, size_t len, const char **hidden)
{
	*hidden = marker + OCI_WH_LEN;
	return len - OCI_WH_LEN;
}

/* The OCI whiteout of name, ".wh.NAME", into buf (size bytes). */
void ovl_oci_whiteout_name(char *buf, size_t size, const char *name)
{
	snprintf(buf, size, OCI_WH "%s", name);
}

/* Does directory dfd hold ".wh.NAME", the OCI whiteout of name? */
bool ovl_oci_whiteout_at(int dfd, const char *name)
{
	char wh[OVL_NAME_MAX + 8];
	struct stat st;

	ovl_oci_whiteout_name(wh, sizeof(wh), name);
	return fstatat(dfd, wh, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* Does directory fd hold ".wh..wh..opq", the OCI opaque marker? */
bool ovl_oci_opaque_at(int fd)
{
	struct stat st;

	return fstatat(fd, OCI_OPQ, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* Mark directory fd opaque the OCI way: create ".wh..wh..opq" in it.
 * Return 0 or -errno. */
int ovl_oci_make_opaque(int fd)
{
	int mfd = openat(fd, OCI_OPQ, O_CREAT | O_WRONLY | O_CLOEXEC, 0);

	if (mfd < 0)
		return -errno;
	close(mfd);
	return 0;
}

/* Read the overlay xattrs of a directory opened for reading: *opaque gets
 * 'y', 'x' or 0; *has_redirect (if not NULL) whether it carries a redirect
 * (read with ovl_fd_redirect only where it matters: an opaque directory's
 * is never read).  One flistxattr answers for the common directory with no
 * xattrs at all.  Return 0 or -errno. */
int ovl_dir_xattrs(const struct ovl_stack *s, int fd, char *opaque,
		   bool *has_redirect_out)
{
	char small[512], *list = small, *p;
	ssize_t n;
	bool has_opaque = false, has_redirect = false;
	int err = 0;

	*opaque = 0;
	if (has_redirect_out)
		*has_redirect_out = false;
	n = flistxattr(fd, small, sizeof(small));
	if (n < 0 && errno == ERANGE) {
		n = flistxattr(fd, NULL, 0);
		if (n > 0) {
			list = malloc((size_t)n);
			if (!list)
				return -ENOMEM;
			n = flistxattr(fd, list, (size_t)n);
		}
	}
	if (n < 0) {
		err = (errno == EOPNOTSUPP || errno == ENOTSUP) ? 0 : -errno;
		goto out;
	}
	for (p = list; p < list + n; p += strlen(p) + 1) {
		if (strncmp(p, s->xprefix, s->xprefixlen))
			continue;
		if (!strcmp(p, s->x_opaque))
			has_opaque = true;
		else if (!strcmp(p, s->x_redirect))
			has_redirect = true;
	}
	if (has_opaque) {
		char v[2];
		long r = ovl_fd_getxattr(fd, s->x_opaque, v, sizeof(v));

		/* Only the single byte 'y' or 'x' means anything. */
		if (r == 1 && (v[0] == 'y' || v[0] == 'x'))
			*opaque = v[0];
	}
	if (has_redirect_out)
		*has_redirect_out = has_redirect;
out:
	if (list != small)
		free(list);
	return err;
}

/* The redirect of a directory opened for reading, parsed as below. */
int ovl_fd_redirect(const struct ovl_stack *s, int fd, char **out)
{
	char buf[4097];
	long r = ovl_fd_getxattr(fd, s->x_redirect, buf, sizeof(buf) - 1);

	return ovl_parse_redirect(buf, r, out);
}

/* <ns>.overlay.redirect as util.c:ovl_get_redirect_xattr reads it: a C
 * string (cut at a NUL), either one name with no '/' or an absolute path
 * with no empty component ("." and ".." fail later, with EACCES, when they
 * are looked up).  len is what getxattr returned for buf.  Return 0 with
 * *out malloc'd (NULL when there is no redirect) or -EINVAL. */
int ovl_parse_redirect(const char *buf, long len, char **out)
{
	char *r;

	*out = NULL;
	if (len == -ENODATA || len == -EOPNOTSUPP)
		return 0;
	if (len < 0)
		return len == -ERANGE ? -EINVAL : (int)len;	/* longer than a path */
	if (len == 0)
		return -EINVAL;
	r = strndup(buf, (size_t)len);
	if (!r)
		return -ENOMEM;
	if (r[0] == '/') {
		for (const char *p = r; *p;) {
			const char *c = p + 1, *e = strchrnul(c, '/');

			if (e == c)
				goto invalid;
			p = e;
		}
	} else if (!*r || strchr(r, '/')) {
		goto invalid;
	}
	*out = r;
	return 0;
invalid:
	free(r);
	return -EINVAL;
}

/* Is this xattr one of the stack's private <ns>.overlay.* names (and not an
 * escaped <ns>.overlay.overlay.* user name)? */
bool ovl_xattr_is_private(const struct ovl_stack *s, const char *name)
{
	return !strncmp(name, s->xprefix, s->xprefixlen) &&
	       strncmp(name + s->xprefixlen, "overlay.", 8);
}

