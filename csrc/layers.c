/* layers.c - contained access to layer contents.
 *
 * Every layer root is opened once (super.c).  Anything inside a layer is
 * reached relative to that root fd with openat2(RESOLVE_BENEATH|
 * RESOLVE_NO_SYMLINKS|RESOLVE_NO_XDEV), or on kernels without openat2 by a
 * walk of single components opened with O_NOFOLLOW, so no symlink, '..' or
 * concurrent swap inside a layer can lead outside of it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "ovl_internal.h"

char *ovl_path_join(const char *a, size_t alen, const char *b, size_t blen)
{
	char *p = malloc(alen + blen + 2);
	size_t n = 0;

	if (!p)
		return NULL;
	if (alen) {
		memcpy(p, a, alen);
		n = alen;
		if (blen)
			p[n++] = '/';
	}
	memcpy(p + n, b, blen);
	p[n + blen] = '\0';
	return p;
}

_Thread_local struct ovl_errd ovl_errd;

/* Copy at most size - 1 bytes of src (len bytes, cut at a NUL) to dst. */
static void copy_text(char *dst, size_t size, const char *src, size_t len)
{
	const char *nul = src ? memchr(src, '\0', len) : NULL;

	if (!src)
		len = 0;
	if (nul)
		len = (size_t)(nul - src);
	if (len >= size)
		len = size - 1;
	memcpy(dst, src ? src : "", len);
	dst[len] = '\0';
}

/* Record why the calling thread's call on s fails with err (a -errno),
 * for ovl_last_error: layer holds dir/name (either may be NULL or empty),
 * reason is static text, value (vlen bytes, may be NULL) what is wrong
 * there.  Only error paths call it.  Return err. */
int ovl_error(const struct ovl_stack *s, int err, int layer, const char *reason,
	      const char *dir, const char *name, const char *value, size_t vlen)
{
	struct ovl_errd *e = &ovl_errd;
	size_t dlen = dir ? strlen(dir) : 0, n;

	e->s = s;
	e->err = err;
	e->d.layer = layer;
	e->d.reason = reason;
	copy_text(e->d.path, sizeof(e->d.path), dir, dlen);
	n = strlen(e->d.path);
	if (name && *name && n + 1 < sizeof(e->d.path)) {
		if (n)
			e->d.path[n++] = '/';
		copy_text(e->d.path + n, sizeof(e->d.path) - n, name, strlen(name));
	}
	copy_text(e->d.value, sizeof(e->d.value), value, vlen);
	return err;
}

int ovl_last_error(const struct ovl_stack *s, int err, struct ovl_error_detail *out)
{
	const struct ovl_errd *e = &ovl_errd;

	if (!e->err || e->err != err || e->s != s)
		return -ENODATA;
	*out = e->d;
	return 0;
}

/* Component-wise fallback for kernels without openat2. */
static int open_walk(const struct ovl_layer *l, const char *relpath, int oflags)
{
	int fd = l->fd, next;
	const char *p = relpath;
	char name[OVL_NAME_MAX + 1];
	struct stat st;

	if (!*p) {
		next = openat(fd, ".", oflags | O_CLOEXEC);
		return next < 0 ? -errno : next;
	}
	for (;;) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		bool last = !slash;

		if (len == 0 || len > OVL_NAME_MAX ||
		    (len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.')) {
			next = -EINVAL;
			goto out;
		}
		memcpy(name, p, len);
		name[len] = '\0';
		next = openat(fd, name, (last ? oflags : O_PATH | O_DIRECTORY) |
			      O_NOFOLLOW | O_CLOEXEC);
		if (next < 0)
			next = -errno;
		else if (fstat(next, &st) < 0 || st.st_dev != l->dev) {
			close(next);
			next = -EXDEV;
		}
out:
		if (fd != l->fd)
			close(fd);
		if (next < 0 || last)
			return next;
		fd = next;
		p = slash + 1;
	}
}

/* Open relpath ("" is the root) inside layer with oflags (O_NOFOLLOW is
 * implied).  Return an fd or -errno (-ELOOP for a symlink, -EXDEV for a
 * mount point on the way). */
int ovl_layer_open(const struct ovl_stack *s, int layer, const char *relpath,
		   int oflags)
{
	const struct ovl_layer *l = &s->layers[layer];

	if (s->have_openat2)
		return ovl_sys_openat2(l->fd, *relpath ? relpath : ".",
				       (uint64_t)(oflags | O_NOFOLLOW | O_CLOEXEC),
				       OVL_RESOLVE);
	return open_walk(l, relpath, oflags);
}

/* fd (an object just opened in layer), or -EACCES after closing it if it
 * is a device the stack may not open (ovl_nodev) and the layer's mount did
 * not refuse it already: the upper, and a lower whose mount could not be
 * cloned nodev.  The callers refuse what the cache knows to be a device
 * before opening it; this catches one that took a name's place since. */
int ovl_nodev_fd(const struct ovl_stack *s, int layer, int fd)
{
	struct stat st;
	int err;

	if (fd < 0 || (s->cfg & OVL_CFG_DEVICES) || s->layers[layer].nodev)
		return fd;
	if (fstat(fd, &st) < 0)
		err = -errno;
	else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))
		err = -EACCES;
	else
		return fd;
	close(fd);
	return err;
}

/* ovl_layer_open of an object to read or write (not O_PATH): never a
 * device, unless the stack opens devices (ovl_nodev_fd). */
int ovl_layer_open_file(const struct ovl_stack *s, int layer, const char *relpath,
			int oflags)
{
	return ovl_nodev_fd(s, layer, ovl_layer_open(s, layer, relpath, oflags));
}

/* The upper directory at relpath in the stack's read-only noatime clone of
 * the upper layer (O_PATH), or -errno (-ENOSYS: there is no such clone). */
int ovl_upper_quiet_dir(const struct ovl_stack *s, const char *relpath)
{
	if (s->upper_quiet_fd < 0 || !s->have_openat2)
		return -ENOSYS;
	return ovl_sys_openat2(s->upper_quiet_fd, *relpath ? relpath : ".",
			       O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, OVL_RESOLVE);
}

/* A layer directory to read: with O_NOATIME, like the kernel's
 * ovl_path_open, so that looking leaves the layers' atimes alone (it needs
 * the directory's owner or CAP_FOWNER; else a plain open). */
int ovl_layer_open_dir(const struct ovl_stack *s, int layer, const char *relpath)
{
	int fd = ovl_layer_open(s, layer, relpath, O_RDONLY | O_DIRECTORY | O_NOATIME);

	if (fd == -EPERM)
		fd = ovl_layer_open(s, layer, relpath, O_RDONLY | O_DIRECTORY);
	return fd;
}

/* getxattr on an fd opened for reading.  Return the length or -errno. */
long ovl_fd_getxattr(int fd, const char *name, void *buf, size_t size)
{
	ssize_t r = fgetxattr(fd, name, buf, size);

	return r < 0 ? -errno : r;
}

/* Without the *xattrat calls (before 6.13), the xattrs of dfd/name are
 * read by path through /proc/self/fd of an O_PATH fd (the object itself,
 * a final symlink too): opening it for reading would open a device, which
 * is not for a lookup to do (and which a nodev layer clone refuses).
 * Return the fd, with that path in proc, or -errno. */
static int xattr_proc_path(int dfd, const char *name, char *proc, size_t size)
{
	int fd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	snprintf(proc, size, "/proc/self/fd/%d", fd);
	return fd;
}

static long proc_listxattr(const char *proc, char *buf, size_t size)
{
	ssize_t r = listxattr(proc, buf, size);

	return r < 0 ? -errno : r;
}

/* List the xattr names of dfd/name (not following a final symlink) into a
 * malloc'd buffer.  Return the length (0: none, *buf NULL) or -errno. */
long ovl_at_listxattr(const struct ovl_stack *s, int dfd, const char *name,
		      char **buf)
{
	char small[1024], proc[64];
	long n;
	int fd = -1;

	*buf = NULL;
	if (s->have_xattrat) {
		n = ovl_sys_listxattrat(dfd, name, AT_SYMLINK_NOFOLLOW, small,
					sizeof(small));
		if (n == -ERANGE)
			n = ovl_sys_listxattrat(dfd, name, AT_SYMLINK_NOFOLLOW, NULL, 0);
	} else {
		fd = xattr_proc_path(dfd, name, proc, sizeof(proc));
		if (fd < 0)
			return fd;
		n = proc_listxattr(proc, small, sizeof(small));
		if (n == -ERANGE)
			n = proc_listxattr(proc, NULL, 0);
	}
	if (n <= 0)
		goto out;
	if ((size_t)n <= sizeof(small)) {
		*buf = malloc((size_t)n);
		if (!*buf) {
			n = -ENOMEM;
			goto out;
		}
		memcpy(*buf, small, (size_t)n);
		goto out;
	}
	/* Larger than the stack buffer: read again at the size asked for. */
	for (int tries = 0; tries < 4; tries++) {
		char *big = malloc((size_t)n);
		long m;

		if (!big) {
			n = -ENOMEM;
			goto out;
		}
		if (s->have_xattrat)
			m = ovl_sys_listxattrat(dfd, name, AT_SYMLINK_NOFOLLOW, big,
						(size_t)n);
		else
			m = proc_listxattr(proc, big, (size_t)n);
		if (m >= 0) {
			*buf = big;
			n = m;
			goto out;
		}
		free(big);
		if (m != -ERANGE) {
			n = m;
			goto out;
		}
		if (s->have_xattrat)
			n = ovl_sys_listxattrat(dfd, name, AT_SYMLINK_NOFOLLOW, NULL, 0);
		else
			n = proc_listxattr(proc, NULL, 0);
		if (n <= 0)
			goto out;
	}
	n = -ERANGE;
out:
	if (fd >= 0)
		close(fd);
	return n;
}

/* getxattr of dfd/name, not following a final symlink.  Return the value
 * length or -errno (-ENODATA when absent). */
long ovl_at_getxattr(const struct ovl_stack *s, int dfd, const char *name,
		     const char *xname, void *buf, size_t size)
{
	char proc[64];
	ssize_t r;
	int fd;

	if (s->have_xattrat)
		return ovl_sys_getxattrat(dfd, name, AT_SYMLINK_NOFOLLOW, xname, buf,
					  size);
	fd = xattr_proc_path(dfd, name, proc, sizeof(proc));
	if (fd < 0)
		return fd;
	r = getxattr(proc, xname, buf, size);
	if (r < 0)
		r = -errno;
	close(fd);
	return r;
}
