/* layers.c - opening the stack and contained access to layer contents.
 *
 * Every layer root is opened once.  Anything inside a layer is reached
 * relative to that root fd with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|
 * RESOLVE_NO_XDEV), or on kernels without openat2 by a walk of single
 * components opened with O_NOFOLLOW, so no symlink, '..' or concurrent swap
 * inside a layer can lead outside of it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "ovl_internal.h"

#define OVL_RESOLVE (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | \
		     RESOLVE_NO_XDEV)

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

static int probe_features(struct ovl_stack *s)
{
	int fd, r;
	char c;

	fd = ovl_sys_openat2(s->layers[1].fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC,
			     OVL_RESOLVE);
	s->have_openat2 = fd >= 0;
	if (fd >= 0)
		close(fd);
	/* getxattrat/listxattrat (6.13+): any answer but ENOSYS/EPERM counts. */
	r = (int)ovl_sys_getxattrat(s->layers[1].fd, ".", AT_SYMLINK_NOFOLLOW,
				    "user.ovl-probe", &c, 1);
	s->have_xattrat = r != -ENOSYS && r != -EPERM && r != -EINVAL && r != -E2BIG;
	return 0;
}

static int open_root(struct ovl_layer *l, const char *path, bool clone_mount, bool nodev)
{
	struct stat st;
	int clone;

	l->fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (l->fd < 0)
		return -errno;
	/* Like the kernel (super.c:ovl_setup_trap, clone_private_mount), see
	 * the layer without what is mounted inside it: a detached,
	 * non-recursive clone of its mount shows the directories underneath.
	 * Without the privilege for that, mount points give EXDEV instead.  Not
	 * for the upper layer: copies renamed into it from the work dir must
	 * stay on one mount. */
	clone = clone_mount ? ovl_sys_open_tree_clone(l->fd, "", AT_EMPTY_PATH) : -1;
	if (clone >= 0) {
		close(l->fd);
		l->fd = clone;
		/* The clone is ours: read-only, and reading through it (a
		 * symlink's target, a directory) leaves the layer's atimes
		 * alone, as with the kernel's lower layers; nodev unless the
		 * stack opens devices.  Best effort. */
		l->nodev = ovl_sys_mount_lower(clone, nodev) == 0 && nodev;
	}
	if (fstat(l->fd, &st) < 0)
		return -errno;
	l->dev = st.st_dev;
	/* These fill a getdents64 buffer as far as entries go, so a reply
	 * with room to spare for another entry is the last one. */
	struct statfs sfs;

	if (fstatfs(l->fd, &sfs) == 0)
		l->greedy_getdents = sfs.f_type == 0xEF53 /* ext2/3/4 */ ||
				     sfs.f_type == 0x58465342 /* xfs */ ||
				     sfs.f_type == 0x9123683E /* btrfs */ ||
				     sfs.f_type == 0x01021994 /* tmpfs */;
	l->pathlen = strlen(path);
	l->path = strdup(path);
	return l->path ? 0 : -ENOMEM;
}

/* Copies are built in <work>/work (the kernel's own scratch dir under a
 * workdir, so a kernel mount of the same layers wipes our leftovers too),
 * which must be on the upper layer's filesystem. */
static int open_work(struct ovl_stack *s, const char *work)
{
	int wfd = open(work, O_PATH | O_DIRECTORY | O_CLOEXEC);
	struct stat st;

	if (wfd < 0)
		return -errno;
	if (fstat(wfd, &st) < 0 || st.st_dev != s->layers[0].dev) {
		close(wfd);
		return -EXDEV;	/* "workdir and upperdir must be on the same fs" */
	}
	if (mkdirat(wfd, "work", 0) < 0 && errno != EEXIST) {
		int err = -errno;

		close(wfd);
		return err;
	}
	s->work_fd = openat(wfd, "work", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	close(wfd);
	if (s->work_fd < 0 || fstat(s->work_fd, &st) < 0)
		return -errno;
	s->work_setgid = st.st_mode & S_ISGID;
	return ovl_work_cleanup(s->work_fd);
}

static void set_xnames(struct ovl_stack *s, int ns)
{
	const char *pfx = ns == OVL_XATTR_USER ? "user.overlay." : "trusted.overlay.";

	strcpy(s->xprefix, pfx);
	s->xprefixlen = strlen(pfx);
	snprintf(s->x_opaque, sizeof(s->x_opaque), "%sopaque", pfx);
	snprintf(s->x_redirect, sizeof(s->x_redirect), "%sredirect", pfx);
	snprintf(s->x_whiteout, sizeof(s->x_whiteout), "%swhiteout", pfx);
	snprintf(s->x_metacopy, sizeof(s->x_metacopy), "%smetacopy", pfx);
}

int ovl_stack_open(const struct ovl_config *cfg, struct ovl_stack **out,
		   int *bad_layer)
{
	struct ovl_stack *s;
	size_t total;
	int err = 0, bad = -1;

	*out = NULL;
	if (bad_layer)
		*bad_layer = -1;
	if (!cfg || !cfg->lowers || cfg->nlowers == 0 || (cfg->ndata && !cfg->data_layers))
		return -EINVAL;
	if (cfg->upper && !cfg->work)
		return -EINVAL;
	if (cfg->whiteouts < OVL_WHITEOUT_KERNEL || cfg->whiteouts > OVL_WHITEOUT_AUTO ||
	    (cfg->xattr_ns != OVL_XATTR_TRUSTED && cfg->xattr_ns != OVL_XATTR_USER))
		return -EINVAL;
	/* redirect_dir=on writes what nofollow refuses to read, the OCI format
	 * cannot express, and the kernel refuses with userxattr. */
	if ((cfg->flags & OVL_CFG_REDIRECT_DIR) &&
	    ((cfg->flags & OVL_CFG_REDIRECT_NOFOLLOW) || cfg->whiteouts == OVL_WHITEOUT_OCI ||
	     cfg->xattr_ns == OVL_XATTR_USER))
		return -EINVAL;
	total = 1 + cfg->nlowers + cfg->ndata;
	if (total > OVL_MAX_LAYERS)
		return -E2BIG;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->layers = calloc(total, sizeof(*s->layers));
	s->root_ent = calloc(1, sizeof(struct ovl_ent) + 1);
	if (!s->layers || !s->root_ent) {
		free(s->layers);
		free(s->root_ent);
		free(s);
		return -ENOMEM;
	}
	for (size_t i = 0; i < total; i++)
		s->layers[i].fd = -1;
	s->work_fd = -1;
	s->upper_quiet_fd = -1;
	s->nlayers = (int)total;
	s->nlower = (int)cfg->nlowers;
	s->ndata = (int)cfg->ndata;
	s->whiteouts = cfg->whiteouts;
	s->cfg = cfg->flags;
	s->max_bytes = cfg->cache_max_bytes ? cfg->cache_max_bytes : OVL_DEFAULT_CACHE_MAX;
	set_xnames(s, cfg->xattr_ns);
	{
		/* Cold lookups take the write lock: do not let a stream of warm
		 * readers starve them. */
		pthread_rwlockattr_t attr;

		pthread_rwlockattr_init(&attr);
#ifdef PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP
		pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
		pthread_rwlock_init(&s->lock, &attr);
		pthread_rwlockattr_destroy(&attr);
	}
	for (int i = 0; i < OVL_FDCACHE; i++)
		s->fdc[i].fd = -1;
	s->mounter.groups = s->mounter.inline_groups;
	/* Layers are read and changed with the opener's credentials (cred.c). */
	err = ovl_cred_current(&s->mounter);
	if (!err)
		err = ovl_cred_ids(&s->mounter);
	if (err)
		goto fail;
	s->protected_hardlinks = ovl_read_protected_hardlinks();

	if (cfg->upper) {
		err = open_root(&s->layers[0], cfg->upper, false, false);
		if (err) {
			bad = 0;
			goto fail;
		}
		err = open_work(s, cfg->work);
		if (err) {
			bad = -2;
			goto fail;
		}
		/* Symlink targets in the upper are read through a quiet clone:
		 * a lookup leaves their atimes alone, as the kernel's does. */
		s->upper_quiet_fd = ovl_sys_open_tree_clone(s->layers[0].fd, "", AT_EMPTY_PATH);
		if (s->upper_quiet_fd >= 0 &&
		    ovl_sys_mount_lower(s->upper_quiet_fd, !(cfg->flags & OVL_CFG_DEVICES)) < 0) {
			close(s->upper_quiet_fd);
			s->upper_quiet_fd = -1;
		}
	}
	for (size_t i = 0; i < cfg->nlowers + cfg->ndata; i++) {
		const char *p = i < cfg->nlowers ? cfg->lowers[i] :
				cfg->data_layers[i - cfg->nlowers];

		if (!p) {
			err = -EINVAL;
			bad = (int)i + 1;
			goto fail;
		}
		err = open_root(&s->layers[i + 1], p, true, !(cfg->flags & OVL_CFG_DEVICES));
		if (err) {
			bad = (int)i + 1;
			goto fail;
		}
	}
	s->samefs = true;
	for (int i = 0; i < s->nlayers; i++)
		if (s->layers[i].fd >= 0 && s->layers[i].dev != s->layers[1].dev)
			s->samefs = false;
	probe_features(s);
	s->root_ent->dtype = DT_DIR;
	*out = s;
	return 0;
fail:
	if (bad_layer)
		*bad_layer = bad;
	ovl_stack_close(s);
	return err;
}

void ovl_stack_close(struct ovl_stack *s)
{
	if (!s)
		return;
	ovl_cache_flush(s);
	if (s->work_fd >= 0)
		close(s->work_fd);
	if (s->upper_quiet_fd >= 0)
		close(s->upper_quiet_fd);
	for (int i = 0; i < s->nlayers; i++) {
		if (s->layers[i].fd >= 0)
			close(s->layers[i].fd);
		free(s->layers[i].path);
	}
	pthread_rwlock_destroy(&s->lock);
	ovl_cred_release(&s->mounter);
	free(s->layers);
	free(s->root_ent);
	free(s);
}

int ovl_stack_nlayers(const struct ovl_stack *s)
{
	return s->nlayers;
}

const char *ovl_stack_layer_path(const struct ovl_stack *s, int idx)
{
	if (idx < 0 || idx >= s->nlayers)
		return NULL;
	return s->layers[idx].path;
}
