/* copy_up.c - copying an entry up to the upper layer before it changes
 * (copy_up.c:ovl_copy_up_flags, ovl_copy_up_one, ovl_do_copy_up).
 *
 * Ancestors first, top-down, each directory alone.  Every copy is built in
 * the work dir -- a regular file as an O_TMPFILE (nothing to clean up after
 * a crash), anything else under a temp name with no permission bits -- and
 * installed with a no-replace link or rename, so a crash leaves either no
 * upper copy or a complete one, and of two racing copiers the loser just
 * drops its temp.  Metadata follows ovl_copy_up_metadata: xattrs (the
 * stack's private <ns>.overlay.* ones skipped, escaped ones verbatim), then
 * size, owner, mode (not for symlinks) and times; the upper parent's times
 * are restored afterwards.
 *
 * An upper metacopy file (made by a kernel mount with metacopy=on) is up
 * already, for a metadata change; a change of its data first copies the
 * data into it in place (ovl_copy_up_meta_inode_data, below).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "ovl_internal.h"

#define TEMP_PREFIX "#ovl."

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE 1
#endif

int ovl_renameat2(int olddfd, const char *old, int newdfd, const char *new_,
		  unsigned flags)
{
	long r = syscall(SYS_renameat2, olddfd, old, newdfd, new_, flags);

	return r < 0 ? -errno : 0;
}

/* A temp name in the work dir that says which process made it. */
void ovl_temp_name(char *buf, size_t size)
{
	static unsigned long counter;
	unsigned long n = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);

	snprintf(buf, size, TEMP_PREFIX "%d.%lu", (int)getpid(), n);
}

/* Is this xattr one a copy must not carry?  The stack's private names, and
 * nothing else (escaped <ns>.overlay.overlay.* names are copied verbatim). */
static bool skip_xattr(const struct ovl_stack *s, const char *name)
{
	return ovl_xattr_is_private(s, name);
}

/* A failure to copy these loses a security property: it is fatal. */
static bool must_copy(const char *name)
{
	return !strncmp(name, "security.", 9) || !strncmp(name, "system.posix_acl", 16);
}

/* Copy the xattrs of src (an fd open for reading) to dst (likewise). */
static int copy_xattrs(const struct ovl_stack *s, int src, int dst)
{
	char *list = NULL, *val = NULL;
	ssize_t n = flistxattr(src, NULL, 0);
	size_t valcap = 0;
	int err = 0;

	if (n < 0)
		return errno == EOPNOTSUPP || errno == ENOTSUP ? 0 : -errno;
	if (n == 0)
		return 0;
	list = malloc((size_t)n);
	if (!list)
		return -ENOMEM;
	n = flistxattr(src, list, (size_t)n);
	if (n < 0) {
		err = -errno;
		goto out;
	}
	for (char *name = list; name < list + n; name += strlen(name) + 1) {
		ssize_t len;

		if (skip_xattr(s, name))
			continue;
		len = fgetxattr(src, name, NULL, 0);
		if (len < 0) {
			if (errno == ENODATA)
				continue;	/* removed meanwhile */
			err = -errno;
			goto out;
		}
		if ((size_t)len > valcap) {
			char *v = realloc(val, (size_t)len);

			if (!v) {
				err = -ENOMEM;
				goto out;
			}
			val = v;
			valcap = (size_t)len;
		}
		len = fgetxattr(src, name, val, (size_t)len);
		if (len < 0) {
			err = -errno;
			goto out;
		}
		if (fsetxattr(dst, name, val, (size_t)len, 0) < 0) {
			if ((errno == EOPNOTSUPP || errno == ENOTSUP) && !must_copy(name))
				continue;
			err = -errno;
			goto out;
		}
	}
out:
	free(list);
	free(val);
	return err;
}

/* The same for objects that cannot be opened (symlinks, fifos, devices),
 * by name; needs the *xattrat calls (Linux 6.13), skipped without them. */
static int copy_xattrs_at(const struct ovl_stack *s, int sdir, const char *sname,
			  int ddir, const char *dname)
{
	char *list = NULL, val[65536];
	long n;
	int err = 0;

	if (!s->have_xattrat)
		return 0;
	n = ovl_at_listxattr(s, sdir, sname, &list);
	if (n <= 0)
		return n == -EOPNOTSUPP ? 0 : (int)n;
	for (char *name = list; name < list + n; name += strlen(name) + 1) {
		long len;

		if (skip_xattr(s, name))
			continue;
		len = ovl_at_getxattr(s, sdir, sname, name, val, sizeof(val));
		if (len == -ENODATA)
			continue;
		if (len < 0) {
			err = (int)len;
			break;
		}
		err = ovl_sys_setxattrat(ddir, dname, AT_SYMLINK_NOFOLLOW, name, val, (size_t)len, 0);
		if (err && (err == -EOPNOTSUPP || err == -EPERM) && !must_copy(name))
			err = 0;
		if (err)
			break;
	}
	free(list);
	return err;
}

/* The owner of st on the fd.  It goes before the xattrs and the mode:
 * chown(2) clears set-id bits (which chmod then sets) and file capabilities
 * (security.capability, which the xattr copy then sets); the kernel's
 * ovl_set_attr changes the owner without either effect. */
static int set_owner_fd(const struct ovl_stack *s, int fd, const struct stat *st)
{
	/* Made by the opener in the work dir, it has the opener's ids. */
	if (st->st_uid == s->mounter.uid && st->st_gid == s->mounter.gid && !s->work_setgid)
		return 0;
	return fchown(fd, st->st_uid, st->st_gid) < 0 ? -errno : 0;
}

/* Mode and times of st on the fd, after the owner and the xattrs. */
static int set_attrs_fd(int fd, const struct stat *st)
{
	struct timespec ts[2] = { st->st_atim, st->st_mtim };

	if (fchmod(fd, st->st_mode & 07777) < 0 || futimens(fd, ts) < 0)
		return -errno;
	return 0;
}

/* The same by name in dfd, for objects that cannot be opened (symlinks,
 * devices, fifos); a symlink keeps its mode.  The owner was set already. */
static int set_attrs_at(int dfd, const char *name, const struct stat *st)
{
	struct timespec ts[2] = { st->st_atim, st->st_mtim };

	if (!S_ISLNK(st->st_mode) && fchmodat(dfd, name, st->st_mode & 07777, 0) < 0)
		return -errno;
	if (utimensat(dfd, name, ts, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return 0;
}

struct ovl_cu {
	struct ovl_stack *s;
	int method;		/* enum ovl_copy_method of the data copy */
};

/* Install a temp of the work dir as name in the upper dir udir, never
 * replacing anything.  -EEXIST: another copier was first (temp removed). */
static int install_named(struct ovl_stack *s, const char *tmp, int udir, const char *name,
			 bool is_dir)
{
	int err = ovl_renameat2(s->work_fd, tmp, udir, name, RENAME_NOREPLACE);

	if (err)
		unlinkat(s->work_fd, tmp, is_dir ? AT_REMOVEDIR : 0);
	return err;
}

/* Copy one directory alone (no contents) from (layer, rel) to name in the
 * upper directory udir. */
static int copy_dir(struct ovl_cu *c, int layer, const char *rel, int udir, const char *name)
{
	struct ovl_stack *s = c->s;
	char tmp[64];
	struct stat st;
	int src, dst = -1, err;

	src = ovl_layer_open(s, layer, rel, O_RDONLY | O_DIRECTORY | O_NOATIME);
	if (src == -EPERM)
		src = ovl_layer_open(s, layer, rel, O_RDONLY | O_DIRECTORY);
	if (src < 0)
		return src;
	if (fstat(src, &st) < 0) {
		err = -errno;
		goto out;
	}
	ovl_temp_name(tmp, sizeof(tmp));
	if (mkdirat(s->work_fd, tmp, 0) < 0) {
		err = -errno;
		goto out;
	}
	dst = openat(s->work_fd, tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	err = dst < 0 ? -errno : set_owner_fd(s, dst, &st);
	if (!err)
		err = copy_xattrs(s, src, dst);
	if (!err)
		err = set_attrs_fd(dst, &st);
	if (err) {
		unlinkat(s->work_fd, tmp, AT_REMOVEDIR);
		goto out;
	}
	err = install_named(s, tmp, udir, name, true);
	if (err == -EEXIST)
		err = 0;
out:
	if (dst >= 0)
		close(dst);
	close(src);
	return err;
}

/* Link an O_TMPFILE into udir as name. */
static int link_tmpfile(int fd, int udir, const char *name)
{
	char proc[64];

	if (linkat(fd, "", udir, name, AT_EMPTY_PATH) == 0)
		return 0;
	if (errno != ENOENT && errno != EPERM)
		return -errno;
	/* Without CAP_DAC_READ_SEARCH: through the fd's /proc link. */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	return linkat(AT_FDCWD, proc, udir, name, AT_SYMLINK_FOLLOW) == 0 ? 0 : -errno;
}

/* Open a lower file for copying without touching its atime, as the kernel
 * does (O_NOATIME needs its owner or CAP_FOWNER; else a plain open). */
static int open_noatime(const struct ovl_stack *s, int layer, const char *rel)
{
	int fd = ovl_layer_open_file(s, layer, rel, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_NOATIME);

	if (fd == -EPERM)
		fd = ovl_layer_open_file(s, layer, rel, O_RDONLY | O_NONBLOCK | O_NOCTTY);
	return fd;
}

/* Copy a regular file: metadata from (layer, rel), data from (dlayer,
 * drel) (the same unless it is a metacopy file). */
static int copy_file(struct ovl_cu *c, int layer, const char *rel, int dlayer,
		     const char *drel, int udir, const char *name)
{
	struct ovl_stack *s = c->s;
	struct stat st;
	char tmp[64];
	bool named = false;
	int src, data, dst, err;

	src = open_noatime(s, layer, rel);
	if (src < 0)
		return src;
	data = dlayer == layer && !strcmp(drel, rel) ? src : open_noatime(s, dlayer, drel);
	if (data < 0) {
		close(src);
		return data;
	}
	if (fstat(src, &st) < 0) {
		err = -errno;
		goto out_src;
	}
	dst = openat(s->work_fd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0);
	if (dst < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
		/* No O_TMPFILE here: a temp name with no permission bits. */
		ovl_temp_name(tmp, sizeof(tmp));
		dst = openat(s->work_fd, tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0);
		named = true;
	}
	if (dst < 0) {
		err = -errno;
		goto out_src;
	}
	/* Fewer blocks than the size needs: look for holes to keep. */
	err = ovl_copy_data(data, dst, st.st_size, OVL_COPY_SET_SIZE |
			    (data != src || st.st_blocks * 512 < st.st_size ? OVL_COPY_SPARSE : 0));
	if (err >= 0) {
		c->method = err;
		err = set_owner_fd(s, dst, &st);
	}
	if (!err)
		err = copy_xattrs(s, src, dst);
	if (!err)
		err = set_attrs_fd(dst, &st);
	/* As ovl_copy_file: fsync, unless volatile or the data is a whole
	 * clone (FICLONE wrote the source's dirty range before sharing it). */
	if (!err && !(s->cfg & OVL_CFG_VOLATILE) && c->method != OVL_COPY_CLONE &&
	    fsync(dst) < 0)
		err = -errno;
	if (!err)
		err = named ? install_named(s, tmp, udir, name, false) : link_tmpfile(dst, udir, name);
	else if (named)
		unlinkat(s->work_fd, tmp, 0);
	if (err == -EEXIST)
		err = 0;	/* another copier was first; its copy is complete */
	close(dst);
out_src:
	if (data != src)
		close(data);
	close(src);
	return err;
}

/* Copy a symlink, fifo, socket or device as itself. */
static int copy_special(struct ovl_cu *c, int layer, const char *rel, int udir,
			const char *name)
{
	struct ovl_stack *s = c->s;
	const char *slash = strrchr(rel, '/');
	char parent[PATH_MAX], target[PATH_MAX], tmp[64];
	const char *base = slash ? slash + 1 : rel;
	struct stat st;
	int pfd, err = 0;

	snprintf(parent, sizeof(parent), "%.*s", slash ? (int)(slash - rel) : 0, rel);
	pfd = ovl_layer_open(s, layer, parent, O_PATH | O_DIRECTORY);
	if (pfd < 0)
		return pfd;
	if (fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		err = -errno;
		goto out;
	}
	ovl_temp_name(tmp, sizeof(tmp));
	if (S_ISLNK(st.st_mode)) {
		ssize_t n = readlinkat(pfd, base, target, sizeof(target));

		if (n < 0 || (size_t)n >= sizeof(target)) {
			err = n < 0 ? -errno : -ENAMETOOLONG;
			goto out;
		}
		target[n] = '\0';
		if (symlinkat(target, s->work_fd, tmp) < 0)
			err = -errno;
	} else if (mknodat(s->work_fd, tmp, st.st_mode & S_IFMT, st.st_rdev) < 0) {
		err = -errno;
	}
	if (err)
		goto out;
	err = fchownat(s->work_fd, tmp, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
	if (!err)
		err = copy_xattrs_at(s, pfd, base, s->work_fd, tmp);
	if (!err)
		err = set_attrs_at(s->work_fd, tmp, &st);
	if (err) {
		unlinkat(s->work_fd, tmp, 0);
		goto out;
	}
	err = install_named(s, tmp, udir, name, false);
	if (err == -EEXIST)
		err = 0;
out:
	close(pfd);
	return err;
}

/* Open the upper directory at union path dpath for changes, remembering
 * its times so that adding to it does not show (ovl_copy_up_one restores
 * the parent's times). */
int ovl_open_upper_dir(struct ovl_stack *s, const char *dpath, struct stat *st)
{
	int fd = ovl_layer_open(s, 0, dpath, O_RDONLY | O_DIRECTORY);

	if (fd >= 0 && fstat(fd, st) < 0) {
		close(fd);
		return -errno;
	}
	return fd;
}

static void restore_times(int fd, const struct stat *st)
{
	struct timespec ts[2] = { st->st_atim, st->st_mtim };

	futimens(fd, ts);	/* best effort, as in the kernel */
}

/* Forget the metadata of p's entry e: the next lookup reads it again (the
 * old record stays in p's arena until p goes).  Write lock held. */
static void forget_fill(struct ovl_dir *p, struct ovl_ent *e)
{
	e->flags &= (uint8_t)~(OVL_E_FILLED | OVL_E_METACOPY);
	if (e->ext) {
		e->ext = NULL;
		p->nfilled--;
	}
}

/* Record in p's index that non-directory e now has its top-most copy in
 * the upper layer (p's stack layer 0): the old top becomes an occurrence
 * below it (it still decides whether removing the name needs a whiteout),
 * and the metadata is read again on the next lookup.  Write lock held.
 * Return 0, or -errno when the directory should be dropped instead. */
static int index_copied_up(struct ovl_stack *s, struct ovl_dir *p, struct ovl_ent *e, int udir)
{
	uint32_t n = e->nocc + 1u, *occ;
	int bits = ovl_occ_bits(p, e, e->top);
	struct stat st;

	if (e->top == 0 || fstatat(udir, e->name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
	    IFTODT(st.st_mode) != e->dtype)
		return -ESTALE;
	/* The entry's run moves to the end of the array, one longer. */
	occ = realloc(p->occ, (p->nocc + n) * sizeof(*occ));
	if (!occ)
		return -ENOMEM;
	occ[p->nocc] = OVL_OCC(e->top, bits);
	memcpy(occ + p->nocc + 1, occ + e->occ, e->nocc * sizeof(*occ));
	p->bytes += n * sizeof(*occ);
	p->occ = occ;
	e->occ = p->nocc;
	e->nocc = (uint16_t)n;
	p->nocc += n;
	e->top = 0;
	e->ino = st.st_ino;
	/* A regular file's copy is a plain file, a symlink's has the same
	 * target: their metadata is what the next lookup would read (and
	 * reading the copied symlink again would change its atime). */
	const char *target = e->dtype == DT_LNK && (e->flags & OVL_E_FILLED) ?
			     ovl_ent_target(e) : NULL;
	bool plain = e->dtype == DT_REG || target;

	e->flags &= (uint8_t)~OVL_E_TOPOCI;
	forget_fill(p, e);
	if (!plain || ovl_fill_plain(s, p, e, &st, target))
		ovl_dir_account(s, p);
	ovl_cache_changed(s);
	return 0;
}

/* Does a change with these open(2) flags need the data in the upper
 * layer?  Writing or truncating does (copy_up.c:ovl_dentry_needs_data_copy_up,
 * ovl_copy_up_with_data); a metadata change does not. */
static bool needs_data(int flags)
{
	return (flags & O_ACCMODE) == O_WRONLY || (flags & O_ACCMODE) == O_RDWR ||
	       (flags & O_TRUNC);
}

#define XATTR_CAPS "security.capability"

/* Copy the data of an upper metacopy file rel into it, from its data file
 * mc (copy_up.c:ovl_copy_up_meta_inode_data), then remove its
 * <ns>.overlay.metacopy: the data first, fsynced (unless volatile or
 * cloned), the xattr last, so that a crash in between leaves a metacopy
 * file whose reads still come from the data below.  With O_TRUNC no data
 * is copied (the caller truncates).  The writes update the upper file's
 * mtime and ctime and would drop a file capability, which is put back;
 * its <ns>.overlay.redirect stays (lookup ignores it on a file with its
 * data), all as the kernel leaves it.  If the xattr is gone meanwhile
 * (another process copied the data up), nothing is copied.  Write lock
 * held.  Return 0 or -errno. */
static int copy_up_meta_data(struct ovl_cu *c, const char *rel, const struct ovl_mcdata *mc,
			     int flags)
{
	struct ovl_stack *s = c->s;
	char cap[1024];
	ssize_t caplen = -1;
	struct stat st;
	int dst, data = -1, err;

	struct stat ust;

	dst = ovl_layer_open(s, 0, rel, O_WRONLY | O_NONBLOCK | O_NOCTTY);
	if (dst < 0)
		return dst;
	if ((flags & OVL_COPY_UP_QUIET) && fstat(dst, &ust) < 0) {
		err = -errno;
		goto out;
	}
	if (fgetxattr(dst, s->x_metacopy, NULL, 0) < 0) {
		err = errno == ENODATA ? 0 : -errno;
		goto out;
	}
	if (!(flags & O_TRUNC)) {
		data = open_noatime(s, mc->layer, mc->path);
		if (data < 0) {
			err = data;
			goto out;
		}
		if (fstat(data, &st) < 0) {
			err = -errno;
			goto out;
		}
		if (st.st_size) {
			caplen = fgetxattr(dst, XATTR_CAPS, cap, sizeof(cap));
			if (caplen < 0 && errno != ENODATA && errno != EOPNOTSUPP) {
				err = -errno;
				goto out;
			}
		}
		/* The upper keeps its size, as the kernel's copy does. */
		err = ovl_copy_data(data, dst, st.st_size, OVL_COPY_SPARSE);
		if (err < 0)
			goto out;
		c->method = err;
		err = 0;
		if (!(s->cfg & OVL_CFG_VOLATILE) && c->method != OVL_COPY_CLONE &&
		    c->method != OVL_COPY_NONE && fsync(dst) < 0) {
			err = -errno;
			goto out;
		}
		if (caplen >= 0 && fsetxattr(dst, XATTR_CAPS, cap, (size_t)caplen, 0) < 0) {
			err = -errno;
			goto out;
		}
	}
	err = fremovexattr(dst, s->x_metacopy) < 0 && errno != ENODATA ? -errno : 0;
	if (!err && (flags & OVL_COPY_UP_QUIET)) {
		/* Nothing was written through the overlay: its times stay. */
		struct timespec ts[2] = { ust.st_atim, ust.st_mtim };

		err = futimens(dst, ts) < 0 ? -errno : 0;
	}
out:
	if (data >= 0)
		close(data);
	close(dst);
	return err;
}

/* The metadata of p's entry e changed in place: it is read again on the
 * next lookup.  Write lock held. */
static void refill_ent(struct ovl_stack *s, struct ovl_dir *p, struct ovl_ent *e)
{
	forget_fill(p, e);
	ovl_dir_account(s, p);
	ovl_cache_changed(s);
}

/* Copy directory node d up if it is not in the upper layer yet (its
 * ancestors first).  *top gets the highest directory that was created. */
static int copy_up_dir(struct ovl_cu *c, struct ovl_dir *d, struct ovl_dir **top)
{
	struct ovl_stack *s = c->s;
	struct stat pst;
	int udir, err;

	if (d->stack[0].layer == 0)
		return 0;
	err = copy_up_dir(c, d->parent, top);
	if (err)
		return err;
	udir = ovl_open_upper_dir(s, d->parent->path, &pst);
	if (udir < 0)
		return udir;
	err = copy_dir(c, d->stack[0].layer, ovl_dl_path(d, 0), udir, d->ent->name);
	restore_times(udir, &pst);
	close(udir);
	if (!err && !*top)
		*top = d;
	return err;
}

/* Copy directory d up (with its ancestors) if it is not up yet; *top gets
 * the highest directory created (NULL if none).  Write lock held. */
int ovl_copy_up_dir(struct ovl_stack *s, struct ovl_dir *d, struct ovl_dir **top)
{
	struct ovl_cu c = { .s = s };

	*top = NULL;
	return copy_up_dir(&c, d, top);
}

/* Copy entry e of directory p up (ancestors first), for a change made
 * with the open(2) flags (0 for a metadata change, like the kernel's
 * ovl_copy_up_flags): a write or O_TRUNC also needs an upper metacopy
 * file's data.  *changed gets the directory whose index no longer matches
 * the layers (see ovl_cache_drop_dir); *method how the data moved.  Write
 * lock held.  Return 0 or -errno (-EIO and the like: a metacopy file whose
 * data was not found, as the lookup found it). */
int ovl_copy_up_ent(struct ovl_walk *w, struct ovl_dir *p, struct ovl_ent *e, int flags,
		    struct ovl_dir **changed, int *method)
{
	struct ovl_stack *s = w->s;
	struct ovl_cu c = { .s = s, .method = OVL_COPY_NONE };
	struct ovl_dir *node = NULL, *top = NULL;
	struct stat pst;
	char *rel = NULL;
	int layer, udir, err;

	*changed = NULL;
	*method = OVL_COPY_NONE;
	if (e == s->root_ent)
		return 0;	/* the upper root is there */
	if (e->dtype == DT_DIR) {
		err = ovl_ent_dir(w, p, e, &node);
		if (err)
			return err;
		if (node->stack[0].layer == 0)
			return 0;
		err = copy_up_dir(&c, node, &top);
		goto done;
	}
	err = ovl_ent_relpath(s, p, e, &layer, &rel);
	if (err)
		return err;
	if (layer == 0) {
		/* Up already; a metacopy file's data stays below unless the
		 * change needs it. */
		const struct ovl_mcdata *mc = e->flags & OVL_E_METACOPY ?
					      ovl_fill_extra(e->ext) : NULL;

		err = 0;
		if (mc && needs_data(flags)) {
			err = mc->err ? ovl_mc_error(s, p, e) :
			      copy_up_meta_data(&c, rel, mc, flags);
			if (!err)
				refill_ent(s, p, e);
		}
		free(rel);
		*method = c.method;
		return err;
	}
	err = copy_up_dir(&c, p, &top);
	if (err)
		goto done;
	udir = ovl_open_upper_dir(s, p->path, &pst);
	if (udir < 0) {
		err = udir;
		goto done;
	}
	if (e->dtype == DT_REG) {
		const struct ovl_mcdata *mc = e->flags & OVL_E_METACOPY ?
					      ovl_fill_extra(e->ext) : NULL;

		if (mc && mc->err)
			err = ovl_mc_error(s, p, e);
		else
			err = copy_file(&c, layer, rel, mc ? mc->layer : layer,
					mc ? mc->path : rel, udir, e->name);
	} else {
		err = copy_special(&c, layer, rel, udir, e->name);
	}
	restore_times(udir, &pst);
	/* The directory was up already: its index just gains the upper copy
	 * (no re-reading every layer of it after each copy-up). */
	if (!err && !top && p->stack[0].layer == 0 && index_copied_up(s, p, e, udir) == 0) {
		close(udir);
		free(rel);
		*method = c.method;
		return 0;
	}
	close(udir);
done:
	free(rel);
	/* The parent of the highest directory created, or the directory that
	 * holds the entry, has a new upper name. */
	*changed = top ? top->parent : node ? NULL : p;
	if (top && !top->parent)
		*changed = s->root;
	*method = c.method;
	return err;
}

int ovl_copy_up(struct ovl_stack *s, const char *path, unsigned flags)
{
	struct ovl_change ch;
	struct ovl_walk w = { .s = s };
	struct ovl_dir *changed = NULL;
	int err, method = OVL_COPY_NONE;

	err = ovl_change_begin(s, &ch);
	if (err)
		return err;
	/* The caller needs search access to the path, nothing more: the
	 * copy changes nothing the overlay shows. */
	w.cred = &ch.cred;
	err = ovl_walk_path(&w, path, flags & OVL_LOOKUP_FOLLOW);
	/* With the data, as ovl_copy_up_with_data: the upper copy is
	 * complete, a metacopy file's too. */
	if (!err)
		err = ovl_copy_up_ent(&w, w.dir, w.ent, O_WRONLY, &changed, &method);
	ovl_cache_drop_dir(s, changed);
	err = ovl_change_end(&ch, err);
	return err ? err : method;
}

/* Remove temps left in the work dir by processes that are gone (a crash in
 * the middle of a copy-up).  Called when a stack opens its work dir. */
int ovl_work_cleanup(int work_fd)
{
	int fd = openat(work_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *dir;
	struct dirent *de;

	if (fd < 0)
		return -errno;
	dir = fdopendir(fd);
	if (!dir) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(dir))) {
		int pid;

		if (strncmp(de->d_name, TEMP_PREFIX, strlen(TEMP_PREFIX)) ||
		    sscanf(de->d_name + strlen(TEMP_PREFIX), "%d.", &pid) != 1)
			continue;
		if (pid == getpid() || kill(pid, 0) == 0 || errno != ESRCH)
			continue;	/* its maker may still be at work */
		if (unlinkat(work_fd, de->d_name, 0) < 0 && errno == EISDIR)
			unlinkat(work_fd, de->d_name, AT_REMOVEDIR);
	}
	closedir(dir);
	return 0;
}
