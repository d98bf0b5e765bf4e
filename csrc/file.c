/* file.c - opening for writing, the kernel's file.c:ovl_open after
 * the VFS's may_open: a regular file is copied up (O_TRUNC: without its
 * data) or created (dir.c's create, for O_CREAT) and opened in the upper
 * layer; a fifo or device is opened where it is.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ovl_internal.h"

/* open(2) with write access, O_TRUNC or O_CREAT: copy up (or create) and
 * open the upper file; a fifo or device is opened where it is. */
static int open_write(struct ovl_stack *s, const struct ovl_cred *cred, const char *path,
		      int oflags, mode_t mode, int hops)
{
	struct ovl_target t;
	int err, fd;

	err = ovl_find_target(s, cred, path, &t);
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
		err = ovl_create_common(s, cred, path, &c);
		if (!err && (oflags & O_ACCMODE) != O_RDONLY)
			__atomic_store_n(&s->files_written, true, __ATOMIC_RELEASE);
		return err ? err : c.fd;
	}
	if ((oflags & O_CREAT) && (oflags & O_EXCL))
		return -EEXIST;
	if (t.ent->dtype == DT_LNK) {
		char buf[PATH_MAX * 2];
		const char *target = ovl_ent_target(t.ent);

		if ((oflags & O_NOFOLLOW) && !t.slash)
			return -ELOOP;	/* a trailing slash follows it anyway */
		if (hops >= OVL_MAX_SYMLINKS)
			return -ELOOP;
		/* The target, keeping a trailing slash: it must be a directory. */
		if (target[0] == '/')
			snprintf(buf, sizeof(buf), "%s%s", target, t.slash ? "/" : "");
		else
			snprintf(buf, sizeof(buf), "%s/%s%s", t.dir->path, target, t.slash ? "/" : "");
		return open_write(s, cred, buf, oflags, mode, hops + 1);
	}
	if (t.ent->dtype == DT_DIR)
		return -EISDIR;
	if (t.slash || (oflags & O_DIRECTORY))
		return -ENOTDIR;
	/* fs/namei.c:may_open, as the caller: a device first (nodev). */
	if (ovl_nodev(s, t.ent->dtype))
		return -EACCES;
	struct stat st;
	int acc = (oflags & O_ACCMODE) == O_RDONLY ? OVL_MAY_READ :
		  (oflags & O_ACCMODE) == O_WRONLY ? OVL_MAY_WRITE : OVL_MAY_READ | OVL_MAY_WRITE;

	ovl_target_attr(&t, &st);
	mode_t kill = oflags & O_TRUNC ? ovl_kill_suid(cred, st.st_mode) : 0;

	err = ovl_permission(cred, &st, acc | (oflags & O_TRUNC ? OVL_MAY_WRITE : 0));
	if (!err && (oflags & O_NOATIME) && !ovl_owner_or_capable(cred, &st))
		err = -EPERM;
	if (err)
		return err;
	if ((oflags & O_ACCMODE) == O_RDONLY && !(oflags & O_TRUNC)) {
		/* O_CREAT of an existing file: nothing to write, no copy-up. */
		char *rel;
		int layer;

		err = ovl_ent_relpath(s, t.dir, t.ent, &layer, &rel);
		if (err)
			return err;
		fd = ovl_layer_open_file(s, layer, rel, oflags & ~(O_CREAT | O_EXCL));
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
		fd = ovl_layer_open_file(s, layer, rel, oflags & ~(O_CREAT | O_EXCL | O_TRUNC));
		free(rel);
		return fd;
	}
	struct ovl_dir *changed = NULL;
	bool others = false;
	int method, udir;

	t.w.dir = t.dir;
	t.w.ent = t.ent;
	err = ovl_copy_up_ent(&t.w, t.dir, t.ent, oflags, &changed, &method);
	if (!changed)
		changed = t.dir;
	if (!err) {
		udir = ovl_open_upper_dir(s, t.dir->path, &st);
		fd = udir < 0 ? udir : openat(udir, t.name, (oflags & ~(O_CREAT | O_EXCL)) |
					      O_NOFOLLOW | O_CLOEXEC);
		err = fd < 0 ? (udir < 0 ? fd : -errno) : ovl_nodev_fd(s, 0, fd);
		fd = err;
		if (fd >= 0 && kill) {
			int kerr = ovl_kill_suid_fd(fd, kill);

			if (kerr) {
				close(fd);
				err = kerr;
			}
		}
		others = err >= 0 && (oflags & O_TRUNC) && ovl_aliased(udir, t.name, 1);
		if (err >= 0)	/* lookups of upper files now stat them (inode.c) */
			__atomic_store_n(&s->files_written, true, __ATOMIC_RELEASE);
		if (udir >= 0)
			close(udir);
	}
	ovl_drop_changed(s, changed, others);
	return err;
}

int ovl_open_write(struct ovl_stack *s, const char *path, int oflags, mode_t mode)
{
	struct ovl_change ch;
	int err = ovl_change_begin(s, &ch);

	return err ? err : ovl_change_end(&ch, open_write(s, &ch.cred, path, oflags, mode, 0));
}
