/* setattr.c - attribute changes, the kernel's inode.c:ovl_setattr: chmod,
 * chown, utimens and truncate.  The caller's right is checked on the
 * overlay's attributes first (fs/attr.c:setattr_prepare); the object is
 * then copied up (with its data for a truncate) and changed in the upper
 * layer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ovl_internal.h"

enum attr_op { A_CHMOD, A_CHOWN, A_UTIMES, A_TRUNCATE };

struct attr_arg {
	enum attr_op op;
	mode_t mode;
	uid_t uid;
	gid_t gid;
	const struct timespec *ts;
	off_t length;
	mode_t kill;		/* set-id bits the caller's truncate clears */
};

static int apply_attr(int udir, const char *name, unsigned flags, const struct attr_arg *a)
{
	int nofollow = flags & OVL_LOOKUP_FOLLOW ? 0 : AT_SYMLINK_NOFOLLOW, fd, err = 0;

	switch (a->op) {
	case A_CHMOD:
		return fchmodat(udir, name, a->mode, nofollow) < 0 ? -errno : 0;
	case A_CHOWN:
		return fchownat(udir, name, a->uid, a->gid, nofollow) < 0 ? -errno : 0;
	case A_UTIMES:
		return utimensat(udir, name, a->ts, nofollow) < 0 ? -errno : 0;
	case A_TRUNCATE:
		fd = openat(udir, name, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0)
			return errno == ELOOP ? -EINVAL : -errno;
		if (ftruncate(fd, a->length) < 0)
			err = -errno;
		if (!err)
			err = ovl_kill_suid_fd(fd, a->kill);
		close(fd);
		return err;
	}
	return -EINVAL;
}

/* The caller's right to the change (fs/attr.c:setattr_prepare,
 * may_setattr; fs/open.c:vfs_truncate), on the overlay's attributes. */
static int may_setattr(const struct ovl_cred *cred, const struct stat *st, struct attr_arg *a)
{
	bool owner = ovl_owner_or_capable(cred, st), chown_cap = ovl_capable(cred, OVL_CAP_CHOWN);

	switch (a->op) {
	case A_CHMOD:
		if (!owner)
			return -EPERM;
		if (!ovl_in_group(cred, st->st_gid) && !ovl_capable(cred, OVL_CAP_FSETID))
			a->mode &= ~(mode_t)S_ISGID;
		return 0;
	case A_CHOWN:
		if (a->uid != (uid_t)-1 && !chown_cap &&
		    !(cred->uid == st->st_uid && a->uid == st->st_uid))
			return -EPERM;
		if (a->gid != (gid_t)-1 && !chown_cap &&
		    !(cred->uid == st->st_uid && (a->gid == st->st_gid || ovl_in_group(cred, a->gid))))
			return -EPERM;
		/* A chown clears a non-directory's set-id bits: a mode
		 * change, which needs ownership (fs/open.c:chown_common). */
		if (!S_ISDIR(st->st_mode) && !owner &&
		    ((st->st_mode & S_ISUID) ||
		     ((st->st_mode & S_ISGID) &&
		      ((st->st_mode & S_IXGRP) || (!ovl_in_group(cred, st->st_gid) &&
						   !ovl_capable(cred, OVL_CAP_FSETID))))))
			return -EPERM;
		return 0;
	case A_UTIMES:
		/* "Now" needs ownership or write access; explicit times
		 * ownership (EACCES and EPERM respectively). */
		if (!a->ts || (a->ts[0].tv_nsec == UTIME_NOW && a->ts[1].tv_nsec == UTIME_NOW))
			return owner ? 0 : ovl_permission(cred, st, OVL_MAY_WRITE);
		return owner ? 0 : -EPERM;
	case A_TRUNCATE:
		a->kill = ovl_kill_suid(cred, st->st_mode);
		return ovl_permission(cred, st, OVL_MAY_WRITE);
	}
	return -EINVAL;
}

static int setattr_common(struct ovl_stack *s, const char *path, unsigned flags,
			  const struct attr_arg *arg)
{
	struct ovl_change ch;
	struct ovl_target t = { 0 };
	struct ovl_walk w;
	struct attr_arg a = *arg;
	struct stat st;
	const char *name;
	int udir = -1, err;

	err = ovl_change_begin(s, &ch);
	if (err)
		return err;
	err = ovl_walk_object(s, &ch.cred, path, flags, &w, &st);
	/* Errors the kernel gives before any copy-up: only a regular file
	 * can be truncated, a symlink has no mode to change. */
	if (!err && a.op == A_TRUNCATE && w.ent->dtype == DT_DIR)
		err = -EISDIR;
	else if (!err && a.op == A_TRUNCATE && w.ent->dtype != DT_REG)
		err = -EINVAL;
	else if (!err && a.op == A_CHMOD && w.ent->dtype == DT_LNK)
		err = -EOPNOTSUPP;
	if (!err)
		err = may_setattr(&ch.cred, &st, &a);
	if (err)
		return ovl_change_end(&ch, err);
	/* A truncate changes the data: ovl_setattr copies it up first
	 * (ovl_copy_up_with_data); the other attributes need none. */
	err = ovl_upper_object(s, path, flags, a.op == A_TRUNCATE ? O_WRONLY : 0, &t, &udir, &name);
	if (!err)
		err = apply_attr(udir, name, flags, &a);
	bool others = !err && ovl_aliased(udir, name, 1);

	if (udir >= 0)
		close(udir);
	ovl_drop_changed(s, t.changed, others);
	return ovl_change_end(&ch, err);
}

int ovl_chmod(struct ovl_stack *s, const char *path, unsigned flags, mode_t mode)
{
	struct attr_arg a = { .op = A_CHMOD, .mode = mode };

	return setattr_common(s, path, flags, &a);
}

int ovl_chown(struct ovl_stack *s, const char *path, unsigned flags, uid_t uid, gid_t gid)
{
	struct attr_arg a = { .op = A_CHOWN, .uid = uid, .gid = gid };

	return setattr_common(s, path, flags, &a);
}

int ovl_utimens(struct ovl_stack *s, const char *path, unsigned flags,
		const struct timespec ts[2])
{
	struct attr_arg a = { .op = A_UTIMES, .ts = ts };

	/* Nothing to do: the kernel does not even look the path up. */
	if (ts && ts[0].tv_nsec == UTIME_OMIT && ts[1].tv_nsec == UTIME_OMIT)
		return 0;
	return setattr_common(s, path, flags, &a);
}

int ovl_truncate(struct ovl_stack *s, const char *path, off_t length)
{
	struct attr_arg a = { .op = A_TRUNCATE, .length = length };

	ovl_error_clear();
	if (length < 0)
		return -EINVAL;
	return setattr_common(s, path, OVL_LOOKUP_FOLLOW, &a);
}
