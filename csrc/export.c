/* export.c - a layer directory, or a stack's merged view, as a tar stream
 * (graphdriver Diff; docker export without a mount).
 *
 * A pull producer: ovl_export_read fills the caller's buffer with the next
 * bytes of the archive -- headers (tar_write.c), file data read straight
 * from the source into the buffer, padding, the two end blocks -- so
 * memory stays bounded by one directory's names whatever the layer's size.
 * The walk is depth first, a directory's entry before its children, names
 * in byte order: the same tree always gives the same bytes.
 *
 * A layer dir is read fd-relative from its root (never following a
 * symlink) and its kernel forms become the OCI ones, as moby's
 * overlayWhiteoutConverter.ConvertWrite makes them: a char 0:0 whiteout and
 * an xattr whiteout (a zero-size file with <ns>.overlay.whiteout: whatever
 * its directory's marker, as the kernel's lookup honours it once the layer
 * has any directory marked opaque=x, and as namei.c does) become ".wh.NAME" (a
 * regular empty file, mode 0600, the whiteout's owner and mtime); a
 * directory with <ns>.overlay.opaque=y gets ".wh..wh..opq" (mode the
 * directory's permission bits, its owner, mtime 0: moby's extra header has
 * no time) right after its own entry.  Whiteouts are
 * never hardlinks (the kernel links every whiteout of an upper to one
 * inode).  A layer with a redirect (a directory renamed with
 * redirect_dir=on) or a metacopy file keeps part of its meaning in the
 * layers below: it fails with -EOPNOTSUPP, naming the path.
 *
 * A stack is read through the union (ovl_listdir, ovl_lookup, ovl_open,
 * ovl_readlink, ovl_listxattr): the merged tree, no whiteouts; files that
 * share a (layer, inode) are one hardlink group.
 *
 * Both: regular files with more than one link become type '1' entries
 * naming the first one written; sockets are left out (moby skips them);
 * xattrs are security.capability alone (a v3 capability, which names a
 * namespace's root uid, written as v2 like moby), or with
 * OVL_EXPORT_ALL_XATTRS every one but the overlay's private ones (an
 * escaped <ns>.overlay.overlay.X is written as <ns>.overlay.X, what a mount
 * shows); with OVL_EXPORT_CLAMP_MTIME no mtime is later than
 * source_date_epoch.  A file that shrinks while it is read is padded with
 * zeros to the size its header gave (as GNU tar does).
 */
#define _GNU_SOURCE
#include <dirent.h>
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

#define XCAP "security.capability"
#define VFS_CAP_V2 0x02000000u
#define VFS_CAP_V3 0x03000000u
#define VFS_CAP_V2_SIZE 20
#define VFS_CAP_V3_SIZE 24

/* One directory being walked. */
struct frame {
	char *path;		/* relative to the root, "" for the root */
	size_t pathlen;
	int dfd;		/* a layer dir: the directory, open for reading */
	char **names;		/* sorted; name[-1] is the d_type */
	size_t n, i;
	char *namebuf;
};

struct link {
	uint64_t dev, ino;
	char *name;		/* NULL: free slot */
};

struct ovl_export {
	struct ovl_stack *s;	/* NULL for a layer dir */
	unsigned flags;
	int64_t sde;
	char xprefix[24], x_opaque[40];
	size_t xprefixlen;

	struct frame *frames;
	size_t depth, fcap;

	char *path;		/* the current entry's path */
	size_t pathcap;

	unsigned char *out;	/* headers waiting to be read */
	size_t outcap, outlen, outoff;
	int data_fd;
	uint64_t data_left, zero_left;
	bool finished;

	struct link *links;
	size_t nlinks, linkmask;

	char *xlist, *xvals;	/* xattr names and values of the current entry */
	size_t xlistcap, xvalcap;
	struct ovl_tar_xattr *xattrs;
	size_t nxattrs, xattrcap;

	int err;
	char *err_path;
	const char *err_reason;
	uint64_t entries, bytes;
};

static int fail(struct ovl_export *e, int err, const char *path, const char *reason)
{
	if (!err)
		return 0;
	if (!e->err_path && path)
		e->err_path = strdup(path);
	e->err_reason = reason;
	return err;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_xattrs(const void *a, const void *b)
{
	return strcmp(((const struct ovl_tar_xattr *)a)->name,
		      ((const struct ovl_tar_xattr *)b)->name);
}

/* names[] over a buffer of (d_type, name, NUL) records, sorted by name. */
static int frame_index(struct frame *f, size_t used)
{
	size_t n = 0;

	for (size_t off = 0; off < used; off += strlen(f->namebuf + off + 1) + 2)
		n++;
	f->names = malloc((n ? n : 1) * sizeof(*f->names));
	if (!f->names)
		return -ENOMEM;
	for (size_t off = 0; off < used; off += strlen(f->namebuf + off + 1) + 2)
		f->names[f->n++] = f->namebuf + off + 1;
	qsort(f->names, f->n, sizeof(*f->names), cmp_names);
	return 0;
}

static int buf_append(char **buf, size_t *cap, size_t *used, unsigned char dtype,
		      const char *name, size_t len)
{
	if (*used + len + 2 > *cap) {
		size_t ncap = *cap ? *cap * 2 : 4096;

		while (ncap < *used + len + 2)
			ncap *= 2;
		char *n = realloc(*buf, ncap);

		if (!n)
			return -ENOMEM;
		*buf = n;
		*cap = ncap;
	}
	(*buf)[*used] = (char)dtype;
	memcpy(*buf + *used + 1, name, len + 1);
	*used += len + 2;
	return 0;
}

/* Read a layer directory's names (fd is consumed by the frame). */
static int frame_read_dir(struct frame *f, int fd)
{
	char buf[32768];
	size_t cap = 0, used = 0;
	int err;

	for (;;) {
		ssize_t n = getdents64(fd, buf, sizeof(buf));

		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		for (ssize_t off = 0; off < n;) {
			struct dirent64 *de = (struct dirent64 *)(buf + off);
			const char *name = de->d_name;
			size_t len = strlen(name);

			off += de->d_reclen;
			if (name[0] == '.' && (len == 1 || (len == 2 && name[1] == '.')))
				continue;
			err = buf_append(&f->namebuf, &cap, &used, de->d_type, name, len);
			if (err)
				return err;
		}
	}
	return frame_index(f, used);
}

static int frame_read_stack(struct ovl_export *e, struct frame *f)
{
	struct ovl_dirlist *list;
	size_t cap = 0, used = 0;
	int err = ovl_listdir(e->s, f->path, 0, &list);

	if (err)
		return err;
	for (size_t i = 0; i < list->n && !err; i++)
		err = buf_append(&f->namebuf, &cap, &used, list->ents[i].d_type,
				 list->ents[i].name, list->ents[i].namelen);
	ovl_dirlist_free(list);
	return err ? err : frame_index(f, used);
}

/* Start walking the directory at e->path (fd: a layer dir's, consumed). */
static int push_frame(struct ovl_export *e, size_t pathlen, int fd)
{
	struct frame *f;
	int err;

	if (e->depth == e->fcap) {
		size_t cap = e->fcap ? e->fcap * 2 : 16;
		struct frame *n = realloc(e->frames, cap * sizeof(*n));

		if (!n) {
			if (fd >= 0)
				close(fd);
			return -ENOMEM;
		}
		e->frames = n;
		e->fcap = cap;
	}
	f = &e->frames[e->depth++];
	memset(f, 0, sizeof(*f));
	f->dfd = fd;
	f->pathlen = pathlen;
	f->path = strndup(e->path, pathlen);
	if (!f->path)
		return -ENOMEM;
	err = e->s ? frame_read_stack(e, f) : frame_read_dir(f, fd);
	return err;
}

static void pop_frame(struct ovl_export *e)
{
	struct frame *f = &e->frames[--e->depth];

	if (f->dfd >= 0)
		close(f->dfd);
	free(f->path);
	free(f->names);
	free(f->namebuf);
}

/* e->path = dir + "/" + name (len bytes of room kept for a trailing '/'). */
static int set_path(struct ovl_export *e, const struct frame *f, const char *name,
		    size_t *len)
{
	size_t nlen = strlen(name), need = f->pathlen + 1 + nlen + 2;

	if (need > e->pathcap) {
		char *n = realloc(e->path, need * 2);

		if (!n)
			return -ENOMEM;
		e->path = n;
		e->pathcap = need * 2;
	}
	*len = 0;
	if (f->pathlen) {
		memcpy(e->path, f->path, f->pathlen);
		e->path[f->pathlen] = '/';
		*len = f->pathlen + 1;
	}
	memcpy(e->path + *len, name, nlen + 1);
	*len += nlen;
	return 0;
}

/* Hardlinks: the first name of (dev, ino), or NULL after remembering name. */
static int link_find(struct ovl_export *e, uint64_t dev, uint64_t ino, const char *name,
		     const char **first)
{
	size_t i;

	*first = NULL;
	if (e->nlinks * 2 >= e->linkmask) {
		size_t mask = e->linkmask ? e->linkmask * 2 + 1 : 255;
		struct link *n = calloc(mask + 1, sizeof(*n));

		if (!n)
			return -ENOMEM;
		for (i = 0; e->links && i <= e->linkmask; i++) {
			struct link *l = &e->links[i];

			if (!l->name)
				continue;
			size_t j = (size_t)((l->ino * 0x9E3779B97F4A7C15ull) ^ l->dev) & mask;

			while (n[j].name)
				j = (j + 1) & mask;
			n[j] = *l;
		}
		free(e->links);
		e->links = n;
		e->linkmask = mask;
	}
	for (i = (size_t)((ino * 0x9E3779B97F4A7C15ull) ^ dev) & e->linkmask; e->links[i].name;
	     i = (i + 1) & e->linkmask) {
		if (e->links[i].dev == dev && e->links[i].ino == ino) {
			*first = e->links[i].name;
			return 0;
		}
	}
	e->links[i].name = strdup(name);
	if (!e->links[i].name)
		return -ENOMEM;
	e->links[i].dev = dev;
	e->links[i].ino = ino;
	e->nlinks++;
	return 0;
}

static int grow(void *pp, size_t *cap, size_t need, size_t elem)
{
	void **p = pp;

	if (need <= *cap)
		return 0;
	size_t ncap = *cap ? *cap : 256;

	while (ncap < need)
		ncap *= 2;
	void *n = realloc(*p, ncap * elem);

	if (!n)
		return -ENOMEM;
	*p = n;
	*cap = ncap;
	return 0;
}

/* Where the xattrs of an entry are read from. */
struct xsrc {
	int fd;			/* an open file or directory, or -1: */
	int dfd;		/* a layer dir: dfd/name (listxattrat) */
	const char *name;
	const char *path;	/* a stack: the union path */
};

static long x_list(struct ovl_export *e, const struct xsrc *x, char *buf, size_t size)
{
	long r;

	if (e->s)
		return ovl_listxattr(e->s, x->path, 0, buf, size);
	if (x->fd >= 0) {
		r = flistxattr(x->fd, buf, size);
		return r < 0 ? -errno : r;
	}
	r = ovl_sys_listxattrat(x->dfd, x->name, AT_SYMLINK_NOFOLLOW, buf, size);
	return r == -ENOSYS ? 0 : r;
}

static long x_get(struct ovl_export *e, const struct xsrc *x, const char *name, void *buf,
		  size_t size)
{
	long r;

	if (e->s)
		return ovl_getxattr(e->s, x->path, 0, name, buf, size);
	if (x->fd >= 0) {
		r = fgetxattr(x->fd, name, buf, size);
		return r < 0 ? -errno : r;
	}
	return ovl_sys_getxattrat(x->dfd, x->name, AT_SYMLINK_NOFOLLOW, name, buf, size);
}

/* What the entry's xattr list says about the overlay (a layer dir). */
struct xinfo {
	bool whiteout, redirect, metacopy;
	char opaque;
};

/* Read the entry's xattrs into e->xattrs (sorted by name), noting the
 * overlay's own in *xi.  Return 0 or -errno. */
static int read_xattrs(struct ovl_export *e, const struct xsrc *x, struct xinfo *xi)
{
	long n;
	size_t nkeep = 0, valused = 0;
	bool all = e->flags & OVL_EXPORT_ALL_XATTRS;

	memset(xi, 0, sizeof(*xi));
	e->nxattrs = 0;
	if (!e->s && x->fd < 0 && !all)
		return 0;	/* symlinks, devices: no capabilities, no overlay xattrs */
	for (;;) {
		n = x_list(e, x, e->xlist, e->xlistcap);
		if (n == -ERANGE) {
			n = x_list(e, x, NULL, 0);
			if (n < 0)
				break;
			if (grow(&e->xlist, &e->xlistcap, (size_t)n + 1, 1))
				return -ENOMEM;
			continue;
		}
		break;
	}
	if (n == -EOPNOTSUPP || n == -ENOTSUP || n == -ENODATA)
		return 0;
	if (n < 0)
		return (int)n;
	/* Keep the names to export, as offsets into xlist. */
	size_t offs[64], *off = offs, offcap = 64;
	size_t *heap = NULL;
	int err = 0;

	for (char *p = e->xlist; p < e->xlist + n; p += strlen(p) + 1) {
		bool keep;

		if (!e->s && !strncmp(p, e->xprefix, e->xprefixlen)) {
			const char *rest = p + e->xprefixlen;

			if (!strcmp(rest, "whiteout"))
				xi->whiteout = true;
			else if (!strcmp(rest, "redirect"))
				xi->redirect = true;
			else if (!strcmp(rest, "metacopy"))
				xi->metacopy = true;
			else if (!strcmp(rest, "opaque"))
				xi->opaque = 1;
			keep = all && !strncmp(rest, "overlay.", 8);
		} else {
			keep = all || !strcmp(p, XCAP);
		}
		if (!keep)
			continue;
		if (nkeep == offcap) {
			size_t *nh = realloc(heap, offcap * 2 * sizeof(*nh));

			if (!nh) {
				err = -ENOMEM;
				goto out;
			}
			if (!heap)
				memcpy(nh, offs, sizeof(offs));
			heap = off = nh;
			offcap *= 2;
		}
		off[nkeep++] = (size_t)(p - e->xlist);
	}
	if (xi->opaque) {
		char v[2];
		long r = x_get(e, x, e->x_opaque, v, sizeof(v));

		xi->opaque = r == 1 && (v[0] == 'y' || v[0] == 'x') ? v[0] : 0;
	}
	if (grow(&e->xattrs, &e->xattrcap, nkeep, sizeof(*e->xattrs))) {
		err = -ENOMEM;
		goto out;
	}
	/* Values after one another in xvals; pointers set once it stops moving. */
	size_t *voff = malloc((nkeep ? nkeep : 1) * 2 * sizeof(size_t));

	if (!voff) {
		err = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < nkeep; i++) {
		const char *name = e->xlist + off[i];
		long r;

		for (;;) {
			if (grow(&e->xvals, &e->xvalcap, valused + 256, 1)) {
				r = -ENOMEM;
				break;
			}
			name = e->xlist + off[i];
			r = x_get(e, x, name, e->xvals + valused, e->xvalcap - valused);
			if (r == -ERANGE) {
				long need = x_get(e, x, name, NULL, 0);

				if (need < 0) {
					r = need;
					break;
				}
				if (grow(&e->xvals, &e->xvalcap, valused + (size_t)need + 1, 1)) {
					r = -ENOMEM;
					break;
				}
				continue;
			}
			break;
		}
		if (r == -ENODATA) {	/* removed meanwhile */
			voff[2 * i] = SIZE_MAX;
			continue;
		}
		if (r < 0) {
			free(voff);
			err = (int)r;
			goto out;
		}
		if (!strcmp(name, XCAP) && r == VFS_CAP_V3_SIZE) {
			unsigned char *c = (unsigned char *)e->xvals + valused;
			uint32_t magic = (uint32_t)c[0] | (uint32_t)c[1] << 8 |
					 (uint32_t)c[2] << 16 | (uint32_t)c[3] << 24;

			if ((magic & 0xFF000000u) == VFS_CAP_V3) {
				magic = VFS_CAP_V2 | (magic & 1u);
				c[0] = (unsigned char)magic;
				c[1] = (unsigned char)(magic >> 8);
				c[2] = (unsigned char)(magic >> 16);
				c[3] = (unsigned char)(magic >> 24);
				r = VFS_CAP_V2_SIZE;
			}
		}
		voff[2 * i] = valused;
		voff[2 * i + 1] = (size_t)r;
		valused += (size_t)r;
	}
	for (size_t i = 0; i < nkeep; i++) {
		char *name = e->xlist + off[i];

		if (voff[2 * i] == SIZE_MAX)
			continue;
		/* <ns>.overlay.overlay.X is shown, and written, as <ns>.overlay.X. */
		if (!e->s && !strncmp(name, e->xprefix, e->xprefixlen)) {
			char *rest = name + e->xprefixlen;

			memmove(rest, rest + 8, strlen(rest + 8) + 1);
		}
		e->xattrs[e->nxattrs].name = name;
		e->xattrs[e->nxattrs].value = e->xvals + voff[2 * i];
		e->xattrs[e->nxattrs].size = voff[2 * i + 1];
		e->nxattrs++;
	}
	free(voff);
	if (e->nxattrs > 1)
		qsort(e->xattrs, e->nxattrs, sizeof(*e->xattrs), cmp_xattrs);
out:
	free(heap);
	return err;
}

/* Queue a header (tar_write.c) for entry te. */
static int queue_header(struct ovl_export *e, struct ovl_tar_entry *te)
{
	long n;

	if (e->flags & OVL_EXPORT_CLAMP_MTIME && te->mtime > e->sde)
		te->mtime = e->sde;
	for (;;) {
		n = ovl_tar_header(te, e->out + e->outlen, e->outcap - e->outlen);
		if (n < 0)
			return (int)n;
		if ((size_t)n <= e->outcap - e->outlen)
			break;
		if (grow(&e->out, &e->outcap, e->outlen + (size_t)n, 1))
			return -ENOMEM;
	}
	e->outlen += (size_t)n;
	e->entries++;
	return 0;
}

static void entry_from_stat(struct ovl_tar_entry *te, const struct stat *st)
{
	memset(te, 0, sizeof(*te));
	te->mode = st->st_mode;	/* type bits too, as moby */
	te->uid = st->st_uid;
	te->gid = st->st_gid;
	te->mtime = st->st_mtim.tv_sec;
}

static char tar_type(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG: return OVL_TAR_REG;
	case S_IFDIR: return OVL_TAR_DIR;
	case S_IFLNK: return OVL_TAR_SYMLINK;
	case S_IFCHR: return OVL_TAR_CHR;
	case S_IFBLK: return OVL_TAR_BLK;
	case S_IFIFO: return OVL_TAR_FIFO;
	default: return 0;	/* sockets */
	}
}

/* The ".wh.NAME" entry for a whiteout at e->path (len bytes). */
static int queue_whiteout(struct ovl_export *e, size_t len, const struct stat *st)
{
	struct ovl_tar_entry te;
	size_t base = len;
	char *name;
	int err;

	while (base > 0 && e->path[base - 1] != '/')
		base--;
	name = malloc(len + 5);
	if (!name)
		return -ENOMEM;
	memcpy(name, e->path, base);
	memcpy(name + base, ".wh.", 4);
	memcpy(name + base + 4, e->path + base, len - base);
	entry_from_stat(&te, st);
	te.name = name;
	te.namelen = len + 4;
	te.type = OVL_TAR_REG;
	te.mode = 0600;
	err = queue_header(e, &te);
	free(name);
	return err;
}

/* The header (and data source) of a file, link, device, fifo or directory
 * described by st at e->path (len bytes); fd: the open file or directory
 * (consumed), target: a symlink's. */
static int queue_entry(struct ovl_export *e, size_t len, const struct stat *st, int fd,
		       const char *target, uint64_t linkdev, char opaque)
{
	struct ovl_tar_entry te;
	const char *first = NULL;
	int err = 0;

	entry_from_stat(&te, st);
	te.type = tar_type(st->st_mode);
	te.xattrs = e->xattrs;
	te.nxattrs = e->nxattrs;
	if (S_ISREG(st->st_mode) && st->st_nlink > 1) {
		err = link_find(e, linkdev, st->st_ino, e->path, &first);
		if (err)
			goto out;
	}
	if (first) {
		te.type = OVL_TAR_LINK;
		te.linkname = first;
		te.linklen = strlen(first);
	} else if (S_ISREG(st->st_mode)) {
		te.size = st->st_size;
	} else if (S_ISLNK(st->st_mode)) {
		te.linkname = target;
		te.linklen = strlen(target);
	} else if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode)) {
		te.devmajor = major(st->st_rdev);
		te.devminor = minor(st->st_rdev);
	}
	if (S_ISDIR(st->st_mode))
		e->path[len++] = '/';
	te.name = e->path;
	te.namelen = len;
	err = queue_header(e, &te);
	if (S_ISDIR(st->st_mode))
		e->path[--len] = '\0';
	if (err)
		goto out;
	if (S_ISDIR(st->st_mode)) {
		if (opaque == 'y') {
			struct ovl_tar_entry m;
			char *name = malloc(len + 14);

			if (!name) {
				err = -ENOMEM;
				goto out;
			}
			memcpy(name, e->path, len);
			memcpy(name + len, "/.wh..wh..opq", 13);
			/* moby's extra header: no ModTime (0), the dir's owner */
			entry_from_stat(&m, st);
			m.mtime = 0;
			m.mode = st->st_mode & 0777;
			m.type = OVL_TAR_REG;
			m.name = name;
			m.namelen = len + 13;
			err = queue_header(e, &m);
			free(name);
			if (err)
				goto out;
		}
		err = push_frame(e, len, fd);
		fd = -1;
	} else if (te.type == OVL_TAR_REG && te.size > 0) {
		e->data_fd = fd;
		e->data_left = (uint64_t)te.size;
		e->zero_left = (OVL_TAR_BLOCK - (uint64_t)te.size % OVL_TAR_BLOCK) % OVL_TAR_BLOCK;
		fd = -1;
	}
out:
	if (fd >= 0)
		close(fd);
	return err;
}

static int open_in(int dfd, const char *name, int oflags)
{
	int fd = openat(dfd, name, oflags | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);

	if (fd < 0 && errno == EPERM)	/* O_NOATIME needs the owner or CAP_FOWNER */
		fd = openat(dfd, name, oflags | O_NOFOLLOW | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* The next entry of a layer dir: name in frame f. */
static int next_layer(struct ovl_export *e, struct frame *f, const char *name)
{
	unsigned char dtype = (unsigned char)name[-1];
	char target[PATH_MAX];
	struct stat st;
	struct xinfo xi;
	size_t len;
	int fd = -1, err = set_path(e, f, name, &len);

	if (err)
		return err;
	if (dtype == DT_REG || dtype == DT_DIR) {
		/* The type getdents gave: open, then make sure. */
		fd = open_in(f->dfd, name, O_RDONLY | O_NONBLOCK |
			     (dtype == DT_DIR ? O_DIRECTORY : 0));
		if (fd == -ENOENT)
			return 0;
		if (fd == -ELOOP || fd == -ENOTDIR) {
			fd = -1;	/* replaced meanwhile: stat it */
		} else if (fd < 0) {
			return fail(e, fd, e->path, NULL);
		} else if (fstat(fd, &st) < 0) {
			err = -errno;
			close(fd);
			return fail(e, err, e->path, NULL);
		}
	}
	if (fd < 0) {
		if (fstatat(f->dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			return errno == ENOENT ? 0 : fail(e, -errno, e->path, NULL);
		if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) {
			fd = open_in(f->dfd, name, O_RDONLY | O_NONBLOCK);
			if (fd < 0)
				return fd == -ENOENT ? 0 : fail(e, fd, e->path, NULL);
			if (fstat(fd, &st) < 0) {
				err = -errno;
				close(fd);
				return fail(e, err, e->path, NULL);
			}
		}
	}
	if (ovl_is_whiteout_stat(&st))
		return fail(e, queue_whiteout(e, len, &st), e->path, NULL);
	if (!tar_type(st.st_mode))
		return 0;	/* a socket */
	if (S_ISLNK(st.st_mode)) {
		ssize_t n = readlinkat(f->dfd, name, target, sizeof(target) - 1);

		if (n < 0)
			return errno == ENOENT ? 0 : fail(e, -errno, e->path, NULL);
		target[n] = '\0';
	}
	struct xsrc x = { .fd = fd, .dfd = f->dfd, .name = name };

	err = read_xattrs(e, &x, &xi);
	if (err)
		goto out;
	if (xi.redirect && S_ISDIR(st.st_mode)) {
		err = -EOPNOTSUPP;
		e->err_reason = "redirect";
		goto out;
	}
	if (xi.metacopy && S_ISREG(st.st_mode)) {
		err = -EOPNOTSUPP;
		e->err_reason = "metacopy";
		goto out;
	}
	if (xi.whiteout && S_ISREG(st.st_mode) && st.st_size == 0) {
		close(fd);
		return fail(e, queue_whiteout(e, len, &st), e->path, NULL);
	}
	err = queue_entry(e, len, &st, fd, target, st.st_dev, xi.opaque);
	return err ? fail(e, err, e->path, NULL) : 0;
out:
	if (fd >= 0)
		close(fd);
	return fail(e, err, e->path, e->err_reason);
}

/* The next entry of a stack: name in frame f. */
static int next_stack(struct ovl_export *e, struct frame *f, const char *name)
{
	char target[PATH_MAX];
	struct ovl_info info;
	struct xinfo xi;
	size_t len;
	int fd = -1, err = set_path(e, f, name, &len);

	if (err)
		return err;
	err = ovl_lookup(e->s, e->path, 0, &info);
	if (err)	/* listed but gone: an xattr whiteout the kernel lists too */
		return err == -ENOENT ? 0 : fail(e, err, e->path, NULL);
	if (!tar_type(info.st.st_mode))
		return 0;
	if (S_ISLNK(info.st.st_mode)) {
		long n = ovl_readlink(e->s, e->path, target, sizeof(target) - 1);

		if (n < 0)
			return fail(e, (int)n, e->path, NULL);
		target[n] = '\0';
	}
	if (S_ISREG(info.st.st_mode)) {
		fd = ovl_open(e->s, e->path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return fail(e, fd, e->path, NULL);
	}
	struct xsrc x = { .fd = -1, .dfd = -1, .path = e->path };

	err = read_xattrs(e, &x, &xi);
	if (err) {
		if (fd >= 0)
			close(fd);
		return fail(e, err, e->path, NULL);
	}
	err = queue_entry(e, len, &info.st, fd, target, (uint64_t)info.layer, 0);
	return err ? fail(e, err, e->path, NULL) : 0;
}

/* Queue the next entry, or the end of the archive. */
static int next_entry(struct ovl_export *e)
{
	while (e->depth) {
		struct frame *f = &e->frames[e->depth - 1];

		if (f->i == f->n) {
			pop_frame(e);
			continue;
		}
		const char *name = f->names[f->i++];
		uint64_t before = e->entries;
		int err = e->s ? next_stack(e, f, name) : next_layer(e, f, name);

		if (err)
			return err;
		if (e->entries != before)
			return 0;
	}
	e->finished = true;
	e->zero_left = 2 * OVL_TAR_BLOCK;
	return 0;
}

long ovl_export_read(struct ovl_export *e, void *buf, size_t len)
{
	char *p = buf;
	size_t done = 0;

	while (done < len && !e->err) {
		if (e->outoff < e->outlen) {
			size_t n = e->outlen - e->outoff < len - done ? e->outlen - e->outoff : len - done;

			memcpy(p + done, e->out + e->outoff, n);
			e->outoff += n;
			done += n;
			if (e->outoff == e->outlen)
				e->outoff = e->outlen = 0;
			continue;
		}
		if (e->data_left) {
			size_t want = e->data_left < len - done ? (size_t)e->data_left : len - done;
			ssize_t n = read(e->data_fd, p + done, want);

			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				e->err = fail(e, -errno, e->path, NULL);
				break;
			}
			if (n == 0) {	/* shrank: zeros to the size in the header */
				e->zero_left += e->data_left;
				e->data_left = 0;
				continue;
			}
			e->data_left -= (uint64_t)n;
			done += (size_t)n;
			continue;
		}
		if (e->data_fd >= 0) {
			close(e->data_fd);
			e->data_fd = -1;
		}
		if (e->zero_left) {
			size_t n = e->zero_left < len - done ? (size_t)e->zero_left : len - done;

			memset(p + done, 0, n);
			e->zero_left -= n;
			done += n;
			continue;
		}
		if (e->finished)
			break;
		int err = next_entry(e);

		if (err)
			e->err = err;
	}
	e->bytes += done;
	if (done)
		return (long)done;
	return e->err;
}

int ovl_export_open(const struct ovl_export_opts *o, struct ovl_export **out)
{
	struct ovl_export *e;
	const char *ns;
	int fd, err;

	*out = NULL;
	if (!o->layer == !o->stack || (o->xattr_ns != OVL_XATTR_TRUSTED && o->xattr_ns != OVL_XATTR_USER))
		return -EINVAL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->s = o->stack;
	e->flags = o->flags;
	e->sde = o->source_date_epoch;
	e->data_fd = -1;
	ns = o->xattr_ns == OVL_XATTR_USER ? "user" : "trusted";
	e->xprefixlen = (size_t)snprintf(e->xprefix, sizeof(e->xprefix), "%s.overlay.", ns);
	snprintf(e->x_opaque, sizeof(e->x_opaque), "%sopaque", e->xprefix);
	e->path = calloc(1, 256);
	e->xlist = malloc(4096);
	e->xvals = malloc(4096);
	e->out = malloc(8192);
	if (!e->path || !e->xlist || !e->xvals || !e->out) {
		err = -ENOMEM;
		goto fail;
	}
	e->pathcap = 256;
	e->xlistcap = e->xvalcap = 4096;
	e->outcap = 8192;
	fd = -1;
	if (o->layer) {
		fd = open(o->layer, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0) {
			err = -errno;
			goto fail;
		}
	}
	/* The root's own entry is not written (nor its opaque xattr, which
	 * the kernel ignores on a layer root). */
	err = push_frame(e, 0, fd);
	if (err)
		goto fail;
	*out = e;
	return 0;
fail:
	ovl_export_close(e);
	return err;
}

const char *ovl_export_error(const struct ovl_export *e, const char **reason)
{
	if (reason)
		*reason = e->err_reason;
	return e->err_path;
}

void ovl_export_stats(const struct ovl_export *e, uint64_t *entries, uint64_t *bytes)
{
	*entries = e->entries;
	*bytes = e->bytes;
}

void ovl_export_close(struct ovl_export *e)
{
	if (!e)
		return;
	while (e->depth)
		pop_frame(e);
	if (e->data_fd >= 0)
		close(e->data_fd);
	for (size_t i = 0; e->links && i <= e->linkmask; i++)
		free(e->links[i].name);
	free(e->links);
	free(e->frames);
	free(e->path);
	free(e->out);
	free(e->xlist);
	free(e->xvals);
	free(e->xattrs);
	free(e->err_path);
	free(e);
}
