/* whiteout.c - what marks a name as deleted or a directory as opaque.
 *
 * Kernel forms (fs.h:IS_WHITEOUT, util.c:ovl_path_is_whiteout,
 * ovl_get_dir_xattr_val): a char device 0:0 with any mode bits; a zero-size
 * regular file carrying <ns>.overlay.whiteout; <ns>.overlay.opaque of
 * exactly "y" (opaque) or "x" (may hold xattr whiteouts).  The OCI/AUFS
 * on-disk forms ".wh.NAME" and ".wh..wh..opq" are handled where directories
 * are read (readdir.c), since they are names, not attributes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include "ovl_internal.h"

/* A DT_CHR entry: return 1 if it is a whiteout (rdev 0:0), 0 if a real
 * device, -errno on error. */
int ovl_classify_chr(const struct ovl_stack *s, int dfd, const char *name)
{
	struct stat st;

	(void)s;
	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0);
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
