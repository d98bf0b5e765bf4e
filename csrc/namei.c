/* namei.c - lookup across the layers: what a name in a merged directory
 * is (ovl_resolve_ent), and a directory's node, built (ovl_ent_dir).
 *
 * A directory's merge stack follows namei.c:ovl_lookup_single: the layers
 * where the name is a directory, top-most first, cut after an opaque one
 * (<ns>.overlay.opaque = "y", or ".wh..wh..opq"), cut before the first
 * non-directory or whiteout, and continued under another name or path when
 * a layer carries <ns>.overlay.redirect.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ovl_internal.h"

/* One layer that a lookup found (namei.c:ovl_lookup's stack entries). */
struct ovl_hit {
	int layer;
	char *path;		/* relative to the layer root (malloc'd) */
	struct stat st;
	bool metacopy;
};

/* namei.c:struct ovl_lookup_data, and what the lookup collects. */
struct ovl_ld {
	struct ovl_stack *s;
	struct ovl_dir *parent;	/* the directory the name is looked up in */
	struct ovl_ent *ent;	/* the name's entry there */
	struct ovl_dir *child;	/* built as directory layers are found */
	uint32_t childcap;
	char *name;		/* the name, or an absolute path after a redirect */
	bool redirect, is_dir, opaque, stop, last, metacopy, absolute_redirect;
	struct ovl_hit upper, first, data;	/* upper; found[0]; found[-1] */
	bool has_upper;
	uint32_t nfound;
	char *target;		/* a symlink's target, read when it was found */
	/* For the error detail (ovl_error): the last metacopy file and the
	 * last redirect found, their layers and paths (NULL: none or no
	 * memory), and the redirect's value. */
	int mlayer, rlayer;
	char *mpath, *rpath, *rvalue;
};

static void hit_free(struct ovl_hit *h)
{
	free(h->path);
	h->path = NULL;
}

static int stack_push(struct ovl_dir *d, uint32_t *cap, int layer, const char *path)
{
	bool other = strcmp(path, d->path) != 0;

	if (d->nstack == *cap) {
		uint32_t ncap = *cap ? *cap * 2 : 2;
		struct ovl_dlayer *n = realloc(d->stack, ncap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		d->bytes += (ncap - *cap) * sizeof(*n);
		d->stack = n;
		if (d->paths) {
			char **p = realloc(d->paths, ncap * sizeof(*p));

			if (!p)
				return -ENOMEM;
			memset(p + *cap, 0, (ncap - *cap) * sizeof(*p));
			d->bytes += (ncap - *cap) * sizeof(*p);
			d->paths = p;
		}
		*cap = ncap;
	}
	if (other && !d->paths) {
		/* The first layer where the directory has another path. */
		d->paths = calloc(*cap, sizeof(*d->paths));
		if (!d->paths)
			return -ENOMEM;
		d->bytes += *cap * sizeof(*d->paths);
	}
	if (other) {
		d->paths[d->nstack] = strdup(path);
		if (!d->paths[d->nstack])
			return -ENOMEM;
		d->bytes += strlen(path) + 1;
	}
	d->stack[d->nstack++] = (struct ovl_dlayer){ .layer = (uint16_t)layer };
	return 0;
}

/* The directory's own metadata, from its top-most layer. */
static int set_dir_stat(struct ovl_dir *d, const struct stat *st)
{
	d->fill = ovl_fill_new(NULL, st, 0);
	if (!d->fill)
		return -ENOMEM;
	d->bytes += 1u + d->fill->len;
	d->origin_ino = st->st_ino;
	return 0;
}

/* Reasons of the error details (ovl_last_error), one text per cause. */
#define WHY_GONE "gone from the layer since the directory was listed; the layer " \
		 "changed behind the cache: call invalidate()"
#define WHY_TYPE "its type changed since the directory was listed; the layer " \
		 "changed behind the cache: call invalidate()"
#define WHY_BAD_REDIRECT "invalid redirect xattr, neither one name nor an absolute " \
			 "path without empty components"
#define WHY_DOT_REDIRECT "redirect xattr with a \".\" or \"..\" component"
#define WHY_NO_DATA "metacopy file with no data in the layers below"
#define WHY_BAD_METACOPY "invalid metacopy xattr of 1 to 3 bytes"
#define WHY_METACOPY_OFF "metacopy file, not followed without metacopy=on"
#define WHY_NOFOLLOW "redirect, not followed with redirect_dir=nofollow"
#define WHY_TRAP "the upper or work dir, reached through this lower layer: " \
		 "overlapping layers"
#define WHY_MOUNT "a mount point inside the layer"

/* The detail of an invalid redirect (-EINVAL from ovl_parse_redirect) on
 * path in layer: n is what getxattr returned for buf.  Return err. */
static int redirect_error(const struct ovl_stack *s, int err, int layer, const char *path,
			  const char *buf, long n)
{
	if (err != -EINVAL)
		return err;
	return ovl_error(s, err, layer, n == -ERANGE ? "redirect xattr longer than a path" :
			 n == 0 ? "empty redirect xattr" : WHY_BAD_REDIRECT, path, NULL,
			 n > 0 ? buf : NULL, n > 0 ? (size_t)n : 0);
}

/* Remember where a metacopy file or a redirect was found (ovl_ld.mpath,
 * rpath): only the error details use it. */
static void remember(int *layer, char **path, const struct ovl_hit *hit)
{
	*layer = hit->layer;
	free(*path);
	*path = strdup(hit->path);
}

/* namei.c:ovl_check_redirect: search the layers below under another name. */
static int apply_redirect(struct ovl_ld *d, const struct ovl_hit *hit, const char *r,
			  size_t prelen, const char *post)
{
	size_t rlen = strlen(r), plen = strlen(post);
	char *name;

	remember(&d->rlayer, &d->rpath, hit);
	free(d->rvalue);
	d->rvalue = strdup(r);
	d->absolute_redirect = false;
	if (r[0] == '/') {
		d->absolute_redirect = true;
		d->stop = false;	/* an opaque ancestor on an absolute walk */
		name = malloc(rlen + plen + 1);
		if (!name)
			return -ENOMEM;
		memcpy(name, r, rlen);
		memcpy(name + rlen, post, plen + 1);
	} else {
		name = malloc(prelen + rlen + plen + 1);
		if (!name)
			return -ENOMEM;
		memcpy(name, d->name, prelen);
		memcpy(name + prelen, r, rlen);
		memcpy(name + prelen + rlen, post, plen + 1);
	}
	free(d->name);
	d->name = name;
	d->redirect = true;
	return 0;
}

/* Start the directory being built, on the first directory layer found. */
static int child_begin(struct ovl_ld *d)
{
	if (d->child)
		return 0;
	d->child = ovl_dir_new(d->s, d->parent, d->ent);
	if (!d->child)
		return -ENOMEM;
	return ovl_build_begin(d->child);
}

/* Read the target of symlink name in pfd, the layer directory at rel.  An
 * upper one through the stack's read-only noatime clone of the upper: the
 * kernel's lookup does not read it, and reading changes its atime (lower
 * layers are such clones already). */
static long read_target(const struct ovl_stack *s, int layer, int pfd, const char *rel,
			const char *name, char *buf, size_t size)
{
	long n;

	if (layer == 0) {
		int qfd = ovl_upper_quiet_dir(s, rel);

		if (qfd >= 0) {
			n = readlinkat(qfd, name, buf, size);
			n = n < 0 ? -errno : n;
			close(qfd);
			return n;
		}
	}
	n = readlinkat(pfd, name, buf, size);
	return n < 0 ? -errno : n;
}

/* What stack layer si of the parent (base_si >= 0: its index answers
 * without a syscall), or else the directory base of layer, holds under
 * name (namei.c:ovl_lookup_positive_unlocked): an enum ovl_occ_kind, and
 * in *oci whether ".wh.NAME" sits next to it.  hit->st gets a
 * non-directory's metadata, and a directory's when base was read here.
 * *pfd gets the layer directory opened where it was needed (the caller
 * closes it when base_si < 0).  Return the kind, or -errno. */
static int lookup_kind(struct ovl_ld *d, int layer, const char *base, int base_si,
		       const char *name, size_t len, struct ovl_hit *hit, int *pfd,
		       bool *oci)
{
	struct ovl_stack *s = d->s;
	int kind, err = 0, bits;

	if (base_si >= 0) {
		const struct ovl_ent *e = ovl_dir_find(d->parent, name, len,
						       ovl_name_hash(name, len));

		bits = e ? ovl_occ_bits(d->parent, e, (uint32_t)base_si) : OK_NONE;
		kind = bits & OK_KIND;
		*oci = bits & OK_OCI;
		if (kind != OK_NONE && kind != OK_WH && kind != OK_DIR) {
			*pfd = ovl_fdcache_get(s, d->parent, (uint32_t)base_si);
			if (*pfd < 0)
				return *pfd;
			if (fstatat(*pfd, name, &hit->st, AT_SYMLINK_NOFOLLOW) < 0)
				return errno != ENOENT ? -errno :
				       ovl_error(s, -ESTALE, layer, WHY_GONE,
						 ovl_dl_path(d->parent, (uint32_t)base_si), name,
						 NULL, 0);
		}
		return kind;
	}
	*pfd = ovl_layer_open(s, layer, base, O_PATH | O_DIRECTORY);
	if (*pfd == -ENOENT || *pfd == -ENOTDIR || *pfd == -ELOOP)
		return OK_NONE;
	if (*pfd < 0)
		return *pfd;
	if (fstatat(*pfd, name, &hit->st, AT_SYMLINK_NOFOLLOW) < 0) {
		err = errno == ENOENT || errno == ENAMETOOLONG ? 0 : -errno;
		kind = OK_NONE;
	} else {
		kind = S_ISDIR(hit->st.st_mode) ? OK_DIR :
		       S_ISREG(hit->st.st_mode) ? OK_REG : OK_OTHER;
		if (ovl_kernel_wh(s) && ovl_is_whiteout_stat(&hit->st))
			kind = OK_WH;
	}
	if (!err && ovl_oci_wh(s))
		*oci = ovl_oci_whiteout_at(*pfd, name);
	return err ? err : kind;
}

/* A non-directory found in layer hit->layer (of kind OK_REG or OK_OTHER,
 * in pfd, the layer directory at rel): namei.c:ovl_lookup_single's
 * !d_can_lookup branch.  Its metacopy xattr, a symlink's target (read
 * once, where it is found), and a metacopy file's redirect.  Return 1 to
 * keep the hit, 0 to drop it (the lookup stops), or -errno. */
static int lookup_nondir(struct ovl_ld *d, struct ovl_hit *hit, int kind, int pfd,
			 const char *rel, const char *name, bool oci, size_t prelen,
			 const char *post)
{
	struct ovl_stack *s = d->s;
	bool last_element = !*post;
	char buf[PATH_MAX], *redirect = NULL;
	long n;
	int err;

	if (d->is_dir || !last_element) {
		d->stop = true;
		return 0;
	}
	if (kind == OK_REG) {
		/* util.c:ovl_check_metacopy_xattr; a 1-3 byte value is
		 * neither empty nor a digest header. */
		n = ovl_at_getxattr(s, pfd, name, s->x_metacopy, buf, sizeof(buf));
		if (n > 0 && n < 4)
			return ovl_error(s, -EIO, hit->layer, WHY_BAD_METACOPY, hit->path, NULL,
					 NULL, 0);
		if (n < 0 && n != -ENODATA && n != -EOPNOTSUPP && n != -ERANGE)
			return (int)n;
		hit->metacopy = n >= 0 || n == -ERANGE;
		if (hit->metacopy)
			remember(&d->mlayer, &d->mpath, hit);
	}
	d->metacopy = hit->metacopy;
	d->stop = !hit->metacopy || oci;
	if (kind == OK_OTHER && S_ISLNK(hit->st.st_mode) && !d->target) {
		n = read_target(s, hit->layer, pfd, rel, name, buf, sizeof(buf));
		if (n < 0 || n >= (long)sizeof(buf))
			return n < 0 ? (int)n : -ENAMETOOLONG;
		d->target = strndup(buf, (size_t)n);
		if (!d->target)
			return -ENOMEM;
	}
	if (!hit->metacopy || d->last)
		return 1;
	n = ovl_at_getxattr(s, pfd, name, s->x_redirect, buf, sizeof(buf) - 1);
	err = ovl_parse_redirect(buf, n, &redirect);
	if (err)
		return redirect_error(s, err, hit->layer, hit->path, buf, n);
	if (redirect)
		err = apply_redirect(d, hit, redirect, prelen, post);
	free(redirect);
	return err ? err : 1;
}

/* A directory found in layer hit->layer at hit->path: namei.c:
 * ovl_lookup_single's d_can_lookup branch.  Opened once: the trap check,
 * its metadata where it is used (stat_dir: the top or the origin, not
 * stat'ed yet), its opaque and redirect xattrs, and, when it is the
 * directory being looked up, its listing indexed as a layer of the child.
 * Return 1 to keep the hit, or -errno. */
static int lookup_dir(struct ovl_ld *d, struct ovl_hit *hit, bool stat_dir, bool oci,
		      size_t prelen, const char *post)
{
	struct ovl_stack *s = d->s;
	int layer = hit->layer, fd, err = 0;
	bool last_element = !*post, is_upper = layer == 0;
	char opaque = 0, *redirect = NULL;
	bool oci_opaque = false, has_redirect = false;

	if (last_element)
		d->is_dir = true;
	fd = ovl_layer_open_dir(s, layer, hit->path);
	if (fd < 0)
		return fd != -ENOENT ? fd :
		       ovl_error(s, -ESTALE, layer, WHY_GONE, hit->path, NULL, NULL, 0);
	if (s->traps && layer > 0) {
		/* The upper or work dir seen through a lower: "caught in a trap
		 * of overlapping layers". */
		struct stat tst;

		if (fstat(fd, &tst) < 0) {
			err = -errno;
			goto out;
		}
		for (int t = 0; t < 2; t++)
			if (tst.st_dev == s->trap[t].dev && tst.st_ino == s->trap[t].ino)
				err = ovl_error(s, -ELOOP, layer, WHY_TRAP, hit->path, NULL,
						NULL, 0);
		if (err)
			goto out;
	}
	if (stat_dir && fstat(fd, &hit->st) < 0) {
		err = -errno;
		goto out;
	}
	if (!d->last) {
		/* Redirects are read whatever the whiteout form; the opaque
		 * xattr is the kernel form of ".wh..wh..opq". */
		err = ovl_dir_xattrs(s, fd, &opaque, &has_redirect);
		if (err)
			goto out;
		if (!ovl_kernel_wh(s))
			opaque = 0;
	}
	if (last_element) {
		/* A layer of the directory being looked up: index it now. */
		uint32_t si;

		err = child_begin(d);
		if (!err)
			err = stack_push(d->child, &d->childcap, layer, hit->path);
		if (err)
			goto out;
		si = d->child->nstack - 1;
		if (si == 0)
			err = set_dir_stat(d->child, &hit->st);
		/* readdir.c honours opaque=x in lower layers only (and the
		 * bottom one is never read: d->last). */
		d->child->stack[si].xmarker = opaque == 'x' && !is_upper;
		if (!err)
			err = ovl_index_layer(s, d->child, si, fd, &oci_opaque);
		if (err)
			goto out;
	} else if (ovl_oci_wh(s)) {
		oci_opaque = ovl_oci_opaque_at(fd);
	}
	if (opaque == 'y' || oci_opaque || oci) {
		d->stop = true;
		if (last_element)
			d->opaque = true;
		goto out;
	}
	if (has_redirect) {
		err = ovl_fd_redirect(s, fd, &redirect);
		if (err == -EINVAL) {
			/* Read again, for the detail only. */
			char buf[PATH_MAX];
			long n = ovl_fd_getxattr(fd, s->x_redirect, buf, sizeof(buf));

			err = redirect_error(s, err, layer, hit->path, buf, n);
		} else if (!err && redirect) {
			err = apply_redirect(d, hit, redirect, prelen, post);
		}
	}
out:
	free(redirect);
	close(fd);
	return err ? err : 1;
}

/* Look comp up in one directory (base) of one layer: namei.c:
 * ovl_lookup_single.  base_si >= 0 says base is that layer of the parent
 * directory, whose index answers without a syscall.  Return 1 with *hit
 * set, 0 for nothing here, or -errno. */
static int lookup_single(struct ovl_ld *d, int layer, const char *base, int base_si,
			 const char *comp, size_t complen, size_t prelen,
			 const char *post, struct ovl_hit *hit)
{
	struct ovl_stack *s = d->s;
	bool last_element = !*post, oci = false;
	char name[OVL_NAME_MAX + 1];
	int kind, pfd = -1, err = 0;

	memset(hit, 0, sizeof(*hit));
	if (complen == 0 || (complen == 1 && comp[0] == '.') ||
	    (complen == 2 && comp[0] == '.' && comp[1] == '.')) {
		/* lookup_one() refuses these names; only a redirect has them */
		const char *v = d->rvalue ? d->rvalue : d->name;

		return ovl_error(s, -EACCES, d->rpath ? d->rlayer : layer, WHY_DOT_REDIRECT,
				 d->rpath, NULL, v, strlen(v));
	}
	if (complen > OVL_NAME_MAX)
		return 0;	/* ENAMETOOLONG in one layer is "absent" */
	memcpy(name, comp, complen);
	name[complen] = '\0';

	kind = lookup_kind(d, layer, base, base_si, name, complen, hit, &pfd, &oci);
	if (kind < 0) {
		err = kind;
		goto out;
	}
	if (kind == OK_NONE) {
		if (oci)
			d->stop = d->opaque = true;
		goto out;
	}
	if (kind == OK_WH) {
		d->stop = d->opaque = true;
		goto out;
	}
	if (kind != OK_DIR && hit->st.st_dev != s->layers[layer].dev) {
		/* a mount point inside the layer */
		err = ovl_error(s, -EXDEV, layer, WHY_MOUNT,
				base_si >= 0 ? ovl_dl_path(d->parent, (uint32_t)base_si) : base,
				name, NULL, 0);
		goto out;
	}
	if (kind == OK_REG && ovl_kernel_wh(s) && hit->st.st_size == 0) {
		err = ovl_is_xwhiteout_at(s, pfd, name);
		if (err < 0)
			goto out;
		if (err) {
			err = 0;
			d->stop = d->opaque = true;
			goto out;
		}
	}
	if (last_element && d->metacopy && kind != OK_REG) {
		d->stop = true;	/* below a metacopy file only data will do */
		goto out;
	}
	hit->layer = layer;
	hit->path = ovl_path_join(base, strlen(base), name, complen);
	if (!hit->path) {
		err = -ENOMEM;
		goto out;
	}
	if (kind != OK_DIR) {
		err = lookup_nondir(d, hit, kind, pfd, base_si >= 0 ?
				    ovl_dl_path(d->parent, (uint32_t)base_si) : base,
				    name, oci, prelen, post);
	} else {
		/* A directory found in the parent's index is stat'ed through
		 * the fd it is opened with, and only where its metadata is
		 * used (the top, the origin); lookup_kind's fstatat gave the
		 * others theirs. */
		err = lookup_dir(d, hit, base_si >= 0 && d->nfound == 0, oci, prelen, post);
	}
	if (err <= 0)
		hit_free(hit);
out:
	if (base_si < 0 && pfd >= 0)
		close(pfd);
	return err;
}

/* namei.c:ovl_lookup_layer: the name, or an absolute path walked one
 * component at a time from base. */
static int lookup_layer(struct ovl_ld *d, int layer, const char *base, int base_si,
			struct ovl_hit *hit)
{
	struct ovl_hit cur = { 0 };
	size_t rem;
	int r;

	if (d->name[0] != '/')
		return lookup_single(d, layer, base, base_si, d->name, strlen(d->name), 0,
				     "", hit);
	/* Counting from the end, since a redirect can change the prefix. */
	rem = strlen(d->name) - 1;
	cur.path = strdup(base);
	if (!cur.path)
		return -ENOMEM;
	for (;;) {
		size_t len = strlen(d->name), start = len - rem;
		const char *c = d->name + start, *e = strchrnul(c, '/');
		size_t clen = (size_t)(e - c);
		bool is_last = !*e;
		char post[PATH_MAX];

		if (strlen(e) >= sizeof(post)) {
			r = -ENAMETOOLONG;
			break;
		}
		strcpy(post, e);
		r = lookup_single(d, layer, cur.path, -1, c, clen, start, post, hit);
		if (r <= 0 || is_last)
			break;
		if (!S_ISDIR(hit->st.st_mode)) {
			hit_free(hit);
			r = 0;
			break;
		}
		hit_free(&cur);
		cur = *hit;
		memset(hit, 0, sizeof(*hit));
		rem -= clen + 1;
	}
	hit_free(&cur);
	return r;
}

/* namei.c:ovl_check_follow_redirect. */
static bool may_follow(const struct ovl_ld *d, bool upperredirect)
{
	const struct ovl_stack *s = d->s;

	if (d->metacopy && !(s->cfg & OVL_CFG_METACOPY))
		return false;
	if ((d->redirect || upperredirect) && (s->cfg & OVL_CFG_REDIRECT_NOFOLLOW))
		return false;
	return true;
}

/* -EPERM, with the detail: which of may_follow's rules refused. */
static int follow_error(const struct ovl_ld *d)
{
	if (d->metacopy && !(d->s->cfg & OVL_CFG_METACOPY))
		return ovl_error(d->s, -EPERM, d->mlayer, WHY_METACOPY_OFF, d->mpath, NULL,
				 NULL, 0);
	return ovl_error(d->s, -EPERM, d->rlayer, WHY_NOFOLLOW, d->rpath, NULL, d->rvalue,
			 d->rvalue ? strlen(d->rvalue) : 0);
}

static void record(struct ovl_ld *d, struct ovl_hit *h)
{
	if (d->nfound == 0) {
		d->first = *h;
	} else {
		if (d->nfound > 1)
			hit_free(&d->data);
		d->data = *h;
	}
	d->nfound++;
	memset(h, 0, sizeof(*h));
}

/* Where a metacopy file's data lives, in the data-only layers
 * (namei.c:ovl_lookup_data_layers): a contained lookup of the absolute
 * redirect in each, in order; the target must be a regular file. */
static int data_layers_lookup(struct ovl_stack *s, const char *redirect,
			      struct ovl_hit *hit)
{
	int err = -ENOENT;

	for (int l = s->nlower + 1; l < s->nlayers; l++) {
		int fd = ovl_layer_open(s, l, redirect + 1, O_PATH);

		if (fd < 0) {
			err = fd;
			continue;
		}
		if (fstat(fd, &hit->st) < 0)
			err = -errno;
		else if (!S_ISREG(hit->st.st_mode))
			err = -ENOENT;
		else
			err = 0;
		close(fd);
		if (!err) {
			hit->layer = l;
			hit->path = strdup(redirect + 1);
			return hit->path ? 0 : -ENOMEM;
		}
	}
	return err;
}

/* Install what a successful lookup of a non-directory found. */
/* The metadata record of a name of directory p, in p's arena. */
static struct ovl_fill *fill_alloc(struct ovl_dir *p, const struct stat *st, size_t extra)
{
	/* Room for the metadata of more names of this directory in one chunk:
	 * as many as were filled so far (a walk fills them all), at most the
	 * rest, at the size this one takes. */
	size_t need = ovl_fill_size(st, extra);

	if (!ovl_arena_room(&p->arena, need)) {
		uint32_t more = p->nfilled > 8 ? p->nfilled : 8;

		if (more > p->nents - p->nfilled)
			more = p->nents - p->nfilled;
		if (ovl_arena_reserve(&p->arena, more > 1 ? (need - extra) * more + extra : need))
			return NULL;
	}
	return ovl_fill_new(&p->arena, st, extra);
}

/* Record st as the metadata of e in directory p, a plain regular file (no
 * metacopy, no whiteout) or a symlink to target: what a lookup would find
 * (copy_up.c, after a copy-up of e made it so). */
int ovl_fill_plain(struct ovl_stack *s, struct ovl_dir *p, struct ovl_ent *e,
		   const struct stat *st, const char *target)
{
	size_t extra = target ? strlen(target) + 1 : 0;
	struct ovl_fill *f = fill_alloc(p, st, extra);

	if (!f)
		return -ENOMEM;
	if (target)
		memcpy(ovl_fill_extra(f), target, extra);
	e->ext = f;
	e->flags |= OVL_E_FILLED;
	p->nfilled++;
	ovl_dir_account(s, p);
	return 0;
}

static int install_file(struct ovl_ld *d, const struct ovl_hit *top,
			const struct ovl_hit *data, int data_err)
{
	struct ovl_dir *p = d->parent;
	struct ovl_ent *e = d->ent;
	size_t extra = 0;
	struct ovl_fill *f;
	void *x;

	/* Without data, the path holds the redirect that found none (for the
	 * error detail, ovl_mc_error). */
	const char *mcpath = data ? data->path : data_err ? d->name : "";

	if (top->metacopy)
		extra = sizeof(struct ovl_mcdata) + strlen(mcpath) + 1;
	else if (d->target)
		extra = strlen(d->target) + 1;
	f = fill_alloc(p, &top->st, extra);
	if (!f)
		return -ENOMEM;
	x = ovl_fill_extra(f);
	if (top->metacopy) {
		struct ovl_mcdata *mc = x;

		mc->err = data ? 0 : data_err;
		mc->layer = data ? (uint16_t)data->layer : 0;
		mc->blocks = data ? data->st.st_blocks :
			     /* no data: the kernel's guess before its lazy lookup */
			     ((top->st.st_size + top->st.st_blksize - 1) / top->st.st_blksize) *
			     (top->st.st_blksize / 512);
		strcpy(mc->path, mcpath);
		/* inode.c:ovl_map_dev_ino: an upper file with a lower origin
		 * reports the origin's inode when that has one link. */
		mc->origin_ino = d->has_upper && d->nfound && d->first.st.st_nlink == 1 ?
				 d->first.st.st_ino : 0;
		e->flags |= OVL_E_METACOPY;
	} else if (d->target) {
		memcpy(x, d->target, extra);
	}
	e->ext = f;
	e->flags |= OVL_E_FILLED;
	p->nfilled++;
	ovl_dir_account(d->s, p);
	return 0;
}

static int install_dir(struct ovl_ld *d)
{
	struct ovl_dir *c = d->child;
	int err = ovl_index_finish(c);

	if (err)
		return err;
	ovl_build_end(c);
	if (c->nstack < d->childcap) {
		struct ovl_dlayer *fit = realloc(c->stack, c->nstack * sizeof(*fit));

		if (fit) {
			c->bytes -= (d->childcap - c->nstack) * sizeof(*fit);
			c->stack = fit;
		}
		if (c->paths) {
			char **pfit = realloc(c->paths, c->nstack * sizeof(*pfit));

			if (pfit) {
				c->bytes -= (d->childcap - c->nstack) * sizeof(*pfit);
				c->paths = pfit;
			}
		}
	}
	c->opaque = d->opaque;
	/* The root's inode is its own; a merged directory reports its
	 * top-most lower's (its copy-up origin). */
	c->origin_ino = d->has_upper && d->nfound ? d->first.st.st_ino :
			c->origin_ino;
	d->ent->ext = c;
	d->child = NULL;
	ovl_dir_account(d->s, c);
	return 0;
}

/* Resolve entry e of directory p as namei.c:ovl_lookup does, and cache
 * the result: a directory node with its index, or the metadata of a
 * non-directory.  Return 0, or -errno (-ENOENT: e turned out to be an
 * xattr whiteout and is now marked as one). */
int ovl_resolve_ent(struct ovl_walk *w, struct ovl_dir *p, struct ovl_ent *e)
{
	struct ovl_stack *s = w->s;
	struct ovl_ld d = { .s = s, .parent = p, .ent = e };
	bool follow = !(s->cfg & OVL_CFG_REDIRECT_NOFOLLOW);
	bool check_redirect = follow || s->ndata;
	bool uppermetacopy = false, upperredirect = false, poe_root = false;
	struct ovl_dir *root = s->root;
	uint32_t lo = p->stack[0].layer == 0 ? 1 : 0;	/* p's lower layers */
	uint32_t i, npoe = p->nstack - lo;
	struct ovl_hit hit = { 0 }, data_hit = { 0 };
	int err = 0, r, data_err = 0;

	d.name = strndup(e->name, e->namelen);
	if (!d.name)
		return -ENOMEM;
	if (ovl_oci_wh(s) && ovl_oci_is_marker(e->name, e->namelen)) {
		err = -ENOENT;	/* whiteout markers are never visible */
		goto out;
	}
	d.last = check_redirect ? false : npoe == 0;
	if (lo) {
		r = lookup_layer(&d, 0, ovl_dl_path(p, 0), 0, &hit);
		if (r < 0) {
			err = r;
			goto out;
		}
		if (r) {
			d.upper = hit;
			d.has_upper = true;
			memset(&hit, 0, sizeof(hit));
			if (!d.is_dir)
				uppermetacopy = d.metacopy;
		}
		if (d.redirect) {
			upperredirect = true;
			if (d.name[0] == '/')
				poe_root = true;
		}
	}
	for (i = 0; !d.stop;) {
		const char *base;
		int base_si, layer;

		if (poe_root) {
			/* From the layer roots, below the layer that redirected. */
			uint32_t rlo = root->stack[0].layer == 0 ? 1 : 0;

			if (i >= root->nstack - rlo)
				break;
			layer = root->stack[rlo + i].layer;
			base = "";
			base_si = p == root ? (int)(rlo + i) : -1;
		} else {
			if (i >= npoe)
				break;
			layer = p->stack[lo + i].layer;
			base = ovl_dl_path(p, lo + i);
			base_si = (int)(lo + i);
		}
		if (!may_follow(&d, upperredirect)) {
			err = follow_error(&d);
			goto out;
		}
		if (!check_redirect)
			d.last = i == (poe_root ? (uint32_t)s->nlower : npoe) - 1;
		else if (d.is_dir || !s->ndata)
			d.last = layer == s->nlower;
		r = lookup_layer(&d, layer, base, base_si, &hit);
		if (r < 0) {
			err = r;
			goto out;
		}
		if (r) {
			/* Keep only the top-most lower metacopy and the data. */
			if (!(d.metacopy && d.nfound))
				record(&d, &hit);
			else
				hit_free(&hit);
			if (d.stop)
				break;
			if (d.redirect && d.name[0] == '/' && !poe_root) {
				poe_root = true;
				i = (uint32_t)layer;	/* the next layer, from the roots */
				continue;
			}
		}
		i++;
	}
	if (d.metacopy && d.nfound && s->ndata && d.absolute_redirect) {
		/* The data is in a data-only layer: found lazily, like the
		 * kernel; a missing one fails opening the data, not lstat. */
		d.metacopy = false;
		data_err = data_layers_lookup(s, d.name, &data_hit);
	} else if (!may_follow(&d, upperredirect)) {
		err = follow_error(&d);
		goto out;
	}
	if (d.metacopy || (uppermetacopy && !d.nfound)) {
		/* "metacopy with no lower data found" */
		err = ovl_error(s, -EIO, d.mlayer, WHY_NO_DATA, d.mpath, NULL, NULL, 0);
		goto out;
	}
	if (!d.has_upper && !d.nfound) {
		err = -ENOENT;
		e->flags |= OVL_E_WHITEOUT;	/* e.g. an xattr whiteout on top */
		goto out;
	}
	if (d.is_dir) {
		err = d.child ? install_dir(&d) :
		      ovl_error(s, -ESTALE, p->stack[e->top].layer, WHY_TYPE,
				ovl_dl_path(p, e->top), e->name, NULL, 0);
	} else {
		const struct ovl_hit *top = d.has_upper ? &d.upper : &d.first;
		const struct ovl_hit *data = NULL;

		if (top->metacopy) {
			if (data_hit.path)
				data = &data_hit;
			else if (!data_err)
				data = d.nfound > 1 ? &d.data : &d.first;
		}
		if (IFTODT(top->st.st_mode) != e->dtype)	/* replaced behind our back */
			err = ovl_error(s, -ESTALE, top->layer, WHY_TYPE, top->path, NULL,
					NULL, 0);
		else
			err = install_file(&d, top, data, data_err);
	}
out:
	if (d.child) {
		ovl_build_end(d.child);
		ovl_dir_free(s, d.child);
	}
	hit_free(&hit);
	hit_free(&d.upper);
	hit_free(&d.first);
	if (d.nfound > 1)
		hit_free(&d.data);
	hit_free(&data_hit);
	free(d.name);
	free(d.target);
	free(d.mpath);
	free(d.rpath);
	free(d.rvalue);
	return err;
}

/* Build the root: the upper and every lower layer root, merged. */
static int materialize_root(struct ovl_stack *s, struct ovl_dir **out)
{
	struct ovl_dir *d = ovl_dir_new(s, NULL, s->root_ent);
	uint32_t cap = 0;
	int err;

	if (!d)
		return -ENOMEM;
	err = ovl_build_begin(d);
	for (int layer = 0; !err && layer <= s->nlower; layer++) {
		char opaque = 0;
		bool oci_opq;
		int fd;

		if (layer == 0 && s->layers[0].fd < 0)
			continue;
		fd = ovl_layer_open_dir(s, layer, "");
		if (fd < 0) {
			err = fd;
			break;
		}
		if (d->nstack == 0) {
			struct stat st;

			err = fstat(fd, &st) < 0 ? -errno : set_dir_stat(d, &st);
			s->root_ent->ino = st.st_ino;
		}
		/* The root is never opaque and never redirected; opaque=x still
		 * marks xattr whiteouts in it. */
		if (!err && ovl_kernel_wh(s))
			err = ovl_dir_xattrs(s, fd, &opaque, NULL);
		if (!err)
			err = stack_push(d, &cap, layer, "");
		if (!err) {
			d->stack[d->nstack - 1].xmarker = opaque == 'x' && layer != 0 &&
							  layer != s->nlower;
			err = ovl_index_layer(s, d, d->nstack - 1, fd, &oci_opq);
		}
		close(fd);
	}
	if (!err)
		err = ovl_index_finish(d);
	ovl_build_end(d);
	if (err) {
		ovl_dir_free(s, d);
		return err;
	}
	s->root_ent->ext = d;
	s->root = d;
	ovl_dir_account(s, d);
	*out = d;
	return 0;
}

/* The directory node of entry e (held by p; p NULL for the root),
 * building it when needed.  -ENOTDIR for a non-directory, -EAGAIN in a
 * cache-only walk when it is not built yet. */
int ovl_ent_dir(struct ovl_walk *w, struct ovl_dir *p, struct ovl_ent *e,
		struct ovl_dir **out)
{
	int err;

	if (e->dtype != DT_DIR)
		return -ENOTDIR;
	if (e->ext) {
		*out = e->ext;
		return 0;
	}
	if (w->cached_only)
		return -EAGAIN;
	if (e == w->s->root_ent)
		return materialize_root(w->s, out);
	err = ovl_resolve_ent(w, p, e);
	if (err)
		return err;
	*out = e->ext;
	return 0;
}
