/* xattrs.c - xattr changes, the kernel's xattrs.c:ovl_xattr_set: setxattr
 * and removexattr through the overlay (reading them is inode.c's).  A
 * user's <ns>.overlay.* name is stored escaped; the caller's right is
 * checked on the overlay's attributes (fs/xattr.c:xattr_permission), then
 * the object is copied up and changed in the upper layer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "ovl_internal.h"

/* The name an xattr is stored under: a user's "<ns>.overlay.X" escaped. */
static char *stored_xattr_name(const struct ovl_stack *s, const char *name)
{
	char *real;

	if (strncmp(name, s->xprefix, s->xprefixlen))
		return strdup(name);
	if (!name[s->xprefixlen])
		return NULL;
	real = malloc(strlen(name) + 9);
	if (real)
		sprintf(real, "%soverlay.%s", s->xprefix, name + s->xprefixlen);
	return real;
}

/* fs/xattr.c:xattr_permission for a write, and the checks of the
 * capability LSM and of POSIX ACLs, on the overlay's attributes. */
static int may_set_xattr(const struct ovl_cred *cred, const struct stat *st, const char *name)
{
	bool owner = ovl_owner_or_capable(cred, st);

	if (!strncmp(name, "security.", 9)) {
		if (!strcmp(name, "security.capability"))
			return ovl_capable(cred, OVL_CAP_SETFCAP) ? 0 : -EPERM;
		return ovl_capable(cred, OVL_CAP_SYS_ADMIN) ? 0 : -EPERM;
	}
	if (!strncmp(name, "system.", 7))
		return !strncmp(name, "system.posix_acl_", 17) && !owner ? -EPERM : 0;
	if (!strncmp(name, "trusted.", 8))
		return ovl_capable(cred, OVL_CAP_SYS_ADMIN) ? 0 : -EPERM;
	if (!strncmp(name, "user.", 5)) {
		/* user.* lives on files and directories only; a sticky
		 * directory's belong to its owner. */
		if (!S_ISREG(st->st_mode) && !S_ISDIR(st->st_mode))
			return -EPERM;
		if (S_ISDIR(st->st_mode) && (st->st_mode & S_ISVTX) && !owner)
			return -EPERM;
	}
	return ovl_permission(cred, st, OVL_MAY_WRITE);
}

static int xattr_change(struct ovl_stack *s, const char *path, unsigned flags,
			const char *name, const void *value, size_t size, int xflags,
			bool remove)
{
	struct ovl_change ch;
	struct ovl_target t = { 0 };
	struct ovl_walk w;
	struct stat st;
	const char *oname;
	char *real = stored_xattr_name(s, name);
	int udir = -1, fd, err;

	ovl_error_clear();
	if (!real)
		return strncmp(name, s->xprefix, s->xprefixlen) ? -ENOMEM : -EINVAL;
	err = ovl_change_begin(s, &ch);
	if (err) {
		free(real);
		return err;
	}
	/* Before any copy-up: the caller's rights, then (removing) that
	 * there is such an xattr: ENODATA. */
	err = ovl_walk_object(s, &ch.cred, path, flags, &w, &st);
	if (!err)
		err = may_set_xattr(&ch.cred, &st, name);
	if (!err && remove) {
		pthread_rwlock_unlock(&s->lock);
		long r = ovl_getxattr(s, path, flags, name, NULL, 0);

		pthread_rwlock_wrlock(&s->lock);
		err = r < 0 ? (int)r : 0;
	}
	if (err) {
		free(real);
		return ovl_change_end(&ch, err);
	}
	err = ovl_upper_object(s, path, flags, 0, &t, &udir, &oname);
	if (!err) {
		if (fstatat(udir, oname, &st, AT_SYMLINK_NOFOLLOW) < 0)
			err = -errno;
		else if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) {
			fd = openat(udir, oname, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
			if (fd < 0)
				err = -errno;
			else {
				err = remove ? fremovexattr(fd, real) : fsetxattr(fd, real, value, size,
										  xflags);
				err = err < 0 ? -errno : 0;
				close(fd);
			}
		} else if (s->have_xattrat) {
			/* trusted.* on a symlink, fifo or device. */
			err = remove ? ovl_sys_removexattrat(udir, oname, AT_SYMLINK_NOFOLLOW, real) :
			      ovl_sys_setxattrat(udir, oname, AT_SYMLINK_NOFOLLOW, real, value, size,
						 (unsigned)xflags);
		} else {
			err = -EOPNOTSUPP;	/* needs setxattrat (Linux 6.13) */
		}
	}
	bool others = !err && ovl_aliased(udir, oname, 1);

	if (udir >= 0)
		close(udir);
	ovl_drop_changed(s, t.changed, others);
	free(real);
	return ovl_change_end(&ch, err);
}

int ovl_setxattr(struct ovl_stack *s, const char *path, unsigned flags, const char *name,
		 const void *value, size_t size, int xflags)
{
	return xattr_change(s, path, flags, name, value, size, xflags, false);
}

int ovl_removexattr(struct ovl_stack *s, const char *path, unsigned flags, const char *name)
{
	return xattr_change(s, path, flags, name, NULL, 0, 0, true);
}
