/* namei.c - path walk across the layers.
 *
 * A path is resolved one component at a time in the merged index of the
 * directory reached so far (readdir.c); '..' moves to the parent directory
 * node and never above the root; symlinks are read from the layer that
 * supplies them and followed inside the union root (absolute targets start
 * again at the union root), as openat2(RESOLVE_IN_ROOT) would.
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

enum cand_mode { BY_OCC, PROBE_REL, PROBE_ABS };

/* Where the next layer of a directory being built is looked for. */
struct cand_iter {
	enum cand_mode mode;
	uint32_t k;		/* BY_OCC: 0 is the top, then occurrences */
	uint32_t psi;		/* parent stack index of the current candidate */
	int layer;		/* PROBE_ABS: current global layer */
	char *name;		/* PROBE_REL: redirected name */
	char *apath;		/* PROBE_ABS: path from the layer roots, no leading '/' */
};

static int stack_push(struct ovl_dir *d, uint32_t *cap, int layer, char *path)
{
	if (d->nstack == *cap) {
		uint32_t ncap = *cap ? *cap * 2 : 4;
		struct ovl_dlayer *n = realloc(d->stack, ncap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		d->bytes += (ncap - *cap) * sizeof(*n);
		d->stack = n;
		*cap = ncap;
	}
	d->stack[d->nstack++] = (struct ovl_dlayer){
		.path = path ? path : d->path,
		.layer = (uint16_t)layer,
		.owned = path != NULL,
	};
	if (path)
		d->bytes += strlen(path) + 1;
	return 0;
}

/* The next candidate layer for d: 1 with *layer and *path set (*path NULL means
 * d->path; otherwise malloc'd), 0 when there is none, -errno on error. */
static int next_candidate(const struct ovl_stack *s, const struct ovl_dir *p,
			  const struct ovl_ent *e, struct cand_iter *it,
			  int *layer, char **path)
{
	const struct ovl_dlayer *pl;

	*path = NULL;
	switch (it->mode) {
	case BY_OCC:
		if (it->k > e->nocc)
			return 0;
		it->psi = it->k == 0 ? e->top : p->occ[e->occ + it->k - 1];
		it->k++;
		pl = &p->stack[it->psi];
		*layer = pl->layer;
		if (pl->path != p->path) {
			*path = ovl_path_join(pl->path, strlen(pl->path), e->name,
					      e->namelen);
			if (!*path)
				return -ENOMEM;
		}
		return 1;
	case PROBE_REL:
		if (++it->psi >= p->nstack)
			return 0;
		pl = &p->stack[it->psi];
		*layer = pl->layer;
		*path = ovl_path_join(pl->path, strlen(pl->path), it->name,
				      strlen(it->name));
		return *path ? 1 : -ENOMEM;
	case PROBE_ABS:
		if (++it->layer > s->nlower)
			return 0;
		*layer = it->layer;
		*path = strdup(it->apath);
		return *path ? 1 : -ENOMEM;
	}
	return 0;
}

/* Follow <ns>.overlay.redirect r found on candidate (layer, path): later
 * layers are searched under the new name or path. */
static int redirect_to(struct cand_iter *it, const char *r, int layer,
		       const char *path)
{
	char *apath;

	if (r[0] == '/') {
		apath = strdup(r + 1);
		if (!apath)
			return -ENOMEM;
		free(it->apath);
		it->apath = apath;
		it->mode = PROBE_ABS;
		it->layer = layer;
		return 0;
	}
	if (it->mode == PROBE_ABS) {
		/* Relative to the parent of the absolute path. */
		const char *slash = strrchr(path, '/');
		size_t plen = slash ? (size_t)(slash - path) : 0;

		apath = ovl_path_join(path, plen, r, strlen(r));
		if (!apath)
			return -ENOMEM;
		free(it->apath);
		it->apath = apath;
		return 0;
	}
	free(it->name);
	it->name = strdup(r);
	if (!it->name)
		return -ENOMEM;
	it->mode = PROBE_REL;
	return 0;
}

/* The directory's own metadata, from its top-most layer. */
static int fill_dir_stat(struct ovl_dir *d, int fd, struct ovl_ent *e)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	d->fill = ovl_fill_new(NULL, &st, 0);
	if (!d->fill)
		return -ENOMEM;
	d->bytes += 1u + d->fill->len;
	e->ino = st.st_ino;
	d->origin_ino = st.st_ino;
	return 0;
}

/* Build the directory node for entry e of p (p NULL: the root). */
static int materialize(struct ovl_stack *s, struct ovl_dir *p, struct ovl_ent *e,
		       struct ovl_dir **out)
{
	struct ovl_dir *d = ovl_dir_new(s, p, e);
	struct cand_iter it = { .mode = BY_OCC };
	uint32_t cap = 0;
	bool is_root = !p, have_origin = false;
	int err, layer;
	char *path;

	if (!d)
		return -ENOMEM;
	err = ovl_build_begin(d);
	if (err)
		goto fail;
	for (int root_i = 0;;) {
		char opaque = 0, *redirect = NULL;
		bool oci_opq = false, stop = false;
		int fd;

		if (is_root) {
			/* The root's stack is the upper and every lower layer. */
			if (root_i > s->nlower)
				break;
			layer = root_i++;
			if (layer == 0 && s->layers[0].fd < 0)
				continue;
			path = NULL;
		} else {
			err = next_candidate(s, p, e, &it, &layer, &path);
			if (err < 0)
				goto fail;
			if (err == 0)
				break;
		}
		fd = ovl_layer_open_dir(s, layer, path ? path : d->path);
		if (fd < 0) {
			free(path);
			if (fd == -ENOENT)
				continue;	/* not in this layer (or gone since) */
			if (it.mode != BY_OCC && (fd == -ENOTDIR || fd == -ELOOP))
				break;		/* a non-directory ends the merge */
			if (it.mode == BY_OCC && (fd == -ENOTDIR || fd == -ELOOP))
				continue;	/* changed behind our back */
			err = fd;
			goto fail;
		}
		err = 0;
		if (d->nstack == 0)
			err = fill_dir_stat(d, fd, is_root ? s->root_ent : e);
		else if (layer != 0 && !have_origin && s->samefs) {
			struct stat st;

			if (fstat(fd, &st) == 0)
				d->origin_ino = st.st_ino;
		}
		if (layer != 0)
			have_origin = true;
		if (!err && ovl_kernel_wh(s))
			err = ovl_dir_xattrs(s, fd, &opaque, is_root ? NULL : &redirect);
		if (!err)
			err = stack_push(d, &cap, layer, path);
		else
			free(path);
		if (!err) {
			d->stack[d->nstack - 1].xmarker = opaque == 'x';
			err = ovl_index_layer(s, d, d->nstack - 1, fd, &oci_opq);
		}
		close(fd);
		if (err) {
			free(redirect);
			goto fail;
		}
		if (!is_root && (opaque == 'y' || oci_opq)) {
			d->opaque = true;
			stop = true;
		}
		if (!stop && redirect && layer < s->nlower) {
			err = ovl_check_redirect(redirect);
			if (!err && (s->cfg & OVL_CFG_REDIRECT_NOFOLLOW))
				err = -EPERM;
			if (!err)
				err = redirect_to(&it, redirect, layer,
						  d->stack[d->nstack - 1].path);
		} else if (redirect) {
			err = ovl_check_redirect(redirect);
		}
		free(redirect);
		if (err)
			goto fail;
		if (stop)
			break;
	}
	if (d->nstack == 0) {
		err = -ENOENT;	/* every layer lost it behind our back */
		goto fail;
	}
	err = ovl_index_finish(d);
	if (err)
		goto fail;
	ovl_build_end(d);
	free(it.name);
	free(it.apath);
	if (d->nstack < cap) {
		struct ovl_dlayer *fit = realloc(d->stack, d->nstack * sizeof(*fit));

		if (fit) {
			d->bytes -= (cap - d->nstack) * sizeof(*fit);
			d->stack = fit;
		}
	}
	e = is_root ? s->root_ent : e;
	e->ext = d;
	if (is_root)
		s->root = d;
	ovl_dir_account(s, d);
	*out = d;
	return 0;
fail:
	ovl_build_end(d);
	free(it.name);
	free(it.apath);
	ovl_dir_free(s, d);
	return err;
}

/* The directory node of entry e (held by p; p NULL for the root),
 * building it when needed.  -ENOTDIR for a non-directory, -EAGAIN in a
 * cache-only walk when it is not built yet. */
int ovl_ent_dir(struct ovl_walk *w, struct ovl_dir *p, struct ovl_ent *e,
		struct ovl_dir **out)
{
	if (e->dtype != DT_DIR)
		return -ENOTDIR;
	if (e->ext) {
		*out = e->ext;
		return 0;
	}
	if (w->cached_only)
		return -EAGAIN;
	return materialize(w->s, e == w->s->root_ent ? NULL : p, e, out);
}

int ovl_walk_path(struct ovl_walk *w, const char *path, unsigned flags)
{
	struct ovl_stack *s = w->s;
	struct ovl_dir *dir = NULL, *d;
	struct ovl_ent *ent = s->root_ent, *e;
	const char *p = path;
	char *buf = NULL;
	int nlinks = 0, err = 0;

	for (;;) {
		const char *c, *q, *rest;
		size_t len;
		bool last, slash_after;

		while (*p == '/')
			p++;
		if (!*p)
			break;
		c = p;
		q = strchrnul(c, '/');
		len = (size_t)(q - c);
		for (rest = q; *rest == '/'; rest++)
			;
		last = !*rest;
		slash_after = *q == '/';
		err = ovl_ent_dir(w, dir, ent, &d);
		if (err)
			goto out;
		p = rest;
		if (len == 1 && c[0] == '.')
			continue;
		if (len == 2 && c[0] == '.' && c[1] == '.') {
			struct ovl_dir *up = d->parent ? d->parent : d;

			ent = up->ent;
			dir = up->parent;
			continue;
		}
		if (len > OVL_NAME_MAX) {
			err = -ENAMETOOLONG;
			goto out;
		}
		e = ovl_dir_find(d, c, len, ovl_name_hash(c, len));
		if (!e || (e->flags & OVL_E_WHITEOUT)) {
			err = -ENOENT;
			goto out;
		}
		if (e->dtype != DT_DIR && !(e->flags & OVL_E_FILLED)) {
			/* Its metadata says whether it is an xattr whiteout, a
			 * metacopy, or a symlink's target. */
			if (w->cached_only) {
				err = -EAGAIN;
				goto out;
			}
			err = ovl_ent_fill(w, d, e);
			if (err)
				goto out;
		}
		if (e->dtype == DT_LNK && (!last || slash_after || (flags & OVL_LOOKUP_FOLLOW))) {
			const char *target = ovl_ent_target(e);
			size_t tlen = strlen(target), qlen = strlen(q);
			char *nb;

			if (++nlinks > OVL_MAX_SYMLINKS) {
				err = -ELOOP;
				goto out;
			}
			if (!tlen) {
				err = -ENOENT;
				goto out;
			}
			/* Continue with the target followed by what was left
			 * (keeping a trailing slash). */
			nb = malloc(tlen + qlen + 1);
			if (!nb) {
				err = -ENOMEM;
				goto out;
			}
			memcpy(nb, target, tlen);
			memcpy(nb + tlen, q, qlen + 1);
			free(buf);
			buf = nb;
			p = buf;
			if (target[0] == '/') {
				ent = s->root_ent;
				dir = NULL;
			} else {
				ent = d->ent;
				dir = d->parent;
			}
			continue;
		}
		ent = e;
		dir = d;
		if (last && slash_after && e->dtype != DT_DIR) {
			err = -ENOTDIR;
			goto out;
		}
	}
out:
	free(buf);
	w->dir = dir;
	w->ent = ent;
	return err;
}

/* Run fn on what path names.  A first attempt answers from the cache under
 * the read lock; if anything must be read from a layer, the walk runs again
 * under the write lock. */
int ovl_run(struct ovl_stack *s, const char *path, unsigned flags,
	    ovl_op_fn fn, void *arg)
{
	struct ovl_walk w = { .s = s };
	int err, locked;

	if (!(s->cfg & OVL_CFG_NO_CACHE)) {
		locked = (flags & OVL_LOOKUP_CACHED) ?
			 pthread_rwlock_tryrdlock(&s->lock) :
			 pthread_rwlock_rdlock(&s->lock);
		if (locked == 0) {
			w.cached_only = true;
			err = ovl_walk_path(&w, path, flags);
			if (!err)
				err = fn(&w, arg);
			pthread_rwlock_unlock(&s->lock);
			if (err != -EAGAIN) {
				ovl_atomic_inc(&s->hits);
				return err;
			}
		}
		if (flags & OVL_LOOKUP_CACHED)
			return -EAGAIN;
	}
	pthread_rwlock_wrlock(&s->lock);
	w.cached_only = false;
	err = ovl_walk_path(&w, path, flags);
	if (!err)
		err = fn(&w, arg);
	ovl_cache_trim(s);
	pthread_rwlock_unlock(&s->lock);
	ovl_atomic_inc(&s->misses);
	return err;
}

/* Forget the directory whose index answered for path: on success the one
 * holding the last name, on failure the one where the walk stopped (its
 * index may be missing a name added since). */
int ovl_invalidate(struct ovl_stack *s, const char *path)
{
	struct ovl_walk w = { .s = s, .cached_only = true };
	struct ovl_dir *drop = NULL;
	bool all = path == NULL;
	int err;

	pthread_rwlock_wrlock(&s->lock);
	if (!all) {
		/* Only what is cached can be stale: never read to invalidate. */
		err = ovl_walk_path(&w, path, 0);
		if (!err)
			drop = w.dir;
		else if (w.ent->dtype == DT_DIR && w.ent->ext)
			drop = w.ent->ext;
		else
			drop = w.dir;
		all = drop == NULL || drop == s->root;
	}
	if (all)
		ovl_cache_flush(s);
	else if (drop) {
		ovl_dir_free(s, drop);
		__atomic_add_fetch(&s->generation, 1, __ATOMIC_RELEASE);
	}
	pthread_rwlock_unlock(&s->lock);
	return 0;
}
