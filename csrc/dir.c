/* dir.c - namespace changes: create, remove, rename and link, leaving the
 * upper layer as the kernel would (dir.c:ovl_create_object, ovl_do_remove,
 * ovl_rename, ovl_link), each started as target.c says.
 *
 * Removing a name that exists below leaves a whiteout in the stack's form
 * (a char device 0:0, or ".wh.NAME" for whiteouts="oci"); removing an
 * upper-only name leaves no trace.  A directory created over a whiteout is
 * opaque; anything else created over one replaces it.  Replacements are
 * atomic: the new object is made in the work dir and exchanged with the
 * old one.  With OVL_CFG_REDIRECT_DIR, a merged or lower directory is
 * renamed the way redirect_dir=on does it (dir.c:ovl_rename_upper,
 * ovl_set_redirect).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

static void dir_attr(const struct ovl_dir *d, struct stat *st)
{
	ovl_fill_stat(d->fill, st);
}

/* fs/namei.c:may_delete on the target's parent and the target. */
static int may_delete_target(const struct ovl_cred *cred, const struct ovl_target *t)
{
	struct stat dst, vst;

	dir_attr(t->dir, &dst);
	ovl_target_attr(t, &vst);
	return ovl_may_delete(cred, &dst, &vst);
}

static int may_create_in(const struct ovl_cred *cred, const struct ovl_target *t)
{
	struct stat dst;

	dir_attr(t->dir, &dst);
	return ovl_may_create(cred, &dst);
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

	*present = false;
	if (fstatat(udir, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		if (ovl_kernel_wh(s) && ovl_is_whiteout_stat(&st))
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
	return ovl_oci_whiteout_at(udir, name) ? 2 : 0;
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
			return ovl_mknod_whiteout(dfd, name);
		ovl_temp_name(tmp, sizeof(tmp));
		err = ovl_mknod_whiteout(s->work_fd, tmp);
		if (err)
			return err;
		err = ovl_renameat2(s->work_fd, tmp, dfd, name, RENAME_NOREPLACE);
		if (err)
			unlinkat(s->work_fd, tmp, 0);
		return err;
	}
	char wh[OVL_NAME_MAX + 8];
	int fd;

	ovl_oci_whiteout_name(wh, sizeof(wh), name);
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
	int dir = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), err = 0;

	if (dir < 0)
		return -errno;
	if (oci) {
		err = ovl_oci_make_opaque(dir);
	} else if (fsetxattr(dir, s->x_opaque, "y", 1, 0) < 0) {
		err = -errno;
	}
	close(dir);
	return err;
}

/* Remove what an upper directory holds besides whiteouts: nothing may be
 * there (the merged directory is empty); whiteouts are cleaned up.  Like
 * the kernel's ovl_cleanup_whiteouts, char 0:0 ones (and ".wh.NAME"): an
 * xattr whiteout is an entry (see merged_empty). */
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
		wh = ovl_is_whiteout_stat(&st) ||
		     (ovl_oci_wh(s) && ovl_oci_is_marker(de->d_name, strlen(de->d_name)));
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

/* Is the merged directory d empty, for rmdir and a rename over it
 * (readdir.c:ovl_check_empty_dir)?  The kernel skips only the entries
 * ovl_check_whiteouts found to be char 0:0 whiteouts: an xattr whiteout is
 * an entry even where the listing hides it (a lower, non-bottom directory
 * marked opaque=x), so such a directory is not empty. */
static bool merged_empty(const struct ovl_dir *d)
{
	if (d->norder)
		return false;
	for (uint32_t i = 0; d->table && i <= d->mask; i++) {
		const struct ovl_ent *e = d->table[i];

		if (e && (e->flags & OVL_E_WHITEOUT) && e->dtype == DT_REG)
			return false;
	}
	return true;
}

static int remove_common(struct ovl_stack *s, const struct ovl_cred *cred, const char *path,
			 bool is_rmdir)
{
	struct ovl_target t;
	bool lower, in_upper;
	int udir, err;

	err = ovl_find_target(s, cred, path, &t);
	if (err == -EBUSY)
		return is_rmdir ? -EBUSY : -EISDIR;
	if (err)
		return err;
	if (t.dot)
		return is_rmdir ? (!strcmp(t.name, ".") ? -EINVAL : -ENOTEMPTY) : -EISDIR;
	if (!t.ent)
		return -ENOENT;
	if (!is_rmdir && t.slash)
		return t.ent->dtype == DT_DIR ? -EISDIR : -ENOTDIR;
	err = may_delete_target(cred, &t);
	if (err)
		return err;
	if (is_rmdir && t.ent->dtype != DT_DIR)
		return -ENOTDIR;
	if (!is_rmdir && t.ent->dtype == DT_DIR)
		return -EISDIR;
	if (is_rmdir && !merged_empty(t.node))
		return -ENOTEMPTY;
	lower = lower_positive(s, t.dir, t.name, t.len);
	in_upper = t.dir->stack[t.ent->top].layer == 0;
	udir = upper_parent(&t);
	if (udir < 0) {
		ovl_cache_drop_dir(s, t.changed);
		return udir;
	}
	/* Whiteouts in the upper dir are cleaned only when a lower copy of
	 * the name is there or the dir is merged (through a redirect, it can
	 * be without the first): a pure-upper dir holding any gives ENOTEMPTY,
	 * as in the kernel (dir.c:ovl_do_remove, ovl_pure_upper). */
	if (in_upper && is_rmdir && (lower || t.node->nstack > 1))
		err = clear_whiteouts(s, udir, t.name);
	bool others = in_upper && !is_rmdir && ovl_aliased(udir, t.name, 1);

	if (!err) {
		if (in_upper && lower)
			err = whiteout_over(s, udir, t.name, is_rmdir);
		else if (in_upper)
			err = unlinkat(udir, t.name, is_rmdir ? AT_REMOVEDIR : 0) < 0 ? -errno : 0;
		else
			err = make_whiteout(s, udir, t.name);
	}
	close(udir);
	ovl_drop_changed(s, t.changed, others);
	return err;
}

int ovl_unlink(struct ovl_stack *s, const char *path)
{
	struct ovl_change c;
	int err = ovl_change_begin(s, &c);

	return err ? err : ovl_change_end(&c, remove_common(s, &c.cred, path, false));
}

int ovl_rmdir(struct ovl_stack *s, const char *path)
{
	struct ovl_change c;
	int err = ovl_change_begin(s, &c);

	return err ? err : ovl_change_end(&c, remove_common(s, &c.cred, path, true));
}

/* Give a new object the owner the kernel's inode_init_owner gives it:
 * the caller's fsuid; the parent's group under a setgid parent (and a
 * directory its setgid bit), else the caller's fsgid.  chown clears the
 * set-id bits, so the mode goes back on after it. */
static int set_owner(int dfd, const char *name, const struct ovl_create *c)
{
	struct stat st;
	mode_t want;

	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	want = st.st_mode & 07777;
	if (S_ISDIR(st.st_mode) && c->sgid_parent)
		want |= S_ISGID;
	if ((st.st_uid != c->uid || st.st_gid != c->gid) &&
	    fchownat(dfd, name, c->uid, c->gid, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (!S_ISLNK(st.st_mode) && (want != (st.st_mode & 07777) || (want & 06000)) &&
	    fchmodat(dfd, name, want, 0) < 0)
		return -errno;
	return 0;
}

/* Make the object at dfd/name; in_work: in the work dir, where a setgid
 * parent cannot give it its group. */
static int create_at(int dfd, const char *name, struct ovl_create *c, bool in_work)
{
	int err;

	switch (c->mode & S_IFMT) {
	case S_IFDIR:
		err = mkdirat(dfd, name, c->mode & 07777) < 0 ? -errno : 0;
		break;
	case S_IFLNK:
		err = symlinkat(c->target, dfd, name) < 0 ? -errno : 0;
		break;
	case S_IFREG:
		c->fd = openat(dfd, name, (c->oflags & ~O_TRUNC) | O_CREAT | O_EXCL | O_NOFOLLOW |
			       O_CLOEXEC, c->mode & 07777);
		err = c->fd < 0 ? -errno : 0;
		break;
	default:
		err = mknodat(dfd, name, c->mode, c->rdev) < 0 ? -errno : 0;
		break;
	}
	if (!err && (c->other_owner || (in_work && c->sgid_parent)))
		err = set_owner(dfd, name, c);
	return err;
}

/* The checks before a create (fs/namei.c:may_create, vfs_mknod) and the
 * owner and mode the kernel gives the new object. */
static int prepare_create(struct ovl_stack *s, const struct ovl_cred *cred,
			  const struct ovl_target *t, struct ovl_create *c)
{
	struct stat dst;
	int err;

	dir_attr(t->dir, &dst);
	err = ovl_may_create(cred, &dst);
	if (err)
		return err;
	if ((S_ISCHR(c->mode) || S_ISBLK(c->mode)) && !ovl_capable(cred, OVL_CAP_MKNOD))
		return -EPERM;
	c->mode = ovl_strip_sgid(cred, &dst, c->mode);
	c->sgid_parent = dst.st_mode & S_ISGID;
	c->uid = cred->uid;
	c->gid = c->sgid_parent ? dst.st_gid : cred->gid;
	c->other_owner = cred->uid != s->mounter.uid ||
			 (!c->sgid_parent && cred->gid != s->mounter.gid);
	return 0;
}

/* Create path as the caller: the checks, the parent chain copied up, and
 * the object c describes made in the upper layer, over a whiteout when one
 * is there (c->fd: the open file of an O_CREAT open).  Return 0 or -errno. */
int ovl_create_common(struct ovl_stack *s, const struct ovl_cred *cred, const char *path,
		      struct ovl_create *c)
{
	struct ovl_target t;
	bool present = false, merged_parent;
	int udir, wh, err;

	c->fd = -1;
	err = ovl_find_target(s, cred, path, &t);
	if (err == -EBUSY)
		return -EEXIST;
	if (err)
		return err;
	if (t.dot || t.ent)
		return -EEXIST;
	if (t.slash && !S_ISDIR(c->mode))
		return c->oflags & O_CREAT ? -EISDIR : -ENOENT;	/* open(2) or mknod(2) */
	err = prepare_create(s, cred, &t, c);
	if (err)
		return err;
	merged_parent = merged_or_lower(t.dir);
	udir = upper_parent(&t);
	if (udir < 0) {
		ovl_cache_drop_dir(s, t.changed);
		return udir;
	}
	wh = upper_whiteout(s, udir, t.name, &present);
	if (wh < 0) {
		err = wh;
	} else if (present) {
		err = -EEXIST;	/* the cache was behind the layer */
	} else if (!wh) {
		err = create_at(udir, t.name, c, false);
		/* With redirect_dir (or index, metacopy, xino) the kernel marks a
		 * new directory in a merged one opaque, an optimization allowed
		 * to fail (dir.c:ovl_create_upper, ovl_allow_offline_changes). */
		if (!err && S_ISDIR(c->mode) && merged_parent && (s->cfg & OVL_CFG_REDIRECT_DIR))
			mark_opaque(s, udir, t.name, false);
	} else if (wh == 2) {
		/* Over ".wh.NAME": create, mark a directory opaque the OCI
		 * way, then drop the whiteout file. */
		char wh_name[OVL_NAME_MAX + 8];

		err = create_at(udir, t.name, c, false);
		if (!err && S_ISDIR(c->mode))
			err = mark_opaque(s, udir, t.name, true);
		ovl_oci_whiteout_name(wh_name, sizeof(wh_name), t.name);
		if (!err && unlinkat(udir, wh_name, 0) < 0)
			err = -errno;
	} else {
		/* Over a whiteout: built in the work dir, a directory marked
		 * opaque, then exchanged with it (dir.c:ovl_create_over_whiteout). */
		char tmp[64];

		ovl_temp_name(tmp, sizeof(tmp));
		err = create_at(s->work_fd, tmp, c, true);
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
	ovl_cache_drop_dir(s, t.changed);
	return err;
}

int ovl_mkdir(struct ovl_stack *s, const char *path, mode_t mode)
{
	struct ovl_create c = { .mode = S_IFDIR | (mode & 07777) };
	struct ovl_change ch;
	int err = ovl_change_begin(s, &ch);

	return err ? err : ovl_change_end(&ch, ovl_create_common(s, &ch.cred, path, &c));
}

int ovl_mknod(struct ovl_stack *s, const char *path, mode_t mode, dev_t dev)
{
	struct ovl_create c = { .mode = mode, .rdev = dev };
	int err;

	ovl_error_clear();
	if (S_ISDIR(mode) || S_ISLNK(mode))
		return -EINVAL;
	if ((mode & S_IFMT) == 0)
		c.mode |= S_IFREG;
	struct ovl_change ch;

	err = ovl_change_begin(s, &ch);
	if (err)
		return err;
	if (ovl_is_whiteout_dev(mode, dev)) {
		/* Whiteouts are the overlay's own: EPERM, after EEXIST and
		 * the parent's write permission. */
		struct ovl_target t;

		err = ovl_find_target(s, &ch.cred, path, &t);
		if (!err)
			err = t.ent || t.dot ? -EEXIST : t.slash ? -ENOENT : may_create_in(&ch.cred, &t);
		if (!err)
			err = -EPERM;
		return ovl_change_end(&ch, err == -EBUSY ? -EEXIST : err);
	}
	err = ovl_create_common(s, &ch.cred, path, &c);
	if (c.fd >= 0)
		close(c.fd);
	return ovl_change_end(&ch, err);
}

int ovl_symlink(struct ovl_stack *s, const char *target, const char *path)
{
	struct ovl_create c = { .mode = S_IFLNK | 0777, .target = target };
	int err;

	struct ovl_change ch;

	ovl_error_clear();
	if (!*target)
		return -ENOENT;
	err = ovl_change_begin(s, &ch);
	return err ? err : ovl_change_end(&ch, ovl_create_common(s, &ch.cred, path, &c));
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
	ovl_cache_drop_dir(s, b);
	ovl_cache_drop_dir(s, a);
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

/* The copy-up a file needs before it is renamed or linked.  A metacopy
 * file finds its data below by its name, or by a redirect the kernel then
 * writes (ovl_set_redirect for metacopy files); the Stack, which does not
 * write redirects on files, copies the data up instead (its times kept):
 * the same tree, a different upper layer, and no name that could lose its
 * data. */
static int metacopy_flags(const struct ovl_ent *e)
{
	return e->flags & OVL_E_METACOPY ? O_WRONLY | OVL_COPY_UP_QUIET : 0;
}

/* Is the upper directory name in udir marked opaque (the kernel's
 * ovl_dentry_is_opaque: its own mark, not a whiteout found below it)? */
static bool upper_opaque(struct ovl_stack *s, int udir, const char *name)
{
	int fd = openat(udir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	char opaque = 0;
	bool yes;

	if (fd < 0)
		return false;
	yes = (ovl_dir_xattrs(s, fd, &opaque, NULL) == 0 && opaque == 'y') ||
	      (ovl_oci_wh(s) && ovl_oci_opaque_at(fd));
	close(fd);
	return yes;
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

/* Open the upper copies of the two parents of a rename or link (both up
 * already); *ua and *ub are -1 where not opened. */
static int open_upper_parents(struct ovl_stack *s, const struct ovl_target *a,
			      const struct ovl_target *b, int *ua, int *ub)
{
	struct stat st;

	*ub = -1;
	*ua = ovl_open_upper_dir(s, a->dir->path, &st);
	if (*ua < 0)
		return *ua;
	*ub = ovl_open_upper_dir(s, b->dir->path, &st);
	return *ub < 0 ? *ub : 0;
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
static int do_rename(struct ovl_stack *s, const struct ovl_cred *cred, const char *from,
		     const char *to)
{
	struct ovl_target a, b;
	struct ovl_dir *top = NULL;
	bool is_dir, lower_old, merged_old = false, merged_new, pure_target = false, present = false;
	int ua = -1, ub = -1, wh, err, method;

	/* As do_renameat2: both parents, then the old name, then the new. */
	int erra = ovl_find_target(s, cred, from, &a), errb;

	if (erra && erra != -EBUSY && erra != -ENAMETOOLONG)
		return erra;
	errb = ovl_find_target(s, cred, to, &b);
	if (errb && errb != -EBUSY && errb != -ENAMETOOLONG)
		return errb;
	if (erra == -EBUSY || errb == -EBUSY || a.dot || b.dot)
		return -EBUSY;
	if (erra)
		return erra;
	if (!a.ent)
		return -ENOENT;
	if (errb)
		return errb;
	is_dir = a.ent->dtype == DT_DIR;
	if (!is_dir && (a.slash || b.slash))
		return -ENOTDIR;
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
	if (a.dir == b.dir && a.ent == b.ent)
		return 0;	/* the same name: nothing to do */
	/* fs/namei.c:vfs_rename, as the caller: remove the old name, make
	 * or replace the new one, and a directory changing parents needs
	 * write access to itself for its "..". */
	err = may_delete_target(cred, &a);
	if (!err)
		err = b.ent ? may_delete_target(cred, &b) : may_create_in(cred, &b);
	if (!err && is_dir && a.dir != b.dir) {
		struct stat st;

		ovl_target_attr(&a, &st);
		err = ovl_permission(cred, &st, OVL_MAY_WRITE);
	}
	if (err)
		return err;
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
		if (!pure_target && !merged_empty(b.node))
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
		err = ovl_copy_up_ent(&a.w, a.dir, a.ent, metacopy_flags(a.ent), &chg, &method);
	}
	if (!err)
		err = open_upper_parents(s, &a, &b, &ua, &ub);
	if (err)
		goto out;
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
	} else if (is_dir && merged_new && !upper_opaque(s, ua, a.name)) {
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

		ovl_oci_whiteout_name(whn, sizeof(whn), b.name);
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
	struct ovl_change ch;
	int err = ovl_change_begin(s, &ch);

	return err ? err : ovl_change_end(&ch, do_rename(s, &ch.cred, from, to));
}

/* link(2): the source is copied up and linked in the upper layer; a
 * directory cannot be linked. */
static int do_link(struct ovl_stack *s, const struct ovl_cred *cred, const char *from,
		   const char *to)
{
	struct ovl_target a, b;
	struct ovl_dir *top = NULL, *chg = NULL;
	bool present = false, others = false;
	int ua = -1, ub = -1, wh, err, method;
	struct stat st;

	/* In do_linkat's order: the old path, the new one, may_linkat, then
	 * vfs_link's checks as the caller. */
	err = ovl_find_target(s, cred, from, &a);
	if (err && err != -EBUSY)
		return err;
	bool old_dir = err == -EBUSY || a.dot;	/* the root, "." or ".." */

	if (!old_dir && !a.ent)
		return -ENOENT;
	if (a.slash && !old_dir && a.ent->dtype == DT_LNK) {
		/* "link/": the walk follows it and wants a directory. */
		struct ovl_walk w;

		err = ovl_walk_object(s, cred, from, OVL_LOOKUP_FOLLOW, &w, &st);
		if (err)
			return err;
		old_dir = true;
	}
	old_dir = old_dir || a.ent->dtype == DT_DIR;
	if (a.slash && !old_dir)
		return -ENOTDIR;
	int berr = ovl_find_target(s, cred, to, &b);

	if (berr && berr != -EBUSY)
		return berr;
	if (berr == -EBUSY || b.dot || b.ent)
		return -EEXIST;
	if (b.slash)
		return -ENOENT;
	if (old_dir) {
		/* Directories are never linked; only an owner gets as far
		 * as vfs_link's EACCES before that EPERM. */
		struct ovl_walk w;

		err = ovl_walk_object(s, cred, from, 0, &w, &st);
		if (!err)
			err = ovl_may_link(s, cred, &st);
		if (!err)
			err = may_create_in(cred, &b);
		return err ? err : -EPERM;
	}
	ovl_target_attr(&a, &st);
	err = ovl_may_link(s, cred, &st);
	if (!err)
		err = may_create_in(cred, &b);
	if (err)
		return err;
	a.w.dir = a.dir;
	a.w.ent = a.ent;
	err = ovl_copy_up_ent(&a.w, a.dir, a.ent, metacopy_flags(a.ent), &chg, &method);
	a.changed = chg ? chg : a.dir;
	if (!err)
		err = ovl_copy_up_dir(s, b.dir, &top);
	b.changed = top ? top->parent : b.dir;
	if (!err)
		err = open_upper_parents(s, &a, &b, &ua, &ub);
	if (err)
		goto out;
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

			ovl_oci_whiteout_name(whn, sizeof(whn), b.name);
			unlinkat(ub, whn, 0);
		}
	}
	others = !err && ovl_aliased(ua, a.name, 2);
out:
	if (ua >= 0)
		close(ua);
	if (ub >= 0)
		close(ub);
	drop_both(s, a.changed, b.changed);
	if (others)
		ovl_cache_flush(s);
	return err;
}

int ovl_link(struct ovl_stack *s, const char *from, const char *to)
{
	struct ovl_change ch;
	int err = ovl_change_begin(s, &ch);

	return err ? err : ovl_change_end(&ch, do_link(s, &ch.cred, from, to));
}
