/* dir.c - namespace and attribute changes, leaving the upper layer as the
 * kernel would (dir.c:ovl_create_object, ovl_do_remove; inode.c:
 * ovl_setattr; xattrs.c:ovl_xattr_set).
 *
 * Every change copies up the parent chain first.  Removing a name that
 * exists below leaves a whiteout in the stack's form (a char device 0:0,
 * or ".wh.NAME" for whiteouts="oci"); removing an upper-only name leaves
 * no trace.  A directory created over a whiteout is opaque; anything else
 * created over one replaces it.  Replacements are atomic: the new object
 * is made in the work dir and exchanged with the old one.  After a change
 * the directories whose indexes no longer match are dropped from the cache.
 * With OVL_CFG_REDIRECT_DIR, a merged or lower directory is renamed the way
 * redirect_dir=on does it (dir.c:ovl_rename_upper, ovl_set_redirect).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "ovl_internal.h"

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE 2
#endif
#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE 1
#endif
#ifndef RENAME_WHITEOUT
#define RENAME_WHITEOUT 4
#endif

#define OCI_WH ".wh."
#define OCI_OPQ ".wh..wh..opq"

/* The longest absolute redirect the kernel writes: its redirect_max module
 * parameter (256 unless changed); a longer one makes rename fail with
 * EXDEV, "fall back to userspace move" (dir.c:ovl_get_redirect). */
#define OVL_REDIRECT_MAX 256

/* Merged, or only in lower layers: what the kernel calls
 * ovl_type_merge_or_lower for a directory.  Its state before any copy-up
 * (a lower-only directory copied up is merged). */
static bool merged_or_lower(const struct ovl_dir *d)
{
	return d->nstack > 1 || d->stack[0].layer != 0;
}

/* Where a change happens: the parent directory and the last name. */
struct ovl_target {
	struct ovl_walk w;
	struct ovl_dir *dir;	/* the parent directory (built) */
	char name[OVL_NAME_MAX + 1];
	size_t len;
	bool slash;		/* the path ended in '/' */
	bool dot;		/* the name is "." or ".." */
	struct ovl_ent *ent;	/* the name, if it exists (resolved) */
	struct ovl_dir *node;	/* its directory node, for a directory */
	struct ovl_dir *changed;	/* to drop from the cache afterwards */
};

/* Resolve the parent of path (symlinks followed) and look the last name
 * up in it without following it.  Write lock held. */
static int find_target(struct ovl_stack *s, const char *path, struct ovl_target *t)
{
	size_t n = strlen(path), end, start;
	char *parent;
	struct ovl_dir *d;
	int err;

	memset(t, 0, sizeof(*t));
	t->w.s = s;
	end = n;
	while (end > 0 && path[end - 1] == '/')
		end--;
	t->slash = end < n;
	start = end;
	while (start > 0 && path[start - 1] != '/')
		start--;
	if (end - start > OVL_NAME_MAX)
		return -ENAMETOOLONG;
	memcpy(t->name, path + start, end - start);
	t->name[end - start] = '\0';
	t->len = end - start;
	parent = strndup(path, start);
	if (!parent)
		return -ENOMEM;
	err = ovl_walk_path(&t->w, parent, OVL_LOOKUP_FOLLOW);
	free(parent);
	if (!err)
		err = ovl_ent_dir(&t->w, t->w.dir, t->w.ent, &d);
	if (err)
		return err;
	t->dir = d;
	if (t->len == 0)
		return -EBUSY;	/* the root itself */
	if (!strcmp(t->name, ".") || !strcmp(t->name, "..")) {
		t->dot = true;
		return 0;
	}
	struct ovl_ent *e = ovl_dir_find(d, t->name, t->len, ovl_name_hash(t->name, t->len));

	if (!e || (e->flags & OVL_E_WHITEOUT))
		return 0;
	if (e->dtype == DT_DIR)
		err = ovl_ent_dir(&t->w, d, e, &t->node);
	else if (!(e->flags & OVL_E_FILLED))
		err = ovl_resolve_ent(&t->w, d, e);
	if (err == -ENOENT)
		return 0;	/* an xattr whiteout */
	if (err)
		return err;
	t->ent = e;
	return 0;
}

/* Does a lower layer of d show name (namei.c:ovl_lower_positive)?  The
 * first lower layer that holds it decides: a whiteout of any form, no. */
static bool lower_positive(struct ovl_stack *s, struct ovl_dir *d, const char *name,
			   size_t len)
{
	const struct ovl_ent *e = ovl_dir_find(d, name, len, ovl_name_hash(name, len));

	if (!e)
		return false;
	for (uint32_t si = 0; si < d->nstack; si++) {
		int bits, kind;

		if (d->stack[si].layer == 0)
			continue;
		bits = ovl_occ_bits(d, e, si);
		kind = bits & OK_KIND;
		if (kind == OK_NONE) {
			if (bits & OK_OCI)
				return false;
			continue;
		}
		if (kind == OK_REG && ovl_kernel_wh(s)) {
			int pfd = ovl_fdcache_get(s, d, si);

			if (pfd >= 0 && ovl_is_xwhiteout_at(s, pfd, name) == 1)
				return false;
		}
		return kind != OK_WH;
	}
	return false;
}

/* Make sure the parent is in the upper layer; open it there. */
static int upper_parent(struct ovl_target *t)
{
	struct ovl_stack *s = t->w.s;
	struct ovl_dir *top = NULL;
	struct stat st;
	int err = ovl_copy_up_dir(s, t->dir, &top);

	t->changed = top ? top->parent : t->dir;
	if (err)
		return err;
	return ovl_open_upper_dir(s, t->dir->path, &st);
}

/* What the upper directory holds under name: 1 a kernel whiteout, 2 an
 * OCI ".wh.NAME", 0 neither, -errno.  *present: a real object is there. */
static int upper_whiteout(struct ovl_stack *s, int udir, const char *name, bool *present)
{
	struct stat st;
	char wh[OVL_NAME_MAX + 8];

	*present = false;
	if (fstatat(udir, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		if (ovl_kernel_wh(s) && S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0))
			return 1;
		if (ovl_kernel_wh(s) && S_ISREG(st.st_mode) && st.st_size == 0) {
			int r = ovl_is_xwhiteout_at(s, udir, name);

			if (r)
				return r;
		}
		*present = true;
		return 0;
	}
	if (errno != ENOENT)
		return -errno;
	if (!ovl_oci_wh(s))
		return 0;
	snprintf(wh, sizeof(wh), OCI_WH "%s", name);
	return fstatat(udir, wh, &st, AT_SYMLINK_NOFOLLOW) == 0 ? 2 : 0;
}

/* Make a whiteout (the stack's form) named name in dfd.  A kernel-form
 * one is made in the work dir and moved into place, so that, like the
 * kernel's, it belongs to the stack's owner whatever the directory's
 * setgid bit says. */
static int make_whiteout(struct ovl_stack *s, int dfd, const char *name)
{
	if (ovl_kernel_wh(s) && s->whiteouts != OVL_WHITEOUT_OCI) {
		char tmp[64];
		int err;

		if (dfd == s->work_fd)
			return mknodat(dfd, name, S_IFCHR, makedev(0, 0)) < 0 ? -errno : 0;
		ovl_temp_name(tmp, sizeof(tmp));
		if (mknodat(s->work_fd, tmp, S_IFCHR, makedev(0, 0)) < 0)
			return -errno;
		err = ovl_renameat2(s->work_fd, tmp, dfd, name, RENAME_NOREPLACE);
		if (err)
			unlinkat(s->work_fd, tmp, 0);
		return err;
	}
	char wh[OVL_NAME_MAX + 8];
	int fd;

	snprintf(wh, sizeof(wh), OCI_WH "%s", name);
	fd = openat(dfd, wh, O_CREAT | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

/* Mark directory dfd/name opaque: the kernel's xattr, or the OCI
 * ".wh..wh..opq" inside it. */
static int mark_opaque(const struct ovl_stack *s, int dfd, const char *name, bool oci)
{
	int dir = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), fd, err = 0;

	if (dir < 0)
		return -errno;
	if (oci) {
		fd = openat(dir, OCI_OPQ, O_CREAT | O_WRONLY | O_CLOEXEC, 0);
		if (fd < 0)
			err = -errno;
		else
			close(fd);
	} else if (fsetxattr(dir, s->x_opaque, "y", 1, 0) < 0) {
		err = -errno;
	}
	close(dir);
	return err;
}

/* Remove what an upper directory holds besides whiteouts: nothing may be
 * there (the merged directory is empty); whiteouts are cleaned up. */
static int clear_whiteouts(struct ovl_stack *s, int udir, const char *name)
{
	int fd = openat(udir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	DIR *dir;
	struct dirent *de;
	int err = 0;

	if (fd < 0)
		return -errno;
	dir = fdopendir(fd);
	if (!dir) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(dir))) {
		struct stat st;
		bool wh;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		wh = (S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0)) ||
		     (ovl_oci_wh(s) && !strncmp(de->d_name, OCI_WH, 4)) ||
		     (S_ISREG(st.st_mode) && st.st_size == 0 &&
		      ovl_is_xwhiteout_at(s, fd, de->d_name) == 1);
		if (!wh) {
			err = -ENOTEMPTY;
			break;
		}
		if (unlinkat(fd, de->d_name, 0) < 0) {
			err = -errno;
			break;
		}
	}
	closedir(dir);
	return err;
}

/* Put a whiteout in place of the upper object name, atomically. */
static int whiteout_over(struct ovl_stack *s, int udir, const char *name, bool is_dir)
{
	char tmp[64];
	int err;

	if (s->whiteouts == OVL_WHITEOUT_OCI) {
		/* ".wh.NAME" first: until the object goes, the layer still
		 * shows it (a name beside its own whiteout wins). */
		err = make_whiteout(s, udir, name);
		if (!err && unlinkat(udir, name, is_dir ? AT_REMOVEDIR : 0) < 0)
			err = -errno;
		return err;
	}
	ovl_temp_name(tmp, sizeof(tmp));
	err = make_whiteout(s, s->work_fd, tmp);
	if (err)
		return err;
	err = ovl_renameat2(s->work_fd, tmp, udir, name, RENAME_EXCHANGE);
	if (err) {
		unlinkat(s->work_fd, tmp, 0);
		return err;
	}
	/* The old object is the temp now. */
	if (unlinkat(s->work_fd, tmp, is_dir ? AT_REMOVEDIR : 0) < 0)
		return -errno;
	return 0;
}

static int remove_common(struct ovl_stack *s, const char *path, bool is_rmdir)
{
	struct ovl_target t;
	bool lower, in_upper;
	int udir, err;

	err = find_target(s, path, &t);
	if (err == -EBUSY)
		return is_rmdir ? -EBUSY : -EISDIR;
	if (err)
		return err;
	if (t.dot)
		return is_rmdir ? (!strcmp(t.name, ".") ? -EINVAL : -ENOTEMPTY) : -EISDIR;
	if (!t.ent)
		return -ENOENT;
	if (is_rmdir && t.ent->dtype != DT_DIR)
		return -ENOTDIR;
	if (!is_rmdir && t.ent->dtype == DT_DIR)
		return -EISDIR;
	if (!is_rmdir && t.slash)
		return -ENOTDIR;
	if (is_rmdir && t.node->norder)
		return -ENOTEMPTY;
	lower = lower_positive(s, t.dir, t.name, t.len);
	in_upper = t.dir->stack[t.ent->top].layer == 0;
	udir = upper_parent(&t);
	if (udir < 0) {
		ovl_drop_changed(s, t.changed);
		return udir;
	}
	/* Whiteouts in the upper dir are cleaned only when a lower copy of
	 * the name is there or the dir is merged (through a redirect, it can
	 * be without the first): a pure-upper dir holding any gives ENOTEMPTY,
	 * as in the kernel (dir.c:ovl_do_remove, ovl_pure_upper). */
	if (in_upper && is_rmdir && (lower || t.node->nstack > 1))
		err = clear_whiteouts(s, udir, t.name);
	if (!err) {
		if (in_upper && lower)
			err = whiteout_over(s, udir, t.name, is_rmdir);
		else if (in_upper)
			err = unlinkat(udir, t.name, is_rmdir ? AT_REMOVEDIR : 0) < 0 ? -errno : 0;
		else
			err = make_whiteout(s, udir, t.name);
	}
	close(udir);
	ovl_drop_changed(s, t.changed);
	return err;
}

static int locked(struct ovl_stack *s, int err)
{
	ovl_cache_trim(s);
	pthread_rwlock_unlock(&s->lock);
	ovl_atomic_inc(&s->misses);
	return err;
}

static int lock_for_write(struct ovl_stack *s)
{
	if (s->work_fd < 0)
		return -EROFS;
	pthread_rwlock_wrlock(&s->lock);
	return 0;
}

int ovl_unlink(struct ovl_stack *s, const char *path)
{
	int err = lock_for_write(s);

	return err ? err : locked(s, remove_common(s, path, false));
}

int ovl_rmdir(struct ovl_stack *s, const char *path)
{
	int err = lock_for_write(s);

	return err ? err : locked(s, remove_common(s, path, true));
}

/* The process umask (there is no way to read it without setting it). */
static mode_t umask_now(void)
{
	mode_t m = umask(0);

	umask(m);
	return m;
}

/* What a create makes, in the work dir or in place. */
struct ovl_create {
	mode_t mode;		/* type and permission bits */
	dev_t rdev;
	const char *target;	/* symlinks */
	int oflags;		/* regular files opened by the create */
	int fd;			/* out: the open file */
};

static int create_at(int dfd, const char *name, struct ovl_create *c)
{
	switch (c->mode & S_IFMT) {
	case S_IFDIR:
		return mkdirat(dfd, name, c->mode & 07777) < 0 ? -errno : 0;
	case S_IFLNK:
		return symlinkat(c->target, dfd, name) < 0 ? -errno : 0;
	case S_IFREG:
		c->fd = openat(dfd, name, (c->oflags & ~O_TRUNC) | O_CREAT | O_EXCL | O_NOFOLLOW |
			       O_CLOEXEC, c->mode & 07777);
		return c->fd < 0 ? -errno : 0;
	default:
		return mknodat(dfd, name, c->mode, c->rdev) < 0 ? -errno : 0;
	}
}

static int create_common(struct ovl_stack *s, const char *path, struct ovl_create *c)
{
	struct ovl_target t;
	bool present = false, merged_parent;
	int udir, wh, err;

	c->fd = -1;
	err = find_target(s, path, &t);
	if (err == -EBUSY)
		return -EEXIST;
	if (err)
		return err;
	if (t.dot || t.ent)
		return -EEXIST;
	if (t.slash && !S_ISDIR(c->mode))
		return S_ISREG(c->mode) ? -EISDIR : -ENOENT;
	merged_parent = merged_or_lower(t.dir);
	udir = upper_parent(&t);
	if (udir < 0) {
		ovl_drop_changed(s, t.changed);
		return udir;
	}
	wh = upper_whiteout(s, udir, t.name, &present);
	if (wh < 0) {
		err = wh;
	} else if (present) {
		err = -EEXIST;	/* the cache was behind the layer */
	} else if (!wh) {
		err = create_at(udir, t.name, c);
		/* With redirect_dir (or index, metacopy, xino) the kernel marks a
		 * new directory in a merged one opaque, an optimization allowed
		 * to fail (dir.c:ovl_create_upper, ovl_allow_offline_changes). */
		if (!err && S_ISDIR(c->mode) && merged_parent && (s->cfg & OVL_CFG_REDIRECT_DIR))
			mark_opaque(s, udir, t.name, false);
	} else if (wh == 2) {
		/* Over ".wh.NAME": create, mark a directory opaque the OCI
		 * way, then drop the whiteout file. */
		char wh_name[OVL_NAME_MAX + 8];

		err = create_at(udir, t.name, c);
		if (!err && S_ISDIR(c->mode))
			err = mark_opaque(s, udir, t.name, true);
		snprintf(wh_name, sizeof(wh_name), OCI_WH "%s", t.name);
		if (!err && unlinkat(udir, wh_name, 0) < 0)
			err = -errno;
	} else {
		/* Over a whiteout: built in the work dir, a directory marked
		 * opaque, then exchanged with it (dir.c:ovl_create_over_whiteout). */
		char tmp[64];
		struct stat pst;

		ovl_temp_name(tmp, sizeof(tmp));
		err = create_at(s->work_fd, tmp, c);
		/* Made in the work dir, it must still get what the upper parent's
		 * setgid bit would have given it. */
		if (!err && fstat(udir, &pst) == 0 && (pst.st_mode & S_ISGID)) {
			if (fchownat(s->work_fd, tmp, (uid_t)-1, pst.st_gid, AT_SYMLINK_NOFOLLOW) < 0)
				err = -errno;
			else if (S_ISDIR(c->mode) &&
				 fchmodat(s->work_fd, tmp, (c->mode & 07777 & ~umask_now()) | S_ISGID, 0) < 0)
				err = -errno;
		}
		if (!err && S_ISDIR(c->mode))
			err = mark_opaque(s, s->work_fd, tmp, false);
		if (!err)
			err = ovl_renameat2(s->work_fd, tmp, udir, t.name, RENAME_EXCHANGE);
		/* After the exchange the temp is the whiteout; else our object. */
		if (unlinkat(s->work_fd, tmp, !err || !S_ISDIR(c->mode) ? 0 : AT_REMOVEDIR) < 0 &&
		    !err)
			err = -errno;
	}
	if (err && c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
	close(udir);
	ovl_drop_changed(s, t.changed);
	return err;
}

int ovl_mkdir(struct ovl_stack *s, const char *path, mode_t mode)
{
	struct ovl_create c = { .mode = S_IFDIR | (mode & 07777) };
	int err = lock_for_write(s);

	return err ? err : locked(s, create_common(s, path, &c));
}

int ovl_mknod(struct ovl_stack *s, const char *path, mode_t mode, dev_t dev)
{
	struct ovl_create c = { .mode = mode, .rdev = dev };
	int err;

	if (S_ISDIR(mode) || S_ISLNK(mode))
		return -EINVAL;
	if ((mode & S_IFMT) == 0)
		c.mode |= S_IFREG;
	err = lock_for_write(s);
	if (err)
		return err;
	if (S_ISCHR(mode) && dev == makedev(0, 0)) {
		/* Whiteouts are the overlay's own: EPERM, after EEXIST. */
		struct ovl_target t;

		err = find_target(s, path, &t);
		if (!err)
			err = t.ent || t.dot ? -EEXIST : -EPERM;
		return locked(s, err == -EBUSY ? -EEXIST : err);
	}
	err = create_common(s, path, &c);
	if (c.fd >= 0)
		close(c.fd);
	return locked(s, err);
}

int ovl_symlink(struct ovl_stack *s, const char *target, const char *path)
{
	struct ovl_create c = { .mode = S_IFLNK | 0777, .target = target };
	int err;

	if (!*target)
		return -ENOENT;
	err = lock_for_write(s);
	return err ? err : locked(s, create_common(s, path, &c));
}

/* Copy up what path names (a final symlink followed with
 * OVL_LOOKUP_FOLLOW) and open its upper directory: *udir and *name address
 * it there.  *t keeps the walk. */
static int upper_object(struct ovl_stack *s, const char *path, unsigned flags,
			struct ovl_target *t, int *udir, const char **name)
{
	int method, err;

	memset(t, 0, sizeof(*t));
	t->w.s = s;
	err = ovl_walk_path(&t->w, path, flags & OVL_LOOKUP_FOLLOW);
	if (err)
		return err;
	err = ovl_copy_up_ent(&t->w, t->w.dir, t->w.ent, &t->changed, &method);
	if (err)
		return err;
	if (!t->changed)
		t->changed = t->w.ent == s->root_ent ? s->root : t->w.dir;
	if (t->w.ent == s->root_ent) {
		*name = ".";
		*udir = ovl_layer_open(s, 0, "", O_RDONLY | O_DIRECTORY);
	} else {
		struct stat st;

		*name = t->w.ent->name;
		*udir = ovl_open_upper_dir(s, t->w.dir->path, &st);
	}
	return *udir < 0 ? *udir : 0;
}

enum attr_op { A_CHMOD, A_CHOWN, A_UTIMES, A_TRUNCATE };

struct attr_arg {
	enum attr_op op;
	mode_t mode;
	uid_t uid;
	gid_t gid;
	const struct timespec *ts;
	off_t length;
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
		close(fd);
		return err;
	}
	return -EINVAL;
}

static int setattr_common(struct ovl_stack *s, const char *path, unsigned flags,
			  const struct attr_arg *a)
{
	struct ovl_target t;
	const char *name;
	int udir = -1, err;

	err = lock_for_write(s);
	if (err)
		return err;
	if (a->op == A_TRUNCATE || (a->op == A_CHMOD && !(flags & OVL_LOOKUP_FOLLOW))) {
		struct ovl_walk w = { .s = s };

		/* Errors the kernel gives before any copy-up: only a regular
		 * file can be truncated, a symlink has no mode to change. */
		err = ovl_walk_path(&w, path, flags & OVL_LOOKUP_FOLLOW);
		if (!err && a->op == A_TRUNCATE && w.ent->dtype == DT_DIR)
			err = -EISDIR;
		else if (!err && a->op == A_TRUNCATE && w.ent->dtype != DT_REG)
			err = -EINVAL;
		else if (!err && a->op == A_CHMOD && w.ent->dtype == DT_LNK)
			err = -EOPNOTSUPP;
		if (err)
			return locked(s, err);
	}
	err = upper_object(s, path, flags, &t, &udir, &name);
	if (!err)
		err = apply_attr(udir, name, flags, a);
	if (udir >= 0)
		close(udir);
	ovl_drop_changed(s, t.changed);
	return locked(s, err);
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

	return setattr_common(s, path, flags, &a);
}

int ovl_truncate(struct ovl_stack *s, const char *path, off_t length)
{
	struct attr_arg a = { .op = A_TRUNCATE, .length = length };

	if (length < 0)
		return -EINVAL;
	return setattr_common(s, path, OVL_LOOKUP_FOLLOW, &a);
}

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

static int xattr_change(struct ovl_stack *s, const char *path, unsigned flags,
			const char *name, const void *value, size_t size, int xflags,
			bool remove)
{
	struct ovl_target t;
	const char *oname;
	char *real = stored_xattr_name(s, name);
	int udir = -1, fd, err;

	if (!real)
		return strncmp(name, s->xprefix, s->xprefixlen) ? -ENOMEM : -EINVAL;
	err = lock_for_write(s);
	if (err) {
		free(real);
		return err;
	}
	/* Before any copy-up: user.* xattrs live on files and directories
	 * only (EPERM), and removing a missing one is ENODATA. */
	struct ovl_walk w = { .s = s };

	err = ovl_walk_path(&w, path, flags & OVL_LOOKUP_FOLLOW);
	if (!err && !strncmp(name, "user.", 5) && w.ent->dtype != DT_REG && w.ent->dtype != DT_DIR)
		err = -EPERM;
	if (err) {
		free(real);
		return locked(s, err);
	}
	if (remove) {
		pthread_rwlock_unlock(&s->lock);
		long r = ovl_getxattr(s, path, flags, name, NULL, 0);

		pthread_rwlock_wrlock(&s->lock);
		if (r < 0) {
			free(real);
			return locked(s, (int)r);
		}
	}
	err = upper_object(s, path, flags, &t, &udir, &oname);
	if (!err) {
		struct stat st;

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
	if (udir >= 0)
		close(udir);
	ovl_drop_changed(s, t.changed);
	free(real);
	return locked(s, err);
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

/* open(2) with write access, O_TRUNC or O_CREAT: copy up (or create) and
 * open the upper file; a fifo or device is opened where it is. */
static int open_write(struct ovl_stack *s, const char *path, int oflags, mode_t mode,
		      int hops)
{
	struct ovl_target t;
	int err, fd;

	err = find_target(s, path, &t);
	if (err == -EBUSY)
		return -EISDIR;
	if (err)
		return err;
	if (t.dot || (t.slash && (oflags & O_CREAT)))
		return -EISDIR;
	if (!t.ent) {
		struct ovl_create c = { .mode = S_IFREG | (mode & 07777), .oflags = oflags & ~O_ACCMODE };

		if (!(oflags & O_CREAT))
			return -ENOENT;
		if (t.slash)
			return -EISDIR;
		c.oflags |= (oflags & O_ACCMODE);
		err = create_common(s, path, &c);
		return err ? err : c.fd;
	}
	if ((oflags & O_CREAT) && (oflags & O_EXCL))
		return -EEXIST;
	if (t.ent->dtype == DT_LNK) {
		char buf[PATH_MAX * 2];
		const char *target = ovl_ent_target(t.ent);

		if (oflags & O_NOFOLLOW)
			return -ELOOP;
		if (hops >= OVL_MAX_SYMLINKS)
			return -ELOOP;
		if (target[0] == '/')
			snprintf(buf, sizeof(buf), "%s", target);
		else
			snprintf(buf, sizeof(buf), "%s/%s", t.dir->path, target);
		return open_write(s, buf, oflags, mode, hops + 1);
	}
	if (t.ent->dtype == DT_DIR)
		return -EISDIR;
	if (t.slash)
		return -ENOTDIR;
	if ((oflags & O_ACCMODE) == O_RDONLY && !(oflags & O_TRUNC)) {
		/* O_CREAT of an existing file: nothing to write, no copy-up. */
		char *rel;
		int layer;

		err = ovl_ent_relpath(s, t.dir, t.ent, &layer, &rel);
		if (err)
			return err;
		fd = ovl_layer_open(s, layer, rel, oflags & ~(O_CREAT | O_EXCL));
		free(rel);
		return fd;
	}
	if (t.ent->dtype != DT_REG) {
		/* A fifo, socket or device: opened where it is, no copy-up. */
		char *rel;
		int layer;

		err = ovl_ent_relpath(s, t.dir, t.ent, &layer, &rel);
		if (err)
			return err;
		fd = ovl_layer_open(s, layer, rel, oflags & ~(O_CREAT | O_EXCL | O_TRUNC));
		free(rel);
		return fd;
	}
	struct ovl_dir *changed = NULL;
	int method, udir;
	struct stat st;

	t.w.dir = t.dir;
	t.w.ent = t.ent;
	err = ovl_copy_up_ent(&t.w, t.dir, t.ent, &changed, &method);
	if (!changed)
		changed = t.dir;
	if (!err) {
		udir = ovl_open_upper_dir(s, t.dir->path, &st);
		fd = udir < 0 ? udir : openat(udir, t.name, (oflags & ~(O_CREAT | O_EXCL)) |
					      O_NOFOLLOW | O_CLOEXEC);
		err = fd < 0 ? (udir < 0 ? fd : -errno) : fd;
		if (udir >= 0)
			close(udir);
	}
	ovl_drop_changed(s, changed);
	return err;
}

int ovl_open_write(struct ovl_stack *s, const char *path, int oflags, mode_t mode)
{
	int err = lock_for_write(s);

	return err ? err : locked(s, open_write(s, path, oflags, mode, 0));
}

static bool is_under(const struct ovl_dir *d, const struct ovl_dir *ancestor)
{
	for (; d; d = d->parent)
		if (d == ancestor)
			return true;
	return false;
}

/* Drop two changed directories from the cache; dropping one frees what
 * is below it, the other among it perhaps. */
static void drop_both(struct ovl_stack *s, struct ovl_dir *a, struct ovl_dir *b)
{
	if (a && b && is_under(b, a))
		b = NULL;
	else if (a && b && is_under(a, b))
		a = NULL;
	ovl_drop_changed(s, b);
	ovl_drop_changed(s, a);
}

/* The redirect the kernel keeps for the upper directory at union path
 * dpath (namei.c:ovl_lookup reads it unless the directory is opaque).
 * Return 0 with *out malloc'd or NULL, or -errno. */
static int upper_redirect(struct ovl_stack *s, const char *dpath, char **out)
{
	bool has_redirect;
	char opaque;
	int fd = ovl_layer_open(s, 0, dpath, O_RDONLY | O_DIRECTORY), err;

	*out = NULL;
	if (fd < 0)
		return fd;
	err = ovl_dir_xattrs(s, fd, &opaque, &has_redirect);
	if (!err && has_redirect && opaque != 'y')
		err = ovl_fd_redirect(s, fd, out);
	close(fd);
	return err;
}

/* The redirect to set on the directory at union path dpath (already up)
 * that is being renamed (dir.c:ovl_set_redirect, ovl_get_redirect).  In
 * the same parent it is the old name, and a redirect it has already stays;
 * into another parent it must be absolute: an absolute one stays, else it
 * is built from the end, each component being the directory's own redirect
 * if it has one and its name otherwise, up to the root or to the first
 * absolute redirect.  Return 0 with *out malloc'd (NULL: keep what is
 * there), -EXDEV past OVL_REDIRECT_MAX, or -errno. */
static int new_redirect(struct ovl_stack *s, const char *dpath, bool samedir, char **out)
{
	char buf[OVL_REDIRECT_MAX + 1], *own = NULL, *cur, *red = NULL;
	size_t room = OVL_REDIRECT_MAX, end = strlen(dpath);
	int err;

	*out = NULL;
	err = upper_redirect(s, dpath, &own);
	if (err)
		return err;
	if (own && (samedir || own[0] == '/')) {
		free(own);
		return 0;
	}
	if (samedir) {
		const char *slash = strrchr(dpath, '/');

		*out = strdup(slash ? slash + 1 : dpath);
		return *out ? 0 : -ENOMEM;
	}
	cur = strdup(dpath);
	if (!cur) {
		free(own);
		return -ENOMEM;
	}
	buf[room] = '\0';
	red = own;
	for (bool self = true; end > 0; self = false) {
		size_t start = end, n;
		const char *comp;

		while (start > 0 && cur[start - 1] != '/')
			start--;
		cur[end] = '\0';
		if (!self) {
			err = upper_redirect(s, cur, &red);
			if (err)
				goto out;
		}
		comp = red ? red : cur + start;
		n = strlen(comp);
		if (n + (comp[0] != '/') > room) {
			err = -EXDEV;
			goto out;
		}
		room -= n;
		memcpy(buf + room, comp, n);
		free(red);
		red = NULL;
		if (buf[room] == '/')
			break;	/* an absolute redirect: the rest does not matter */
		buf[--room] = '/';
		end = start ? start - 1 : 0;
	}
	*out = strdup(buf + room);
	err = *out ? 0 : -ENOMEM;
out:
	free(red);
	free(cur);
	return err;
}

/* Set the redirect on the upper directory name in udir; any failure is
 * EXDEV, the kernel's cue for a userspace copy (ovl_set_redirect). */
static int set_redirect(struct ovl_stack *s, int udir, const char *name, const char *value)
{
	int fd = openat(udir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), err = 0;

	if (fd < 0)
		return -errno;
	if (fsetxattr(fd, s->x_redirect, value, strlen(value), 0) < 0)
		err = -EXDEV;
	close(fd);
	return err;
}

/* rename(2) with replace semantics (dir.c:ovl_rename_start,
 * ovl_rename_upper).  A directory that is merged or only below gives EXDEV
 * without OVL_CFG_REDIRECT_DIR; with it, the directory alone is copied up
 * and gets a redirect before the upper rename.  A non-directory is copied
 * up and renamed in the upper layer.  The old name gets a whiteout when a
 * lower copy is there; a pure-upper directory moved into a merged parent
 * becomes opaque.  As in the kernel, the redirect or the opaque mark is set
 * before the upper rename, which may still fail (ENOTEMPTY for a non-empty
 * pure-upper target, judged by the upper filesystem). */
static int do_rename(struct ovl_stack *s, const char *from, const char *to)
{
	struct ovl_target a, b;
	struct ovl_dir *top = NULL;
	bool is_dir, lower_old, merged_old = false, merged_new, pure_target = false, present = false;
	int ua = -1, ub = -1, wh, err, method;

	err = find_target(s, from, &a);
	if (err == -EBUSY)
		return -EBUSY;
	if (err)
		return err;
	if (a.dot)
		return -EBUSY;
	/* Both parents are resolved before the old name is looked up
	 * (do_renameat2): ELOOP or ENOTDIR in the new path come first, an
	 * error looking up the new name itself after. */
	err = find_target(s, to, &b);
	if (err == -EBUSY)
		return -EBUSY;
	if (err)
		return !a.ent && (b.dir || err == -ENAMETOOLONG) ? -ENOENT : err;
	if (b.dot)
		return -EBUSY;
	if (!a.ent)
		return -ENOENT;
	is_dir = a.ent->dtype == DT_DIR;
	if (is_dir) {
		/* Into itself, before anything else. */
		for (struct ovl_dir *d = b.dir; d; d = d->parent)
			if (d == a.node)
				return -EINVAL;
	}
	/* The target an ancestor of the source (do_renameat2: "target should
	 * not be an ancestor of source"), before the type checks. */
	if (b.node && is_under(a.dir, b.node))
		return -ENOTEMPTY;
	if (!is_dir && (a.slash || b.slash))
		return -ENOTDIR;
	if (a.dir == b.dir && a.ent == b.ent)
		return 0;	/* the same name: nothing to do */
	if (b.ent) {
		if (is_dir && b.ent->dtype != DT_DIR)
			return -ENOTDIR;
		if (!is_dir && b.ent->dtype == DT_DIR)
			return -EISDIR;
	}
	if (is_dir) {
		merged_old = merged_or_lower(a.node);
		if (merged_old && !(s->cfg & OVL_CFG_REDIRECT_DIR))
			return -EXDEV;	/* "don't copy up directory trees" */
	}
	if (b.ent && is_dir) {
		/* A merged or lower target is judged on the merged view now; a
		 * pure-upper one by the upper rename itself. */
		pure_target = !merged_or_lower(b.node);
		if (!pure_target && b.node->norder)
			return -ENOTEMPTY;
	}
	merged_new = merged_or_lower(b.dir);
	lower_old = lower_positive(s, a.dir, a.name, a.len);
	/* The object (a directory alone) with its parents up, then the new
	 * parent. */
	if (is_dir && merged_old) {
		err = ovl_copy_up_dir(s, a.node, &top);
		a.changed = top ? top->parent : a.dir;
	} else {
		err = ovl_copy_up_dir(s, a.dir, &top);
		a.changed = top ? top->parent : a.dir;
	}
	if (!err)
		err = ovl_copy_up_dir(s, b.dir, &top);
	b.changed = top ? top->parent : b.dir;
	if (!err && !is_dir) {
		struct ovl_dir *chg;

		a.w.dir = a.dir;
		a.w.ent = a.ent;
		err = ovl_copy_up_ent(&a.w, a.dir, a.ent, &chg, &method);
	}
	if (err)
		goto out;
	struct stat st;

	ua = ovl_open_upper_dir(s, a.dir->path, &st);
	ub = ua < 0 ? -1 : ovl_open_upper_dir(s, b.dir->path, &st);
	if (ua < 0 || ub < 0) {
		err = ua < 0 ? ua : ub;
		goto out;
	}
	wh = upper_whiteout(s, ub, b.name, &present);
	if (wh < 0) {
		err = wh;
		goto out;
	}
	if (b.ent && is_dir && present && !pure_target) {
		err = clear_whiteouts(s, ub, b.name);
		if (err)
			goto out;
	}
	if (is_dir && merged_old) {
		char *red = NULL, *dpath = ovl_path_join(a.dir->path, a.dir->pathlen, a.name, a.len);

		err = dpath ? new_redirect(s, dpath, !strcmp(a.dir->path, b.dir->path), &red) : -ENOMEM;
		if (!err && red)
			err = set_redirect(s, ua, a.name, red);
		free(red);
		free(dpath);
	} else if (is_dir && !a.node->opaque && merged_new) {
		/* A pure-upper dir moved into a merged parent: nothing below
		 * may show through it (dir.c:ovl_rename_upper). */
		err = mark_opaque(s, ua, a.name, s->whiteouts == OVL_WHITEOUT_OCI || wh == 2);
	}
	if (err)
		goto out;
	if (wh == 1 && lower_old) {
		/* Over a whiteout with a lower copy behind the old name: the
		 * two swap, the whiteout now hiding the old name. */
		err = ovl_renameat2(ua, a.name, ub, b.name, RENAME_EXCHANGE);
	} else if (wh == 1 && is_dir) {
		/* A directory does not rename over a device: drop it first. */
		err = unlinkat(ub, b.name, 0) < 0 ? -errno : 0;
		if (!err)
			err = renameat(ua, a.name, ub, b.name) < 0 ? -errno : 0;
	} else if (lower_old && s->whiteouts != OVL_WHITEOUT_OCI) {
		err = ovl_renameat2(ua, a.name, ub, b.name, RENAME_WHITEOUT);
		if (err == -EINVAL) {
			/* No RENAME_WHITEOUT on this filesystem. */
			err = renameat(ua, a.name, ub, b.name) < 0 ? -errno : 0;
			if (!err)
				err = make_whiteout(s, ua, a.name);
		}
	} else {
		err = renameat(ua, a.name, ub, b.name) < 0 ? -errno : 0;
		if (!err && lower_old)
			err = make_whiteout(s, ua, a.name);
	}
	if (!err && wh == 2) {
		char whn[OVL_NAME_MAX + 8];

		snprintf(whn, sizeof(whn), OCI_WH "%s", b.name);
		unlinkat(ub, whn, 0);
	}
out:
	if (ua >= 0)
		close(ua);
	if (ub >= 0)
		close(ub);
	/* Both parents are dropped, and with the old one the renamed subtree. */
	drop_both(s, a.changed, b.changed);
	return err;
}

int ovl_rename(struct ovl_stack *s, const char *from, const char *to)
{
	int err = lock_for_write(s);

	return err ? err : locked(s, do_rename(s, from, to));
}

/* link(2): the source is copied up and linked in the upper layer; a
 * directory cannot be linked. */
static int do_link(struct ovl_stack *s, const char *from, const char *to)
{
	struct ovl_target a, b;
	struct ovl_dir *top = NULL, *chg = NULL;
	bool present = false;
	int ua = -1, ub = -1, wh, err, method;
	struct stat st;

	/* In linkat's order: the old path, the new one, then what they are. */
	err = find_target(s, from, &a);
	if (err && err != -EBUSY)
		return err;
	if (!err && !a.dot && !a.ent)
		return -ENOENT;
	int berr = find_target(s, to, &b);

	if (berr && berr != -EBUSY)
		return berr;
	if (err == -EBUSY || a.dot || a.ent->dtype == DT_DIR)
		return -EPERM;
	if (a.slash)
		return -ENOTDIR;
	if (berr == -EBUSY || b.dot || b.ent)
		return -EEXIST;
	if (b.slash)
		return -ENOENT;
	a.w.dir = a.dir;
	a.w.ent = a.ent;
	err = ovl_copy_up_ent(&a.w, a.dir, a.ent, &chg, &method);
	a.changed = chg ? chg : a.dir;
	if (!err)
		err = ovl_copy_up_dir(s, b.dir, &top);
	b.changed = top ? top->parent : b.dir;
	if (err)
		goto out;
	ua = ovl_open_upper_dir(s, a.dir->path, &st);
	ub = ua < 0 ? -1 : ovl_open_upper_dir(s, b.dir->path, &st);
	if (ua < 0 || ub < 0) {
		err = ua < 0 ? ua : ub;
		goto out;
	}
	wh = upper_whiteout(s, ub, b.name, &present);
	if (wh < 0 || present) {
		err = wh < 0 ? wh : -EEXIST;
	} else if (wh == 1) {
		/* Over a whiteout: linked in the work dir, then exchanged. */
		char tmp[64];

		ovl_temp_name(tmp, sizeof(tmp));
		err = linkat(ua, a.name, s->work_fd, tmp, 0) < 0 ? -errno : 0;
		if (!err)
			err = ovl_renameat2(s->work_fd, tmp, ub, b.name, RENAME_EXCHANGE);
		unlinkat(s->work_fd, tmp, 0);
	} else {
		err = linkat(ua, a.name, ub, b.name, 0) < 0 ? -errno : 0;
		if (!err && wh == 2) {
			char whn[OVL_NAME_MAX + 8];

			snprintf(whn, sizeof(whn), OCI_WH "%s", b.name);
			unlinkat(ub, whn, 0);
		}
	}
out:
	if (ua >= 0)
		close(ua);
	if (ub >= 0)
		close(ub);
	drop_both(s, a.changed, b.changed);
	return err;
}

int ovl_link(struct ovl_stack *s, const char *from, const char *to)
{
	int err = lock_for_write(s);

	return err ? err : locked(s, do_link(s, from, to));
}
