/* inode.c - what a resolved entry looks like: its metadata as the overlay
 * reports it (inode.c:ovl_getattr), metacopy data (namei.c metacopy rules),
 * symlink targets, a directory's merged listing (from its index, readdir.c),
 * opening the data, and overlay-visible xattrs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "ovl_internal.h"

static const struct ovl_mcdata *ent_mcdata(const struct ovl_ent *e)
{
	return ovl_fill_extra(e->ext);
}

/* The layer and layer-relative path of entry e held by d. */
int ovl_ent_relpath(const struct ovl_stack *s, const struct ovl_dir *d,
		    const struct ovl_ent *e, int *layer, char **out)
{
	if (e == s->root_ent) {
		*layer = s->root->stack[0].layer;
		*out = strdup("");
	} else {
		const char *dpath = ovl_dl_path(d, e->top);

		*layer = d->stack[e->top].layer;
		*out = ovl_path_join(dpath, strlen(dpath), e->name, e->namelen);
	}
	return *out ? 0 : -ENOMEM;
}

/* Make sure the entry a walk ended on is ready to be described: directories
 * built (their stack decides st_nlink), the root included. */
static int settle(struct ovl_walk *w, struct ovl_dir **dirnode)
{
	*dirnode = NULL;
	if (w->ent->dtype == DT_DIR)
		return ovl_ent_dir(w, w->dir, w->ent, dirnode);
	return 0;
}

/* The upper file's attributes as they are now.  Once the stack has handed
 * out an fd to write an upper file, writes, fchmod and ftruncate through
 * it change what the cache holds: upper regular files are then stat'ed on
 * every lookup, as the kernel's ovl_getattr asks the real inode.  The
 * cached ones stand if that fails. */
static void live_upper_stat(const struct ovl_walk *w, struct stat *st)
{
	struct stat now;
	char *rel;
	int layer, fd;

	if (ovl_ent_relpath(w->s, w->dir, w->ent, &layer, &rel))
		return;
	fd = ovl_layer_open(w->s, layer, rel, O_PATH);
	free(rel);
	if (fd < 0)
		return;
	if (fstat(fd, &now) == 0 && S_ISREG(now.st_mode))
		*st = now;
	close(fd);
}

static int lookup_op(struct ovl_walk *w, void *arg)
{
	struct ovl_info *info = arg;
	struct ovl_stack *s = w->s;
	const struct ovl_ent *e = w->ent;
	struct ovl_dir *node;
	int err = settle(w, &node);

	if (err)
		return err;
	memset(info, 0, sizeof(*info));
	ovl_fill_stat(node ? node->fill : (const struct ovl_fill *)e->ext, &info->st);
	info->layer = e == s->root_ent ? s->root->stack[0].layer :
		      w->dir->stack[e->top].layer;
	info->data_layer = info->layer;
	if (!node && info->layer == 0 && e->dtype == DT_REG && !(e->flags & OVL_E_METACOPY) &&
	    __atomic_load_n(&s->files_written, __ATOMIC_ACQUIRE))
		live_upper_stat(w, &info->st);
	info->st.st_dev = s->layers[info->layer].dev;
	info->st.st_ino = node ? node->origin_ino : e->ino;
	if (node) {
		if (node->nstack > 1) {
			/* inode.c:ovl_getattr: merged dirs report one link. */
			info->flags |= OVL_INFO_MERGED;
			info->st.st_nlink = 1;
		}
		if (node->opaque)
			info->flags |= OVL_INFO_OPAQUE;
	} else if (e->flags & OVL_E_METACOPY) {
		const struct ovl_mcdata *mc = ent_mcdata(e);

		info->flags |= OVL_INFO_METACOPY;
		info->data_layer = mc->layer;
		info->st.st_blocks = mc->blocks;
		if (mc->origin_ino)
			info->st.st_ino = mc->origin_ino;
	}
	return 0;
}

int ovl_lookup(struct ovl_stack *s, const char *path, unsigned flags,
	       struct ovl_info *out)
{
	return ovl_run(s, path, flags, lookup_op, out);
}

struct realpath_arg {
	int want_data;
	char *buf;
	size_t size;
	int layer;
	long len;
};

static int realpath_op(struct ovl_walk *w, void *arg)
{
	struct realpath_arg *a = arg;
	struct ovl_stack *s = w->s;
	const struct ovl_ent *e = w->ent;
	const struct ovl_layer *l;
	struct ovl_dir *node;
	char *rel = NULL;
	size_t rlen;
	int err;

	/* A directory must be looked up (its redirects can fail it). */
	err = settle(w, &node);
	if (err)
		return err;
	if (a->want_data && (e->flags & OVL_E_METACOPY)) {
		const struct ovl_mcdata *mc = ent_mcdata(e);

		if (mc->err)
			return ovl_mc_error(s, w->dir, e);
		a->layer = mc->layer;
		rel = strdup(mc->path);
		if (!rel)
			return -ENOMEM;
	} else {
		err = ovl_ent_relpath(s, w->dir, e, &a->layer, &rel);
		if (err)
			return err;
	}
	l = &s->layers[a->layer];
	rlen = strlen(rel);
	if (l->pathlen + 1 + rlen + 1 > a->size) {
		free(rel);
		return -ERANGE;
	}
	memcpy(a->buf, l->path, l->pathlen);
	a->len = (long)l->pathlen;
	if (rlen) {
		if (!l->pathlen || l->path[l->pathlen - 1] != '/')
			a->buf[a->len++] = '/';
		memcpy(a->buf + a->len, rel, rlen);
		a->len += (long)rlen;
	}
	a->buf[a->len] = '\0';
	free(rel);
	return 0;
}

long ovl_realpath(struct ovl_stack *s, const char *path, unsigned flags,
		  int want_data, char *buf, size_t bufsize, int *layer)
{
	struct realpath_arg a = { .want_data = want_data, .buf = buf, .size = bufsize };
	int err = ovl_run(s, path, flags, realpath_op, &a);

	if (err)
		return err;
	if (layer)
		*layer = a.layer;
	return a.len;
}

struct readlink_arg {
	char *buf;
	size_t size;
	long len;
};

static int readlink_op(struct ovl_walk *w, void *arg)
{
	struct readlink_arg *a = arg;
	const struct ovl_ent *e = w->ent;
	size_t n;

	if (e->dtype != DT_LNK)
		return -EINVAL;
	n = strlen(ovl_ent_target(e));
	if (n > a->size)
		n = a->size;
	memcpy(a->buf, ovl_ent_target(e), n);
	a->len = (long)n;
	return 0;
}

long ovl_readlink(struct ovl_stack *s, const char *path, char *buf, size_t bufsize)
{
	struct readlink_arg a = { .buf = buf, .size = bufsize };
	int err = ovl_run(s, path, 0, readlink_op, &a);

	return err ? err : a.len;
}

struct open_arg {
	int oflags;
	int fd;
};

struct listdir_arg {
	struct ovl_dirlist *list;
};

static int listdir_op(struct ovl_walk *w, void *arg)
{
	struct listdir_arg *a = arg;
	struct ovl_dir *d;
	struct ovl_dirlist *l;
	size_t names = 0;
	char *p;
	int err;

	err = ovl_ent_dir(w, w->dir, w->ent, &d);
	if (err)
		return err;
	for (uint32_t i = 0; i < d->norder; i++)
		names += d->order[i]->namelen + 1u;
	l = malloc(sizeof(*l) + d->norder * sizeof(struct ovl_dirent) + names);
	if (!l)
		return -ENOMEM;
	l->n = d->norder;
	l->generation = ovl_cache_generation(w->s);
	l->ents = (struct ovl_dirent *)(l + 1);
	p = (char *)(l->ents + d->norder);
	for (uint32_t i = 0; i < d->norder; i++) {
		const struct ovl_ent *e = d->order[i];
		struct ovl_dirent *o = &l->ents[i];

		memcpy(p, e->name, e->namelen + 1u);
		o->name = p;
		o->namelen = e->namelen;
		o->ino = e->ino;
		o->d_type = e->dtype;
		o->layer = d->stack[e->top].layer;
		p += e->namelen + 1u;
	}
	a->list = l;
	return 0;
}

int ovl_listdir(struct ovl_stack *s, const char *path, unsigned flags,
		struct ovl_dirlist **out)
{
	struct listdir_arg a = { NULL };
	int err = ovl_run(s, path, (flags & OVL_LOOKUP_CACHED) | OVL_LOOKUP_FOLLOW,
			  listdir_op, &a);

	*out = a.list;
	return err;
}

void ovl_dirlist_free(struct ovl_dirlist *list)
{
	free(list);
}

/* fs/namei.c:may_open for reading, as the caller (symlinks are left to
 * the O_NOFOLLOW check). */
static int may_open(const struct ovl_walk *w, const struct ovl_dir *node, int oflags)
{
	struct stat st;
	int err;

	if (!w->cred || w->ent->dtype == DT_LNK)
		return 0;
	ovl_ent_attr(node, w->ent, &st);
	err = ovl_permission(w->cred, &st, OVL_MAY_READ);
	if (!err && (oflags & O_NOATIME) && !ovl_owner_or_capable(w->cred, &st))
		err = -EPERM;
	return err;
}

static int open_op(struct ovl_walk *w, void *arg)
{
	struct open_arg *a = arg;
	struct ovl_stack *s = w->s;
	const struct ovl_ent *e = w->ent;
	char *rel;
	int layer, err;

	if (e->dtype == DT_DIR) {
		/* A directory opens as its top-most layer's (the merged listing
		 * is what scandir gives). */
		struct ovl_dir *node;

		err = settle(w, &node);
		if (!err)
			err = may_open(w, node, a->oflags);
		if (!err)
			err = ovl_ent_relpath(s, w->dir, e, &layer, &rel);
		if (err)
			return err;
		a->fd = ovl_layer_open_file(s, layer, rel, a->oflags);
		free(rel);
		return a->fd < 0 ? a->fd : 0;
	}
	if (a->oflags & O_DIRECTORY)
		return -ENOTDIR;
	if (ovl_nodev(s, e->dtype))
		return -EACCES;	/* before the permission check, as may_open */
	err = may_open(w, NULL, a->oflags);
	if (err)
		return err;
	if (e->flags & OVL_E_METACOPY) {
		const struct ovl_mcdata *mc = ent_mcdata(e);

		if (mc->err)
			return ovl_mc_error(s, w->dir, e);
		layer = mc->layer;
		rel = strdup(mc->path);
		if (!rel)
			return -ENOMEM;
	} else {
		err = ovl_ent_relpath(s, w->dir, e, &layer, &rel);
		if (err)
			return err;
	}
	a->fd = ovl_layer_open_file(s, layer, rel, a->oflags);
	free(rel);
	return a->fd < 0 ? a->fd : 0;
}

int ovl_open(struct ovl_stack *s, const char *path, int oflags)
{
	struct open_arg a = { .fd = -1 };
	const int allowed = O_NONBLOCK | O_CLOEXEC | O_NOATIME | O_NOFOLLOW | O_NOCTTY | O_DIRECTORY;
	int err;

	ovl_error_clear();
	if ((oflags & O_ACCMODE) != O_RDONLY || (oflags & (O_CREAT | O_TRUNC | O_APPEND)))
		return -EROFS;
	if (oflags & ~(O_ACCMODE | allowed))
		return -EINVAL;
	a.oflags = oflags & ~O_NOFOLLOW;
	err = ovl_run(s, path, OVL_RUN_CHECKED | ((oflags & O_NOFOLLOW) ? 0 : OVL_LOOKUP_FOLLOW),
		      open_op, &a);
	if (!err && (oflags & O_NOFOLLOW)) {
		struct stat st;

		if (fstat(a.fd, &st) == 0 && S_ISLNK(st.st_mode)) {
			close(a.fd);
			return -ELOOP;
		}
	}
	return err ? err : a.fd;
}

struct xattr_arg {
	const char *name;	/* real name (getxattr) or NULL (listxattr) */
	char *buf;
	size_t size;
	long len;
};

/* An O_PATH fd of the directory holding e in its layer, and e's name there
 * ("." for the root).  The caller closes the fd. */
static int parent_fd(struct ovl_walk *w, const char **name)
{
	struct ovl_stack *s = w->s;
	const struct ovl_ent *e = w->ent;

	if (e == s->root_ent) {
		*name = ".";
		return ovl_layer_open(s, s->root->stack[0].layer, "", O_PATH | O_DIRECTORY);
	}
	*name = e->name;
	return ovl_layer_open(s, w->dir->stack[e->top].layer, ovl_dl_path(w->dir, e->top),
			      O_PATH | O_DIRECTORY);
}

static int xattr_op(struct ovl_walk *w, void *arg)
{
	struct xattr_arg *a = arg;
	struct ovl_stack *s = w->s;
	struct ovl_dir *node;
	const char *name;
	char *list = NULL;
	long n;
	int pfd, err = settle(w, &node);

	if (err)
		return err;
	if (a->name && w->cred) {
		/* fs/xattr.c:xattr_permission for reading, as the caller. */
		struct stat st;

		ovl_ent_attr(node, w->ent, &st);
		if (!strncmp(a->name, "trusted.", 8) && !ovl_capable(w->cred, OVL_CAP_SYS_ADMIN))
			return -ENODATA;
		if (!strncmp(a->name, "user.", 5)) {
			if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
				return -ENODATA;
			err = ovl_permission(w->cred, &st, OVL_MAY_READ);
			if (err)
				return err;
		}
	}
	pfd = parent_fd(w, &name);
	if (pfd < 0)
		return pfd;
	if (a->name) {
		n = ovl_at_getxattr(s, pfd, name, a->name, a->buf, a->size);
		close(pfd);
		if (n < 0)
			return (int)n;
		a->len = n;
		return 0;
	}
	n = ovl_at_listxattr(s, pfd, name, &list);
	close(pfd);
	if (n < 0)
		return (int)n;
	/* Hide private names; show escaped ones without the escape. */
	a->len = 0;
	for (const char *p = list; p && p < list + n; p += strlen(p) + 1) {
		const char *shown = p;
		size_t len;

		if (ovl_xattr_is_private(s, p))
			continue;
		/* The overlay lists trusted.* to an administrator only
		 * (xattrs.c:ovl_can_list). */
		if (!strncmp(p, "trusted.", 8) && w->cred &&
		    !ovl_capable(w->cred, OVL_CAP_SYS_ADMIN))
			continue;
		if (!strncmp(p, s->xprefix, s->xprefixlen))
			shown = p + 8;	/* "<ns>.overlay.overlay.X" -> "<ns>.overlay.X" */
		len = strlen(shown) + 1;
		if (a->size) {
			if ((size_t)a->len + len > a->size) {
				free(list);
				return -ERANGE;
			}
			if (shown != p) {
				memcpy(a->buf + a->len, s->xprefix, s->xprefixlen);
				memcpy(a->buf + a->len + s->xprefixlen,
				       p + s->xprefixlen + 8, len - s->xprefixlen);
			} else {
				memcpy(a->buf + a->len, p, len);
			}
		}
		a->len += (long)len;
	}
	free(list);
	return 0;
}

long ovl_getxattr(struct ovl_stack *s, const char *path, unsigned flags,
		  const char *name, void *buf, size_t size)
{
	struct xattr_arg a = { .buf = buf, .size = size };
	char *real = NULL;
	int err;

	ovl_error_clear();
	if (!strncmp(name, s->xprefix, s->xprefixlen)) {
		/* A user's "<ns>.overlay.X" is stored escaped; X can't be empty. */
		if (!name[s->xprefixlen])
			return -EINVAL;
		real = malloc(strlen(name) + 9);
		if (!real)
			return -ENOMEM;
		memcpy(real, s->xprefix, s->xprefixlen);
		strcpy(real + s->xprefixlen, "overlay.");
		strcpy(real + s->xprefixlen + 8, name + s->xprefixlen);
	}
	a.name = real ? real : name;
	err = ovl_run(s, path, OVL_RUN_CHECKED | (flags & OVL_LOOKUP_FOLLOW), xattr_op, &a);
	free(real);
	return err ? err : a.len;
}

long ovl_listxattr(struct ovl_stack *s, const char *path, unsigned flags,
		   char *buf, size_t size)
{
	struct xattr_arg a = { .buf = buf, .size = size };
	int err = ovl_run(s, path, OVL_RUN_CHECKED | (flags & OVL_LOOKUP_FOLLOW), xattr_op, &a);

	return err ? err : a.len;
}
